//! The coordinator's state behind one lock, and the wait for a condition on it: every change
//! bumps a version on a `watch` channel, so a long-polling call (register until the ring forms,
//! a step vote, the epoch barrier) rechecks its condition after each change without racing it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use funnel_common::audit::AuditRow;
use funnel_common::manifest::DatasetManifest;
use funnel_common::spec::Job;
use funnel_common::weighting::WeightingState;
use tokio::sync::watch;

use crate::error::CoordinatorError;
use crate::leases::LeaseBook;
use crate::ledger::{LeaseRows, Ledger};
use crate::membership::{Member, Membership};
use crate::plan::{PlannedLease, epoch_plan};
use crate::telemetry::Telemetry;
use crate::votes::RoundVotes;

/// What a worker reports at the end of an epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochReport {
    /// Per task: (loss sum, samples).
    pub losses: Vec<(String, f64, u64)>,
    /// The checkpoint the reporting rank committed, if it wrote one.
    pub checkpoint: Option<String>,
    /// GradNorm's mean statistics of the epoch (empty: none sampled).
    pub grad_norms: Vec<f64>,
    /// GradNorm's L(0) as the worker recorded it.
    pub initial_losses: Vec<f64>,
}

/// Everything the coordinator decides from.
#[derive(Debug)]
pub struct State {
    /// Who is in the ring.
    pub membership: Membership,
    /// The per-step commit vote; the payload is the rows each worker consumed, per lease.
    pub steps: RoundVotes<Vec<LeaseRows>>,
    /// The epoch barrier.
    pub epochs: RoundVotes<EpochReport>,
    /// Committed rows per lease.
    pub ledger: Ledger,
    /// Plans computed so far, per epoch.
    pub plans: HashMap<u32, Arc<Vec<PlannedLease>>>,
    /// Who holds which lease, per epoch.
    pub books: HashMap<u32, LeaseBook>,
    /// Audit rows of committed steps per epoch, until the epoch's file is written
    /// (`cluster.audit`).
    pub audit: BTreeMap<u32, Vec<AuditRow>>,
    /// Workers lost so far (for status and logs).
    pub failures: Vec<String>,
    /// Between an epoch's last step (its epoch-ending vote) and its barrier: no worker is
    /// admitted then, since the ring is past its steps.
    pub at_barrier: bool,
    /// Task weights and the weighting strategy's state.
    pub weighting: WeightingState,
    /// The epoch in progress (epochs completed).
    pub epoch: u32,
    /// The last checkpoint a worker committed.
    pub checkpoint: Option<String>,
    /// Set when the job cannot go on; every call answers with it.
    pub failed: Option<String>,
    /// Set when the last epoch completed.
    pub done: bool,
    /// What operators see (`/metrics`, `/status`); nothing is decided from it.
    pub telemetry: Telemetry,
}

/// The job as the coordinator serves it.
#[derive(Debug)]
pub struct JobContext {
    /// The job.
    pub job: Arc<Job>,
    /// The spec text the workers receive (TOML, with command-line overrides applied).
    pub spec_toml: String,
    /// Its hash.
    pub config_hash: u64,
    /// Where checkpoints and metrics go.
    pub output: String,
    /// The training data, listed and footers read once.
    pub train: Arc<DatasetManifest>,
    /// The evaluation data, if any.
    pub eval: Option<Arc<DatasetManifest>>,
}

/// State shared by the service and the watchdog.
#[derive(Debug)]
pub struct Shared {
    /// The job.
    pub ctx: JobContext,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    started: Instant,
}

