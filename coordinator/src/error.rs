//! The coordinator's errors and their one conversion to gRPC `Status`.

use tonic::Status;

use crate::membership::JoinRefusal;
use crate::votes::VoteRefusal;

/// Errors of the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A data-plane error (listing, footers, schema).
    #[error(transparent)]
    Data(#[from] funnel_common::Error),
    /// A registration refused.
    #[error("registration refused: {0}")]
    Join(#[from] JoinRefusal),
    /// A step or epoch report that cannot be counted.
    #[error("{what} refused: {refusal}")]
    Vote {
        /// "step 12 of w1", "epoch 0 of w2".
        what: String,
        /// Why.
        refusal: VoteRefusal,
    },
    /// A call from a worker id the coordinator does not know.
    #[error("unknown worker {0:?}: register first")]
    UnknownWorker(String),
    /// A call from a worker removed from the ring (declared dead, or cut off): it must stop.
    #[error("{worker} was removed from the ring ({reason}); its calls are refused")]
    Fenced {
        /// The caller.
        worker: String,
        /// Why it was removed.
        reason: String,
    },
    /// A commit report that would break exactly-once (a row counted twice, out of range).
    #[error("{worker}: {problem}")]
    Ledger {
        /// The caller.
        worker: String,
        /// What is wrong with its rows.
        problem: crate::ledger::LedgerError,
    },
    /// A call from an older (or future) ring generation.
    #[error("{worker}: generation {got}, the ring is in generation {current}")]
    Generation {
        /// The caller.
        worker: String,
        /// Its generation.
        got: u64,
        /// The coordinator's.
        current: u64,
    },
    /// A step for another model layout.
    #[error("{worker}: layout hash {got:#018x}, the ring's is {expected:#018x}")]
    Layout {
        /// The caller.
        worker: String,
        /// Its layout hash.
        got: u64,
        /// The ring's.
        expected: u64,
    },
    /// A request the job cannot serve (epoch out of range, ...).
    #[error("{0}")]
    Invalid(String),
    /// The job failed (a worker died, a vote timed out); every call answers with the reason.
    #[error("job failed: {0}")]
    JobFailed(String),
    /// A wait passed its deadline.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The listener or the server failed.
    #[error("coordinator server: {0}")]
    Server(String),
}

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Status {
        let msg = e.to_string();
        match e {
            CoordinatorError::Data(_) | CoordinatorError::Server(_) => Status::internal(msg),
            CoordinatorError::Join(JoinRefusal::Full(_)) => Status::resource_exhausted(msg),
            CoordinatorError::Join(_)
            | CoordinatorError::Vote { .. }
            | CoordinatorError::Generation { .. }
            | CoordinatorError::Fenced { .. }
            | CoordinatorError::Ledger { .. }
            | CoordinatorError::Layout { .. } => Status::failed_precondition(msg),
            CoordinatorError::UnknownWorker(_) => Status::not_found(msg),
            CoordinatorError::Invalid(_) => Status::invalid_argument(msg),
            CoordinatorError::JobFailed(_) => Status::aborted(msg),
            CoordinatorError::Timeout(_) => Status::deadline_exceeded(msg),
        }
    }
}
