//! `funnel worker`: one member of a distributed job (DESIGN §5). It fetches the job from the
//! coordinator, starts its `Peer` server, registers, opens its ring links, and trains epoch by
//! epoch on the calling (training) thread; I/O, heartbeats and the ring run on the runtime.
//!
//! - [`coordinator`]: the coordinator client and the job it serves.
//! - [`leases`]: leases to batches, with ledger cursors.
//! - [`pack`]: the step's flat all-reduce buffer.
//! - [`faults`]: deterministic self-kills at a step and phase, for end-to-end fault tests.
//! - [`generation`]: the ring of the current generation: lazy links, interruptions, rejoining.
//! - [`snapshot`]: the ring's state handed to a worker that joins a running job.
//! - [`step`]: the step loop (compute, all-reduce, sparse exchange, vote, apply; redo after an
//!   interruption).
//! - [`epoch`]: the epochs and their ends (rank 0 evaluates and checkpoints; everyone meets at
//!   the epoch barrier).

pub mod coordinator;
pub mod epoch;
pub mod faults;
pub mod feeds;
pub mod generation;
pub mod leases;
pub mod pack;
pub mod snapshot;
pub mod step;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use funnel_common::columns::DecodePlan;
use funnel_common::reader::ShardReader;
use funnel_common::telemetry::rate_limit::RateLimit;
use funnel_proto::tls::Security;
use funnel_proto::v1 as pb;
use tokio::runtime::Handle;
use tracing::{info, info_span, warn};

use crate::WorkerError;
use crate::local::{RunSummary, start_state};
use crate::ring::RingConfig;
use crate::telemetry::WorkerTelemetry;
use crate::transport::PeerNode;
use generation::RingSession;
use tokio::sync::watch;

/// How to run a worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The coordinator's URL (`http://host:port`).
    pub coordinator: String,
    /// The job token, and TLS when configured.
    pub security: Security,
    /// Where the `Peer` server listens (`127.0.0.1:0` = an ephemeral port on loopback).
    pub listen: SocketAddr,
    /// The address peers reach it at, when not the bound one (behind NAT, in a pod).
    pub advertise: Option<String>,
    /// Compute threads (0 = the job's `train.threads`, else one per core).
    pub threads: usize,
    /// Show a progress bar (when stderr is a terminal).
    pub progress: bool,
    /// Print `progress {json}` lines on stdout (rank 0), for a launcher to draw.
    pub progress_lines: bool,
    /// A name for logs (host and pid by default).
    pub name: String,
    /// Where the HTTP `/healthz` and `/metrics` listen (none: not served).
    pub http_listen: Option<SocketAddr>,
}

/// Runs one worker to the end of the job, on this thread; `runtime` runs the I/O.
///
/// If the coordinator goes away mid-job, the worker reconnects (for up to a minute, with
/// backoff), resumes from the output's latest checkpoint and registers with the restarted
/// coordinator: the rows consumed after that checkpoint are replayed together with the model's
/// rollback, so exactly-once holds for the model's state (DESIGN §6).
pub fn run_worker(opts: &WorkerOptions, runtime: &Handle) -> Result<RunSummary, WorkerError> {
    let telemetry = Arc::new(WorkerTelemetry::default());
    if let Some(addr) = opts.http_listen {
        let bound = runtime
            .block_on(crate::telemetry::start_http(addr, telemetry.clone()))
            .map_err(|e| WorkerError::Internal(e.to_string()))?;
        println!(
            "{}{}",
            crate::telemetry::HTTP_LISTENING,
            funnel_common::telemetry::http_url(bound)
        );
    }
    let mut restarts = 0u32;
    loop {
        match run_session(opts, &telemetry, runtime) {
            Err(WorkerError::CoordinatorLost(why)) => {
                restarts += 1;
                telemetry.update(|c| c.coordinator_restarts += 1);
                warn!(restarts, cause = %why, "coordinator lost; reconnecting to resume from the latest checkpoint");
            }
            other => return other,
        }
    }
}

