//! Ring all-reduce of the dense gradient buffer and all-gather of row-sparse embedding
//! gradients (DESIGN §5 step 3; issue 4 point 3).
//!
//! The algorithms are written once, against two small traits: [`RingSend`] (to the right-hand
//! neighbour) and [`RingRecv`] (from the left-hand neighbour). [`memory`] implements them with
//! tokio channels; `crate::transport` implements them over the gRPC `Peer` service and raw TCP
//! (sparse blocks). Every message a rank receives is checked here, whatever carried it, so
//! validation exists once. The one exception is the dense all-reduce on raw TCP links
//! (`crate::transport::tcp::direct`): it runs the same schedule on the sockets themselves and
//! reuses this module's checks (`allreduce::Expect`, [`values`]).
//!
//! - [`allreduce`]: reduce-scatter then all-gather, chunked and pipelined.
//! - [`sparse`]: every rank's sparse gradients around the ring, then a merge in rank order.
//! - [`memory`]: the in-memory transport (tests, and a single-process reference).
//! - [`pool`]: recycled buffers for chunk values.
//! - [`values`]: a chunk's values as little-endian bytes (the wire form, kept end to end).

pub mod allreduce;
pub mod memory;
pub mod pool;
pub mod sparse;
pub mod values;

#[cfg(test)]
mod conformance;

use std::fmt;
use std::future::Future;
use std::ops::Range;

pub use allreduce::all_reduce;
pub use sparse::sparse_exchange;
pub use values::F32Bytes;

/// What every message of one ring step carries, so that a receiver refuses anything from
/// another ring generation, another step or another model layout instead of summing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTag {
    /// Ring generation (changes whenever membership changes).
    pub generation: u64,
    /// Training step within the job.
    pub step: u64,
    /// Hash of the model layout that fixes the flat buffer order.
    pub layout_hash: u64,
}

/// A ring neighbour, as named in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerId {
    /// The neighbour's rank.
    pub rank: usize,
    /// Its address (`memory` for the in-memory transport).
    pub addr: String,
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {} at {}", self.rank, self.addr)
    }
}

/// This rank's place in the ring and how it cuts the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// This rank, `0..size`.
    pub rank: usize,
    /// Number of ranks in the ring.
    pub size: usize,
    /// Values per chunk: segments are cut into chunks of at most this many values, so a rank
    /// forwards the first chunk of a segment while later ones are still arriving.
    pub chunk_len: usize,
    /// How long to wait for one message before declaring the left neighbour dead.
    pub recv_timeout: std::time::Duration,
}

impl RingConfig {
    /// Checks the configuration (rank in range, at least one value per chunk).
    pub fn check(&self) -> Result<(), RingError> {
        if self.size == 0 || self.rank >= self.size || self.chunk_len == 0 {
            return Err(RingError::Config(format!(
                "rank {} of {} with chunks of {} values",
                self.rank, self.size, self.chunk_len
            )));
        }
        Ok(())
    }

    /// The rank on the left (the one this rank receives from).
    pub fn left(&self) -> usize {
        (self.rank + self.size - 1) % self.size
    }
}

/// Which half of the all-reduce a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Partial sums travel; the receiver adds.
    ReduceScatter,
    /// Final sums travel; the receiver copies.
    AllGather,
}

/// One chunk of one segment of the dense buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The step the chunk belongs to.
    pub tag: StepTag,
    /// Reduce-scatter or all-gather.
    pub phase: Phase,
    /// Round within the phase, `0..size - 1`.
    pub round: u32,
    /// Segment of the buffer, `0..size`.
    pub segment: u32,
    /// Chunk within the segment.
    pub chunk: u32,
    /// Offset of the first value within the whole buffer.
    pub offset: u64,
    /// The values, in wire form.
    pub values: F32Bytes,
}

/// One rank's sparse gradients (all tables), forwarded around the ring.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseBlock {
    /// The step the block belongs to.
    pub tag: StepTag,
    /// Round of the all-gather, `0..size - 1`.
    pub round: u32,
    /// The rank whose gradients these are.
    pub origin: u32,
    /// One gradient per table, in table order.
    pub grads: Vec<funnel_common::embedding::SparseGrad>,
}

