//! The ring over gRPC: the `funnel.v1.Peer` service (DESIGN §5 step 3, §8).
//!
//! Each rank runs a [`PeerNode`] (a tonic server, `127.0.0.1:0` in tests); for each generation
//! it opens the receivers its left-hand neighbour's streams are routed to, and one stream per
//! message kind to its right-hand neighbour ([`GrpcSender`]). The ring algorithms in
//! [`crate::ring`] run over these unchanged.
//!
//! - [`auth`]: the job token, attached by clients and checked in constant time by servers.
//! - [`server`]: the `Peer` service, routing by generation, [`GrpcReceiver`].
//! - [`client`]: connecting and [`GrpcSender`].
//! - [`tcp`]: the raw TCP ring links (`cluster.ring_transport = "tcp"`), on the same port.
//! - [`verdict`]: the peer's verdict on an outgoing stream, watched while it is written.
//! - [`wire`]: conversions between generated messages and ring types; ring errors as statuses.

pub use funnel_proto::auth;
pub mod client;
pub mod server;
pub mod tcp;
pub mod verdict;
pub mod wire;

use std::future::Future;

use bytes::Bytes;
use funnel_common::spec::RingTransport;
use funnel_proto::v1 as pb;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub use auth::JobToken;
pub use client::{Client, GrpcSender, connect};
pub use funnel_proto::tls::Security;
pub use server::{GrpcReceiver, PeerNode};

use crate::ring::{Chunk, PeerId, RingError, RingSend, SparseBlock};
pub use tcp::TcpSender;

/// Largest message either side accepts (tonic's default is 4 MiB). A sparse block carries one
/// rank's rows for every table and can exceed that; chunks stay far below it.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// A ring message kind and its RPC: how it is encoded, where its stream goes.
pub trait Wire: Sized + Send + 'static {
    /// The generated message.
    type Pb: prost::Message + Default + Send + 'static;
    /// Encodes as sent by `me`.
    fn to_wire(self, me: &PeerId) -> Self::Pb;
    /// Decodes what `peer` sent.
    fn from_wire(m: Self::Pb, peer: &PeerId) -> Result<Self, RingError>;
    /// The (generation, sender rank) of a message, if it has a header.
    fn origin(m: &Self::Pb) -> Option<(u64, u32)>;
    /// The kind a raw TCP link names in its handshake.
    const KIND: tcp::frame::Kind;
    /// Takes the bulk bytes out of `m` (a raw link sends them after the rest, as they are).
    fn take_payload(m: &mut Self::Pb) -> Bytes;
    /// Puts back what [`Wire::take_payload`] took; an error if this kind has none.
    fn put_payload(m: &mut Self::Pb, payload: Bytes) -> Result<(), String>;
    /// Opens the RPC with `stream` as its request; returns a task that ends with the peer's
    /// refusal, if any, once the response half ends.
    fn open(
        client: &mut Client,
        stream: ReceiverStream<Self::Pb>,
    ) -> impl Future<Output = Result<JoinHandle<Option<Status>>, Status>> + Send;
}

