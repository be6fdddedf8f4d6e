//! Running a coordinator: load the job, list the data once, serve `funnel.v1.Coordinator` with
//! the job token, watch heartbeats, and end when the last epoch completes (Ok) or the job fails
//! (Err, with the reason).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use funnel_common::columns::DecodePlan;
use funnel_common::manifest::DatasetManifest;
use funnel_common::spec::{Job, JobSpec};
use funnel_common::weighting::WeightingState;
use funnel_proto::tls::Security;
use funnel_proto::v1::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tracing::{Instrument, info, info_span};

use crate::error::CoordinatorError;
use crate::journal;
use crate::service::CoordinatorService;
use crate::state::{JobContext, Shared};

/// The gRPC service name health reports on.
const COORDINATOR_SERVICE: &str = "funnel.v1.Coordinator";

/// How long a finished job's coordinator waits for calls still open before it exits anyway.
/// Workers' last calls (the final barrier, heartbeats told to stop) end within milliseconds.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// How a finished job ended.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    /// Epochs completed.
    pub epochs: u32,
    /// Last committed step.
    pub step: u64,
    /// The last checkpoint a worker committed.
    pub checkpoint: Option<String>,
}

/// The job context: the spec with `workers` applied, its text and hash, the data listed once.
pub async fn prepare(
    spec: JobSpec,
    origin: &str,
    output: String,
) -> Result<JobContext, CoordinatorError> {
    let spec_toml = toml::to_string(&spec)
        .map_err(|e| CoordinatorError::Invalid(format!("job spec cannot be serialised: {e}")))?;
    // Checked again from the text the workers will receive, so both sides parse the same thing.
    let job = Arc::new(Job::parse(&spec_toml, origin)?);
    let config_hash = xxhash_rust::xxh64::xxh64(spec_toml.as_bytes(), 0);
    let plan = DecodePlan::new(&job);
    let data = &job.spec.data;
    let train = DatasetManifest::build(&data.train, "data.train", data.io_concurrency).await?;
    train.check_schema(&plan)?;
    let eval = match &data.eval {
        Some(url) => {
            let m = DatasetManifest::build(url, "data.eval", data.io_concurrency).await?;
            m.check_schema(&plan)?;
            Some(Arc::new(m))
        }
        None => None,
    };
    info!(
        objects = train.objects.len(),
        row_groups = train.total_row_groups(),
        rows = train.total_rows(),
        "training data listed"
    );
    Ok(JobContext {
        job,
        spec_toml,
        config_hash,
        output,
        train: Arc::new(train),
        eval,
    })
}

/// The weighting state to start from: the one in the output's latest checkpoint (the workers
/// resume from it too), else `initial`.
pub async fn resume_weighting(
    output: &str,
    initial: WeightingState,
) -> Result<WeightingState, CoordinatorError> {
    let Some(name) = funnel_common::checkpoint::latest(output).await? else {
        return Ok(initial);
    };
    let url = format!("{}/checkpoints/{name}", output.trim_end_matches('/'));
    let ckpt = funnel_common::checkpoint::open(&url).await?;
    let trainer: serde_json::Value = serde_json::from_slice(ckpt.file("trainer.json")?)
        .map_err(|e| CoordinatorError::Invalid(format!("{url}/trainer.json: {e}")))?;
    match trainer.get("weighting") {
        Some(w) => {
            let state: WeightingState = serde_json::from_value(w.clone()).map_err(|e| {
                CoordinatorError::Invalid(format!("{url}/trainer.json: weighting: {e}"))
            })?;
            info!(checkpoint = %url, weights = ?state.weights, "task weights resumed");
            Ok(state)
        }
        None => Ok(initial),
    }
}

/// The training data as the audit names it.
fn audit_dataset(train: &DatasetManifest) -> funnel_common::audit::AuditDataset {
    funnel_common::audit::AuditDataset {
        objects: train
            .objects
            .iter()
            .map(|o| funnel_common::audit::AuditObject {
                url: o.url.clone(),
                row_groups: o.row_groups.clone(),
            })
            .collect(),
    }
}

