//! The sending side of a gRPC ring link: one bidirectional `Peer` stream to the right-hand
//! neighbour per generation (and per message kind), kept open across steps.
//!
//! The request half carries the messages; the response half only carries the peer's verdict (a
//! refusal such as a stale generation, or a final acknowledgement). A task watches it, so the
//! next `send` after a refusal reports the peer's status instead of a bare broken pipe.

use funnel_proto::v1 as pb;
use pb::peer_client::PeerClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::auth::AttachToken;
use super::{MAX_MESSAGE_BYTES, Wire};
use crate::ring::{PeerId, RingError, RingSend};
use funnel_proto::tls::Security;

/// A `Peer` client that attaches the job token to every call.
pub type Client = PeerClient<InterceptedService<Channel, AttachToken>>;

/// Connects to the `Peer` server of `peer`.
pub async fn connect(peer: &PeerId, security: &Security) -> Result<Client, RingError> {
    let token = &security.token;
    let mut endpoint = Endpoint::from_shared(format!("{}://{}", security.scheme(), peer.addr))
        .map_err(|e| RingError::link(peer, format!("bad address: {e}")))?
        .tcp_nodelay(true);
    if let Some(tls) = &security.tls {
        let config = tls.client().map_err(|e| RingError::link(peer, e))?;
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| RingError::link(peer, format!("TLS: {e}")))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| RingError::link(peer, format!("cannot connect: {e}")))?;
    Ok(PeerClient::with_interceptor(channel, token.bearer())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Sends one kind of ring message to the right-hand neighbour over one open stream.
pub struct GrpcSender<M: Wire> {
    me: PeerId,
    peer: PeerId,
    tx: Option<mpsc::Sender<M::Pb>>,
    /// The task watching the response half, until its verdict is taken.
    watch: Option<JoinHandle<Option<Status>>>,
    /// The peer's refusal, once known.
    refusal: Option<Status>,
}

impl<M: Wire> GrpcSender<M> {
    /// Opens the stream to `peer` (the right-hand neighbour) as `me`; `capacity` messages are
    /// buffered before `send` waits for the link.
    pub async fn open(
        client: &mut Client,
        me: PeerId,
        peer: PeerId,
        capacity: usize,
    ) -> Result<Self, RingError> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let verdict = M::open(client, ReceiverStream::new(rx))
            .await
            .map_err(|s| super::wire::refused(&peer, s))?;
        Ok(Self {
            me,
            peer,
            tx: Some(tx),
            watch: Some(verdict),
            refusal: None,
        })
    }

    /// Ends the stream and waits for the peer's verdict: `Ok` when it accepted everything.
    pub async fn finish(mut self) -> Result<(), RingError> {
        match self.verdict().await {
            None => Ok(()),
            Some(status) => Err(super::wire::refused(&self.peer, status)),
        }
    }

    /// Closes the request half and waits for the response half to end; the peer's refusal if
    /// it sent one.
    async fn verdict(&mut self) -> Option<Status> {
        self.tx = None;
        if let Some(watch) = self.watch.take() {
            self.refusal = watch
                .await
                .unwrap_or_else(|e| Some(Status::internal(e.to_string())));
        }
        self.refusal.clone()
    }

    /// Why the stream is closed, as a ring error.
    async fn closed(&mut self) -> RingError {
        match self.verdict().await {
            Some(status) => super::wire::refused(&self.peer, status),
            None => RingError::link(&self.peer, "stream closed by the peer"),
        }
    }
}

impl<M: Wire> RingSend<M> for GrpcSender<M> {
    async fn send(&mut self, msg: M) -> Result<(), RingError> {
        if self.watch.as_ref().is_none_or(|w| w.is_finished()) {
            return Err(self.closed().await);
        }
        let wire = M::to_wire(msg, &self.me);
        let sent = match &self.tx {
            Some(tx) => tx.send(wire).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.closed().await)
        }
    }
}

/// gRPC copies a chunk's values into its message: the default.
impl crate::ring::ChunkSend for GrpcSender<crate::ring::Chunk> {}

impl<M: Wire> Drop for GrpcSender<M> {
    fn drop(&mut self) {
        // The verdict task ends with the stream; nothing waits for it any more.
        if let Some(watch) = &self.watch {
            watch.abort();
        }
    }
}

/// The ring's state that `donor` published for workers joining in `generation`.
pub async fn fetch_state(
    donor: &PeerId,
    security: &Security,
    generation: u64,
) -> Result<bytes::Bytes, RingError> {
    let mut client = connect(donor, security).await?;
    let mut stream = client
        .fetch_state(pb::FetchStateRequest { generation })
        .await
        .map_err(|s| RingError::link(donor, format!("FetchState: {}", s.message())))?
        .into_inner();
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| RingError::link(donor, format!("FetchState: {}", s.message())))?
    {
        out.extend_from_slice(&chunk.data);
    }
    Ok(out.freeze())
}
