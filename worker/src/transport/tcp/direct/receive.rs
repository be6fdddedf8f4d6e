//! The receiving half of a direct all-reduce, on the calling thread: frame heads read and
//! checked, values read into place (see the parent module for the scheme).

use std::io::{BufReader, Read};
use std::net::TcpStream;
use std::ops::Range;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prost::Message;

use super::{CANCEL_POLL, DirectLinks, Job};
use crate::ring::allreduce::{Expect, local_not_finite, position};
use crate::ring::values::{NotFinite, add_checked, first_bad};
use crate::ring::{Chunk, F32Bytes, PeerId, Phase, RingConfig, RingError, StepTag};
use crate::ring::{chunks, segments};
use crate::transport::Wire;
use funnel_proto::v1 as pb;

/// The receiver's error when the sender thread stopped (its own error is the cause).
pub(super) const SENDER_GONE: &str = "the sender thread stopped";

/// The receiver's error when the step was cancelled (a newer generation).
pub(super) const CANCELLED: &str = "the step was cancelled: the ring moved on";

/// Values received per read in reduce-scatter: 64 KiB, so the piece just read is still in the
/// core's cache when it is added (16 and 256 KiB measured no better).
const PIECE: usize = 16 << 10;

/// Read buffer for frame heads: small, so little of a payload passes through it (the rest is
/// read straight into place).
const HEAD_BUFFER: usize = 512;

/// Longest frame meta accepted: a chunk's head is a few dozen bytes.
const MAX_META: usize = 4096;

/// The link from the left-hand neighbour, read with a timeout of [`CANCEL_POLL`] so a blocked
/// read can look at the step's cancellation.
pub(super) struct LinkReader {
    read: BufReader<TcpStream>,
    recv_timeout: Duration,
}

impl LinkReader {
    /// Reads `socket`; `recv_timeout` without a byte is a dead neighbour.
    pub(super) fn new(socket: TcpStream, recv_timeout: Duration) -> std::io::Result<Self> {
        socket.set_read_timeout(Some(CANCEL_POLL.min(recv_timeout)))?;
        Ok(Self {
            read: BufReader::with_capacity(HEAD_BUFFER, socket),
            recv_timeout,
        })
    }

    /// Fills `out` from the link. `Ok(false)`: the link ended before the first byte.
    fn fill(
        &mut self,
        out: &mut [u8],
        left: &PeerId,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<bool, RingError> {
        let mut got = 0;
        let mut last = Instant::now();
        while got < out.len() {
            match self.read.read(&mut out[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(RingError::link(
                        left,
                        format!(
                            "the link ended inside a frame ({got} of {} bytes)",
                            out.len()
                        ),
                    ));
                }
                Ok(k) => {
                    got += k;
                    last = Instant::now();
                }
                Err(e) => match e.kind() {
                    std::io::ErrorKind::Interrupted => {}
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        if cancelled() {
                            return Err(RingError::link(left, CANCELLED));
                        }
                        if last.elapsed() >= self.recv_timeout {
                            return Err(RingError::link(
                                left,
                                format!("nothing received for {:?}", self.recv_timeout),
                            ));
                        }
                    }
                    _ => return Err(RingError::link(left, format!("read: {e}"))),
                },
            }
        }
        Ok(true)
    }
}

