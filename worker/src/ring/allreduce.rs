//! Ring all-reduce (sum) of a flat `f32` buffer: reduce-scatter then all-gather, `n - 1` rounds
//! each, over segments cut into chunks.
//!
//! Schedule, for rank `i` of `n`: the buffer is cut into `n` segments ([`super::segments`]).
//! Reduce-scatter round `r` receives segment `(i - r - 1) mod n` from the left and adds it in;
//! after round `n - 2` rank `i` holds the full sum of segment `(i + 1) mod n`. All-gather round
//! `r` receives the final segment `(i - r) mod n` and copies it. A received chunk is forwarded
//! to the right as soon as it is applied (the next round sends exactly the segment just
//! received), so rounds overlap chunk by chunk: that is the pipelining, and why chunks exist.
//!
//! Exactness: every value of segment `s` is summed in one fixed order, starting at rank
//! `s` and adding ranks `s+1, s+2, ...` around the ring (`((x_s + x_{s+1}) + x_{s+2}) + ...`),
//! then copied unchanged to every rank. So all ranks end bit-identical, and the result equals a
//! sequential sum in that ring order bit for bit (the conformance tests check exactly that).
//!
//! Sending and receiving run concurrently: received chunks are noted in an unbounded local
//! queue that a sender loop drains, so no rank ever blocks on a full link while its left
//! neighbour blocks on it (a ring of blocked sends would deadlock). The queue holds ranges of
//! the buffer, not copies: the sender copies each chunk out just before sending it.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::values::{F32Bytes, NotFinite};

use super::{
    Chunk, ChunkSend, PeerId, Phase, RingConfig, RingError, RingRecv, SharedBuf, StepTag, chunks,
    recv_timed, segments,
};

/// Sums `buf` element-wise across the ring, in place: on return every rank holds the same sum.
pub async fn all_reduce<S, R>(
    cfg: &RingConfig,
    tag: StepTag,
    buf: &mut [f32],
    tx: &mut S,
    rx: &mut R,
) -> Result<(), RingError>
where
    S: ChunkSend,
    R: RingRecv<Chunk>,
{
    cfg.check()?;
    let n = cfg.size;
    let segs = segments(buf.len(), n);
    // Local values must be finite. The own segment (sent as it is) is scanned here; every
    // other segment is checked as received values are added into it (`add_into` reports a
    // bad local value apart from a bad received one), which saves a pass over the buffer.
    let own_segment = if n == 1 {
        0..buf.len()
    } else {
        segs[cfg.rank].clone()
    };
    check_local(&buf[own_segment.clone()], own_segment.start, buf.len())?;
    if n == 1 {
        return Ok(());
    }
    // What to send, in wire order: reduce-scatter round 0 is this rank's own segment as it is;
    // every received chunk but the last round's is forwarded once applied. Entries name a
    // range of `buf`, copied into a pooled buffer only when the sender gets to them, so a rank
    // holds a few chunk copies at a time (copied at receipt, forwards waiting for a slow link
    // held up to 2 (n - 1) / n of the buffer, measured 30% slower at 64 MiB). The range still
    // holds the value to send then: a range is written again only by a chunk that can exist
    // only after the right-hand neighbour has received this one.
    let own = cfg.rank;
    let outbox = Mutex::new(Outbox {
        queue: chunks(segs[own].clone(), cfg.chunk_len)
            .enumerate()
            .map(|(c, range)| Outgoing {
                phase: Phase::ReduceScatter,
                round: 0,
                segment: own as u32,
                chunk: c as u32,
                range,
            })
            .collect(),
        done: false,
    });
    // Both halves run in this task (`try_join!`), never at once: the locks are never
    // contended, they only make the shared buffer and queue visible to both.
    let buf = SharedBuf::new(buf);
    let wake = Notify::new();

    let sending = async {
        loop {
            let next = {
                let mut outbox = lock(&outbox);
                match outbox.queue.pop_front() {
                    None if outbox.done => return Ok::<(), RingError>(()),
                    next => next,
                }
            };
            let Some(o) = next else {
                wake.notified().await;
                continue;
            };
            let head = Chunk {
                tag,
                phase: o.phase,
                round: o.round,
                segment: o.segment,
                chunk: o.chunk,
                offset: o.range.start as u64,
                values: F32Bytes::default(),
            };
            tx.send_range(head, &buf, o.range).await?;
        }
    };
    let receiving = async {
        let total = 2 * (n - 1);
        for k in 0..total {
            let (phase, round, seg) = position(cfg, k);
            for (c, range) in chunks(segs[seg].clone(), cfg.chunk_len).enumerate() {
                let msg = recv_timed(rx, cfg).await?;
                Expect::at(tag, (phase, round, seg), c, &range).check(rx.peer(), &msg)?;
                let forward = k + 1 < total;
                let applied = buf.write(range.clone(), |dst| match phase {
                    Phase::ReduceScatter => msg.values.add_into(dst),
                    Phase::AllGather => msg.values.copy_into(dst).map_err(NotFinite::Received),
                });
                if let Err(NotFinite::Local(k)) = applied {
                    return Err(local_not_finite(range.start + k, buf.len()));
                }
                if let Err(NotFinite::Received(k)) = applied {
                    // The step is dropped: the partly summed buffer is never used.
                    return Err(RingError::invalid(
                        rx.peer(),
                        format!(
                            "chunk {:?}: value {k} is not finite",
                            (phase, round, seg, c)
                        ),
                    ));
                }
                if forward {
                    let (phase, round, _) = position(cfg, k + 1);
                    lock(&outbox).queue.push_back(Outgoing {
                        phase,
                        round: round as u32,
                        segment: seg as u32,
                        chunk: c as u32,
                        range,
                    });
                    wake.notify_one();
                }
            }
        }
        lock(&outbox).done = true;
        wake.notify_one();
        Ok::<(), RingError>(())
    };
    tokio::try_join!(sending, receiving)?;
    Ok(())
}

