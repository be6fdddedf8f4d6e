//! The `funnel.v1.Coordinator` gRPC service: each call checks who is asking (worker id,
//! generation, layout), turns the request into a decision of the pure modules (membership,
//! plan, votes, ledger) and, for the calls that are barriers, waits on the shared state.
//!
//! - this file: the RPC handlers.
//! - [`support`]: caller checks, commit-vote rows, the audit record, admission of a worker
//!   into a running job, the coordinator's kill hook for tests.

mod support;

use support::{failed, kill_after_step, live_member};

use std::sync::Arc;
use std::time::Duration;

use funnel_proto::v1 as pb;
use pb::coordinator_server::Coordinator;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::error::CoordinatorError;
use crate::journal::Journal;
use crate::ledger::LeaseRows;
use crate::state::{EpochReport, Shared};
use crate::votes::VoteOutcome;
use crate::wire;

/// The service over the shared state.
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    shared: Arc<Shared>,
}

impl CoordinatorService {
    /// The service of `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn get_job(
        &self,
        _req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let ctx = &self.shared.ctx;
        Ok(Response::new(pb::GetJobResponse {
            spec_toml: ctx.spec_toml.clone(),
            config_hash: ctx.config_hash,
            output: ctx.output.clone(),
            workers: ctx.job.spec.cluster.workers as u32,
            train: Some(wire::dataset(&ctx.train)),
            eval: ctx.eval.as_deref().map(wire::dataset),
        }))
    }

    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.into_inner();
        let now = self.shared.now_ms();
        let limit = Duration::from_millis(self.cluster().join_timeout_ms);
        let c = self.cluster();
        let running = {
            let st = self.shared.lock();
            failed(&st)?;
            st.membership.generation() > 0
        };
        if running {
            return self.join_running(r, limit).await;
        }
        let me = {
            let mut st = self.shared.lock();
            let m = st
                .membership
                .register(
                    &r.worker_name,
                    &r.peer_addr,
                    r.config_hash,
                    r.layout_hash,
                    now,
                )
                .map_err(|e| {
                    warn!(worker = %r.worker_name, error = %e, "registration refused");
                    CoordinatorError::from(e)
                })?;
            info!(worker = %m.id, rank = m.rank, name = %m.name, peer = %m.peer_addr, "registered");
            m
        };
        self.shared.changed();
        let shared = self.shared.clone();
        let ring = self
            .shared
            .wait_for(limit, "waiting for every worker to register", |st| {
                if st.membership.generation() == 0 {
                    return None;
                }
                // Heartbeats count from the moment the ring exists.
                let now = shared.now_ms();
                st.membership.heartbeat(&me.id, now);
                let generation = st.membership.generation();
                Some(live_member(st, &me.id).map(|m| {
                    (
                        m.rank,
                        generation,
                        wire::ring(st.membership.members(), generation),
                    )
                }))
            })
            .await??;
        Ok(Response::new(pb::RegisterResponse {
            worker_id: me.id,
            generation: ring.1,
            rank: ring.0 as u32,
            ring: ring.2,
            heartbeat_interval_ms: c.heartbeat_interval_ms,
            lease_timeout_ms: c.heartbeat_timeout_ms,
            joined_mid_job: false,
            donor_rank: 0,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let now = self.shared.now_ms();
        let mut st = self.shared.lock();
        live_member(&st, &r.worker_id)?;
        st.membership.heartbeat(&r.worker_id, now);
        Ok(Response::new(pb::HeartbeatResponse {
            generation: st.membership.generation(),
            ring: wire::ring(st.membership.members(), st.membership.generation()),
            shutdown: st.failed.is_some() || st.done,
        }))
    }

    async fn rejoin(
        &self,
        req: Request<pb::RejoinRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.into_inner();
        live_member(&self.shared.lock(), &r.worker_id)?;
        let c = self.cluster();
        // A death is noticed within the heartbeat timeout; a worker interrupted by anything
        // else finds no new generation and gives up after a few timeouts.
        let limit = Duration::from_millis(c.heartbeat_timeout_ms.saturating_mul(3));
        let what = format!(
            "{}: waiting for a generation after {}",
            r.worker_id, r.generation
        );
        let answer = self
            .shared
            .wait_for(limit, &what, |st| {
                let me = match live_member(st, &r.worker_id) {
                    Ok(m) => m,
                    Err(e) => return Some(Err(e)),
                };
                let generation = st.membership.generation();
                (generation > r.generation).then(|| {
                    Ok(pb::RegisterResponse {
                        worker_id: me.id.clone(),
                        generation,
                        rank: me.rank as u32,
                        ring: wire::ring(st.membership.members(), generation),
                        heartbeat_interval_ms: c.heartbeat_interval_ms,
                        lease_timeout_ms: c.heartbeat_timeout_ms,
                        joined_mid_job: false,
                        donor_rank: st.membership.donor().map_or(0, |d| d.rank as u32),
                    })
                })
            })
            .await??;
        info!(worker = %answer.worker_id, rank = answer.rank, generation = answer.generation, "rejoined");
        Ok(Response::new(answer))
    }

    async fn next_lease(
        &self,
        req: Request<pb::NextLeaseRequest>,
    ) -> Result<Response<pb::NextLeaseResponse>, Status> {
        let r = req.into_inner();
        let mut st = self.shared.lock();
        failed(&st)?;
        // Any generation: a reader may ask just before its worker learns of a new one.
        let me = live_member(&st, &r.worker_id)?;
        let epochs = self.shared.ctx.job.spec.train.epochs;
        if r.epoch as usize >= epochs {
            return Err(CoordinatorError::Invalid(format!(
                "epoch {} asked for; the job has {epochs} epochs (0-based)",
                r.epoch
            ))
            .into());
        }
        let plan = self.shared.plan(&mut st, r.epoch);
        let generation = st.membership.generation();
        // Whoever serves the slot may ask, any number of times: the ledger refuses a row
        // committed twice, whoever sends it.
        let slots = st.membership.expected();
        if r.slot as usize >= slots {
            return Err(CoordinatorError::Invalid(format!(
                "NextLease of {}: data slot {} of {slots}",
                me.id, r.slot
            ))
            .into());
        }
        let lease = self
            .shared
            .book(&mut st, r.epoch)
            .lease(r.slot as usize, r.index as usize);
        let Some(index) = lease else {
            return Ok(Response::new(pb::NextLeaseResponse {
                lease: None,
                epoch_done: true,
                generation,
            }));
        };
        let lease = &plan[index];
        let consumed = st
            .ledger
            .consumed(lease.id)
            .map(|c| c.to_le_bytes())
            .unwrap_or_default();
        if !consumed.is_empty() {
            info!(worker = %me.id, slot = r.slot, lease = lease.id, committed = st.ledger.cursor(lease.id), "a lease with committed rows handed out again");
        }
        let expires = self.shared.now_ms() + self.cluster().heartbeat_timeout_ms;
        Ok(Response::new(pb::NextLeaseResponse {
            lease: Some(wire::lease(
                lease,
                &self.shared.ctx.train,
                consumed,
                expires,
            )),
            epoch_done: false,
            generation,
        }))
    }

    async fn commit_step(
        &self,
        req: Request<pb::CommitStepRequest>,
    ) -> Result<Response<pb::CommitStepResponse>, Status> {
        let r = req.into_inner();
        let step = r.step;
        // The epoch-ending step has the number of the next epoch's first step and comes before
        // it: its round sits between step `step - 1`'s round and step `step`'s.
        let round = 2 * step + u64::from(!r.epoch_end);
        let not_committed = |generation: u64, reason: String| {
            Ok(Response::new(pb::CommitStepResponse {
                committed: false,
                generation,
                reason,
            }))
        };
        {
            let mut st = self.shared.lock();
            failed(&st)?;
            let me = live_member(&st, &r.worker_id)?;
            let current = st.membership.generation();
            if r.generation != current {
                return not_committed(
                    current,
                    format!(
                        "the ring is in generation {current}, the step was reduced in {}",
                        r.generation
                    ),
                );
            }
            let expected = st.membership.layout_hash().unwrap_or(r.layout_hash);
            if r.layout_hash != expected {
                return Err(CoordinatorError::Layout {
                    worker: me.id,
                    got: r.layout_hash,
                    expected,
                }
                .into());
            }
            if r.epoch_end && !r.rows.is_empty() {
                return Err(CoordinatorError::Invalid(format!(
                    "CommitStep of {}: the epoch-ending step {step} reports rows",
                    me.id
                ))
                .into());
            }
            let rows = self.lease_rows(&mut st, &me.id, &r.rows)?;
            st.ledger
                .check(&rows)
                .map_err(|problem| CoordinatorError::Ledger {
                    worker: me.id.clone(),
                    problem,
                })?;
            let outcome =
                st.steps
                    .vote(me.rank, round, rows)
                    .map_err(|refusal| CoordinatorError::Vote {
                        what: format!("step {step} of {}", me.id),
                        refusal,
                    })?;
            if let VoteOutcome::Completed(all) = outcome {
                if r.epoch_end {
                    st.at_barrier = true;
                }
                let all: Vec<LeaseRows> = all.into_iter().flatten().collect();
                if let Err(problem) = st.ledger.commit(step, &all) {
                    // Two workers reported the same row: exactly-once cannot hold.
                    drop(st);
                    self.shared.fail(format!(
                        "step {step}: rows of two workers overlap: {problem}"
                    ));
                    return Err(CoordinatorError::JobFailed(problem.to_string()).into());
                }
                if self.shared.ctx.job.spec.cluster.audit && !r.epoch_end {
                    self.record_audit(&mut st, step, &all);
                }
                if !r.epoch_end && kill_after_step() == Some(step) {
                    funnel_common::fault::sigkill_self(&format!(
                        "coordinator after committing step {step}"
                    ));
                }
                drop(st);
                self.shared.changed();
            }
        }
        let limit = Duration::from_millis(self.cluster().step_timeout_ms);
        let what = format!("step {step}: waiting for every worker's vote");
        let generation = r.generation;
        let waited = self
            .shared
            .wait_for(limit, &what, |st| {
                // Completion first: a round that completed stays committed whatever follows.
                if st.steps.is_completed(round) {
                    Some(None)
                } else if st.membership.generation() != generation {
                    Some(Some(st.membership.generation()))
                } else {
                    None
                }
            })
            .await;
        if let Err(CoordinatorError::Timeout(reason)) = &waited {
            // Members alive (heartbeating) that never vote stall everyone: fence them, so the
            // others go on in a new generation (a stuck process, a one-way partition).
            let silent: Vec<String> = {
                let st = self.shared.lock();
                let voters = st.steps.voters();
                st.membership
                    .members()
                    .iter()
                    .filter(|m| !voters.contains(&m.rank))
                    .map(|m| m.id.clone())
                    .collect()
            };
            warn!(step, silent = ?silent, "{reason}");
            self.shared.remove_workers(
                &silent,
                &format!("no vote for step {step} in {} ms", limit.as_millis()),
            );
            let current = self.shared.lock().membership.generation();
            return not_committed(current, reason.clone());
        }
        match waited? {
            None => {
                if !r.epoch_end {
                    let mut st = self.shared.lock();
                    st.telemetry
                        .committed(step, r.stats.as_ref(), std::time::Instant::now());
                }
                Ok(Response::new(pb::CommitStepResponse {
                    committed: true,
                    generation,
                    reason: String::new(),
                }))
            }
            Some(current) => {
                self.shared.lock().telemetry.redone();
                not_committed(
                    current,
                    format!("the ring changed to generation {current} before every worker voted"),
                )
            }
        }
    }

    async fn report_epoch(
        &self,
        req: Request<pb::ReportEpochRequest>,
    ) -> Result<Response<pb::ReportEpochResponse>, Status> {
        let r = req.into_inner();
        let epoch = r.epoch;
        let interrupted = |current: u64| {
            Ok(Response::new(pb::ReportEpochResponse {
                task_weights: Vec::new(),
                completed: false,
                generation: current,
            }))
        };
        let mut audit = None;
        let mut journal_entry = None;
        {
            let mut st = self.shared.lock();
            failed(&st)?;
            let me = live_member(&st, &r.worker_id)?;
            let current = st.membership.generation();
            if r.generation != current {
                return interrupted(current);
            }
            let report = EpochReport {
                losses: r
                    .losses
                    .iter()
                    .map(|l| (l.task.clone(), l.loss_sum, l.samples))
                    .collect(),
                checkpoint: (!r.checkpoint.is_empty()).then(|| r.checkpoint.clone()),
                grad_norms: r.grad_norms.clone(),
                initial_losses: r.initial_losses.clone(),
            };
            let outcome = st
                .epochs
                .vote(me.rank, u64::from(epoch), report)
                .map_err(|refusal| CoordinatorError::Vote {
                    what: format!("epoch {epoch} of {}", me.id),
                    refusal,
                })?;
            if let VoteOutcome::Completed(reports) = outcome {
                if let Some(c) = reports.iter().find_map(|r| r.checkpoint.clone()) {
                    info!(epoch, checkpoint = %c, "checkpoint committed");
                    st.checkpoint = Some(c);
                }
                // Every rank reports the same all-reduced numbers: rank 0's stand for all.
                if let Some(first) = reports.first() {
                    let losses: Vec<f64> = first
                        .losses
                        .iter()
                        .map(|(_, sum, n)| sum / (*n).max(1) as f64)
                        .collect();
                    if st.weighting.initial_losses.is_none() && !first.initial_losses.is_empty() {
                        st.weighting.initial_losses = Some(first.initial_losses.clone());
                    }
                    let norms = (!first.grad_norms.is_empty()).then_some(&first.grad_norms[..]);
                    let spec = &self.shared.ctx.job.spec.loss;
                    let next = st.weighting.end_epoch(spec, &losses, norms);
                    info!(epoch, weights = ?next, "task weights for the next epoch");
                }
                st.epoch = epoch + 1;
                st.at_barrier = false;
                if st.epoch as usize >= self.shared.ctx.job.spec.train.epochs {
                    st.done = true;
                }
                let rows = st.ledger.epoch_rows(epoch);
                let planned = self.shared.ctx.train.total_rows();
                if rows == planned {
                    info!(epoch, rows, "epoch complete: every row committed once");
                } else {
                    // Fewer only when the decoder skipped bad rows (data.bad_rows = "skip"); the
                    // ledger refuses a row twice, so never more.
                    warn!(
                        epoch,
                        rows, planned, "epoch complete with rows not committed"
                    );
                }
                if self.shared.ctx.job.spec.cluster.audit {
                    audit = Some(st.audit.remove(&epoch).unwrap_or_default());
                }
                journal_entry = Some(Journal {
                    format: crate::journal::FORMAT,
                    config_hash: format!("{:016x}", self.shared.ctx.config_hash),
                    epochs_done: st.epoch,
                    step: st.ledger.committed_step().unwrap_or(0),
                    generation: st.membership.generation(),
                    weights: st.weighting.weights.clone(),
                    failures: st.failures.clone(),
                    data: crate::journal::objects(&self.shared.ctx.train),
                });
            }
        }
        if let Some(j) = journal_entry {
            if let Err(e) = crate::journal::write(&self.shared.ctx.output, &j).await {
                self.shared.fail(format!("epoch {epoch}: journal: {e}"));
            }
            // Rank 0 wrote the epoch's record before reporting; the status page shows it.
            tokio::spawn(support::refresh_epoch_records(self.shared.clone()));
        }
        if let Some(rows) = audit {
            // Written before anyone is told the epoch completed, so a finished job has it.
            let output = &self.shared.ctx.output;
            match funnel_common::audit::write_epoch(output, epoch, &rows).await {
                Ok(url) => info!(epoch, rows = rows.len(), audit = %url, "audit written"),
                Err(e) => self.shared.fail(format!("epoch {epoch}: audit: {e}")),
            }
        }
        self.shared.changed();
        let limit = Duration::from_millis(self.cluster().join_timeout_ms);
        let what = format!("epoch {epoch}: waiting for every worker's report");
        let learned_on_workers =
            funnel_common::weighting::learned_on_workers(&self.shared.ctx.job.spec.loss);
        let generation = r.generation;
        let answer = self
            .shared
            .wait_for(limit, &what, |st| {
                if st.epochs.is_completed(u64::from(epoch)) {
                    Some(Ok(if learned_on_workers {
                        Vec::new()
                    } else {
                        st.weighting.weights.clone()
                    }))
                } else if st.membership.generation() != generation {
                    Some(Err(st.membership.generation()))
                } else {
                    None
                }
            })
            .await?;
        match answer {
            Ok(weights) => Ok(Response::new(pb::ReportEpochResponse {
                task_weights: weights,
                completed: true,
                generation,
            })),
            Err(current) => interrupted(current),
        }
    }

    async fn report_peer(
        &self,
        req: Request<pb::ReportPeerRequest>,
    ) -> Result<Response<pb::ReportPeerResponse>, Status> {
        let r = req.into_inner();
        let accused = {
            let st = self.shared.lock();
            failed(&st)?;
            let me = live_member(&st, &r.worker_id)?;
            let current = st.membership.generation();
            // A report about an older ring is moot: that ring is gone.
            (r.generation == current && st.membership.member(&r.peer_worker_id).is_some())
                .then(|| {
                    warn!(reporter = %me.id, peer = %r.peer_worker_id, reason = %r.reason, "a worker refused its neighbour's message; fencing the sender");
                    r.peer_worker_id.clone()
                })
        };
        if let Some(peer) = accused {
            let why = format!("{} refused its message: {}", r.worker_id, r.reason);
            self.shared.remove_workers(&[peer], &why);
        }
        let generation = self.shared.lock().membership.generation();
        Ok(Response::new(pb::ReportPeerResponse { generation }))
    }

    async fn job_status(
        &self,
        _req: Request<pb::JobStatusRequest>,
    ) -> Result<Response<pb::JobStatusResponse>, Status> {
        let st = self.shared.lock();
        let state = match (&st.failed, st.done, st.membership.generation()) {
            (Some(r), _, _) => format!("failed: {r}"),
            (None, true, _) => "done".to_string(),
            (None, false, 0) => "waiting for workers".to_string(),
            (None, false, _) => "training".to_string(),
        };
        Ok(Response::new(pb::JobStatusResponse {
            generation: st.membership.generation(),
            epoch: st.epoch,
            committed_step: st.ledger.committed_step().unwrap_or(0),
            workers: st
                .membership
                .members()
                .iter()
                .map(|m| pb::WorkerStatus {
                    worker_id: m.id.clone(),
                    rank: m.rank as u32,
                    peer_addr: m.peer_addr.clone(),
                    last_heartbeat_ms: m.last_seen_ms,
                })
                .collect(),
            state,
        }))
    }
}
