//! The ring of the current generation, as the training thread uses it (DESIGN §5 step 4).
//!
//! Links to the neighbours open lazily, on the first exchange of a generation. An exchange
//! ends early, with an [`Interrupt`], when the ring breaks (a neighbour's stream fails or goes
//! silent) or when this worker learns of a newer generation (from a heartbeat, or an answer of
//! the coordinator): a member died and the survivors re-form the ring without it. The step is
//! then dropped, [`RingSession::rejoin`] asks the coordinator for the new ring, and the caller
//! redoes the step with the same batch.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use funnel_proto::v1 as pb;
use tokio::sync::watch;
use tracing::warn;

use super::coordinator::{Client, refused};
use crate::WorkerError;
use crate::ring::{PeerId, RingConfig, RingError};
use crate::transport::{GenerationLinks, PeerNode, Security};
use funnel_common::spec::RingTransport;

/// Why an exchange or a vote did not complete.
#[derive(Debug)]
pub enum Interrupt {
    /// The ring failed (a neighbour's stream broke, a message timed out or was refused).
    Ring(RingError),
    /// A newer generation exists.
    Newer(u64),
    /// The coordinator did not commit the step or close the epoch (the generation changed).
    NotCommitted(String),
}

impl fmt::Display for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Interrupt::Ring(e) => write!(f, "ring failed: {e}"),
            Interrupt::Newer(g) => write!(f, "generation {g} formed"),
            Interrupt::NotCommitted(why) => write!(f, "not committed: {why}"),
        }
    }
}

/// This worker's place in the ring of the current generation.
pub struct RingSession {
    /// This worker's `Peer` server.
    pub node: PeerNode,
    /// The job token and TLS (peer links carry them).
    pub security: Security,
    /// What carries the ring's messages (`cluster.ring_transport`).
    pub transport: RingTransport,
    /// This worker's id.
    pub worker_id: String,
    /// The generation.
    pub generation: u64,
    /// Rank, ring size and chunking.
    pub config: RingConfig,
    /// The members in rank order.
    pub members: Vec<pb::RingMember>,
    /// The newest generation this worker knows of (heartbeats publish too).
    pub news: Arc<watch::Sender<u64>>,
    /// Set when a worker joined in this generation and this rank is its donor.
    donate: bool,
    links: Option<GenerationLinks>,
}

impl RingSession {
    /// The session of a registration answer.
    pub fn new(
        node: PeerNode,
        security: Security,
        transport: RingTransport,
        reg: pb::RegisterResponse,
        config: RingConfig,
    ) -> Result<Self, WorkerError> {
        let mut s = Self {
            node,
            security,
            transport,
            worker_id: reg.worker_id.clone(),
            generation: 0,
            config,
            members: Vec::new(),
            news: Arc::new(watch::channel(0).0),
            donate: false,
            links: None,
        };
        s.apply(reg)?;
        Ok(s)
    }

    /// Takes the ring of `reg` (a registration or rejoin answer).
    fn apply(&mut self, reg: pb::RegisterResponse) -> Result<(), WorkerError> {
        let size = reg.ring.len();
        let rank = reg.rank as usize;
        if rank >= size || reg.worker_id != self.worker_id {
            return Err(WorkerError::Coordinator(format!(
                "ring of generation {}: rank {rank} of {size} for {} (this worker is {})",
                reg.generation, reg.worker_id, self.worker_id
            )));
        }
        self.generation = reg.generation;
        self.config.rank = rank;
        self.config.size = size;
        self.members = reg.ring;
        self.members.sort_by_key(|m| m.rank);
        // The donor is the lowest-ranked member that did not join in this generation.
        let joining = self.members.iter().any(|m| m.joining);
        let donor = self
            .members
            .iter()
            .find(|m| !m.joining)
            .map(|m| m.rank as usize);
        self.donate = joining && donor == Some(rank);
        self.news.send_if_modified(|g| {
            let newer = reg.generation > *g;
            if newer {
                *g = reg.generation;
            }
            newer
        });
        Ok(())
    }