/// One registration with one coordinator run: to the end of the job, or until it is lost.
fn run_session(
    opts: &WorkerOptions,
    telemetry: &Arc<WorkerTelemetry>,
    runtime: &Handle,
) -> Result<RunSummary, WorkerError> {
    let mut client = runtime.block_on(coordinator::connect(
        &opts.coordinator,
        &opts.security,
        Duration::from_secs(60),
    ))?;
    let served = runtime.block_on(coordinator::fetch_job(&mut client, &opts.coordinator))?;
    let job = served.job.clone();
    let span = info_span!(
        "worker",
        job = %job.spec.name,
        name = %opts.name,
        worker = tracing::field::Empty
    );
    let _span = span.enter();
    let threads = if opts.threads > 0 {
        opts.threads
    } else {
        job.spec.train.threads
    };
    crate::threads::init_compute_threads(threads);

    // Every worker starts from the same state: the output's latest checkpoint, or the seed.
    let (mut trainer, mut state) = start_state(&job, &served.output, runtime)?;
    if state.epochs_done >= job.spec.train.epochs as u64 {
        // The job completed before a coordinator restart: nothing left to train.
        info!(
            epochs = state.epochs_done,
            "the job's last epoch is already checkpointed"
        );
        return Ok(RunSummary {
            steps: state.step,
            epochs: state.epochs_done,
            epochs_run: 0,
            checkpoint: None,
            history: state.history,
        });
    }
    let layout_hash = trainer.model().layout_hash();
    let transport = job.spec.cluster.ring_transport;
    crate::transport::ring_transport(transport, opts.security.tls.is_some())
        .map_err(WorkerError::Unsupported)?;

    let node = {
        let _guard = runtime.enter();
        runtime
            .block_on(PeerNode::start(opts.listen, &opts.security))
            .map_err(|e| WorkerError::Internal(format!("peer server on {}: {e}", opts.listen)))?
    };
    let peer_addr = opts
        .advertise
        .clone()
        .unwrap_or_else(|| node.addr().to_string());
    let reg = runtime
        .block_on(client.register(pb::RegisterRequest {
            config_hash: served.config_hash,
            layout_hash,
            peer_addr: peer_addr.clone(),
            worker_name: opts.name.clone(),
        }))
        .map_err(|s| coordinator::refused("Register", s))?
        .into_inner();
    info!(worker = %reg.worker_id, rank = reg.rank, ranks = reg.ring.len(), generation = reg.generation, peer = %peer_addr, "joined the ring");
    span.record("worker", reg.worker_id.as_str());
    telemetry.update(|c| {
        c.worker_id.clone_from(&reg.worker_id);
        c.tasks = job.funnel.targets().map(|(_, s)| s.name.clone()).collect();
    });
    let heartbeat_every = Duration::from_millis(reg.heartbeat_interval_ms.max(10));
    let (joined_mid_job, donor_rank) = (reg.joined_mid_job, reg.donor_rank as usize);
    let ring = RingSession::new(
        node,
        opts.security.clone(),
        transport,
        reg,
        RingConfig {
            rank: 0,
            size: 1,
            chunk_len: job.spec.cluster.chunk_values,
            recv_timeout: Duration::from_millis(job.spec.cluster.step_timeout_ms),
        },
    )?;
    let heartbeat = runtime.spawn(heartbeats(
        client.clone(),
        ring.worker_id.clone(),
        ring.news.clone(),
        heartbeat_every,
    ));
    // A worker admitted into a running job starts from the ring's state, not a checkpoint.
    let joined_with = if joined_mid_job {
        let donor = ring.peer(donor_rank)?;
        let bytes = runtime.block_on(crate::transport::client::fetch_state(
            &donor,
            &opts.security,
            ring.generation,
        ))?;
        let (t, s, sums) = snapshot::decode(job.clone(), bytes, &donor.to_string())?;
        warn!(donor = %donor, step = s.step, epoch = s.epochs_done, generation = ring.generation, "joined the running job with the ring's state");
        (trainer, state) = (t, s);
        Some(sums)
    } else {
        None
    };

    let data = &job.spec.data;
    let plan = Arc::new(DecodePlan::new(&job));
    let reader = |m: &Arc<funnel_common::manifest::DatasetManifest>| {
        ShardReader::new(
            m.clone(),
            plan.clone(),
            data.decode_threads,
            data.read_batch_rows,
        )
    };
    let ctx = epoch::ClusterContext {
        client,
        ring,
        layout_hash,
        train: served.train.clone(),
        train_reader: reader(&served.train),
        eval: served.eval.as_ref().map(|m| (m.clone(), reader(m))),
        output: served.output.clone(),
        progress: opts.progress,
        progress_lines: opts.progress_lines,
        telemetry: telemetry.clone(),
    };
    let result = epoch::train_epochs(trainer, state, ctx, joined_with, runtime);
    heartbeat.abort();
    result
}

/// Heartbeats until the task is aborted, publishing the coordinator's generation: a worker
/// waiting on a ring that lost a member learns here that a new one formed. A failed job, a
/// fenced worker or an unreachable coordinator is logged here and surfaces in the training
/// thread's next call.
async fn heartbeats(
    mut client: coordinator::Client,
    worker_id: String,
    news: Arc<watch::Sender<u64>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    // A coordinator that is down fails every heartbeat: one line per 5 s, with the count.
    let mut failures = RateLimit::new(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let generation = *news.borrow();
        let sent = client
            .heartbeat(pb::HeartbeatRequest {
                worker_id: worker_id.clone(),
                generation,
                last_committed_step: 0,
            })
            .await;
        match sent {
            Ok(r) if r.get_ref().shutdown => {
                info!("the coordinator says the job is over");
                return;
            }
            Ok(r) => {
                let g = r.get_ref().generation;
                news.send_if_modified(|known| {
                    let newer = g > *known;
                    if newer {
                        *known = g;
                    }
                    newer
                });
            }
            Err(s) => {
                if let Some(suppressed) = failures.check(std::time::Instant::now()) {
                    warn!(status = %s.message(), suppressed, "heartbeat failed");
                }
            }
        }
    }
}
