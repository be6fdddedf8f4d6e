//! Recycled byte buffers for chunk values. An all-reduce of `B` bytes creates about `2B` bytes
//! of chunk buffers per rank (a copy to send per hop, a buffer to receive into). Allocated fresh,
//! each 256 KiB buffer came from pages the allocator had just returned to the kernel, and the
//! kernel zeroed them again on first touch: `perf` showed page zeroing at 48% of a ring's CPU
//! on loopback. Buffers handed out here return to the pool when the last `Bytes` viewing them is
//! dropped, so a ring in steady state allocates nothing.

use std::sync::Mutex;

use bytes::Bytes;

/// A bounded stack of spare buffers.
pub struct BufferPool {
    spare: Mutex<Spare>,
    /// Most bytes of capacity kept; buffers beyond it are freed.
    max_total: usize,
    /// Largest buffer kept (bigger ones are freed).
    max_bytes: usize,
}

#[derive(Default)]
struct Spare {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

/// The process's pool for ring chunks: at most 64 MiB kept, in buffers of at most 16 MiB (in
/// steady state a rank has up to a few dozen chunks in flight per link, 1 MiB each with the
/// default `cluster.chunk_values`).
pub static CHUNKS: BufferPool = BufferPool::new(64 << 20, 16 << 20);

impl BufferPool {
    /// An empty pool keeping at most `max_total` bytes, in buffers of at most `max_bytes`.
    pub const fn new(max_total: usize, max_bytes: usize) -> Self {
        Self {
            spare: Mutex::new(Spare {
                buffers: Vec::new(),
                bytes: 0,
            }),
            max_total,
            max_bytes,
        }
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let mut buf = self.take_spare(capacity).unwrap_or_default();
        buf.clear();
        buf.reserve(capacity);
        buf
    }

    /// The newest spare buffer with room for `capacity` bytes, as it was given back: growing
    /// a smaller one would reallocate it (the last chunk of a segment is shorter than the
    /// others, so sizes do mix).
    fn take_spare(&self, capacity: usize) -> Option<Vec<u8>> {
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        let fit = spare.buffers.iter().rposition(|b| b.capacity() >= capacity);
        let buf = fit.map(|k| spare.buffers.swap_remove(k));
        spare.bytes -= buf.as_ref().map_or(0, Vec::capacity);
        buf
    }

    /// A buffer of exactly `len` bytes to be overwritten, for readers that fill a slice (a
    /// blocking `read` cannot take spare capacity without `unsafe`). A recycled buffer keeps
    /// the bytes it last held, so only what lies beyond them is zeroed here: in steady state,
    /// with chunks of one size, nothing is.
    pub fn take_filled(&self, len: usize) -> Vec<u8> {
        let mut buf = self.take_spare(len).unwrap_or_default();
        buf.truncate(len);
        buf.resize(len, 0);
        buf
    }

    /// `buf` as `Bytes` that give it back to this pool once every view of it is dropped.
    pub fn bytes(&'static self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled { buf, pool: self })
    }

    fn give_back(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > self.max_bytes {
            return;
        }
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.bytes + buf.capacity() <= self.max_total {
            spare.bytes += buf.capacity();
            spare.buffers.push(buf);
        }
    }

    /// Buffers waiting to be reused (tests).
    pub fn spare_count(&self) -> usize {
        self.spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .buffers
            .len()
    }
}

/// A pooled buffer, owned by the `Bytes` built on it.
struct Pooled {
    buf: Vec<u8>,
    pool: &'static BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static POOL: BufferPool = BufferPool::new(256, 1024);

    #[test]
    fn buffers_come_back_when_the_last_view_drops() {
        let mut a = POOL.take(100);
        a.extend_from_slice(&[7; 100]);
        let ptr = a.as_ptr();
        let bytes = POOL.bytes(a);
        let view = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(POOL.spare_count(), 0, "a view still holds it");
        assert_eq!(&view[..], &[7; 10]);
        drop(view);
        assert_eq!(POOL.spare_count(), 1);
        let b = POOL.take(50);
        assert_eq!((b.as_ptr(), b.len()), (ptr, 0), "the same buffer, emptied");
        drop(POOL.bytes(b));
        // A request bigger than every spare buffer gets a new one; the spare stays.
        let big = POOL.take(200);
        assert!(big.capacity() >= 200 && big.as_ptr() != ptr);
        assert_eq!(POOL.spare_count(), 1);
        let b = POOL.take(100);
        assert_eq!(b.as_ptr(), ptr);
        drop(big);
        // Too big to keep, and the pool is bounded.
        drop(POOL.bytes(vec![0; 2048]));
        assert_eq!(POOL.spare_count(), 0);
        for _ in 0..3 {
            drop(POOL.bytes(Vec::with_capacity(100)));
        }
        assert_eq!(POOL.spare_count(), 2, "a third 100 bytes would pass 256");
        drop(POOL.bytes(b));
        assert_eq!(POOL.spare_count(), 2);
    }

    #[test]
    fn filled_buffers_are_reused_without_zeroing_what_was_written() {
        static FILLED: BufferPool = BufferPool::new(1024, 1024);
        let mut a = FILLED.take_filled(100);
        assert_eq!(a, vec![0; 100], "a new buffer is zeroed");
        a.fill(9);
        let ptr = a.as_ptr();
        drop(FILLED.bytes(a));
        let b = FILLED.take_filled(60);
        assert_eq!((b.as_ptr(), b.len()), (ptr, 60), "the same buffer, cut");
        assert!(
            b.iter().all(|&x| x == 9),
            "kept as it was: nothing rewritten"
        );
        drop(FILLED.bytes(b));
        // Grown within its capacity: only what lies beyond its last length is zeroed.
        let c = FILLED.take_filled(100);
        assert_eq!(c.as_ptr(), ptr);
        assert!(c[..60].iter().all(|&x| x == 9) && c[60..].iter().all(|&x| x == 0));
    }
}