/// Epochs done in the output's latest checkpoint (0 without one).
async fn latest_epochs_done(output: &str) -> Result<u32, CoordinatorError> {
    let Some(name) = funnel_common::checkpoint::latest(output).await? else {
        return Ok(0);
    };
    let url = format!("{}/checkpoints/{name}", output.trim_end_matches('/'));
    let ckpt = funnel_common::checkpoint::open(&url).await?;
    let trainer: serde_json::Value = serde_json::from_slice(ckpt.file("trainer.json")?)
        .map_err(|e| CoordinatorError::Invalid(format!("{url}/trainer.json: {e}")))?;
    trainer
        .get("epochs_done")
        .and_then(|e| e.as_u64())
        .map(|e| e as u32)
        .ok_or_else(|| CoordinatorError::Invalid(format!("{url}/trainer.json: no epochs_done")))
}

/// Binds `listen` (port 0 = ephemeral); the bound address is known before serving.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, CoordinatorError> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| CoordinatorError::Server(format!("cannot listen on {listen}: {e}")))
}

/// Serves the job (see [`serve_job`]) with every line it logs, and every RPC handler's, in a
/// span naming the job.
pub async fn serve(
    ctx: JobContext,
    weighting: WeightingState,
    listener: TcpListener,
    http: Option<TcpListener>,
    security: &Security,
) -> Result<JobOutcome, CoordinatorError> {
    let span = info_span!("coordinator", job = %ctx.job.spec.name);
    serve_job(ctx, weighting, listener, http, security)
        .instrument(span)
        .await
}

