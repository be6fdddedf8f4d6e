//! The in-memory ring transport: one bounded tokio channel per link, rank `i` -> rank `i + 1`.
//!
//! Used by the conformance tests (the same algorithm then runs over gRPC) and as the reference
//! a single process can run. Bounded channels keep the flow control of a real link, so the
//! algorithm's send/receive concurrency is exercised here too.

use tokio::sync::mpsc;

use super::{PeerId, RingError, RingRecv, RingSend};

/// Sending half of a link to the right-hand neighbour.
pub struct MemorySender<M> {
    tx: mpsc::Sender<M>,
    peer: PeerId,
}

/// Receiving half of a link from the left-hand neighbour.
pub struct MemoryReceiver<M> {
    rx: mpsc::Receiver<M>,
    peer: PeerId,
}

/// The links of a ring of `n` ranks: element `i` is rank `i`'s (sender to `i + 1`, receiver
/// from `i - 1`). `capacity` is how many messages a link buffers before the sender waits.
pub fn ring<M: Send>(n: usize, capacity: usize) -> Vec<(MemorySender<M>, MemoryReceiver<M>)> {
    let mut senders = Vec::with_capacity(n);
    let mut receivers: Vec<Option<MemoryReceiver<M>>> = (0..n).map(|_| None).collect();
    for i in 0..n {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let right = (i + 1) % n;
        senders.push(MemorySender {
            tx,
            peer: memory_peer(right),
        });
        receivers[right] = Some(MemoryReceiver {
            rx,
            peer: memory_peer(i),
        });
    }
    senders
        .into_iter()
        .zip(receivers.into_iter().flatten())
        .collect()
}

fn memory_peer(rank: usize) -> PeerId {
    PeerId {
        rank,
        addr: "memory".into(),
    }
}

impl super::ChunkSend for MemorySender<super::Chunk> {}

impl<M: Send> RingSend<M> for MemorySender<M> {
    async fn send(&mut self, msg: M) -> Result<(), RingError> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| RingError::link(&self.peer, "receiver gone"))
    }
}

impl<M: Send> RingRecv<M> for MemoryReceiver<M> {
    async fn recv(&mut self) -> Result<M, RingError> {
        self.rx
            .recv()
            .await
            .ok_or_else(|| RingError::link(&self.peer, "sender gone"))
    }

    fn peer(&self) -> &PeerId {
        &self.peer
    }
}

impl<M> MemorySender<M> {
    /// The neighbour this link sends to.
    pub fn peer(&self) -> &PeerId {
        &self.peer
    }
}
