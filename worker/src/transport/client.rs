//! The sending side of a gRPC ring link: one bidirectional `Peer` stream to the right-hand
//! neighbour per generation (and per message kind), kept open across steps.
//!
//! The request half carries the messages; the response half only carries the peer's verdict (a
//! refusal such as a stale generation, or a final acknowledgement). A task watches it, so the
//! next `send` after a refusal reports the peer's status instead of a bare broken pipe.

use funnel_proto::v1 as pb;
use pb::peer_client::PeerClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::auth::AttachToken;
use super::verdict::Verdict;
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
    tx: Option<mpsc::Sender<M::Pb>>,
    /// The peer's verdict, from the response half.
    verdict: Verdict,
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
            tx: Some(tx),
            verdict: Verdict::new(peer, verdict),
        })
    }

    /// Ends the stream and waits for the peer's verdict: `Ok` when it accepted everything.
    pub async fn finish(mut self) -> Result<(), RingError> {
        self.tx = None;
        self.verdict.result().await
    }

    /// Why the stream is closed, as a ring error.
    async fn closed(&mut self) -> RingError {
        self.tx = None;
        self.verdict.closed().await
    }
}

impl<M: Wire> RingSend<M> for GrpcSender<M> {
    async fn send(&mut self, msg: M) -> Result<(), RingError> {
        if !self.verdict.open() {
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