/// Serves the job on `listener` (gRPC: `funnel.v1.Coordinator`, health, reflection) and, with
/// `http`, the operational HTTP endpoint ([`crate::http`]), until the job completes or fails.
async fn serve_job(
    ctx: JobContext,
    weighting: WeightingState,
    listener: TcpListener,
    http: Option<TcpListener>,
    security: &Security,
) -> Result<JobOutcome, CoordinatorError> {
    let token = &security.token;
    let cluster = ctx.job.spec.cluster.clone();
    // A restart: the journal must describe this spec and this data; the epochs done come from
    // the latest checkpoint (the model's state, which the workers load).
    let (epoch, generation) = match journal::read(&ctx.output).await? {
        Some(j) => {
            journal::check_resume(&j, ctx.config_hash, &journal::objects(&ctx.train))?;
            let epoch = latest_epochs_done(&ctx.output).await?;
            info!(
                epochs_done = epoch,
                journaled_epochs = j.epochs_done,
                generation = j.generation,
                failures = j.failures.len(),
                "resuming from the journal and the latest checkpoint"
            );
            (epoch, j.generation)
        }
        None => (0, 0),
    };
    if epoch as usize >= ctx.job.spec.train.epochs {
        info!(
            epochs = epoch,
            "the job's last epoch is already checkpointed"
        );
        return Ok(JobOutcome {
            epochs: epoch,
            step: 0,
            checkpoint: funnel_common::checkpoint::latest(&ctx.output).await?,
        });
    }
    if cluster.audit {
        funnel_common::audit::write_dataset(&ctx.output, &audit_dataset(&ctx.train)).await?;
    }
    let shared = Shared::new(ctx, weighting, epoch, generation);
    let service = tonic::service::interceptor::InterceptedService::new(
        CoordinatorServer::new(CoordinatorService::new(shared.clone()))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20),
        token.checker("funnel.v1.Coordinator"),
    );

    let (health, health_service) = funnel_proto::ops::health(&[COORDINATOR_SERVICE]).await;
    let reflection = tonic::service::interceptor::InterceptedService::new(
        funnel_proto::ops::reflection().map_err(CoordinatorError::Server)?,
        token.checker("grpc.reflection.v1.ServerReflection"),
    );
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = http.map(|listener| {
        funnel_common::telemetry::serve_http(
            listener,
            crate::http::router(shared.clone()),
            async move {
                let _ = http_stopped.await;
            },
        )
    });

    let watchdog = {
        let shared = shared.clone();
        tokio::spawn(
            async move {
                let every = Duration::from_millis(cluster.heartbeat_interval_ms.max(10) / 2 + 1);
                loop {
                    tokio::time::sleep(every).await;
                    let dead: Vec<(String, String)> = {
                        let st = shared.lock();
                        if st.failed.is_some() || st.done {
                            return;
                        }
                        if st.membership.generation() == 0 {
                            continue;
                        }
                        st.membership
                            .expired(shared.now_ms(), cluster.heartbeat_timeout_ms)
                            .iter()
                            .map(|m| {
                                let who = format!(
                                    "{} (rank {}, {}, peer {})",
                                    m.id, m.rank, m.name, m.peer_addr
                                );
                                (m.id.clone(), who)
                            })
                            .collect()
                    };
                    if !dead.is_empty() {
                        let (ids, who): (Vec<String>, Vec<String>) = dead.into_iter().unzip();
                        let reason = format!(
                            "no heartbeat for {} ms from {}",
                            cluster.heartbeat_timeout_ms,
                            who.join(", ")
                        );
                        shared.remove_workers(&ids, &reason);
                    }
                }
            }
            .instrument(tracing::Span::current()),
        )
    };

    let mut changes = shared.subscribe();
    // Says when shutdown began, so that draining is bounded (below).
    let (draining, drain_started) = tokio::sync::oneshot::channel::<()>();
    let finished = {
        let shared = shared.clone();
        async move {
            loop {
                {
                    let st = shared.lock();
                    if st.failed.is_some() || st.done {
                        break;
                    }
                }
                if changes.changed().await.is_err() {
                    break;
                }
            }
            let _ = draining.send(());
            // Let the last answers (the final epoch barrier, heartbeats saying shutdown) reach
            // the workers before the listener closes; graceful shutdown then waits for calls in
            // flight.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let job_name = shared.ctx.job.spec.name.clone();
    // Handlers run on tonic's tasks, outside the caller's span: each RPC gets its own, naming
    // the job and the method (the handlers add worker, generation, epoch and step).
    let mut builder = tonic::transport::Server::builder().trace_fn(
        move |req| tracing::info_span!("rpc", job = %job_name, method = %req.uri().path()),
    );
    if let Some(tls) = &security.tls {
        builder = builder
            .tls_config(tls.server().map_err(CoordinatorError::Server)?)
            .map_err(|e| CoordinatorError::Server(format!("TLS: {e}")))?;
    }
    let serving = builder
        .add_service(service)
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), finished);
    // Graceful shutdown waits for every open connection's calls. A peer that went silent
    // mid-call (a partition that held the connection open: tests/partition.rs hung on one)
    // would keep the finished job's coordinator alive forever, so the wait is bounded.
    let drain_limit = async {
        if drain_started.await.is_ok() {
            tokio::time::sleep(DRAIN_LIMIT).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::select! {
        served = serving => served,
        () = drain_limit => {
            tracing::warn!(
                limit_s = DRAIN_LIMIT.as_secs(),
                "shutdown: calls still open after the drain limit are dropped"
            );
            Ok(())
        }
    };
    watchdog.abort();
    health
        .set(funnel_proto::ops::ServingStatus::NotServing)
        .await;
    let _ = http_stop.send(());
    if let Some(task) = http_task {
        let _ = task.await;
    }
    served.map_err(|e| CoordinatorError::Server(e.to_string()))?;
    let st = shared.lock();
    if let Some(reason) = &st.failed {
        return Err(CoordinatorError::JobFailed(reason.clone()));
    }
    Ok(JobOutcome {
        epochs: st.epoch,
        step: st.ledger.committed_step().unwrap_or(0),
        checkpoint: st.checkpoint.clone(),
    })
}