/// Watches a response stream until it ends; its first error is the peer's refusal.
fn watch<A: Send + 'static>(mut responses: tonic::Streaming<A>) -> JoinHandle<Option<Status>> {
    tokio::spawn(async move {
        loop {
            match responses.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
}

impl Wire for Chunk {
    type Pb = pb::AllReduceChunk;

    fn to_wire(self, me: &PeerId) -> Self::Pb {
        wire::chunk_to_wire(self, me)
    }

    fn from_wire(m: Self::Pb, peer: &PeerId) -> Result<Self, RingError> {
        wire::chunk_from_wire(m, peer)
    }

    fn origin(m: &Self::Pb) -> Option<(u64, u32)> {
        m.header.as_ref().map(|h| (h.generation, h.sender_rank))
    }

    const KIND: tcp::frame::Kind = tcp::frame::Kind::Chunks;

    fn take_payload(m: &mut Self::Pb) -> Bytes {
        std::mem::take(&mut m.values)
    }

    fn put_payload(m: &mut Self::Pb, payload: Bytes) -> Result<(), String> {
        m.values = payload;
        Ok(())
    }

    async fn open(
        client: &mut Client,
        stream: ReceiverStream<Self::Pb>,
    ) -> Result<JoinHandle<Option<Status>>, Status> {
        Ok(watch(client.all_reduce(stream).await?.into_inner()))
    }
}

impl Wire for SparseBlock {
    type Pb = pb::SparseBlock;

    fn to_wire(self, me: &PeerId) -> Self::Pb {
        wire::block_to_wire(self, me)
    }

    fn from_wire(m: Self::Pb, peer: &PeerId) -> Result<Self, RingError> {
        wire::block_from_wire(m, peer)
    }

    fn origin(m: &Self::Pb) -> Option<(u64, u32)> {
        m.header.as_ref().map(|h| (h.generation, h.sender_rank))
    }

    const KIND: tcp::frame::Kind = tcp::frame::Kind::Sparse;

    fn take_payload(_: &mut Self::Pb) -> Bytes {
        Bytes::new()
    }

    fn put_payload(_: &mut Self::Pb, payload: Bytes) -> Result<(), String> {
        if payload.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "a sparse block frame with {} payload bytes",
                payload.len()
            ))
        }
    }

    async fn open(
        client: &mut Client,
        stream: ReceiverStream<Self::Pb>,
    ) -> Result<JoinHandle<Option<Status>>, Status> {
        Ok(watch(client.sparse_exchange(stream).await?.into_inner()))
    }
}

/// The transport a job's ring links use, once `auto` is decided: a pure function of the
/// configured choice and whether the job has TLS.
pub fn ring_transport(choice: RingTransport, tls: bool) -> Result<RingTransport, String> {
    match (choice, tls) {
        (RingTransport::Auto, false) => Ok(RingTransport::Tcp),
        (RingTransport::Auto, true) => Ok(RingTransport::Grpc),
        (RingTransport::Tcp, true) => Err("cluster.ring_transport = \"tcp\" would send gradients \
             in the clear on a TLS job: use \"grpc\" or \"auto\""
            .into()),
        (other, _) => Ok(other),
    }
}

/// Sends one kind of ring message to the right-hand neighbour, over either transport.
pub enum RingSender<M: Wire> {
    /// A `funnel.v1.Peer` stream.
    Grpc(GrpcSender<M>),
    /// A raw TCP link.
    Tcp(TcpSender<M>),
}

impl<M: Wire> RingSender<M> {
    /// Ends the stream once the peer has read it; the peer's refusal if it sent one.
    pub async fn finish(self) -> Result<(), RingError> {
        match self {
            RingSender::Grpc(s) => s.finish().await,
            RingSender::Tcp(s) => s.finish().await,
        }
    }
}

impl<M: Wire> RingSend<M> for RingSender<M> {
    async fn send(&mut self, msg: M) -> Result<(), RingError> {
        match self {
            RingSender::Grpc(s) => s.send(msg).await,
            RingSender::Tcp(s) => s.send(msg).await,
        }
    }
}

/// The dense all-reduce's links of one generation.
pub enum DenseLinks {
    /// `funnel.v1.Peer` streams (TLS jobs, `ring_transport = "grpc"`): the ring of
    /// [`crate::ring::all_reduce`].
    Grpc {
        /// Chunks to the right-hand neighbour.
        tx: GrpcSender<Chunk>,
        /// Chunks from the left-hand neighbour.
        rx: GrpcReceiver<Chunk>,
    },
    /// Raw TCP links, read and written by the ring itself ([`tcp::direct`]).
    Tcp(tcp::direct::DirectLinks),
}

