//! The ring over raw TCP (`cluster.ring_transport = "tcp"`, the default on plaintext jobs):
//! one connection per generation and message kind to the right-hand neighbour's peer port,
//! carrying [`frame`]s, so that a chunk's values go from the sender's buffer to the socket and
//! from the receiver's read buffer to the sum without protobuf or HTTP/2 in between (issue 4
//! point 7: gRPC's per-byte cost capped the ring at a third of what loopback TCP moves).
//!
//! It shares everything but the bytes on the wire with the gRPC transport: the same port (a
//! connection's first byte says which it is, [`accept`]), the job token (checked at the
//! handshake, in constant time), the same routing by generation and left neighbour and the
//! same decoding (`super::server`, `super::wire`), so the ring sees identical messages and
//! errors from either. TLS jobs use gRPC: this link has no encryption.
//!
//! Chunk links are routed by their handshake and handed to the ring, which reads and writes
//! them itself ([`direct`]). Sparse links are read on a thread of their own with blocking
//! reads ([`read_frames`]) and routed message by message (`forward`), as gRPC streams are.
//!
//! - [`direct`]: the dense all-reduce on a generation's two chunk links.
//! - [`frame`]: the byte layout (handshake, verdicts, frames) and the frame reader.

pub mod direct;
pub mod frame;

use std::marker::PhantomData;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::server::{
    Inbox, Incoming, Opened, Shared, Slot, forward, log_refusal, route_chunk_link,
};
use super::verdict::Verdict;
use super::{JobToken, MAX_MESSAGE_BYTES, Wire};
use crate::ring::{PeerId, RingError, RingSend, SparseBlock};
use frame::{FrameReader, Kind};

/// How long an accepted connection may stay silent before its first byte (which says what it
/// is) or before finishing its handshake.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(10);

/// What the accept loop hands raw links: the node's routing state and the job's secrets.
pub(super) struct LinkContext {
    pub inbox: Shared,
    pub opened: Opened,
    pub token: JobToken,
    /// The job uses TLS: raw links are refused (they would carry gradients in the clear).
    pub tls: bool,
}

