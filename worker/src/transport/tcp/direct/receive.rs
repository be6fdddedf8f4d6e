//! The receiving half of a direct all-reduce: the frames expected from the left-hand
//! neighbour, read without blocking as far as they have arrived, checked, and applied to the
//! buffer in place (see the parent module).

use std::net::TcpStream;
use std::ops::Range;

use prost::Message;

use crate::ring::allreduce::{Expect, local_not_finite, position};
use crate::ring::values::{NotFinite, add_checked, first_bad};
use crate::ring::{Chunk, PeerId, Phase, RingConfig, RingError, StepTag};
use crate::ring::{chunks, segments};
use crate::transport::Wire;
use funnel_proto::v1 as pb;

/// The receiver's error when the step was cancelled (a newer generation).
pub(super) const CANCELLED: &str = "the step was cancelled: the ring moved on";

/// Values received per read in reduce-scatter: 64 KiB, so the piece just read is still in the
/// core's cache when it is added (16 and 256 KiB measured no better).
const PIECE: usize = 16 << 10;

/// Longest frame meta accepted: a chunk's head is a few dozen bytes.
const MAX_META: usize = 4096;

/// One frame of the step's schedule: where it sits and the values it covers.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Slot {
    pub phase: Phase,
    pub round: usize,
    pub segment: usize,
    pub chunk: usize,
    pub range: Range<usize>,
}

/// The frames one rank receives in a step, in order, and what it sends.
pub(super) struct Schedule {
    /// Frame `i` received from the left.
    pub received: Vec<Slot>,
    /// The frames sent before anything is received (this rank's own segment).
    pub own: Vec<Slot>,
    /// Rounds of receiving (`2 (n - 1)`).
    total: usize,
    /// Receive round of each received frame.
    k_of: Vec<usize>,
}

impl Schedule {
    pub(super) fn new(cfg: &RingConfig, len: usize) -> Self {
        let segs = segments(len, cfg.size);
        let slots = |phase, round, segment: usize| {
            chunks(segs[segment].clone(), cfg.chunk_len)
                .enumerate()
                .map(move |(chunk, range)| Slot {
                    phase,
                    round,
                    segment,
                    chunk,
                    range,
                })
        };
        let own = slots(Phase::ReduceScatter, 0, cfg.rank).collect();
        let total = 2 * (cfg.size - 1);
        let (mut received, mut k_of) = (Vec::new(), Vec::new());
        for k in 0..total {
            let (phase, round, seg) = position(cfg, k);
            for slot in slots(phase, round, seg) {
                received.push(slot);
                k_of.push(k);
            }
        }
        Self {
            received,
            own,
            total,
            k_of,
        }
    }

    /// What this rank sends once received frame `i` is applied: the same chunk, as the next
    /// round has it; nothing after the last round.
    pub(super) fn forward(&self, cfg: &RingConfig, i: usize) -> Option<Slot> {
        let k = self.k_of[i] + 1;
        (k < self.total).then(|| {
            let (phase, round, _) = position(cfg, k);
            Slot {
                phase,
                round,
                ..self.received[i].clone()
            }
        })
    }
}

/// How far the frame being read has come.
enum Stage {
    /// Its 8-byte header: lengths of the meta and the payload.
    Head,
    /// Its meta (the chunk's protobuf head), `payload` bytes to follow.
    Meta { payload: usize },
    /// Its values, `payload` bytes in all.
    Values { payload: usize },
}

/// The receiving half: where the next bytes from the left go.
pub(super) struct Incoming<'c> {
    cfg: &'c RingConfig,
    tag: StepTag,
    left: &'c PeerId,
    len: usize,
    /// The frame being read (index into the schedule's received frames; all are in once it
    /// reaches `frames`).
    frame: usize,
    frames: usize,
    stage: Stage,
    head: [u8; 8],
    meta: Vec<u8>,
    /// Bytes of the current stage read.
    got: usize,
    /// Reduce-scatter: received values not yet added, as bytes (a piece at most).
    scratch: Vec<f32>,
    /// Bytes in `scratch` (less than 4 left over between reads: a value split by the link).
    held: usize,
    /// Values of the current frame applied to the buffer.
    applied: usize,
}

/// What one read did.
pub(super) struct Read {
    /// Bytes taken from the link.
    pub bytes: usize,
    /// The received frame that this read completed and applied.
    pub completed: Option<usize>,
}

