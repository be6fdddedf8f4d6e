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
//! - [`wire`]: conversions between generated messages and ring types; ring errors as statuses.

pub use funnel_proto::auth;
pub mod client;
pub mod server;
pub mod wire;

use std::future::Future;

use funnel_proto::v1 as pb;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub use auth::JobToken;
pub use client::{Client, GrpcSender, connect};
pub use funnel_proto::tls::Security;
pub use server::{GrpcReceiver, PeerNode};

use crate::ring::{Chunk, PeerId, RingError, SparseBlock};

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

    async fn open(
        client: &mut Client,
        stream: ReceiverStream<Self::Pb>,
    ) -> Result<JoinHandle<Option<Status>>, Status> {
        Ok(watch(client.sparse_exchange(stream).await?.into_inner()))
    }
}

/// One rank's links for one generation: dense and sparse, both directions.
pub struct GenerationLinks {
    /// Chunks to the right-hand neighbour.
    pub chunk_tx: GrpcSender<Chunk>,
    /// Chunks from the left-hand neighbour.
    pub chunk_rx: GrpcReceiver<Chunk>,
    /// Sparse blocks to the right-hand neighbour.
    pub sparse_tx: GrpcSender<SparseBlock>,
    /// Sparse blocks from the left-hand neighbour.
    pub sparse_rx: GrpcReceiver<SparseBlock>,
    /// The connection the two streams run on, held for as long as they are used.
    _client: Client,
}

impl GenerationLinks {
    /// Ends both outgoing streams once the peer has read them (the end of a generation).
    pub async fn finish(self) -> Result<(), RingError> {
        self.chunk_tx.finish().await?;
        self.sparse_tx.finish().await
    }

    /// Opens `generation` on `node` (accepting `left` only) and the streams to `right`.
    /// Every rank must open its node before any neighbour's streams reach it, or those are
    /// refused; the caller orders that (in the job, the coordinator's ring announcement).
    pub async fn open(
        node: &PeerNode,
        me: PeerId,
        left: PeerId,
        right: PeerId,
        generation: u64,
        security: &Security,
    ) -> Result<Self, RingError> {
        const CAPACITY: usize = 32;
        let (chunk_rx, sparse_rx) = node.open(generation, left, CAPACITY);
        let mut client = connect(&right, security).await?;
        let chunk_tx = GrpcSender::open(&mut client, me.clone(), right.clone(), CAPACITY).await?;
        let sparse_tx = GrpcSender::open(&mut client, me, right, CAPACITY).await?;
        Ok(Self {
            chunk_tx,
            chunk_rx,
            sparse_tx,
            sparse_rx,
            _client: client,
        })
    }
}