impl Shared {
    /// Fresh state for `ctx` with `weighting` (initial, or restored from a checkpoint), from
    /// epoch `epoch`, with ring generations after `generation` (both 0 for a new job).
    pub fn new(
        ctx: JobContext,
        weighting: WeightingState,
        epoch: u32,
        generation: u64,
    ) -> Arc<Self> {
        let workers = ctx.job.spec.cluster.workers;
        let state = State {
            membership: Membership::after(workers, ctx.config_hash, generation),
            steps: RoundVotes::new(workers),
            epochs: RoundVotes::new(workers),
            ledger: Ledger::default(),
            plans: HashMap::new(),
            books: HashMap::new(),
            audit: BTreeMap::new(),
            failures: Vec::new(),
            at_barrier: false,
            weighting,
            epoch,
            checkpoint: None,
            failed: None,
            done: false,
            telemetry: Telemetry::default(),
        };
        Arc::new(Self {
            ctx,
            state: Mutex::new(state),
            version: watch::channel(0).0,
            started: Instant::now(),
        })
    }

    /// Milliseconds since the coordinator started (the membership clock).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The state, locked. A panic elsewhere cannot poison it for good: the data stays usable.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every waiting call to recheck its condition.
    pub fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Marks the job failed (first reason wins) and wakes everyone.
    pub fn fail(&self, reason: String) {
        {
            let mut st = self.lock();
            if st.failed.is_none() && !st.done {
                tracing::error!(reason = %reason, "job failed");
                st.failed = Some(reason);
            }
        }
        self.changed();
    }

    /// A receiver of change notifications (to wait for the job's end).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Waits until `check` returns a result, the job fails, or `limit` passes (`what` names the
    /// wait in the timeout error).
    pub async fn wait_for<T>(
        &self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<T, CoordinatorError> {
        let mut rx = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            {
                let mut st = self.lock();
                if let Some(reason) = &st.failed {
                    return Err(CoordinatorError::JobFailed(reason.clone()));
                }
                if let Some(v) = check(&mut st) {
                    return Ok(v);
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(CoordinatorError::Server("shutting down".into())),
                Err(_) => {
                    return Err(CoordinatorError::Timeout(format!(
                        "{what} after {} ms",
                        limit.as_millis()
                    )));
                }
            }
        }
    }

    /// Removes dead (or cut-off) workers: the survivors form the next generation, the open
    /// step and epoch rounds are dropped (their waiters answer "not committed" and the
    /// survivors redo them), and each dead worker's unfinished leases return to the queue.
    /// Fails the job when nobody is left.
    pub fn remove_workers(&self, ids: &[String], reason: &str) -> Vec<Member> {
        let gone = {
            let mut st = self.lock();
            if st.failed.is_some() || st.done {
                return Vec::new();
            }
            let gone = st.membership.remove(ids, reason);
            if gone.is_empty() {
                return gone;
            }
            let members = st.membership.members().len();
            let step = st.steps.abort_open(members);
            let epoch = st.epochs.abort_open(members);
            for m in &gone {
                st.failures.push(format!("{} ({reason})", m.id));
            }
            st.telemetry.failure(Instant::now());
            tracing::warn!(
                removed = ?gone.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
                reason,
                generation = st.membership.generation(),
                survivors = members,
                aborted_step = ?step,
                aborted_epoch_report = ?epoch,
                "workers removed; the survivors form a new generation"
            );
            if members == 0 {
                drop(st);
                self.fail(format!("every worker is gone ({reason})"));
                return gone;
            }
            gone
        };
        self.changed();
        gone
    }

    /// The lease book of `epoch` (created on first use).
    pub fn book<'a>(&self, st: &'a mut State, epoch: u32) -> &'a mut LeaseBook {
        let plan_len = self.plan(st, epoch).len();
        let slots = st.membership.expected();
        st.books
            .entry(epoch)
            .or_insert_with(|| LeaseBook::new(slots, plan_len))
    }

    /// The plan of `epoch` (computed once).
    pub fn plan(&self, st: &mut State, epoch: u32) -> Arc<Vec<PlannedLease>> {
        let ctx = &self.ctx;
        st.plans
            .entry(epoch)
            .or_insert_with(|| {
                Arc::new(epoch_plan(
                    &ctx.train.row_group_shards(),
                    ctx.job.spec.train.seed,
                    epoch,
                ))
            })
            .clone()
    }
}