/// Checks that `values` (starting at `offset` of a buffer of `len`) are finite.
pub(crate) fn check_local(values: &[f32], offset: usize, len: usize) -> Result<(), RingError> {
    // A vectorised pass first; the index is looked for only when there is something to find.
    if values.iter().fold(true, |ok, v| ok & v.is_finite()) {
        return Ok(());
    }
    let k = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
    Err(local_not_finite(offset + k, len))
}

pub(crate) fn local_not_finite(k: usize, len: usize) -> RingError {
    RingError::Input(format!("local value {k} of {len} is not finite"))
}

/// Locks `m`; a poisoned lock (a panic elsewhere) still gives its data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A chunk to send: where it sits in the protocol and which values of the buffer it carries.
struct Outgoing {
    phase: Phase,
    round: u32,
    segment: u32,
    chunk: u32,
    range: std::ops::Range<usize>,
}

/// The chunks waiting for the sender, and whether the receiver has queued its last.
struct Outbox {
    queue: VecDeque<Outgoing>,
    done: bool,
}

/// Phase, round within the phase and segment received at overall receive round `k`.
pub(crate) fn position(cfg: &RingConfig, k: usize) -> (Phase, usize, usize) {
    let (n, i) = (cfg.size, cfg.rank);
    if k < n - 1 {
        (Phase::ReduceScatter, k, (i + 2 * n - k - 1) % n)
    } else {
        let r = k - (n - 1);
        (Phase::AllGather, r, (i + n - r) % n)
    }
}

/// The chunk the protocol expects next from the left.
pub(crate) struct Expect {
    pub tag: StepTag,
    pub phase: Phase,
    pub round: usize,
    pub segment: usize,
    pub chunk: usize,
    pub offset: usize,
    pub len: usize,
}

impl Expect {
    /// Chunk `c` (covering `range`) of `(phase, round, segment)` in the step of `tag`.
    pub(crate) fn at(
        tag: StepTag,
        (phase, round, segment): (Phase, usize, usize),
        c: usize,
        range: &std::ops::Range<usize>,
    ) -> Self {
        Self {
            tag,
            phase,
            round,
            segment,
            chunk: c,
            offset: range.start,
            len: range.len(),
        }
    }

    /// Checks `msg` against the expectation; a mismatch names the peer and what differed.
    pub(crate) fn check(&self, peer: &PeerId, msg: &Chunk) -> Result<(), RingError> {
        self.check_head(peer, msg, msg.values.len())
    }

    /// [`Self::check`] for a chunk whose `len` values are still to be read (its `values`
    /// unused): a raw link checks the head before reading the values into place.
    pub(crate) fn check_head(
        &self,
        peer: &PeerId,
        msg: &Chunk,
        len: usize,
    ) -> Result<(), RingError> {
        super::check_tag(peer, msg.tag, self.tag)?;
        let got = (
            msg.phase,
            msg.round as usize,
            msg.segment as usize,
            msg.chunk as usize,
        );
        let want = (self.phase, self.round, self.segment, self.chunk);
        if got != want {
            return Err(RingError::invalid(
                peer,
                format!(
                    "chunk (phase, round, segment, index) = {got:?}, expected {want:?} \
                     (step {})",
                    self.tag.step
                ),
            ));
        }
        if msg.offset != self.offset as u64 || len != self.len {
            return Err(RingError::invalid(
                peer,
                format!(
                    "chunk {want:?} at offset {} with {} values, expected offset {} with {}",
                    msg.offset, len, self.offset, self.len
                ),
            ));
        }
        Ok(())
    }
}
