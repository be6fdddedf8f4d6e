//! The dense all-reduce of a TCP ring, run by the ring on its generation's two raw chunk
//! links: the schedule, frames and checks of [`crate::ring::all_reduce`], without a reader
//! thread per link, without chunk buffers in between, and without a second thread per rank
//! (docs/allreduce-benchmark.md, "Direct links").
//!
//! The calling thread does all of it, never blocking on one link while the other could move:
//! it reads what has arrived from the left (frame heads checked; values read straight into
//! the buffer in all-gather and checked while still in cache, or through a 64 KiB scratch
//! piece and added in reduce-scatter), queues each applied chunk's forward, writes the queue
//! to the right as far as the link takes it, and only when neither link moved sleeps in
//! `poll` on both (at most [`CANCEL_POLL`], then it looks whether the step was cancelled).
//! Every system call is non-blocking, so no ring of full links can deadlock: each rank keeps
//! reading while its writes wait. A chunk's range is written out before its next values can
//! arrive (the left neighbour sends them only after the right one has read it), so reads and
//! writes never touch the same values at once.
//!
//! - [`receive`]: the frames expected from the left (the step's schedule), read and applied.
//! - [`send`]: the frames queued for the right, written without blocking.

mod receive;
mod send;

use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use tonic::Status;

use super::frame;
use crate::ring::allreduce::check_local;
use crate::ring::{Chunk, F32Bytes, PeerId, RingConfig, RingError, StepTag};
use crate::transport::JobToken;
use crate::transport::server::IncomingLinks;
use receive::{Incoming, Schedule};
use send::Outgoing;

/// Fault injection on the first chunk an all-reduce sends (`crate::cluster::faults`).
pub enum SendFault {
    /// Sends the first chunk as the function rewrites it (a hostile or broken peer).
    Corrupt(Box<dyn FnOnce(Chunk) -> Chunk + Send>),
    /// Runs the function once the first chunk is written (it ends the process).
    AfterFirst(Box<dyn FnOnce() + Send>),
}

/// How long a wait on the links sleeps before it looks whether the step was cancelled.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// One rank's dense links for one generation over raw TCP.
pub struct DirectLinks {
    me: PeerId,
    right: PeerId,
    left: PeerId,
    /// To the right-hand neighbour, blocking.
    tx: TcpStream,
    /// The links' state shared with the thread that reads the right-hand neighbour's
    /// refusal, if it sends one (a stale generation, a rank that is not its left-hand
    /// neighbour).
    state: Arc<LinkState>,
    /// The link from the left-hand neighbour, once it has arrived.
    rx: Mutex<Option<TcpStream>>,
    /// A second handle to that link, to shut it while a read blocks on it.
    rx_handle: Mutex<Option<TcpStream>>,
    /// Where that link arrives (routed by the peer server).
    incoming: Mutex<IncomingLinks>,
}

impl DirectLinks {
    /// Opens the chunk link to `right` as `me` in `generation`; the one from `left` arrives
    /// through `incoming` (taken at the first all-reduce).
    pub async fn open(
        me: PeerId,
        left: PeerId,
        right: PeerId,
        token: &JobToken,
        generation: u64,
        incoming: IncomingLinks,
    ) -> Result<Self, RingError> {
        let (read, write) =
            super::handshake(frame::Kind::Chunks, &me, &right, token, generation).await?;
        let (tx, watch) =
            super::blocking(read, write).map_err(|e| RingError::link(&right, e.to_string()))?;
        let state = Arc::new(LinkState::default());
        let watched = state.clone();
        std::thread::Builder::new()
            .name("funnel-link-verdict".into())
            .spawn(move || watch_refusal(watch, &watched))
            .map_err(|e| RingError::Config(format!("no link thread: {e}")))?;
        Ok(Self {
            me,
            right,
            left,
            tx,
            state,
            rx: Mutex::new(None),
            rx_handle: Mutex::new(None),
            incoming: Mutex::new(incoming),
        })
    }

    /// Ends the outgoing link (the neighbour reads to its end). No verdict follows: the
    /// receiving ring checks every frame itself.
    pub fn finish(&self) {
        let _ = self.tx.shutdown(Shutdown::Write);
    }