/// Accepts connections on the peer port until tonic stops taking them: raw ring links
/// (first byte `F`) are served here, everything else (HTTP/2, TLS) goes to tonic.
pub(super) async fn accept(
    listener: TcpListener,
    grpc: mpsc::Sender<std::io::Result<TcpStream>>,
    ctx: LinkContext,
) {
    let ctx = std::sync::Arc::new(ctx);
    loop {
        let stream = tokio::select! {
            _ = grpc.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "peer server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Nagle off: with it on, HTTP/2's small WINDOW_UPDATE frames (and this link's
        // verdicts) waited for the peer's delayed ACK, ~40 ms stalls.
        let _ = stream.set_nodelay(true);
        let (grpc, ctx) = (grpc.clone(), ctx.clone());
        tokio::spawn(async move {
            let mut first = [0u8; 1];
            match tokio::time::timeout(FIRST_BYTES_WAIT, stream.peek(&mut first)).await {
                Ok(Ok(1)) if first[0] == frame::MAGIC[0] => serve_link(stream, ctx).await,
                Ok(Ok(1)) => {
                    let _ = grpc.send(Ok(stream)).await;
                }
                // Closed, failed or silent before saying anything: nothing to serve.
                _ => {}
            }
        });
    }
}

/// Serves one raw link: handshake; then a chunk link goes to the ring ([`direct`]), a sparse
/// link's frames into the ring through `forward`, read on a thread of its own
/// ([`read_frames`]).
async fn serve_link(stream: TcpStream, ctx: std::sync::Arc<LinkContext>) {
    let (mut read, mut write) = stream.into_split();
    let hello = tokio::time::timeout(FIRST_BYTES_WAIT, frame::read_hello(&mut read)).await;
    let accepted = match hello {
        Err(_) => Err(Status::deadline_exceeded("handshake: too slow")),
        Ok(Err(e)) => Err(Status::invalid_argument(e)),
        Ok(Ok(h)) if !ctx.token.matches(&h.token) => Err(Status::unauthenticated(
            "funnel.v1.Peer (tcp link): wrong job token",
        )),
        Ok(Ok(_)) if ctx.tls => Err(Status::failed_precondition(
            "this job uses TLS: raw TCP ring links are refused (ring_transport must be grpc)",
        )),
        Ok(Ok(h)) => Ok(h),
    };
    let hello = match accepted {
        Ok(hello) => hello,
        Err(status) => {
            // The presented token is never logged.
            log_refusal(status.message());
            refuse(write, status).await;
            return;
        }
    };
    if write
        .write_all(&frame::verdict(Code::Ok, "accepted"))
        .await
        .is_err()
    {
        return;
    }
    if hello.kind == Kind::Chunks {
        // Routed now, then read by the ring itself (`direct`); the sender does not wait for
        // the routing (this rank may open the generation a moment after its neighbour).
        match route_chunk_link(
            &ctx.inbox,
            ctx.opened.subscribe(),
            hello.generation,
            hello.rank,
        )
        .await
        {
            Ok((links, left)) => match blocking(read, write) {
                Ok((socket, _)) => {
                    if links.send(socket).is_err() {
                        tracing::debug!(%left, "raw ring link: its generation has closed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "raw ring link: cannot take its socket"),
            },
            Err(status) => refuse(write, status).await,
        }
        return;
    }
    let (socket, writer) = match blocking(read, write) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "raw ring link: cannot take its socket");
            return;
        }
    };
    let runtime = tokio::runtime::Handle::current();
    let reader = std::thread::Builder::new()
        .name("funnel-link".into())
        .spawn(move || read_frames(socket, writer, &ctx, &runtime));
    if let Err(e) = reader {
        // The socket went with the closure: the link closes and the sender sees it broken.
        tracing::warn!(error = %e, "raw ring link: no reader thread");
    }
}

/// Writes `status` as the link's verdict and closes it.
async fn refuse(mut write: OwnedWriteHalf, status: Status) {
    let _ = write
        .write_all(&frame::verdict(status.code(), status.message()))
        .await;
    let _ = write.shutdown().await;
}

/// The link as a blocking `std` socket, and a second handle to it for writing.
fn blocking(
    read: tokio::net::tcp::OwnedReadHalf,
    write: OwnedWriteHalf,
) -> Result<(std::net::TcpStream, std::net::TcpStream), String> {
    let s = read
        .reunite(write)
        .map_err(|e| e.to_string())?
        .into_std()
        .map_err(|e| e.to_string())?;
    s.set_nonblocking(false).map_err(|e| e.to_string())?;
    let writer = s.try_clone().map_err(|e| e.to_string())?;
    Ok((s, writer))
}

/// A sparse link's reader thread: blocking reads of its frames (the thread sleeps in the
/// kernel until bytes arrive, as the raw TCP ceiling's reader does), routed into the ring by
/// `forward` under `runtime` (its timers and channels), then the final verdict. It replaced a
/// reader task on the runtime, which woke through epoll for every arriving segment and found
/// nothing to read in about one `recvfrom` of 13 (docs/allreduce-benchmark.md).
fn read_frames(
    socket: std::net::TcpStream,
    mut writer: std::net::TcpStream,
    ctx: &LinkContext,
    runtime: &tokio::runtime::Handle,
) {
    let verdict = runtime.block_on(async {
        let socket = frame::BlockingRead(socket);
        route::<SparseBlock, _>(socket, ctx, |i| &i.sparse).await
    });
    let bytes = match verdict {
        Some(Ok(n)) => frame::verdict(Code::Ok, &format!("{n} messages")),
        Some(Err(status)) => frame::verdict(status.code(), status.message()),
        None => return,
    };
    use std::io::Write;
    let _ = writer.write_all(&bytes);
    let _ = writer.shutdown(std::net::Shutdown::Write);
}

async fn route<M: Wire, R: AsyncRead + Unpin + Send>(
    read: R,
    ctx: &LinkContext,
    slot: fn(&Inbox) -> &Slot<M>,
) -> Option<Result<u64, Status>> {
    let source = Frames::<M, R> {
        reader: FrameReader::new(read, MAX_MESSAGE_BYTES, &crate::ring::pool::CHUNKS),
        _kind: PhantomData,
    };
    forward(source, ctx.inbox.clone(), ctx.opened.subscribe(), slot).await
}

/// A raw link's frames as messages of kind `M`.
struct Frames<M, R> {
    reader: FrameReader<R>,
    _kind: PhantomData<fn() -> M>,
}

impl<M: Wire, R: AsyncRead + Unpin + Send> Incoming<M::Pb> for Frames<M, R> {
    async fn next(&mut self) -> Result<Option<M::Pb>, String> {
        let Some((meta, payload)) = self.reader.next().await? else {
            return Ok(None);
        };
        let mut msg = M::Pb::decode(meta).map_err(|e| format!("malformed frame: {e}"))?;
        M::put_payload(&mut msg, payload)?;
        Ok(Some(msg))
    }
}

/// The send buffer of a ring link. Linux's autotuned default left the sender waking up more
/// often: 1 MiB (which the kernel doubles) measured 1.1-1.35x the bus bandwidth at 2 ranks and
/// 1-16 MiB, and about the same at 256 MiB (docs/allreduce-benchmark.md).
const SEND_BUFFER: u32 = 1 << 20;

/// Connects to `addr` with the ring's send buffer.
async fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_send_buffer_size(SEND_BUFFER)?;
        match socket.connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the address resolves to nothing")))
}