impl DenseLinks {
    /// Sums `buf` across the ring, in place (no fault injection, no cancellation: what
    /// benches and tests run; the worker's step adds both). Over raw TCP the call blocks the
    /// calling thread until it is done: on a runtime's worker, wrap it in `block_in_place`.
    pub async fn all_reduce(
        &mut self,
        cfg: &crate::ring::RingConfig,
        tag: crate::ring::StepTag,
        buf: &mut [f32],
    ) -> Result<(), RingError> {
        match self {
            DenseLinks::Grpc { tx, rx } => crate::ring::all_reduce(cfg, tag, buf, tx, rx).await,
            DenseLinks::Tcp(links) => links.all_reduce(cfg, tag, buf, None, &|| false),
        }
    }
}

/// One rank's links for one generation: dense and sparse, both directions.
pub struct GenerationLinks {
    /// The dense all-reduce's links.
    pub dense: DenseLinks,
    /// Sparse blocks to the right-hand neighbour.
    pub sparse_tx: RingSender<SparseBlock>,
    /// Sparse blocks from the left-hand neighbour.
    pub sparse_rx: GrpcReceiver<SparseBlock>,
    /// The gRPC connection the two streams run on, held for as long as they are used.
    _client: Option<Client>,
}

impl GenerationLinks {
    /// Ends both outgoing streams once the peer has read them (the end of a generation).
    pub async fn finish(self) -> Result<(), RingError> {
        match self.dense {
            DenseLinks::Grpc { tx, .. } => tx.finish().await?,
            DenseLinks::Tcp(links) => links.finish(),
        }
        self.sparse_tx.finish().await
    }

    /// Opens `generation` on `node` (accepting `left` only) and the links to `right` over
    /// `transport` (`auto` decided by [`ring_transport`]). Every rank must open its node
    /// before any neighbour's streams reach it, or those are refused; the caller orders that
    /// (in the job, the coordinator's ring announcement).
    pub async fn open(
        node: &PeerNode,
        me: PeerId,
        left: PeerId,
        right: PeerId,
        generation: u64,
        security: &Security,
        transport: RingTransport,
    ) -> Result<Self, RingError> {
        const CAPACITY: usize = 32;
        let transport =
            ring_transport(transport, security.tls.is_some()).map_err(RingError::Config)?;
        let (chunk_rx, sparse_rx, incoming) = node.open(generation, left.clone(), CAPACITY);
        let (dense, sparse_tx, client) = if transport == RingTransport::Tcp {
            let token = &security.token;
            let (me2, right2) = (me.clone(), right.clone());
            let dense =
                tcp::direct::DirectLinks::open(me2, left, right2, token, generation, incoming)
                    .await?;
            let sparse = TcpSender::open(me, right, token, generation).await?;
            (DenseLinks::Tcp(dense), RingSender::Tcp(sparse), None)
        } else {
            let mut client = connect(&right, security).await?;
            let chunks = GrpcSender::open(&mut client, me.clone(), right.clone(), CAPACITY).await?;
            let sparse = GrpcSender::open(&mut client, me, right, CAPACITY).await?;
            let dense = DenseLinks::Grpc {
                tx: chunks,
                rx: chunk_rx,
            };
            (dense, RingSender::Grpc(sparse), Some(client))
        };
        Ok(Self {
            dense,
            sparse_tx,
            sparse_rx,
            _client: client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_tcp_in_plaintext_and_grpc_with_tls_and_tcp_refuses_tls() {
        use RingTransport::*;
        assert_eq!(ring_transport(Auto, false), Ok(Tcp));
        assert_eq!(ring_transport(Auto, true), Ok(Grpc));
        assert_eq!(ring_transport(Grpc, false), Ok(Grpc));
        assert_eq!(ring_transport(Grpc, true), Ok(Grpc));
        assert_eq!(ring_transport(Tcp, false), Ok(Tcp));
        let e = ring_transport(Tcp, true).expect_err("refused");
        assert!(e.contains("cluster.ring_transport"), "{e}");
    }
}
