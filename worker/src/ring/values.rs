//! A chunk's values as little-endian f32 bytes. The ring works on `f32` slices, but keeping a
//! chunk in its wire form means no transport decodes value by value or allocates a `Vec<f32>`
//! per chunk and hop: the sender copies a slice of the buffer into pooled bytes once
//! ([`super::pool`]), the receiver adds straight from the bytes it received.

use bytes::Bytes;

/// Little-endian f32 values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct F32Bytes(Bytes);

impl F32Bytes {
    /// The values of `v` (one copy, into a buffer of the chunk pool).
    pub fn from_f32(v: &[f32]) -> Self {
        let mut b = super::pool::CHUNKS.take(v.len() * 4);
        if cfg!(target_endian = "little") {
            b.extend_from_slice(bytemuck::cast_slice(v));
        } else {
            for x in v {
                b.extend_from_slice(&x.to_le_bytes());
            }
        }
        Self(super::pool::CHUNKS.bytes(b))
    }

    /// Bytes received from the wire; `Err(len)` when `len` is not a multiple of 4.
    pub fn from_bytes(b: Bytes) -> Result<Self, usize> {
        if b.len().is_multiple_of(4) {
            Ok(Self(b))
        } else {
            Err(b.len())
        }
    }

    /// The bytes, as sent.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The bytes, owned.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values, decoded on the fly.
    pub fn iter(&self) -> impl Iterator<Item = f32> + '_ {
        self.0
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// The values as a vector (tests, small messages).
    pub fn to_vec(&self) -> Vec<f32> {
        self.iter().collect()
    }

    /// Adds the values into `dst` (same length). An error names the first value that is not
    /// finite, received or already in `dst` (a local value), in which case `dst` is partly
    /// updated and the step must be dropped.
    pub fn add_into(&self, dst: &mut [f32]) -> Result<(), NotFinite> {
        match self.as_f32() {
            Some(src) => add_checked(dst, src),
            None => {
                if let Some(k) = dst.iter().position(|d| !d.is_finite()) {
                    return Err(NotFinite::Local(k));
                }
                self.apply(dst, |d, v| *d += v).map_err(NotFinite::Received)
            }
        }
    }

    /// Copies the values into `dst` (same length); `Err(k)` if value `k` is not finite.
    pub fn copy_into(&self, dst: &mut [f32]) -> Result<(), usize> {
        match self.as_f32() {
            Some(src) => {
                let mut finite = true;
                for (d, v) in dst.iter_mut().zip(src) {
                    finite &= v.is_finite();
                    *d = *v;
                }
                if finite { Ok(()) } else { Err(first_bad(src)) }
            }
            None => self.apply(dst, |d, v| *d = v),
        }
    }

    /// The bytes as `f32`s in place, where that is possible: a little-endian target and
    /// 4-byte aligned bytes (pooled buffers are; a value field inside a protobuf message may
    /// not be, and then the values are decoded one by one).
    fn as_f32(&self) -> Option<&[f32]> {
        if cfg!(target_endian = "little") {
            bytemuck::try_cast_slice(&self.0).ok()
        } else {
            None
        }
    }

    fn apply(&self, dst: &mut [f32], op: impl Fn(&mut f32, f32)) -> Result<(), usize> {
        let mut bad = None;
        for (k, (d, v)) in dst.iter_mut().zip(self.iter()).enumerate() {
            if !v.is_finite() && bad.is_none() {
                bad = Some(k);
            }
            op(d, v);
        }
        bad.map_or(Ok(()), Err)
    }
}

/// Which value of an addition was not finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFinite {
    /// A received value, at this index.
    Received(usize),
    /// A value of the local buffer, at this index.
    Local(usize),
}

/// Adds `src` into `dst` (same length), element by element. An error names the first value
/// that is not finite, in `src` (received) or already in `dst` (local); `dst` is then partly
/// updated and the step must be dropped.
pub(crate) fn add_checked(dst: &mut [f32], src: &[f32]) -> Result<(), NotFinite> {
    // One pass the compiler vectorises: the sum and running finiteness flags.
    let (mut got, mut had) = (true, true);
    for (d, v) in dst.iter_mut().zip(src) {
        got &= v.is_finite();
        had &= d.is_finite();
        *d += v;
    }
    if got && had {
        Ok(())
    } else if !got {
        Err(NotFinite::Received(first_bad(src)))
    } else {
        // `dst` now holds sums: the first non-finite one is the first bad local value or a
        // later one (a non-finite local value stays non-finite).
        Err(NotFinite::Local(first_bad(dst)))
    }
}

/// Index of the first non-finite value (there is one).
pub(crate) fn first_bad(v: &[f32]) -> usize {
    v.iter().position(|x| !x.is_finite()).unwrap_or(v.len())
}

impl From<Vec<f32>> for F32Bytes {
    fn from(v: Vec<f32>) -> Self {
        Self::from_f32(&v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_add_with_a_finiteness_check() {
        let v = F32Bytes::from_f32(&[1.5, -0.0, 3.25]);
        assert_eq!((v.len(), v.to_vec()), (3, vec![1.5, -0.0, 3.25]));
        let mut dst = [1.0, 1.0, 1.0];
        assert_eq!(v.add_into(&mut dst), Ok(()));
        assert_eq!(dst, [2.5, 1.0, 4.25]);
        let bad = F32Bytes::from_f32(&[0.0, f32::NAN]);
        assert_eq!(bad.copy_into(&mut [0.0; 2]), Err(1));
        assert_eq!(bad.add_into(&mut [0.0; 2]), Err(NotFinite::Received(1)));
        let good = F32Bytes::from_f32(&[1.0, 1.0, 1.0]);
        let mut local = [0.0, f32::INFINITY, f32::NAN];
        assert_eq!(good.add_into(&mut local), Err(NotFinite::Local(1)));
        // Unaligned bytes (a field inside a received message) take the decoding path.
        let mut raw = vec![0u8];
        raw.extend_from_slice(F32Bytes::from_f32(&[1.0, f32::INFINITY, 2.0]).bytes());
        let odd = F32Bytes::from_bytes(Bytes::from(raw).slice(1..)).expect("whole values");
        let mut dst = [1.0; 3];
        assert_eq!(odd.add_into(&mut dst), Err(NotFinite::Received(1)));
        assert_eq!((dst[0], dst[2]), (2.0, 3.0));
        assert_eq!(
            odd.add_into(&mut [0.0, f32::NAN, 0.0]),
            Err(NotFinite::Local(1))
        );
        assert_eq!(F32Bytes::from_bytes(Bytes::from_static(&[0, 0, 0])), Err(3));
    }
}
