//! The peer's verdict on one outgoing ring stream, for either transport: a task reads it (the
//! gRPC response half, or the raw link's verdict frame) while the sender writes, so the next
//! send after a refusal reports the peer's status instead of a bare broken pipe.

use tokio::task::JoinHandle;
use tonic::Status;

use crate::ring::{PeerId, RingError};

/// Watches for the verdict of `peer` on one stream.
pub struct Verdict {
    peer: PeerId,
    /// The task reading the verdict (`None`: accepted), until its answer is taken.
    watch: Option<JoinHandle<Option<Status>>>,
    /// The peer's refusal, once known.
    refusal: Option<Status>,
}

impl Verdict {
    /// Watches `task`, which ends with the peer's refusal or `None`.
    pub fn new(peer: PeerId, task: JoinHandle<Option<Status>>) -> Self {
        Self {
            peer,
            watch: Some(task),
            refusal: None,
        }
    }

    /// Whether the peer may still be reading (no verdict yet).
    pub fn open(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| !w.is_finished())
    }

    /// Waits for the verdict: the peer's refusal, if it sent one. Call once the stream's
    /// sending half is closed, or the wait lasts as long as the stream.
    pub async fn wait(&mut self) -> Option<Status> {
        if let Some(watch) = self.watch.take() {
            self.refusal = watch
                .await
                .unwrap_or_else(|e| Some(Status::internal(e.to_string())));
        }
        self.refusal.clone()
    }

    /// `Ok` when the peer accepted everything, else its refusal as a ring error.
    pub async fn result(&mut self) -> Result<(), RingError> {
        match self.wait().await {
            None => Ok(()),
            Some(status) => Err(super::wire::refused(&self.peer, status)),
        }
    }

    /// Why a stream that can no longer be written is closed, as a ring error.
    pub async fn closed(&mut self) -> RingError {
        match self.wait().await {
            Some(status) => super::wire::refused(&self.peer, status),
            None => RingError::link(&self.peer, "stream closed by the peer"),
        }
    }
}

impl Drop for Verdict {
    fn drop(&mut self) {
        // The task ends with the stream; nothing waits for it any more.
        if let Some(watch) = &self.watch {
            watch.abort();
        }
    }
}
