//! The sending half of a direct all-reduce: the frames queued for the right-hand neighbour,
//! written without blocking as far as the link takes them (see the parent module).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Range;
use std::time::Duration;

use prost::Message;

use super::{DirectLinks, SendFault};
use crate::ring::allreduce::check_local;
use crate::ring::{Chunk, F32Bytes, RingError};
use crate::transport::Wire;
use crate::transport::tcp::frame;

/// What a queued frame carries after its head.
enum Payload {
    /// These values of the buffer, written straight from it.
    Values(Range<usize>),
    /// Bytes of its own (a corrupted chunk, fault injection only).
    Owned(Vec<u8>),
}

/// One frame waiting to be written, `sent` of its bytes already out.
struct Frame {
    head: Vec<u8>,
    payload: Payload,
    sent: usize,
    /// Its values are this rank's own, not yet checked to be finite (checked just before
    /// the first byte goes out, so the check brings them into cache for the write).
    unchecked: bool,
}

/// The frames for the right-hand neighbour, in order.
pub(super) struct Outgoing {
    queue: VecDeque<Frame>,
    /// Fault injection: rewrites the first chunk queued.
    corrupt: Option<Box<dyn FnOnce(Chunk) -> Chunk + Send>>,
    /// Fault injection: runs once the first frame is written.
    after_first: Option<Box<dyn FnOnce() + Send>>,
}

impl Outgoing {
    pub(super) fn new(fault: Option<SendFault>) -> Self {
        let (corrupt, after_first) = match fault {
            Some(SendFault::Corrupt(f)) => (Some(f), None),
            Some(SendFault::AfterFirst(f)) => (None, Some(f)),
            None => (None, None),
        };
        Self {
            queue: VecDeque::new(),
            corrupt,
            after_first,
        }
    }

    /// Nothing is left to write.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues `head` (its values empty) with the values `range` of `buf` after it;
    /// `unchecked`: values of this rank's own that no sum has checked yet.
    pub(super) fn push(
        &mut self,
        links: &DirectLinks,
        head: Chunk,
        range: Range<usize>,
        buf: &[f32],
        unchecked: bool,
    ) -> Result<(), RingError> {
        let mut bytes = Vec::new();
        let frame = match self.corrupt.take() {
            Some(f) => {
                if unchecked {
                    check_local(&buf[range.clone()], range.start, buf.len())?;
                }
                tracing::warn!("fault injection: sending a corrupted chunk");
                let chunk = f(Chunk {
                    values: F32Bytes::from_f32(&buf[range]),
                    ..head
                });
                let values = chunk.values.bytes().to_vec();
                links.encode_head(&mut bytes, chunk, values.len())?;
                Frame {
                    head: bytes,
                    payload: Payload::Owned(values),
                    sent: 0,
                    unchecked: false,
                }
            }
            None => {
                links.encode_head(&mut bytes, head, range.len() * 4)?;
                Frame {
                    head: bytes,
                    payload: Payload::Values(range),
                    sent: 0,
                    unchecked,
                }
            }
        };
        self.queue.push_back(frame);
        Ok(())
    }

    /// Writes queued frames as far as the link takes them now, without blocking; the bytes
    /// written.
    pub(super) fn write_some(
        &mut self,
        links: &DirectLinks,
        buf: &[f32],
    ) -> Result<usize, RingError> {
        let mut wrote = 0;
        while let Some(frame) = self.queue.front_mut() {
            let payload: &[u8] = match &frame.payload {
                Payload::Values(range) => {
                    let values = &buf[range.clone()];
                    if frame.unchecked {
                        check_local(values, range.start, buf.len())?;
                        frame.unchecked = false;
                    }
                    bytemuck::cast_slice(values)
                }
                Payload::Owned(bytes) => bytes,
            };
            let before = frame.sent;
            frame.sent = links.try_write(&frame.head, payload, frame.sent)?;
            wrote += frame.sent - before;
            if frame.sent < frame.head.len() + payload.len() {
                break;
            }
            self.queue.pop_front();
            if let Some(f) = self.after_first.take() {
                f();
            }
        }
        Ok(wrote)
    }
}

impl DirectLinks {
    /// The frame header and meta of `chunk` (values not included), `payload` bytes to follow.
    fn encode_head(
        &self,
        out: &mut Vec<u8>,
        chunk: Chunk,
        payload: usize,
    ) -> Result<(), RingError> {
        let values = F32Bytes::default();
        let wire = Chunk::to_wire(Chunk { values, ..chunk }, &self.me);
        out.clear();
        out.extend_from_slice(&frame::frame_header(wire.encoded_len(), payload));
        wire.encode(out)
            .map_err(|e| RingError::Input(format!("encoding a ring message: {e}")))
    }

    /// Writes as much of the frame `head` + `payload` from byte `sent` on as the link takes
    /// now, without blocking; the bytes written in all.
    fn try_write(&self, head: &[u8], payload: &[u8], mut sent: usize) -> Result<usize, RingError> {
        use nix::sys::socket::{MsgFlags, sendmsg};
        use std::os::fd::AsRawFd;
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        while sent < head.len() + payload.len() {
            let (h, p) = if sent < head.len() {
                (&head[sent..], payload)
            } else {
                (&head[..0], &payload[sent - head.len()..])
            };
            let iov = [IoSlice::new(h), IoSlice::new(p)];
            match sendmsg::<()>(self.tx.as_raw_fd(), &iov, &[], flags, None) {
                Ok(k) => sent += k,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(self.send_error(e.into())),
            }
        }
        Ok(sent)
    }

    /// A failed write, as the right-hand neighbour's refusal if it sent one (it may arrive
    /// a moment after the write fails), or as a broken link.
    pub(super) fn send_error(&self, e: std::io::Error) -> RingError {
        match self.state.refusal(Duration::from_secs(1)) {
            Some(status) => crate::transport::wire::refused(&self.right, status),
            None => RingError::link(&self.right, format!("send: {e}")),
        }
    }
}
