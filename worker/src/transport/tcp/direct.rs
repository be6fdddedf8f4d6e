//! The dense all-reduce of a TCP ring, run by the ring on its generation's two raw chunk
//! links (blocking sockets): the schedule, frames and checks of [`crate::ring::all_reduce`],
//! without handing every chunk from a link's reader thread to the ring and without chunk
//! buffers in between (docs/allreduce-benchmark.md, "Direct links").
//!
//! The calling thread receives: it reads each frame's head, checks it, and reads the values
//! into place, straight into the buffer in all-gather and through a small scratch buffer that
//! stays in cache in reduce-scatter (read and added piece by piece). A sender thread writes
//! each chunk to the right straight from the buffer. The buffer is cut into one `&mut` slice
//! per chunk, and a chunk's slice travels between the two threads with the work on it
//! (receiver: apply, then hand it to the sender; sender: write it, then hand it back), so
//! both threads work on the one buffer at once without a lock or a copy. Sends block while
//! the receiver keeps reading, so no ring of full links can deadlock: the receiver only waits
//! for a slice the sender has already written out (a chunk's range is received again only
//! after the right-hand neighbour has read it). Until a write would block, the caller writes
//! chunks itself without blocking, and only then starts the sender thread: an all-reduce
//! whose writes all fit the link wakes no other thread of the rank.
//!
//! - [`receive`]: the receiving half (reads, checks, sums).
//! - [`send`]: the sending half (the sender thread, and writes that must not block).

mod receive;
mod send;

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tonic::Status;

use super::frame;
use crate::ring::allreduce::check_local;
use crate::ring::{Chunk, PeerId, RingConfig, RingError, StepTag, segments};
use crate::transport::JobToken;
use crate::transport::server::IncomingLinks;
use receive::Receiver;

/// Fault injection on the first chunk an all-reduce sends (`crate::cluster::faults`).
pub enum SendFault {
    /// Sends the first chunk as the function rewrites it (a hostile or broken peer).
    Corrupt(Box<dyn FnOnce(Chunk) -> Chunk + Send>),
    /// Runs the function once the first chunk is written (it ends the process).
    AfterFirst(Box<dyn FnOnce() + Send>),
}

/// How long a blocked read or wait sleeps before it looks whether the step was cancelled.
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
    /// The link from the left-hand neighbour, once it has arrived, with its read buffer
    /// (which may already hold the start of the next step).
    rx: Mutex<Option<receive::LinkReader>>,
    /// A second handle to that link, to shut it while a read blocks on it.
    rx_handle: Mutex<Option<TcpStream>>,
    /// Where that link arrives (routed by the peer server).
    incoming: Mutex<IncomingLinks>,
    /// The thread that writes to the right during an all-reduce (a pool of one, so a call
    /// does not start a thread).
    sender: rayon::ThreadPool,
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
        let sender = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "funnel-ring-send".into())
            .build()
            .map_err(|e| RingError::Config(format!("no sender thread: {e}")))?;
        Ok(Self {
            me,
            right,
            left,
            tx,
            state,
            rx: Mutex::new(None),
            rx_handle: Mutex::new(None),
            incoming: Mutex::new(incoming),
            sender,
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
        let (n, len) = (cfg.size, buf.len());
        let segs = segments(len, n);
        let own = if n == 1 {
            0..len
        } else {
            segs[cfg.rank].clone()
        };
        check_local(&buf[own.clone()], own.start, len)?;
        if n == 1 {
            return Ok(());
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
        result
    }

    fn run(
        &self,
        cfg: &RingConfig,
        tag: StepTag,
        buf: &mut [f32],
        fault: Option<SendFault>,
        cancelled: &(dyn Fn() -> bool + Sync),
        rx: &mut Option<receive::LinkReader>,
    ) -> Result<(), RingError> {
        // Waits end early once either half has failed or the neighbour refused the link.
        let stop = || cancelled() || self.state.broken.load(Ordering::Acquire);
        let (jobs, to_send) = mpsc::channel::<Job<'_>>();
        let (give_back, back) = mpsc::channel::<(usize, &mut [f32])>();
        let sent = Mutex::new(Ok(()));
        // Which half failed first (its error is the cause; the other's follows from the
        // links shut): 0 none, 1 the sender, 2 the receiver.
        let first = AtomicU8::new(0);
        let fail = |who: u8| {
            let _ = first.compare_exchange(0, who, Ordering::AcqRel, Ordering::Acquire);
            // The other half may be blocked on a link: shutting both wakes it.
            self.shut();
        };
        let received = self.sender.in_place_scope(|scope| {
            // The caller writes chunks itself while the link takes them whole, so an
            // all-reduce whose writes fit the link wakes no thread but its own. The sender
            // thread starts at the first write that would block (then its blocking writes
            // overlap the receiving), or at once to inject a fault.
            let needed = fault.is_some();
            let mut sender = Some(|| {
                scope.spawn(|_| {
                    let result = self.send_jobs(to_send, give_back, fault);
                    if result.is_err() {
                        fail(1);
                    }
                    *lock(&sent) = result;
                })
            });
            let mut start = || {
                if let Some(spawn) = sender.take() {
                    spawn();
                }
            };
            if needed {
                start();
            }
            let received = (|| {
                let mut receiver =
                    Receiver::new(cfg, tag, self, buf, jobs, back, !needed, &mut start);
                // This rank's own segment goes out before anything is awaited from the left.
                receiver.send_own()?;
                if rx.is_none() {
                    *rx = Some(self.take_incoming(cfg, &stop)?);
                }
                match rx.as_mut() {
                    Some(link) => receiver.receive(link, &stop),
                    None => Err(RingError::link(&self.left, "no link")),
                }
            })();
            if received.is_err() {
                fail(2);
            }
            received
        });
        let sent = sent.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(status) = self.state.refusal(Duration::ZERO) {
            return Err(crate::transport::wire::refused(&self.right, status));
        }
        match (received, sent) {
            (Err(_), Err(e)) if first.load(Ordering::Acquire) == 1 => Err(e),
            (Err(RingError::Link { what, .. }), _)
                if what == receive::CANCELLED && !cancelled() =>
            {
                Err(RingError::link(&self.right, "the link broke"))
            }
            (Err(e), _) => Err(e),
            (Ok(()), sent) => sent,
        }
    }

    /// Waits for the link from the left (routed by the peer server), at most the receive
    /// timeout, asking `cancelled` meanwhile.
    fn take_incoming(
        &self,
        cfg: &RingConfig,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<receive::LinkReader, RingError> {
        let incoming = lock(&self.incoming);
        let started = std::time::Instant::now();
        loop {
            match incoming.recv_timeout(CANCEL_POLL.min(cfg.recv_timeout)) {
                Ok(socket) => {
                    let link =
                        |e: std::io::Error| RingError::link(&self.left, format!("link: {e}"));
                    *lock(&self.rx_handle) = Some(socket.try_clone().map_err(link)?);
                    return receive::LinkReader::new(socket, cfg.recv_timeout).map_err(link);
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

/// A chunk for the sender thread: its head (values empty) and the slice of the buffer it
/// carries, `id` its index among the buffer's chunks, `sent` the bytes of its frame the
/// receiver already wrote.
pub(super) struct Job<'a> {
    pub head: Chunk,
    pub id: usize,
    pub values: &'a mut [f32],
    pub sent: usize,
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
