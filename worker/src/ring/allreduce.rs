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
//! Sending and receiving run concurrently: received chunks go into an unbounded local queue
//! that a sender loop drains, so no rank ever blocks on a full link while its left neighbour
//! blocks on it (a ring of blocked sends would deadlock). The queue holds at most what this rank
//! sends in one all-reduce, `2 (n - 1) / n` of the buffer.

use tokio::sync::mpsc;

use super::values::F32Bytes;

use super::{
    Chunk, PeerId, Phase, RingConfig, RingError, RingRecv, RingSend, StepTag, chunks, recv_timed,
    segments,
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
    S: RingSend<Chunk>,
    R: RingRecv<Chunk>,
{
    cfg.check()?;
    if let Some(k) = buf.iter().position(|v| !v.is_finite()) {
        return Err(RingError::Input(format!(
            "local value {k} of {} is not finite ({})",
            buf.len(),
            buf[k]
        )));
    }
    let n = cfg.size;
    if n == 1 {
        return Ok(());
    }
    let segs = segments(buf.len(), n);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Chunk>();

    // Reduce-scatter round 0: this rank's own segment, as it is.
    let own = cfg.rank;
    for (c, range) in chunks(segs[own].clone(), cfg.chunk_len).enumerate() {
        let _ = out_tx.send(Chunk {
            tag,
            phase: Phase::ReduceScatter,
            round: 0,
            segment: own as u32,
            chunk: c as u32,
            offset: range.start as u64,
            values: F32Bytes::from_f32(&buf[range]),
        });
    }

    let sending = async {
        while let Some(chunk) = out_rx.recv().await {
            tx.send(chunk).await?;
        }
        Ok::<(), RingError>(())
    };
    let receiving = async move {
        let total = 2 * (n - 1);
        for k in 0..total {
            let (phase, round, seg) = position(cfg, k);
            for (c, range) in chunks(segs[seg].clone(), cfg.chunk_len).enumerate() {
                let msg = recv_timed(rx, cfg).await?;
                let want = Expect {
                    tag,
                    phase,
                    round,
                    segment: seg,
                    chunk: c,
                    offset: range.start,
                    len: range.len(),
                };
                want.check(rx.peer(), &msg)?;
                let dst = &mut buf[range.clone()];
                let applied = match phase {
                    Phase::ReduceScatter => msg.values.add_into(dst),
                    Phase::AllGather => msg.values.copy_into(dst),
                };
                if let Err(k) = applied {
                    // The step is dropped: the partly summed buffer is never used.
                    return Err(RingError::invalid(
                        rx.peer(),
                        format!(
                            "chunk {:?}: value {k} is not finite",
                            (phase, round, seg, c)
                        ),
                    ));
                }
                if k + 1 < total {
                    let (phase, round, _) = position(cfg, k + 1);
                    // The queue only closes if the sender loop failed, and then its error wins.
                    let _ = out_tx.send(Chunk {
                        tag,
                        phase,
                        round: round as u32,
                        segment: seg as u32,
                        chunk: c as u32,
                        offset: range.start as u64,
                        values: F32Bytes::from_f32(dst),
                    });
                }
            }
        }
        drop(out_tx);
        Ok::<(), RingError>(())
    };
    tokio::try_join!(sending, receiving)?;
    Ok(())
}

/// Phase, round within the phase and segment received at overall receive round `k`.
fn position(cfg: &RingConfig, k: usize) -> (Phase, usize, usize) {
    let (n, i) = (cfg.size, cfg.rank);
    if k < n - 1 {
        (Phase::ReduceScatter, k, (i + 2 * n - k - 1) % n)
    } else {
        let r = k - (n - 1);
        (Phase::AllGather, r, (i + n - r) % n)
    }
}

/// The chunk the protocol expects next from the left.
struct Expect {
    tag: StepTag,
    phase: Phase,
    round: usize,
    segment: usize,
    chunk: usize,
    offset: usize,
    len: usize,
}

impl Expect {
    /// Checks `msg` against the expectation; a mismatch names the peer and what differed.
    fn check(&self, peer: &PeerId, msg: &Chunk) -> Result<(), RingError> {
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
        if msg.offset != self.offset as u64 || msg.values.len() != self.len {
            return Err(RingError::invalid(
                peer,
                format!(
                    "chunk {want:?} at offset {} with {} values, expected offset {} with {}",
                    msg.offset,
                    msg.values.len(),
                    self.offset,
                    self.len
                ),
            ));
        }
        Ok(())
    }
}