impl<'c> Incoming<'c> {
    pub(super) fn new(
        cfg: &'c RingConfig,
        tag: StepTag,
        left: &'c PeerId,
        len: usize,
        frames: usize,
    ) -> Self {
        Self {
            cfg,
            tag,
            left,
            len,
            frame: 0,
            frames,
            stage: Stage::Head,
            head: [0; 8],
            meta: Vec::new(),
            got: 0,
            scratch: vec![0f32; PIECE],
            held: 0,
            applied: 0,
        }
    }

    /// Every frame of the step has been received and applied.
    pub(super) fn is_done(&self) -> bool {
        self.frame == self.frames
    }

    /// Reads what has arrived, up to the end of the current frame or of one piece, without
    /// blocking, and applies it to `buf`.
    pub(super) fn read_some(
        &mut self,
        link: &TcpStream,
        schedule: &Schedule,
        buf: &mut [f32],
    ) -> Result<Read, RingError> {
        let mut bytes = 0;
        loop {
            let Some(slot) = schedule.received.get(self.frame) else {
                return Ok(Read {
                    bytes,
                    completed: None,
                });
            };
            let read = match self.stage {
                Stage::Head => recv(link, &mut self.head[self.got..]),
                Stage::Meta { .. } => recv(link, &mut self.meta[self.got..]),
                Stage::Values { payload } => match slot.phase {
                    Phase::ReduceScatter => {
                        let room =
                            (payload - self.applied * 4 - self.held).min(PIECE * 4 - self.held);
                        let scratch: &mut [u8] = bytemuck::cast_slice_mut(&mut self.scratch);
                        recv(link, &mut scratch[self.held..self.held + room])
                    }
                    Phase::AllGather => {
                        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut buf[slot.range.clone()]);
                        recv(link, &mut dst[self.got..])
                    }
                },
            };
            let k = match read.map_err(|e| RingError::link(self.left, format!("read: {e}")))? {
                None => {
                    return Ok(Read {
                        bytes,
                        completed: None,
                    });
                }
                Some(0) if matches!(self.stage, Stage::Head) && self.got == 0 => {
                    return Err(RingError::link(
                        self.left,
                        "the link ended before the step did",
                    ));
                }
                Some(0) => return Err(RingError::link(self.left, "the link ended inside a frame")),
                Some(k) => k,
            };
            bytes += k;
            if self.advance(k, slot, buf)? {
                let completed = self.frame;
                self.frame += 1;
                self.got = 0;
                self.stage = Stage::Head;
                return Ok(Read {
                    bytes,
                    completed: Some(completed),
                });
            }
            if bytes >= PIECE * 4 {
                return Ok(Read {
                    bytes,
                    completed: None,
                });
            }
        }
    }

    /// Takes `k` more bytes of the current stage; `true` once the frame is complete.
    fn advance(&mut self, k: usize, slot: &Slot, buf: &mut [f32]) -> Result<bool, RingError> {
        match self.stage {
            Stage::Head => {
                self.got += k;
                if self.got < 8 {
                    return Ok(false);
                }
                let h = self.head;
                let meta_len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let payload = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
                // Bounded before anything is read for it; the exact length is the protocol's
                // check.
                let max_payload = self.cfg.chunk_len * 4 + 4;
                if meta_len > MAX_META || payload > max_payload || !payload.is_multiple_of(4) {
                    return Err(RingError::invalid(
                        self.left,
                        format!(
                            "frame of {meta_len} + {payload} bytes (a chunk's is at most \
                             {MAX_META} + {}, in whole f32 values)",
                            self.cfg.chunk_len * 4
                        ),
                    ));
                }
                self.meta.resize(meta_len, 0);
                self.got = 0;
                self.stage = Stage::Meta { payload };
                if meta_len == 0 {
                    return self.advance(0, slot, buf);
                }
                Ok(false)
            }
            Stage::Meta { payload } => {
                self.got += k;
                if self.got < self.meta.len() {
                    return Ok(false);
                }
                self.check_meta(slot, payload / 4)?;
                self.got = 0;
                self.applied = 0;
                self.held = 0;
                self.stage = Stage::Values { payload };
                Ok(payload == 0)
            }
            Stage::Values { payload } => {
                self.apply(k, slot, buf)?;
                Ok(self.applied * 4 == payload)
            }
        }
    }

    /// Decodes the frame's meta and checks it is the chunk the schedule expects, with
    /// `values` values to follow.
    fn check_meta(&self, slot: &Slot, values: usize) -> Result<(), RingError> {
        let m = pb::AllReduceChunk::decode(&self.meta[..])
            .map_err(|e| RingError::invalid(self.left, format!("malformed frame: {e}")))?;
        let sender = m.header.as_ref().map(|h| h.sender_rank);
        if sender != Some(self.left.rank as u32) {
            return Err(RingError::invalid(
                self.left,
                format!("a chunk from rank {sender:?}, expected {}", self.left.rank),
            ));
        }
        let msg = Chunk::from_wire(m, self.left)?;
        Expect::at(
            self.tag,
            (slot.phase, slot.round, slot.segment),
            slot.chunk,
            &slot.range,
        )
        .check_head(self.left, &msg, values)
    }

    /// Applies `k` more payload bytes: adds the whole values among them (reduce-scatter) or
    /// checks the values now complete in place (all-gather).
    fn apply(&mut self, k: usize, slot: &Slot, buf: &mut [f32]) -> Result<(), RingError> {
        let start = slot.range.start + self.applied;
        let (checked, whole) = match slot.phase {
            Phase::ReduceScatter => {
                self.held += k;
                let whole = self.held / 4;
                let checked = add_checked(&mut buf[start..start + whole], &self.scratch[..whole]);
                let scratch: &mut [u8] = bytemuck::cast_slice_mut(&mut self.scratch);
                scratch.copy_within(whole * 4..self.held, 0);
                self.held -= whole * 4;
                (checked, whole)
            }
            Phase::AllGather => {
                self.got += k;
                let whole = self.got / 4 - self.applied;
                let values = &buf[start..start + whole];
                let checked = if values.iter().fold(true, |ok, v| ok & v.is_finite()) {
                    Ok(())
                } else {
                    Err(NotFinite::Received(first_bad(values)))
                };
                (checked, whole)
            }
        };
        match checked {
            Ok(()) => {
                self.applied += whole;
                Ok(())
            }
            Err(NotFinite::Local(i)) => Err(local_not_finite(start + i, self.len)),
            Err(NotFinite::Received(i)) => Err(RingError::invalid(
                self.left,
                format!(
                    "chunk {:?}: value {} is not finite",
                    (slot.phase, slot.round, slot.segment, slot.chunk),
                    self.applied + i
                ),
            )),
        }
    }
}