/// Connects to `peer`'s peer port as `me`, in `generation`, for a link of `kind`, and
/// completes the handshake; a refusal (token, TLS) comes back as the peer's status.
pub(super) async fn handshake(
    kind: Kind,
    me: &PeerId,
    peer: &PeerId,
    token: &JobToken,
    generation: u64,
) -> Result<(tokio::net::tcp::OwnedReadHalf, OwnedWriteHalf), RingError> {
    let stream = connect(&peer.addr)
        .await
        .map_err(|e| RingError::link(peer, format!("cannot connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let hello = frame::hello(kind, token.expose().as_bytes(), generation, me.rank as u32);
    let exchange = async {
        write.write_all(&hello).await?;
        frame::read_verdict(&mut read).await
    };
    let (code, text) = tokio::time::timeout(FIRST_BYTES_WAIT, exchange)
        .await
        .map_err(|_| RingError::link(peer, "handshake: no answer"))?
        .map_err(|e| RingError::link(peer, format!("handshake: {e}")))?;
    if code != Code::Ok {
        return Err(super::wire::refused(peer, Status::new(code, text)));
    }
    Ok((read, write))
}

/// Sends one kind of ring message to the right-hand neighbour over a raw link.
pub struct TcpSender<M: Wire> {
    me: PeerId,
    write: OwnedWriteHalf,
    /// The peer's final verdict (or a refusal), read from the link.
    verdict: Verdict,
    /// Frame header and meta of the message being sent.
    scratch: Vec<u8>,
    _kind: PhantomData<fn(M)>,
}

impl<M: Wire> TcpSender<M> {
    /// Connects to `peer`'s peer port as `me` (in `generation`) and completes the handshake;
    /// a refused token (or a TLS job on the other side) comes back as the peer's status.
    pub async fn open(
        me: PeerId,
        peer: PeerId,
        token: &JobToken,
        generation: u64,
    ) -> Result<Self, RingError> {
        let (mut read, write) = handshake(M::KIND, &me, &peer, token, generation).await?;
        let watch = tokio::spawn(async move {
            match frame::read_verdict(&mut read).await {
                Ok((Code::Ok, _)) => None,
                Ok((code, text)) => Some(Status::new(code, text)),
                Err(e) => Some(Status::unavailable(format!(
                    "link closed without a verdict: {e}"
                ))),
            }
        });
        Ok(Self {
            me,
            write,
            verdict: Verdict::new(peer, watch),
            scratch: Vec::new(),
            _kind: PhantomData,
        })
    }

    /// Ends the link and waits for the peer's verdict: `Ok` when it accepted everything.
    pub async fn finish(mut self) -> Result<(), RingError> {
        let _ = self.write.shutdown().await;
        self.verdict.result().await
    }

    /// Why the link is closed, as a ring error.
    async fn closed(&mut self) -> RingError {
        self.verdict.closed().await
    }
}

impl<M: Wire> RingSend<M> for TcpSender<M> {
    async fn send(&mut self, msg: M) -> Result<(), RingError> {
        if !self.verdict.open() {
            return Err(self.closed().await);
        }
        let mut wire = M::to_wire(msg, &self.me);
        let payload: Bytes = M::take_payload(&mut wire);
        self.encode_head(wire, payload.len())?;
        // One write per frame. Sparse blocks carry no payload; chunks go over `direct`, so
        // this copy of a payload costs nothing where it matters.
        self.scratch.extend_from_slice(&payload);
        match self.write.write_all(&self.scratch).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.closed().await),
        }
    }
}

impl<M: Wire> TcpSender<M> {
    /// Puts the frame header and meta `wire`, whose payload of `payload_len` bytes follows,
    /// in `scratch`.
    fn encode_head(&mut self, wire: M::Pb, payload_len: usize) -> Result<(), RingError> {
        self.scratch.clear();
        self.scratch
            .extend_from_slice(&frame::frame_header(wire.encoded_len(), payload_len));
        wire.encode(&mut self.scratch)
            .map_err(|e| RingError::Input(format!("encoding a ring message: {e}")))
    }
}
