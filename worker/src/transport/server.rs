//! The `Peer` gRPC service: a rank's server, where its left-hand neighbour streams chunks and
//! sparse blocks.
//!
//! Routing: the ring opens one generation at a time ([`PeerNode::open`]); a stream whose first
//! message belongs to another generation, or comes from a rank other than the left-hand
//! neighbour, is refused with FAILED_PRECONDITION before anything reaches the ring. Accepted
//! messages are decoded and handed over a bounded channel (so a fast sender is slowed by HTTP/2
//! flow control, not by memory) to the [`GrpcReceiver`] the ring reads; the ring validates them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use funnel_proto::v1 as pb;
use pb::peer_server::{Peer, PeerServer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::JobToken;
use super::{MAX_MESSAGE_BYTES, Wire};
use crate::ring::{Chunk, PeerId, RingError, RingRecv, SparseBlock};
use funnel_proto::tls::Security;

/// Messages waiting for the ring, of one kind, for the current generation.
pub(super) struct Slot<M> {
    generation: u64,
    left: Option<PeerId>,
    tx: Option<mpsc::Sender<Result<M, RingError>>>,
    /// Where a raw link of this kind goes once routed (chunk links: the ring reads them
    /// itself, `super::tcp::direct`).
    links: Option<std::sync::mpsc::Sender<std::net::TcpStream>>,
}

impl<M> Default for Slot<M> {
    fn default() -> Self {
        Self {
            generation: 0,
            left: None,
            tx: None,
            links: None,
        }
    }
}

/// The raw chunk links routed to this rank's current generation (one, from the left-hand
/// neighbour), as the ring takes them.
pub type IncomingLinks = std::sync::mpsc::Receiver<std::net::TcpStream>;

#[derive(Default)]
pub(super) struct Inbox {
    pub(super) chunks: Slot<Chunk>,
    pub(super) sparse: Slot<SparseBlock>,
}

pub(super) type Shared = Arc<Mutex<Inbox>>;

/// Bumped whenever the node opens a generation, so a stream that arrived first can wait for it.
pub(super) type Opened = Arc<tokio::sync::watch::Sender<u64>>;

/// How long a stream of a generation this rank has not opened yet waits for it: the ranks of a
/// new ring learn of it at nearly the same moment, but a neighbour may connect first.
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The ring's state a donor published for joiners of one generation.
type Published = Arc<tokio::sync::watch::Sender<Option<(u64, bytes::Bytes)>>>;

/// How long a joiner's `FetchState` waits for the donor to publish (the donor does so when
/// it enters the generation, after its in-flight step is interrupted).
const STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Logging of refused peer streams, process-wide.
static REFUSED_STREAMS: std::sync::LazyLock<
    std::sync::Mutex<funnel_common::telemetry::rate_limit::RateLimit>,
> = std::sync::LazyLock::new(|| {
    std::sync::Mutex::new(funnel_common::telemetry::rate_limit::RateLimit::new(
        std::time::Duration::from_secs(5),
    ))
});

/// Bytes per `StateChunk`.
const STATE_CHUNK: usize = 4 << 20;

/// A rank's running `Peer` server. Dropping it stops the server.
pub struct PeerNode {
    addr: SocketAddr,
    inbox: Shared,
    opened: Opened,
    state: Published,
    /// Keeps `grpc.health.v1` answering SERVING while the node lives.
    _health: funnel_proto::ops::Health,
    _stop: oneshot::Sender<()>,
}

impl PeerNode {
    /// Starts the server on `bind` (e.g. `127.0.0.1:0` for an ephemeral port); every call must
    /// carry the job token, over TLS when `security` has it.
    pub async fn start(bind: SocketAddr, security: &Security) -> std::io::Result<Self> {
        let token = &security.token;
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &security.tls {
            let config = tls.server().map_err(std::io::Error::other)?;
            builder = builder
                .tls_config(config)
                .map_err(|e| std::io::Error::other(format!("TLS: {e}")))?;
        }
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let inbox = Shared::default();
        let opened: Opened = Arc::new(tokio::sync::watch::channel(0).0);
        let state: Published = Arc::new(tokio::sync::watch::channel(None).0);
        let service = PeerServer::new(PeerService {
            inbox: inbox.clone(),
            opened: opened.clone(),
            state: state.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let service = tonic_interceptor(service, token);
        let (health, health_service) = funnel_proto::ops::health(&["funnel.v1.Peer"]).await;
        let reflection = tonic::service::interceptor::InterceptedService::new(
            funnel_proto::ops::reflection().map_err(std::io::Error::other)?,
            token.checker("grpc.reflection.v1.ServerReflection"),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        // One port for both transports: each accepted connection is told apart by its first
        // byte (`super::tcp::accept`); gRPC's go on to tonic through this channel.
        let (grpc_tx, grpc_rx) = mpsc::channel(16);
        tokio::spawn(super::tcp::accept(
            listener,
            grpc_tx,
            super::tcp::LinkContext {
                inbox: inbox.clone(),
                opened: opened.clone(),
                token: token.clone(),
                tls: security.tls.is_some(),
            },
        ));
        let incoming = ReceiverStream::new(grpc_rx);
        tokio::spawn(async move {
            let served = builder
                .add_service(service)
                .add_service(health_service)
                .add_service(reflection)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(%addr, error = %e, "peer server stopped");
            }
        });
        Ok(Self {
            addr,
            inbox,
            opened,
            state,
            _health: health,
            _stop: stop,
        })
    }

    /// Serves `snapshot` to workers that joined in `generation` (replacing any earlier one).
    pub fn publish_state(&self, generation: u64, snapshot: bytes::Bytes) {
        self.state.send_replace(Some((generation, snapshot)));
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts streams of `generation` from `left` only, from now on, and returns the receivers
    /// the ring reads. Streams of the previous generation lose their route and end.
    pub fn open(
        &self,
        generation: u64,
        left: PeerId,
        capacity: usize,
    ) -> (
        GrpcReceiver<Chunk>,
        GrpcReceiver<SparseBlock>,
        IncomingLinks,
    ) {
        let receivers = {
            let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
            let (chunks, links) = open_slot(&mut inbox.chunks, generation, &left, capacity);
            let (sparse, _) = open_slot(&mut inbox.sparse, generation, &left, capacity);
            (chunks, sparse, links)
        };
        self.opened.send_modify(|v| *v += 1);
        receivers
    }
}

fn open_slot<M>(
    slot: &mut Slot<M>,
    generation: u64,
    left: &PeerId,
    cap: usize,
) -> (GrpcReceiver<M>, IncomingLinks) {
    let (tx, rx) = mpsc::channel(cap.max(1));
    let (links, incoming) = std::sync::mpsc::channel();
    *slot = Slot {
        generation,
        left: Some(left.clone()),
        tx: Some(tx),
        links: Some(links),
    };
    let receiver = GrpcReceiver {
        rx,
        peer: left.clone(),
    };
    (receiver, incoming)
}

fn tonic_interceptor(
    service: PeerServer<PeerService>,
    token: &JobToken,
) -> tonic::service::interceptor::InterceptedService<PeerServer<PeerService>, super::auth::CheckToken>
{
    tonic::service::interceptor::InterceptedService::new(service, token.checker("funnel.v1.Peer"))
}

/// Receives, for the ring, what the left-hand neighbour streamed to this rank's server.
pub struct GrpcReceiver<M> {
    rx: mpsc::Receiver<Result<M, RingError>>,
    peer: PeerId,
}

impl<M: Send> RingRecv<M> for GrpcReceiver<M> {
    async fn recv(&mut self) -> Result<M, RingError> {
        match self.rx.recv().await {
            Some(item) => item,
            None => Err(RingError::link(
                &self.peer,
                "generation closed on this rank",
            )),
        }
    }

    fn peer(&self) -> &PeerId {
        &self.peer
    }
}

struct PeerService {
    inbox: Shared,
    opened: Opened,
    state: Published,
}

#[tonic::async_trait]
impl Peer for PeerService {
    type AllReduceStream = ReceiverStream<Result<pb::AllReduceAck, Status>>;
    type SparseExchangeStream = ReceiverStream<Result<pb::SparseAck, Status>>;
    type FetchStateStream = ReceiverStream<Result<pb::StateChunk, Status>>;

    async fn fetch_state(
        &self,
        request: Request<pb::FetchStateRequest>,
    ) -> Result<Response<Self::FetchStateStream>, Status> {
        let generation = request.into_inner().generation;
        let mut rx = self.state.subscribe();
        let waited = tokio::time::timeout(
            STATE_WAIT,
            rx.wait_for(|s| s.as_ref().is_some_and(|(g, _)| *g >= generation)),
        )
        .await;
        let snapshot = match waited {
            Ok(Ok(s)) => match s.as_ref() {
                Some((g, b)) if *g == generation => b.clone(),
                Some((g, _)) => {
                    return Err(Status::failed_precondition(format!(
                        "the ring is in generation {g} now, not {generation}: join again"
                    )));
                }
                None => return Err(Status::internal("no state")),
            },
            Ok(Err(_)) => return Err(Status::unavailable("peer shutting down")),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no state published for generation {generation} in {STATE_WAIT:?}"
                )));
            }
        };
        let (tx, out) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut at = 0;
            while at < snapshot.len() {
                let end = (at + STATE_CHUNK).min(snapshot.len());
                let chunk = pb::StateChunk {
                    data: snapshot.slice(at..end),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                at = end;
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    async fn all_reduce(
        &self,
        request: Request<Streaming<pb::AllReduceChunk>>,
    ) -> Result<Response<Self::AllReduceStream>, Status> {
        let (resp, out) = mpsc::channel(2);
        let (inbox, opened) = (self.inbox.clone(), self.opened.subscribe());
        tokio::spawn(async move {
            let verdict = forward(request.into_inner(), inbox, opened, |i| &i.chunks).await;
            if let Some(v) = verdict {
                let _ = resp
                    .send(v.map(|n| pb::AllReduceAck { chunks_received: n }))
                    .await;
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    async fn sparse_exchange(
        &self,
        request: Request<Streaming<pb::SparseBlock>>,
    ) -> Result<Response<Self::SparseExchangeStream>, Status> {
        let (resp, out) = mpsc::channel(2);
        let (inbox, opened) = (self.inbox.clone(), self.opened.subscribe());
        tokio::spawn(async move {
            let verdict = forward(request.into_inner(), inbox, opened, |i| &i.sparse).await;
            if let Some(v) = verdict {
                let _ = resp
                    .send(v.map(|n| pb::SparseAck { blocks_received: n }))
                    .await;
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }
}

/// The messages of one incoming stream, whatever carries them (a gRPC request stream, a raw
/// TCP link).
pub(super) trait Incoming<P>: Send {
    /// The next message; `Ok(None)` at a clean end, `Err` when the stream broke.
    fn next(&mut self) -> impl std::future::Future<Output = Result<Option<P>, String>> + Send;
}

impl<P: prost::Message + Default + Send + 'static> Incoming<P> for Streaming<P> {
    async fn next(&mut self) -> Result<Option<P>, String> {
        self.message().await.map_err(|s| s.message().to_string())
    }
}

/// Routes one incoming stream to the ring, or refuses it (stale generation, wrong sender).
/// Returns the verdict for the sender: the message count after a clean end, or the refusal;
/// `None` when there is nobody to tell (the stream broke, or this rank closed the generation).
pub(super) async fn forward<M: Wire, S: Incoming<M::Pb>>(
    mut stream: S,
    inbox: Shared,
    mut opened: tokio::sync::watch::Receiver<u64>,
    slot: fn(&Inbox) -> &Slot<M>,
) -> Option<Result<u64, Status>> {
    let mut msg = match stream.next().await {
        Ok(Some(msg)) => msg,
        // A stream that carried nothing (a generation without a sparse step) ends cleanly.
        Ok(None) => return Some(Ok(0)),
        Err(_) => return None,
    };
    let route = wait_route(&inbox, &mut opened, |inbox| {
        check_route::<M>(slot(inbox), &msg)
    })
    .await;
    let (tx, left) = match route {
        Ok(route) => route,
        Err(status) => {
            log_refusal(status.message());
            return Some(Err(status));
        }
    };
    let mut count = 0;
    loop {
        let item = M::from_wire(msg, &left);
        let refusal = item.as_ref().err().map(Status::from);
        if tx.send(item).await.is_err() {
            return None;
        }
        if refusal.is_some() {
            return refusal.map(Err);
        }
        count += 1;
        msg = match stream.next().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                // The sender is done with this generation: anything the ring still waits for
                // will not come, so say so now rather than after the receive timeout.
                let _ = tx.send(Err(RingError::link(&left, "stream ended"))).await;
                return Some(Ok(count));
            }
            Err(s) => {
                let what = format!("stream broke: {s}");
                let _ = tx.send(Err(RingError::link(&left, what))).await;
                return None;
            }
        };
    }
}

/// Waits until `check` finds a route in the inbox: at once, or once this rank opens the
/// generation a stream is ahead by (at most [`OPEN_WAIT`]); the refusal otherwise.
async fn wait_route<R>(
    inbox: &Shared,
    opened: &mut tokio::sync::watch::Receiver<u64>,
    check: impl Fn(&Inbox) -> Result<R, Wait>,
) -> Result<R, Status> {
    let deadline = tokio::time::Instant::now() + OPEN_WAIT;
    loop {
        let route = check(&inbox.lock().unwrap_or_else(|p| p.into_inner()));
        match route {
            Err(Wait::NotYetOpen(status)) => {
                // A generation ahead of this rank's: wait for the node to open it.
                match tokio::time::timeout_at(deadline, opened.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return Err(status),
                }
            }
            Err(Wait::Refused(status)) => return Err(status),
            Ok(route) => return Ok(route),
        }
    }
}

/// Routes a raw chunk link whose hello names `generation` and `rank`: to the ring of this
/// rank's current generation if `rank` is its left-hand neighbour there (waiting for the
/// generation to open if it is ahead), or the refusal (logged).
pub(super) async fn route_chunk_link(
    inbox: &Shared,
    mut opened: tokio::sync::watch::Receiver<u64>,
    generation: u64,
    rank: u32,
) -> Result<(std::sync::mpsc::Sender<std::net::TcpStream>, PeerId), Status> {
    let route = wait_route(inbox, &mut opened, |inbox| {
        let left = check_origin(&inbox.chunks, generation, rank)?;
        match &inbox.chunks.links {
            Some(links) => Ok((links.clone(), left)),
            None => Err(Wait::NotYetOpen(Status::failed_precondition(
                "this rank has no open generation",
            ))),
        }
    })
    .await;
    if let Err(status) = &route {
        log_refusal(status.message());
    }
    route
}

/// Logs a refused peer stream or link: a misbehaving peer may retry without end, so one line
/// per 5 s, with the count of those suppressed.
pub(super) fn log_refusal(reason: &str) {
    let log = REFUSED_STREAMS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .check(std::time::Instant::now());
    if let Some(suppressed) = log {
        tracing::warn!(reason, suppressed, "refused a peer stream");
    }
}

type Route<M> = (mpsc::Sender<Result<M, RingError>>, PeerId);

/// Why a stream has no route yet.
enum Wait {
    /// Its generation is ahead of this rank's: it may open shortly.
    NotYetOpen(Status),
    /// It cannot be routed (stale generation, wrong sender, no header).
    Refused(Status),
}

/// Whether the stream that starts with `first` belongs to this rank's current generation and
/// comes from its left-hand neighbour.
fn check_route<M: Wire>(slot: &Slot<M>, first: &M::Pb) -> Result<Route<M>, Wait> {
    let Some((generation, rank)) = M::origin(first) else {
        return Err(Wait::Refused(Status::invalid_argument(
            "first message without a header",
        )));
    };
    let left = check_origin(slot, generation, rank)?;
    match &slot.tx {
        Some(tx) => Ok((tx.clone(), left)),
        None => Err(Wait::NotYetOpen(Status::failed_precondition(
            "this rank has no open generation",
        ))),
    }
}

/// Whether a stream from `rank` in `generation` belongs to this rank's current generation
/// and comes from its left-hand neighbour; that neighbour if so.
fn check_origin<M>(slot: &Slot<M>, generation: u64, rank: u32) -> Result<PeerId, Wait> {
    let Some(left) = &slot.left else {
        return Err(Wait::NotYetOpen(Status::failed_precondition(format!(
            "generation {generation}: this rank has no open generation"
        ))));
    };
    if generation != slot.generation {
        let status = |age: &str| {
            Status::failed_precondition(format!(
                "{age} generation {generation}; this rank is in generation {}",
                slot.generation
            ))
        };
        return Err(if generation < slot.generation {
            Wait::Refused(status("stale"))
        } else {
            Wait::NotYetOpen(status("future"))
        });
    }
    if rank as usize != left.rank {
        return Err(Wait::Refused(Status::failed_precondition(format!(
            "rank {rank} is not this rank's left neighbour ({left}) in generation {generation}"
        ))));
    }
    Ok(left.clone())
}