    /// Sums `buf` element-wise across the ring, in place; bit for bit what
    /// [`crate::ring::all_reduce`] computes. Blocks the calling thread; `cancelled` is asked
    /// every [`CANCEL_POLL`] while it waits, and `true` ends the call with an error. An error
    /// shuts both links (the neighbours' steps fail too): the streams are no longer at the
    /// start of a known step.
    pub fn all_reduce(
        &self,
        cfg: &RingConfig,
        tag: StepTag,
        buf: &mut [f32],
        fault: Option<SendFault>,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), RingError> {
        cfg.check()?;
        if cfg.size == 1 {
            return check_local(buf, 0, buf.len());
        }
        if cfg!(target_endian = "big") {
            return Err(RingError::Config(
                "raw TCP ring links need a little-endian target (use ring_transport = \"grpc\")"
                    .into(),
            ));
        }
        let mut rx = lock(&self.rx);
        let result = self.run(cfg, tag, buf, fault, cancelled, &mut rx);
        if result.is_err() {
            self.shut();
        }
        if let Some(status) = self.state.refusal(Duration::ZERO) {
            return Err(crate::transport::wire::refused(&self.right, status));
        }
        match result {
            Err(RingError::Link { what, .. }) if what == receive::CANCELLED && !cancelled() => {
                Err(RingError::link(&self.right, "the link broke"))
            }
            other => other,
        }
    }

    fn run(
        &self,
        cfg: &RingConfig,
        tag: StepTag,
        buf: &mut [f32],
        fault: Option<SendFault>,
        cancelled: &(dyn Fn() -> bool + Sync),
        rx: &mut Option<TcpStream>,
    ) -> Result<(), RingError> {
        // Waits end early once the links were shut or the neighbour refused the link.
        let stop = || cancelled() || self.state.broken.load(Ordering::Acquire);
        let schedule = Schedule::new(cfg, buf.len());
        let mut outgoing = Outgoing::new(fault);
        let head = |slot: &receive::Slot| Chunk {
            tag,
            phase: slot.phase,
            round: slot.round as u32,
            segment: slot.segment as u32,
            chunk: slot.chunk as u32,
            offset: slot.range.start as u64,
            values: F32Bytes::default(),
        };
        // This rank's own segment goes out before anything is awaited from the left.
        // Its values are checked to be finite as each chunk starts to go out, so a chunk
        // that fails never goes out and the check brings the chunk into cache for its write
        // (rather than one more pass over the segment from memory first); every other value
        // is checked as it is added or received.
        for slot in &schedule.own {
            outgoing.push(self, head(slot), slot.range.clone(), buf, true)?;
        }
        outgoing.write_some(self, buf)?;
        if rx.is_none() {
            *rx = Some(self.take_incoming(cfg, &stop)?);
        }
        let Some(link) = rx.as_ref() else {
            return Err(RingError::link(&self.left, "no link"));
        };
        let mut incoming = Incoming::new(cfg, tag, &self.left, buf.len(), schedule.received.len());
        let mut last = Instant::now();
        loop {
            let read = incoming.read_some(link, &schedule, buf)?;
            if let Some(slot) = read.completed.and_then(|i| schedule.forward(cfg, i)) {
                outgoing.push(self, head(&slot), slot.range, buf, false)?;
            }
            let wrote = outgoing.write_some(self, buf)?;
            let (receiving, sending) = (!incoming.is_done(), !outgoing.is_empty());
            if !receiving && !sending {
                return Ok(());
            }
            if read.bytes + wrote > 0 || read.completed.is_some() {
                last = Instant::now();
                continue;
            }
            // Nothing moved: sleep until either link can, at most CANCEL_POLL.
            let mut fds = Vec::with_capacity(2);
            if receiving {
                fds.push(PollFd::new(link.as_fd(), PollFlags::POLLIN));
            }
            if sending {
                fds.push(PollFd::new(self.tx.as_fd(), PollFlags::POLLOUT));
            }
            let wait = CANCEL_POLL.min(cfg.recv_timeout).as_millis().max(1) as u16;
            let ready = match poll(&mut fds, PollTimeout::from(wait)) {
                Ok(k) => k,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(RingError::link(&self.left, format!("poll: {e}"))),
            };
            if ready > 0 {
                continue;
            }
            if stop() {
                return Err(RingError::link(&self.left, receive::CANCELLED));
            }
            if last.elapsed() >= cfg.recv_timeout {
                return Err(if receiving {
                    RingError::link(
                        &self.left,
                        format!("nothing received for {:?}", cfg.recv_timeout),
                    )
                } else {
                    RingError::link(
                        &self.right,
                        format!("it took nothing for {:?}", cfg.recv_timeout),
                    )
                });
            }
        }
    }

