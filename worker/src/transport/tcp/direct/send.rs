//! The sending half of a direct all-reduce: the sender thread, and the caller's writes that
//! must not block (see the parent module for the scheme).

use std::io::{IoSlice, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use prost::Message;

use super::{DirectLinks, Job, SendFault};
use crate::ring::{Chunk, F32Bytes, RingError};
use crate::transport::Wire;
use crate::transport::tcp::frame;

impl DirectLinks {
    /// The sender thread: writes each job's frame (what the receiver has not written of it),
    /// then hands its slice back.
    pub(super) fn send_jobs<'a>(
        &self,
        jobs: mpsc::Receiver<Job<'a>>,
        give_back: mpsc::Sender<(usize, &'a mut [f32])>,
        mut fault: Option<SendFault>,
    ) -> Result<(), RingError> {
        let mut head = Vec::new();
        for job in jobs {
            let written = match fault.take() {
                Some(SendFault::Corrupt(f)) => {
                    tracing::warn!("fault injection: sending a corrupted chunk");
                    let chunk = f(Chunk {
                        values: F32Bytes::from_f32(job.values),
                        ..job.head
                    });
                    let values = chunk.values.clone();
                    self.encode_head(&mut head, chunk, values.bytes().len())?;
                    write_frame(&self.tx, &head, values.bytes(), 0)
                }
                other => {
                    let bytes: &[u8] = bytemuck::cast_slice(job.values);
                    self.encode_head(&mut head, job.head, bytes.len())?;
                    let written = write_frame(&self.tx, &head, bytes, job.sent);
                    if let (Ok(()), Some(SendFault::AfterFirst(f))) = (&written, other) {
                        f();
                    }
                    written
                }
            };
            if let Err(e) = written {
                return Err(self.send_error(e));
            }
            // The receiver may be done with this chunk for good: nothing waits for it then.
            let _ = give_back.send((job.id, job.values));
        }
        Ok(())
    }

    /// The frame header and meta of `chunk` (values not included), `payload` bytes to follow.
    pub(super) fn encode_head(
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
    pub(super) fn try_write(
        &self,
        head: &[u8],
        payload: &[u8],
        mut sent: usize,
    ) -> Result<usize, RingError> {
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

/// Writes `head` and `payload` as one frame from byte `sent` on, in as few system calls as
/// the kernel allows.
fn write_frame(
    mut tx: &TcpStream,
    head: &[u8],
    payload: &[u8],
    mut sent: usize,
) -> std::io::Result<()> {
    let total = head.len() + payload.len();
    while sent < total {
        let wrote = if sent < head.len() {
            tx.write_vectored(&[IoSlice::new(&head[sent..]), IoSlice::new(payload)])
        } else {
            tx.write(&payload[sent - head.len()..])
        };
        match wrote {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(k) => sent += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
