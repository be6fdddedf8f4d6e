//! What the RPC handlers share: who is calling (a live, unfenced member), the rows a commit
//! vote reports (checked against the plans), the audit record of committed rows, admitting a
//! worker into a running job, the coordinator's kill hook for fault tests, and refreshing the
//! status page's epoch records.

use std::sync::Arc;
use std::time::Duration;

use funnel_common::audit::AuditRow;
use funnel_proto::v1 as pb;
use tonic::{Response, Status};
use tracing::warn;

use super::CoordinatorService;
use crate::error::CoordinatorError;
use crate::ledger::LeaseRows;
use crate::membership::Member;
use crate::state::{Shared, State};
use crate::wire;

impl CoordinatorService {
    pub(super) fn cluster(&self) -> &funnel_common::spec::ClusterSpec {
        &self.shared.ctx.job.spec.cluster
    }

    /// A commit vote's rows, checked against the plans: each lease of a planned epoch, row
    /// indices as whole little-endian u32s.
    pub(super) fn lease_rows(
        &self,
        st: &mut State,
        worker: &str,
        reported: &[pb::LeaseRows],
    ) -> Result<Vec<LeaseRows>, CoordinatorError> {
        let bad =
            |what: String| CoordinatorError::Invalid(format!("CommitStep of {worker}: {what}"));
        let epochs = self.shared.ctx.job.spec.train.epochs;
        reported
            .iter()
            .map(|l| {
                let (epoch, index) = (
                    (l.lease_id >> 32) as u32,
                    (l.lease_id & 0xFFFF_FFFF) as usize,
                );
                if epoch as usize >= epochs {
                    return Err(bad(format!("lease {:#x} of epoch {epoch}", l.lease_id)));
                }
                let plan = self.shared.plan(st, epoch);
                let lease = plan
                    .get(index)
                    .ok_or_else(|| bad(format!("lease {:#x} is not in the plan", l.lease_id)))?;
                let object = &self.shared.ctx.train.objects[lease.shard.object];
                let lease_rows = lease
                    .shard
                    .row_groups
                    .clone()
                    .map(|g| object.row_groups[g])
                    .sum();
                if l.rows.len() % 4 != 0 {
                    return Err(bad(format!(
                        "lease {:#x}: {} bytes of rows, not whole u32s",
                        l.lease_id,
                        l.rows.len()
                    )));
                }
                let rows = l
                    .rows
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Ok(LeaseRows {
                    lease: l.lease_id,
                    lease_rows,
                    rows,
                })
            })
            .collect()
    }

    /// Admits a worker into the running job at the next step boundary once the ring has a
    /// free place (a member was lost) and no epoch is ending: a new generation with it as the
    /// last rank. The ring's in-flight step is dropped
    /// and redone with it; it takes the ring's state from the donor.
    pub(super) async fn join_running(
        &self,
        r: pb::RegisterRequest,
        limit: Duration,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let shared = self.shared.clone();
        let what = format!("{}: waiting to join at a step boundary", r.worker_name);
        let joined = self
            .shared
            .wait_for(limit, &what, |st| {
                // A spare worker waits for a place (a member lost), as torchrun's spare nodes
                // do; nobody joins while an epoch ends.
                let full = st.membership.members().len() >= st.membership.expected();
                if full || st.at_barrier || !st.epochs.voters().is_empty() {
                    return None;
                }
                let now = shared.now_ms();
                let m = match st.membership.join(
                    &r.worker_name,
                    &r.peer_addr,
                    r.config_hash,
                    r.layout_hash,
                    now,
                ) {
                    Ok(m) => m,
                    Err(e) => return Some(Err(CoordinatorError::from(e))),
                };
                let members = st.membership.members().len();
                let aborted = st.steps.abort_open(members);
                st.epochs.abort_open(members);
                let generation = st.membership.generation();
                let donor = st.membership.donor().map_or(0, |d| d.rank);
                warn!(worker = %m.id, name = %m.name, rank = m.rank, generation, donor, aborted_step = ?aborted, "worker joined the running job");
                Some(Ok((m, generation, donor, wire::ring(st.membership.members(), generation))))
            })
            .await?
            .inspect_err(|e| warn!(worker = %r.worker_name, error = %e, "join refused"))?;
        self.shared.changed();
        let (me, generation, donor, ring) = joined;
        let c = self.cluster();
        Ok(Response::new(pb::RegisterResponse {
            worker_id: me.id,
            generation,
            rank: me.rank as u32,
            ring,
            heartbeat_interval_ms: c.heartbeat_interval_ms,
            lease_timeout_ms: c.heartbeat_timeout_ms,
            joined_mid_job: true,
            donor_rank: donor as u32,
        }))
    }

    /// Keeps the coordinates of committed `step`'s rows for the epoch's audit file.
    pub(super) fn record_audit(&self, st: &mut State, step: u64, rows: &[LeaseRows]) {
        for l in rows {
            let epoch = (l.lease >> 32) as u32;
            let plan = self.shared.plan(st, epoch);
            let Some(lease) = plan.get((l.lease & 0xFFFF_FFFF) as usize) else {
                continue;
            };
            let out = st.audit.entry(epoch).or_default();
            out.extend(l.rows.iter().map(|&row| AuditRow {
                step,
                object: lease.shard.object as u32,
                row_group: lease.shard.row_groups.start as u32,
                row,
            }));
        }
    }
}

/// The caller, checked: a live member (of any generation), not fenced out.
pub(super) fn live_member(st: &State, worker: &str) -> Result<Member, CoordinatorError> {
    if let Some(reason) = st.membership.fenced(worker) {
        return Err(CoordinatorError::Fenced {
            worker: worker.to_string(),
            reason: reason.to_string(),
        });
    }
    st.membership
        .member(worker)
        .cloned()
        .ok_or_else(|| CoordinatorError::UnknownWorker(worker.to_string()))
}

/// `FUNNEL_FAULT_KILL_COORDINATOR=<step>`: the coordinator SIGKILLs itself right after
/// committing that step, before answering the votes (end-to-end tests of its restart).
pub(super) fn kill_after_step() -> Option<u64> {
    static STEP: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *STEP.get_or_init(|| {
        let v = std::env::var("FUNNEL_FAULT_KILL_COORDINATOR").ok()?;
        match v.trim().parse() {
            Ok(step) => {
                warn!(step, "fault injection: the coordinator will kill itself");
                Some(step)
            }
            Err(_) => {
                warn!(value = %v, "FUNNEL_FAULT_KILL_COORDINATOR is not a step number; ignored");
                None
            }
        }
    })
}

pub(super) fn failed(st: &State) -> Result<(), CoordinatorError> {
    match &st.failed {
        Some(r) => Err(CoordinatorError::JobFailed(r.clone())),
        None => Ok(()),
    }
}

/// Reads `<output>/metrics.jsonl` into the telemetry's epoch records (the status page's
/// curves). A failed read only costs the page its curves until the next epoch: logged.
pub(super) async fn refresh_epoch_records(shared: Arc<Shared>) {
    let output = shared.ctx.output.clone();
    let read = async {
        let out = funnel_common::store::StoreUrl::open(&output, "output")?;
        let bytes = out.read(&out.child("metrics.jsonl")).await?;
        Ok::<_, funnel_common::Error>(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read.await {
        Ok(text) => {
            let records = crate::telemetry::parse_metrics_jsonl(&text);
            shared.lock().telemetry.epochs = records;
        }
        Err(e) => warn!(error = %e, "metrics.jsonl not read for the status page"),
    }
}