    /// Waits for the link from the left (routed by the peer server), at most the receive
    /// timeout, asking `cancelled` meanwhile.
    fn take_incoming(
        &self,
        cfg: &RingConfig,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<TcpStream, RingError> {
        let incoming = lock(&self.incoming);
        let started = std::time::Instant::now();
        loop {
            match incoming.recv_timeout(CANCEL_POLL.min(cfg.recv_timeout)) {
                Ok(socket) => {
                    let link =
                        |e: std::io::Error| RingError::link(&self.left, format!("link: {e}"));
                    *lock(&self.rx_handle) = Some(socket.try_clone().map_err(link)?);
                    return Ok(socket);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(RingError::link(&self.left, "the peer server stopped"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if cancelled() {
                return Err(RingError::link(&self.left, receive::CANCELLED));
            }
            if started.elapsed() >= cfg.recv_timeout {
                return Err(RingError::link(
                    &self.left,
                    format!("no chunk link from it for {:?}", cfg.recv_timeout),
                ));
            }
        }
    }

    /// Shuts both links, so that a thread blocked on either returns.
    fn shut(&self) {
        self.state.broken.store(true, Ordering::Release);
        let _ = self.tx.shutdown(Shutdown::Both);
        if let Some(rx) = lock(&self.rx_handle).as_ref() {
            let _ = rx.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for DirectLinks {
    /// Shuts the outgoing link, which also ends the thread watching it for a refusal.
    fn drop(&mut self) {
        let _ = self.tx.shutdown(Shutdown::Both);
    }
}

/// What the links' threads share.
#[derive(Default)]
struct LinkState {
    /// What the watch on the outgoing link has read.
    watch: Mutex<Watch>,
    watched: Condvar,
    /// The links are shut (a failed step, or a refusal): waits end.
    broken: AtomicBool,
}

/// What the watch on the outgoing link has read so far.
#[derive(Default)]
struct Watch {
    /// The right-hand neighbour's refusal.
    refusal: Option<Status>,
    /// The watch is over: the link ended (with or without a refusal).
    ended: bool,
}

impl LinkState {
    /// The neighbour's refusal, if it sent one. A write can fail a moment before the refusal
    /// that caused it is read, so this waits up to `wait` for the watch to end; a link that
    /// simply closed ends it at once.
    fn refusal(&self, wait: Duration) -> Option<Status> {
        let guard = lock(&self.watch);
        let (guard, _) = self
            .watched
            .wait_timeout_while(guard, wait, |w| !w.ended)
            .unwrap_or_else(|p| p.into_inner());
        guard.refusal.clone()
    }
}

/// Reads the verdict a chunk link's receiver sends only to refuse it; on a refusal, passes it
/// on and shuts the link so the sender's blocked write returns. Ends when the link does.
fn watch_refusal(socket: TcpStream, state: &LinkState) {
    let mut read = frame::BlockingRead(socket);
    let verdict = futures::executor::block_on(frame::read_verdict(&mut read));
    let refusal = match verdict {
        Ok((code, text)) if code != tonic::Code::Ok => Some(Status::new(code, text)),
        _ => None,
    };
    if refusal.is_some() {
        state.broken.store(true, Ordering::Release);
        let _ = read.0.shutdown(Shutdown::Both);
    }
    let mut watch = lock(&state.watch);
    watch.refusal = refusal;
    watch.ended = true;
    state.watched.notify_all();
}

/// Locks `m`; a poisoned lock (a panic elsewhere) still gives its data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
