//! What a worker measures for operators, and its HTTP endpoint (`--http-listen`): `/healthz`
//! and `/metrics` (Prometheus text). The training thread updates the counters once per step
//! under a mutex held for microseconds; a scrape copies them and formats outside the lock.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use funnel_common::telemetry::prom::{CONTENT_TYPE, Exposition, Kind};

/// A worker's counters since the process started (they survive a coordinator restart).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// The coordinator's id for this worker (empty before registering).
    pub worker_id: String,
    /// Rank and ring size in the current generation.
    pub rank: usize,
    /// Ranks in the ring.
    pub ranks: usize,
    /// The ring generation this worker trains in.
    pub generation: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// The last committed step.
    pub step: u64,
    /// Steps this worker applied.
    pub steps: u64,
    /// Rows this worker computed in applied steps.
    pub rows: u64,
    /// Gather + forward + backward seconds of applied steps.
    pub compute_seconds: f64,
    /// All-reduce and sparse-exchange seconds of applied steps.
    pub allreduce_seconds: f64,
    /// f32 payload bytes sent in the dense all-reduces of applied steps.
    pub allreduce_bytes: u64,
    /// Steps dropped and redone (the ring changed, a neighbour failed or was refused).
    pub steps_redone: u64,
    /// Times the coordinator was lost and the worker resumed from a checkpoint.
    pub coordinator_restarts: u64,
    /// Task names and the last applied step's all-reduced mean losses.
    pub tasks: Vec<String>,
    /// Mean loss per task of the last applied step.
    pub task_losses: Vec<f64>,
}

/// Shared between the training thread and the HTTP handler.
#[derive(Debug, Default)]
pub struct WorkerTelemetry {
    counters: Mutex<Counters>,
}

impl WorkerTelemetry {
    /// Changes the counters.
    pub fn update(&self, f: impl FnOnce(&mut Counters)) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> Counters {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// `/metrics` of a worker.
pub fn prometheus(c: &Counters) -> String {
    let id = c.worker_id.as_str();
    let one = |v: f64| [(vec![("worker", id)], v)];
    let mut e = Exposition::new();
    e.family(
        "funnel_worker_generation",
        Kind::Gauge,
        "The ring generation this worker trains in.",
        one(c.generation as f64),
    )
    .family(
        "funnel_worker_rank",
        Kind::Gauge,
        "This worker's rank in its generation.",
        one(c.rank as f64),
    )
    .family(
        "funnel_worker_ranks",
        Kind::Gauge,
        "Ranks in this worker's ring.",
        one(c.ranks as f64),
    )
    .family(
        "funnel_worker_epoch",
        Kind::Gauge,
        "Epochs completed.",
        one(c.epoch as f64),
    )
    .family(
        "funnel_worker_step",
        Kind::Gauge,
        "The last committed step.",
        one(c.step as f64),
    )
    .family(
        "funnel_worker_steps_total",
        Kind::Counter,
        "Steps this worker applied.",
        one(c.steps as f64),
    )
    .family(
        "funnel_worker_samples_total",
        Kind::Counter,
        "Rows this worker computed in applied steps.",
        one(c.rows as f64),
    )
    .family(
        "funnel_worker_compute_seconds_total",
        Kind::Counter,
        "Gather, forward and backward seconds of applied steps.",
        one(c.compute_seconds),
    )
    .family(
        "funnel_worker_allreduce_seconds_total",
        Kind::Counter,
        "All-reduce and sparse-exchange seconds of applied steps.",
        one(c.allreduce_seconds),
    )
    .family(
        "funnel_worker_allreduce_bytes_total",
        Kind::Counter,
        "f32 payload bytes sent in the dense ring all-reduces of applied steps.",
        one(c.allreduce_bytes as f64),
    )
    .family(
        "funnel_worker_steps_redone_total",
        Kind::Counter,
        "Steps dropped and redone after a ring change.",
        one(c.steps_redone as f64),
    )
    .family(
        "funnel_worker_coordinator_restarts_total",
        Kind::Counter,
        "Times the coordinator was lost and the worker resumed from a checkpoint.",
        one(c.coordinator_restarts as f64),
    )
    .family(
        "funnel_worker_task_loss",
        Kind::Gauge,
        "The last applied step's all-reduced mean loss per task.",
        c.tasks
            .iter()
            .zip(&c.task_losses)
            .map(|(t, l)| (vec![("worker", id), ("task", t.as_str())], *l)),
    );
    e.finish()
}

/// The routes of a worker's HTTP endpoint.
pub fn router(telemetry: Arc<WorkerTelemetry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(t): State<Arc<WorkerTelemetry>>| async move {
                (
                    [(header::CONTENT_TYPE, CONTENT_TYPE)],
                    prometheus(&t.snapshot()),
                )
                    .into_response()
            }),
        )
        .with_state(telemetry)
}

/// What the worker prints once its HTTP endpoint listens (launchers and tests read it).
pub const HTTP_LISTENING: &str = "worker http on ";

/// Starts the endpoint on `addr`; it runs until the process exits.
pub async fn start_http(
    addr: SocketAddr,
    telemetry: Arc<WorkerTelemetry>,
) -> Result<SocketAddr, std::io::Error> {
    let listener = funnel_common::telemetry::bind_http(addr).await?;
    let bound = listener.local_addr()?;
    funnel_common::telemetry::serve_http(listener, router(telemetry), std::future::pending());
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_the_worker_and_each_task() {
        let t = WorkerTelemetry::default();
        t.update(|c| {
            c.worker_id = "w1".into();
            c.steps = 3;
            c.allreduce_bytes = 4096;
            c.tasks = vec!["click".into(), "pay".into()];
            c.task_losses = vec![0.5, 0.125];
        });
        let text = prometheus(&t.snapshot());
        assert!(
            text.contains("funnel_worker_steps_total{worker=\"w1\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("funnel_worker_allreduce_bytes_total{worker=\"w1\"} 4096\n"));
        assert!(text.contains("funnel_worker_task_loss{worker=\"w1\",task=\"pay\"} 0.125\n"));
        assert_eq!(text.matches("# TYPE").count(), 13);
    }
}