/// The receiving half: the buffer cut into chunks, and the channels to the sender thread.
pub(super) struct Receiver<'a, 'c> {
    cfg: &'c RingConfig,
    tag: StepTag,
    links: &'c DirectLinks,
    left: &'c PeerId,
    /// Chunks are still written here, without blocking (the sender thread has not started).
    direct: bool,
    /// Starts the sender thread (at the first write that would block).
    start: &'c mut dyn FnMut(),
    /// A frame head, encoded for a write from here.
    head: Vec<u8>,
    len: usize,
    segs: Vec<Range<usize>>,
    /// Index of each segment's first chunk in `slots`.
    first: Vec<usize>,
    /// Each chunk's slice of the buffer while the receiver holds it.
    slots: Vec<Option<&'a mut [f32]>>,
    jobs: mpsc::Sender<Job<'a>>,
    back: mpsc::Receiver<(usize, &'a mut [f32])>,
}

impl<'a, 'c> Receiver<'a, 'c> {
    /// Cuts `buf` into its chunks, in buffer order.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cfg: &'c RingConfig,
        tag: StepTag,
        links: &'c DirectLinks,
        buf: &'a mut [f32],
        jobs: mpsc::Sender<Job<'a>>,
        back: mpsc::Receiver<(usize, &'a mut [f32])>,
        direct: bool,
        start: &'c mut dyn FnMut(),
    ) -> Self {
        let len = buf.len();
        let segs = segments(len, cfg.size);
        let (mut slots, mut first) = (Vec::new(), Vec::with_capacity(cfg.size));
        let mut rest = buf;
        for seg in &segs {
            first.push(slots.len());
            for range in chunks(seg.clone(), cfg.chunk_len) {
                let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(range.len());
                slots.push(Some(chunk));
                rest = tail;
            }
        }
        Self {
            cfg,
            tag,
            links,
            left: &links.left,
            direct,
            start,
            head: Vec::new(),
            len,
            segs,
            first,
            slots,
            jobs,
            back,
        }
    }

    /// Reduce-scatter round 0: hands this rank's own segment to the sender, as it is.
    pub(super) fn send_own(&mut self) -> Result<(), RingError> {
        let own = self.cfg.rank;
        for c in 0..chunks(self.segs[own].clone(), self.cfg.chunk_len).count() {
            self.send(Phase::ReduceScatter, 0, own, c)?;
        }
        Ok(())
    }

    /// Receives, applies and forwards every chunk from `link` (after [`Self::send_own`]).
    pub(super) fn receive(
        mut self,
        link: &mut LinkReader,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), RingError> {
        let (cfg, n) = (self.cfg, self.cfg.size);
        let mut meta = Vec::new();
        let mut scratch = vec![0f32; PIECE];
        let total = 2 * (n - 1);
        for k in 0..total {
            let (phase, round, seg) = position(cfg, k);
            for (c, range) in chunks(self.segs[seg].clone(), cfg.chunk_len).enumerate() {
                let (msg, values) = self.read_head(link, &mut meta, cancelled)?;
                Expect::at(self.tag, (phase, round, seg), c, &range)
                    .check_head(self.left, &msg, values)?;
                let id = self.first[seg] + c;
                let dst = self.slot(id)?;
                let applied = match phase {
                    Phase::ReduceScatter => read_add(link, dst, &mut scratch, self.left, cancelled),
                    Phase::AllGather => read_copy(link, dst, self.left, cancelled),
                };
                match applied? {
                    Ok(()) => {}
                    Err(NotFinite::Local(i)) => {
                        return Err(local_not_finite(range.start + i, self.len));
                    }
                    Err(NotFinite::Received(i)) => {
                        return Err(RingError::invalid(
                            self.left,
                            format!(
                                "chunk {:?}: value {i} is not finite",
                                (phase, round, seg, c)
                            ),
                        ));
                    }
                }
                self.slots[id] = Some(dst);
                if k + 1 < total {
                    let (phase, round, _) = position(cfg, k + 1);
                    self.send(phase, round, seg, c)?;
                }
            }
        }
        Ok(())
    }

    /// Hands chunk `c` of segment `seg` to the sender, as `(phase, round)`.
    fn send(&mut self, phase: Phase, round: usize, seg: usize, c: usize) -> Result<(), RingError> {
        let id = self.first[seg] + c;
        let values = self.slot(id)?;
        let head = Chunk {
            tag: self.tag,
            phase,
            round: round as u32,
            segment: seg as u32,
            chunk: c as u32,
            offset: (self.segs[seg].start + c * self.cfg.chunk_len) as u64,
            values: F32Bytes::default(),
        };
        let mut sent = 0;
        if self.direct {
            // Written from here while the link takes it whole; the first write that would
            // block starts the sender thread, which writes the rest of it and all after it.
            let bytes: &[u8] = bytemuck::cast_slice(values);
            self.links
                .encode_head(&mut self.head, head.clone(), bytes.len())?;
            sent = self.links.try_write(&self.head, bytes, 0)?;
            if sent == self.head.len() + bytes.len() {
                self.slots[id] = Some(values);
                return Ok(());
            }
            self.direct = false;
            (self.start)();
        }
        self.jobs
            .send(Job {
                head,
                id,
                values,
                sent,
            })
            .map_err(|_| RingError::link(self.left, SENDER_GONE))
    }