    /// Whether this rank must publish the ring's state for a worker joining in this generation.
    pub fn must_donate(&self) -> bool {
        self.donate
    }

    /// The member of `rank`, as a peer.
    pub fn peer(&self, rank: usize) -> Result<PeerId, RingError> {
        let m = self
            .members
            .get(rank)
            .filter(|m| m.rank as usize == rank)
            .ok_or_else(|| RingError::Config(format!("no rank {rank} in the ring")))?;
        Ok(PeerId {
            rank,
            addr: m.peer_addr.clone(),
        })
    }

    /// The links of the current generation, opened on first use.
    pub async fn links(&mut self) -> Result<&mut GenerationLinks, RingError> {
        if self.links.is_none() {
            let c = self.config;
            let me = self.peer(c.rank)?;
            let left = self.peer(c.left())?;
            let right = self.peer((c.rank + 1) % c.size)?;
            let links = GenerationLinks::open(
                &self.node,
                me,
                left,
                right,
                self.generation,
                &self.security,
                self.transport,
            )
            .await?;
            self.links = Some(links);
        }
        self.links
            .as_mut()
            .ok_or_else(|| RingError::Config("links not open".into()))
    }

    /// If `error` is a message of the left-hand neighbour that this rank refused (malformed,
    /// wrong size or layout, another generation, non-finite values), reports the neighbour to
    /// the coordinator, which fences it: the others then redo the step without it. Broken
    /// links are not reported: a dead peer is found by its missing heartbeats.
    pub async fn report_peer(
        &self,
        client: &mut Client,
        error: &RingError,
    ) -> Result<(), WorkerError> {
        let peer = match error {
            RingError::Invalid { peer, .. }
            | RingError::Layout { peer, .. }
            | RingError::Generation { peer, .. } => peer,
            _ => return Ok(()),
        };
        let Some(member) = self.members.get(peer.rank) else {
            return Ok(());
        };
        warn!(peer = %peer, worker = %member.worker_id, error = %error, "refused a message of the left neighbour; reporting it");
        client
            .report_peer(pb::ReportPeerRequest {
                worker_id: self.worker_id.clone(),
                generation: self.generation,
                peer_worker_id: member.worker_id.clone(),
                reason: error.to_string(),
            })
            .await
            .map_err(|s| refused("ReportPeer", s))?;
        Ok(())
    }

    /// Drops this generation's links and waits for the coordinator's next ring; the caller
    /// then redoes what `cause` interrupted. Fails if this worker was fenced out, or if no new
    /// generation forms (the interruption was not a member's death).
    pub async fn rejoin(
        &mut self,
        client: &mut Client,
        cause: &Interrupt,
    ) -> Result<(), WorkerError> {
        warn!(generation = self.generation, cause = %cause, "step interrupted; rejoining");
        self.links = None;
        let answer = client
            .rejoin(pb::RejoinRequest {
                worker_id: self.worker_id.clone(),
                generation: self.generation,
            })
            .await;
        let reg = match answer {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => {
                return Err(WorkerError::Coordinator(format!(
                    "{cause}, and no new ring generation formed: {}",
                    s.message()
                )));
            }
            Err(s) => return Err(refused("Rejoin", s)),
        };
        self.apply(reg)?;
        // At warn, like the interruption: an operator sees both at the default log level.
        warn!(
            generation = self.generation,
            rank = self.config.rank,
            ranks = self.config.size,
            "rejoined the ring"
        );
        Ok(())
    }

    /// Ends this generation's outgoing streams cleanly (the end of the job). A neighbour gone
    /// by then costs nothing: every step is already committed.
    pub async fn finish(&mut self, patience: Duration) {
        if let Some(links) = self.links.take() {
            match tokio::time::timeout(patience, links.finish()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "closing the ring links"),
                Err(_) => warn!("closing the ring links timed out"),
            }
        }
    }
}