/// Sends to the right-hand neighbour.
pub trait RingSend<M>: Send {
    /// Queues `msg` for the neighbour; may wait for flow control.
    fn send(&mut self, msg: M) -> impl Future<Output = Result<(), RingError>> + Send;
}

/// Sends chunks whose values are a range of the buffer being reduced. The default copies the
/// range into the chunk and sends that; a sender may write the values from the buffer instead
/// (fault injection uses the hook to see every chunk).
pub trait ChunkSend: RingSend<Chunk> {
    /// Sends `head` (its `values` empty) carrying `buf[range]`.
    fn send_range(
        &mut self,
        head: Chunk,
        buf: &SharedBuf<'_>,
        range: Range<usize>,
    ) -> impl Future<Output = Result<(), RingError>> + Send {
        async move {
            let values = buf.read(range, F32Bytes::from_f32);
            self.send(Chunk { values, ..head }).await
        }
    }
}

/// The buffer an all-reduce sums in place, shared by its sending and receiving halves. Both
/// run in one task and never at once, so the lock is never contended; it is what lets the
/// sender read ranges the receiver is not writing without a copy of the buffer.
pub struct SharedBuf<'a>(std::sync::Mutex<&'a mut [f32]>);

impl<'a> SharedBuf<'a> {
    /// Shares `buf`.
    pub fn new(buf: &'a mut [f32]) -> Self {
        Self(std::sync::Mutex::new(buf))
    }

    /// Runs `f` on `buf[range]`.
    pub fn read<R>(&self, range: Range<usize>, f: impl FnOnce(&[f32]) -> R) -> R {
        f(&self.0.lock().unwrap_or_else(|p| p.into_inner())[range])
    }

    /// The buffer's length.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on `buf[range]`, mutably.
    pub fn write<R>(&self, range: Range<usize>, f: impl FnOnce(&mut [f32]) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner())[range])
    }
}

/// Receives from the left-hand neighbour.
pub trait RingRecv<M>: Send {
    /// The next message; an error when the neighbour is gone or the stream broke.
    fn recv(&mut self) -> impl Future<Output = Result<M, RingError>> + Send;
    /// Who the messages come from (for errors).
    fn peer(&self) -> &PeerId;
}

/// The segments of a buffer of `len` values among `n` ranks: the first `len % n` segments
/// have one value more, so any length (zero included) is covered exactly once.
pub fn segments(len: usize, n: usize) -> Vec<Range<usize>> {
    let (base, extra) = (len / n, len % n);
    let mut start = 0;
    (0..n)
        .map(|s| {
            let end = start + base + usize::from(s < extra);
            let r = start..end;
            start = end;
            r
        })
        .collect()
}

/// The f32 payload bytes rank `rank` of `n` sends in one all-reduce of `len` values: every
/// segment twice (reduce-scatter, all-gather) except the one it finishes reducing,
/// `(rank + 1) mod n`, in reduce-scatter, and `(rank + 2) mod n`, which it receives last, in
/// all-gather (see `allreduce.rs` for the schedule).
pub fn bytes_sent(len: usize, n: usize, rank: usize) -> u64 {
    if n < 2 {
        return 0;
    }
    let segs = segments(len, n);
    let values = 2 * len - segs[(rank + 1) % n].len() - segs[(rank + 2) % n].len();
    4 * values as u64
}

/// The chunks of one segment: at most `chunk_len` values each; an empty segment has none.
pub fn chunks(seg: Range<usize>, chunk_len: usize) -> impl Iterator<Item = Range<usize>> {
    seg.clone()
        .step_by(chunk_len)
        .map(move |s| s..(s + chunk_len).min(seg.end))
}