    /// Chunk `id`'s slice, waiting for the sender to hand it back if it has it.
    fn slot(&mut self, id: usize) -> Result<&'a mut [f32], RingError> {
        loop {
            if let Some(s) = self.slots[id].take() {
                return Ok(s);
            }
            let (got, s) = self
                .back
                .recv()
                .map_err(|_| RingError::link(self.left, SENDER_GONE))?;
            self.slots[got] = Some(s);
        }
    }

    /// Reads the next frame's head: the chunk (values empty) and how many values follow.
    fn read_head(
        &self,
        link: &mut LinkReader,
        meta: &mut Vec<u8>,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<(Chunk, usize), RingError> {
        let left = self.left;
        let mut head = [0u8; 8];
        if !link.fill(&mut head, left, cancelled)? {
            return Err(RingError::link(left, "the link ended before the step did"));
        }
        let meta_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let payload_len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        // Bounded before anything is read for it; the exact length is the protocol's check.
        let max_payload = self.cfg.chunk_len * 4 + 4;
        if meta_len > MAX_META || payload_len > max_payload || !payload_len.is_multiple_of(4) {
            return Err(RingError::invalid(
                left,
                format!(
                    "frame of {meta_len} + {payload_len} bytes (a chunk's is at most \
                     {MAX_META} + {}, in whole f32 values)",
                    self.cfg.chunk_len * 4
                ),
            ));
        }
        meta.resize(meta_len, 0);
        if !link.fill(meta, left, cancelled)? && meta_len > 0 {
            return Err(RingError::link(left, "the link ended inside a frame"));
        }
        let m = pb::AllReduceChunk::decode(&meta[..])
            .map_err(|e| RingError::invalid(left, format!("malformed frame: {e}")))?;
        let sender = m.header.as_ref().map(|h| h.sender_rank);
        if sender != Some(left.rank as u32) {
            return Err(RingError::invalid(
                left,
                format!("a chunk from rank {sender:?}, expected {}", left.rank),
            ));
        }
        Ok((Chunk::from_wire(m, left)?, payload_len / 4))
    }
}

/// Reads `dst.len()` values piece by piece through `scratch`, adding each piece into `dst`.
fn read_add(
    link: &mut LinkReader,
    dst: &mut [f32],
    scratch: &mut [f32],
    left: &PeerId,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Result<(), NotFinite>, RingError> {
    let mut done = 0;
    while done < dst.len() {
        let k = (dst.len() - done).min(scratch.len());
        let piece = &mut scratch[..k];
        if !link.fill(bytemuck::cast_slice_mut(piece), left, cancelled)? {
            return Err(RingError::link(left, "the link ended inside a frame"));
        }
        match add_checked(&mut dst[done..done + k], piece) {
            Ok(()) => {}
            Err(NotFinite::Local(i)) => return Ok(Err(NotFinite::Local(done + i))),
            Err(NotFinite::Received(i)) => return Ok(Err(NotFinite::Received(done + i))),
        }
        done += k;
    }
    Ok(Ok(()))
}

/// Reads `dst.len()` values straight into `dst`, then checks them.
fn read_copy(
    link: &mut LinkReader,
    dst: &mut [f32],
    left: &PeerId,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Result<(), NotFinite>, RingError> {
    if !link.fill(bytemuck::cast_slice_mut(dst), left, cancelled)? && !dst.is_empty() {
        return Err(RingError::link(left, "the link ended inside a frame"));
    }
    if dst.iter().fold(true, |ok, v| ok & v.is_finite()) {
        Ok(Ok(()))
    } else {
        Ok(Err(NotFinite::Received(first_bad(dst))))
    }
}
