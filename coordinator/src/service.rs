//! The `funnel.v1.Coordinator` gRPC service: each call checks who is asking (worker id,
//! generation, layout), turns the request into a decision of the pure modules (membership,
//! plan, votes, ledger) and, for the calls that are barriers, waits on the shared state.

use std::sync::Arc;
use std::time::Duration;

use funnel_proto::v1 as pb;
use pb::coordinator_server::Coordinator;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::error::CoordinatorError;
use crate::membership::Member;
use crate::plan::nth_lease_of;
use crate::state::{EpochReport, Shared, State};
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

    fn cluster(&self) -> &funnel_common::spec::ClusterSpec {
        &self.shared.ctx.job.spec.cluster
    }
}

/// The caller, checked: a member of the current generation.
fn member_of(st: &State, worker: &str, generation: u64) -> Result<Member, CoordinatorError> {
    let m = st
        .membership
        .member(worker)
        .cloned()
        .ok_or_else(|| CoordinatorError::UnknownWorker(worker.to_string()))?;
    let current = st.membership.generation();
    if generation != current {
        return Err(CoordinatorError::Generation {
            worker: worker.to_string(),
            got: generation,
            current,
        });
    }
    Ok(m)
}

fn failed(st: &State) -> Result<(), CoordinatorError> {
    match &st.failed {
        Some(r) => Err(CoordinatorError::JobFailed(r.clone())),
        None => Ok(()),
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
        let me = {
            let mut st = self.shared.lock();
            failed(&st)?;
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
        let limit = Duration::from_millis(self.cluster().join_timeout_ms);
        let shared = self.shared.clone();
        let ring = self
            .shared
            .wait_for(limit, "waiting for every worker to register", |st| {
                (st.membership.generation() > 0).then(|| {
                    // Heartbeats count from the moment the ring exists.
                    let now = shared.now_ms();
                    st.membership.heartbeat(&me.id, now);
                    (
                        st.membership.generation(),
                        wire::ring(st.membership.members()),
                    )
                })
            })
            .await?;
        let c = self.cluster();
        Ok(Response::new(pb::RegisterResponse {
            worker_id: me.id,
            generation: ring.0,
            rank: me.rank as u32,
            ring: ring.1,
            heartbeat_interval_ms: c.heartbeat_interval_ms,
            lease_timeout_ms: c.heartbeat_timeout_ms,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let now = self.shared.now_ms();
        let mut st = self.shared.lock();
        if !st.membership.heartbeat(&r.worker_id, now) {
            return Err(CoordinatorError::UnknownWorker(r.worker_id).into());
        }
        Ok(Response::new(pb::HeartbeatResponse {
            generation: st.membership.generation(),
            ring: wire::ring(st.membership.members()),
            shutdown: st.failed.is_some() || st.done,
        }))
    }

    async fn next_lease(
        &self,
        req: Request<pb::NextLeaseRequest>,
    ) -> Result<Response<pb::NextLeaseResponse>, Status> {
        let r = req.into_inner();
        let mut st = self.shared.lock();
        failed(&st)?;
        let me = member_of(&st, &r.worker_id, r.generation)?;
        let epochs = self.shared.ctx.job.spec.train.epochs;
        if r.epoch as usize >= epochs {
            return Err(CoordinatorError::Invalid(format!(
                "epoch {} asked for; the job has {epochs} epochs (0-based)",
                r.epoch
            ))
            .into());
        }
        let plan = self.shared.plan(&mut st, r.epoch);
        let ranks = st.membership.expected();
        let k = st.served.entry((r.epoch, me.rank)).or_default();
        let lease = nth_lease_of(me.rank, ranks, *k, plan.len()).map(|i| &plan[i]);
        let Some(lease) = lease else {
            return Ok(Response::new(pb::NextLeaseResponse {
                lease: None,
                epoch_done: true,
            }));
        };
        *k += 1;
        let skip = st.ledger.cursor(lease.id);
        let expires = self.shared.now_ms() + self.cluster().heartbeat_timeout_ms;
        Ok(Response::new(pb::NextLeaseResponse {
            lease: Some(wire::lease(lease, &self.shared.ctx.train, skip, expires)),
            epoch_done: false,
        }))
    }

    async fn commit_step(
        &self,
        req: Request<pb::CommitStepRequest>,
    ) -> Result<Response<pb::CommitStepResponse>, Status> {
        let r = req.into_inner();
        let step = r.step;
        {
            let mut st = self.shared.lock();
            failed(&st)?;
            let me = member_of(&st, &r.worker_id, r.generation)?;
            let expected = st.membership.layout_hash().unwrap_or(r.layout_hash);
            if r.layout_hash != expected {
                return Err(CoordinatorError::Layout {
                    worker: me.id,
                    got: r.layout_hash,
                    expected,
                }
                .into());
            }
            let cursors = r
                .cursors
                .iter()
                .map(|c| (c.lease_id, c.rows_consumed))
                .collect();
            let outcome = st.steps.vote(me.rank, step, cursors).map_err(|refusal| {
                CoordinatorError::Vote {
                    what: format!("step {step} of {}", me.id),
                    refusal,
                }
            })?;
            if let VoteOutcome::Completed(all) = outcome {
                st.ledger.commit(step, all.into_iter().flatten());
                drop(st);
                self.shared.changed();
            }
        }
        let limit = Duration::from_millis(self.cluster().step_timeout_ms);
        let what = format!("step {step}: waiting for every worker's vote");
        let waited = self
            .shared
            .wait_for(limit, &what, |st| st.steps.is_completed(step).then_some(()))
            .await;
        if let Err(CoordinatorError::Timeout(reason)) = &waited {
            // A member that never votes stalls everyone: the job cannot go on (issue 6 re-forms
            // the ring instead).
            let voters = self.shared.lock().steps.voters();
            self.shared
                .fail(format!("{reason}; votes from ranks {voters:?} only"));
        }
        waited?;
        Ok(Response::new(pb::CommitStepResponse {
            committed: true,
            generation: r.generation,
            reason: String::new(),
        }))
    }

    async fn report_epoch(
        &self,
        req: Request<pb::ReportEpochRequest>,
    ) -> Result<Response<pb::ReportEpochResponse>, Status> {
        let r = req.into_inner();
        let epoch = r.epoch;
        {
            let mut st = self.shared.lock();
            failed(&st)?;
            let me = member_of(&st, &r.worker_id, r.generation)?;
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
                if st.epoch as usize >= self.shared.ctx.job.spec.train.epochs {
                    st.done = true;
                }
                info!(epoch, rows = st.ledger.epoch_rows(epoch), "epoch complete");
                drop(st);
                self.shared.changed();
            }
        }
        let limit = Duration::from_millis(self.cluster().join_timeout_ms);
        let what = format!("epoch {epoch}: waiting for every worker's report");
        let learned_on_workers =
            funnel_common::weighting::learned_on_workers(&self.shared.ctx.job.spec.loss);
        let weights = self
            .shared
            .wait_for(limit, &what, |st| {
                st.epochs.is_completed(u64::from(epoch)).then(|| {
                    if learned_on_workers {
                        Vec::new()
                    } else {
                        st.weighting.weights.clone()
                    }
                })
            })
            .await?;
        Ok(Response::new(pb::ReportEpochResponse {
            task_weights: weights,
        }))
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