/// Reads what `link` holds now into `out`, without blocking: `None` when nothing has arrived,
/// `Some(0)` at the link's end.
fn recv(link: &TcpStream, out: &mut [u8]) -> std::io::Result<Option<usize>> {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    loop {
        match recv(link.as_raw_fd(), out, MsgFlags::MSG_DONTWAIT) {
            Ok(k) => return Ok(Some(k)),
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(rank: usize, size: usize, chunk_len: usize) -> RingConfig {
        RingConfig {
            rank,
            size,
            chunk_len,
            recv_timeout: Duration::from_secs(1),
        }
    }

    /// What rank `cfg.rank` writes in a step: its own segment, then each received frame's
    /// forward in the order the frames arrive.
    fn sent(cfg: &RingConfig, len: usize) -> Vec<Slot> {
        let schedule = Schedule::new(cfg, len);
        let forwards = (0..schedule.received.len()).filter_map(|i| schedule.forward(cfg, i));
        schedule.own.iter().cloned().chain(forwards).collect()
    }

    #[test]
    fn each_rank_sends_exactly_the_frames_its_right_neighbour_expects() {
        for size in 2..=5 {
            for len in [0, 1, 7, 1000, 1001] {
                for chunk_len in [1, 3, 64] {
                    for rank in 0..size {
                        let me = config(rank, size, chunk_len);
                        let right = config((rank + 1) % size, size, chunk_len);
                        let expected = Schedule::new(&right, len).received;
                        assert_eq!(sent(&me, len), expected, "n={size} len={len} rank={rank}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_value_is_received_twice_once_per_phase_but_the_own_segment_once() {
        let (size, len, chunk_len) = (3, 1001, 64);
        for rank in 0..size {
            let cfg = config(rank, size, chunk_len);
            let schedule = Schedule::new(&cfg, len);
            let own = segments(len, size)[rank].clone();
            for phase in [Phase::ReduceScatter, Phase::AllGather] {
                let mut seen = vec![0; len];
                for slot in schedule.received.iter().filter(|s| s.phase == phase) {
                    slot.range.clone().for_each(|v| seen[v] += 1);
                }
                // Reduce-scatter adds into every segment but the one sent first (this rank's
                // own); all-gather overwrites every segment but the one this rank finished.
                let finished = segments(len, size)[(rank + 1) % size].clone();
                let skipped = if phase == Phase::ReduceScatter {
                    own.clone()
                } else {
                    finished
                };
                for (v, count) in seen.into_iter().enumerate() {
                    assert_eq!(
                        count,
                        usize::from(!skipped.contains(&v)),
                        "rank {rank} {phase:?} value {v}"
                    );
                }
            }
        }
    }
}