/// What can go wrong in a ring exchange. Errors about a received message name the neighbour
/// it came from; none of them panics.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// A bad ring configuration.
    #[error("invalid ring configuration: {0}")]
    Config(String),
    /// The local buffer or gradients do not fit the exchange.
    #[error("invalid local input: {0}")]
    Input(String),
    /// A message from another generation (a stale or future ring).
    #[error("from {peer}: generation {got}, expected {expected}")]
    Generation {
        /// The sender.
        peer: PeerId,
        /// Generation received.
        got: u64,
        /// This rank's generation.
        expected: u64,
    },
    /// A message for another model layout.
    #[error("from {peer}: layout hash {got:#018x}, expected {expected:#018x}")]
    Layout {
        /// The sender.
        peer: PeerId,
        /// Layout hash received.
        got: u64,
        /// This rank's layout hash.
        expected: u64,
    },
    /// A message that is not the one the protocol expects next (step, phase, index, size,
    /// values).
    #[error("from {peer}: {what}")]
    Invalid {
        /// The sender.
        peer: PeerId,
        /// What was wrong.
        what: String,
    },
    /// The neighbour went away, timed out or the stream broke.
    #[error("link to {peer}: {what}")]
    Link {
        /// The neighbour.
        peer: PeerId,
        /// What happened.
        what: String,
    },
    /// The peer refused the call (authentication, stale generation) with a gRPC status.
    #[error("{peer} refused: {status}")]
    Refused {
        /// The neighbour.
        peer: PeerId,
        /// The status it returned.
        status: Box<tonic::Status>,
    },
}

impl RingError {
    /// A protocol violation by `peer`.
    pub(crate) fn invalid(peer: &PeerId, what: impl Into<String>) -> Self {
        RingError::Invalid {
            peer: peer.clone(),
            what: what.into(),
        }
    }

    /// A broken link to `peer`.
    pub(crate) fn link(peer: &PeerId, what: impl Into<String>) -> Self {
        RingError::Link {
            peer: peer.clone(),
            what: what.into(),
        }
    }
}

/// Checks the tag of a message from `peer` against this rank's.
pub(crate) fn check_tag(peer: &PeerId, got: StepTag, want: StepTag) -> Result<(), RingError> {
    if got.generation != want.generation {
        return Err(RingError::Generation {
            peer: peer.clone(),
            got: got.generation,
            expected: want.generation,
        });
    }
    if got.layout_hash != want.layout_hash {
        return Err(RingError::Layout {
            peer: peer.clone(),
            got: got.layout_hash,
            expected: want.layout_hash,
        });
    }
    if got.step != want.step {
        return Err(RingError::invalid(
            peer,
            format!("step {}, expected {}", got.step, want.step),
        ));
    }
    Ok(())
}

/// Waits for the next message from the left with the configured timeout.
pub(crate) async fn recv_timed<M, R: RingRecv<M>>(
    rx: &mut R,
    cfg: &RingConfig,
) -> Result<M, RingError> {
    match tokio::time::timeout(cfg.recv_timeout, rx.recv()).await {
        Ok(m) => m,
        Err(_) => Err(RingError::link(
            rx.peer(),
            format!("nothing received for {:?}", cfg.recv_timeout),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_sent_sums_to_the_ring_volume_and_is_len_for_two_ranks() {
        // All ranks together send 2 (n - 1) x len values: nccl-tests' bus volume.
        for n in 2..=5 {
            for len in [0, 1, 7, 10, 1001] {
                let total: u64 = (0..n).map(|r| bytes_sent(len, n, r)).sum();
                assert_eq!(
                    total,
                    4 * (2 * (n as u64 - 1) * len as u64),
                    "n {n} len {len}"
                );
            }
        }
        assert_eq!(bytes_sent(10, 2, 0), 40);
        // n 4, len 10: segments 3, 3, 2, 2; rank 0 skips segment 1 once and segment 2 once.
        assert_eq!(bytes_sent(10, 4, 0), 4 * (20 - 3 - 2));
        assert_eq!(bytes_sent(10, 1, 0), 0);
    }

    #[test]
    fn segments_cover_every_length_once() {
        for n in 1..=5 {
            for len in [0, 1, 7, 1000, 1001] {
                let segs = segments(len, n);
                assert_eq!(segs.len(), n);
                assert_eq!(segs[0].start, 0);
                assert_eq!(segs[n - 1].end, len);
                assert!(segs.windows(2).all(|w| w[0].end == w[1].start));
                let lens: Vec<usize> = segs.iter().map(|s| s.len()).collect();
                assert!(lens.iter().max().unwrap_or(&0) - lens.iter().min().unwrap_or(&0) <= 1);
            }
        }
    }

    #[test]
    fn chunks_cut_segments() {
        let c: Vec<_> = chunks(3..10, 3).collect();
        assert_eq!(c, vec![3..6, 6..9, 9..10]);
        assert_eq!(chunks(4..4, 3).count(), 0);
    }
}
