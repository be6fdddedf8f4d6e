//! The coordinator's HTTP endpoint (`--http-listen`): `/` (the status page, a self-contained
//! HTML file polling `/status`), `/healthz` (alive, for liveness probes),
//! `/readyz` (serving a job that has not failed, for readiness probes), `/metrics` (Prometheus
//! text) and `/status` (JSON: the job's live state, what the status page draws). Read-only and
//! without the job token; see `funnel_common::telemetry`.
//!
//! Every handler takes the state lock once, copies what it needs and answers from the copy,
//! so a scrape holds up a vote no longer than a heartbeat does.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use funnel_common::telemetry::prom::{CONTENT_TYPE, Exposition, Kind};
use serde_json::{Value, json};

use crate::state::{Shared, State};

/// The routes, over the coordinator's shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(shared)
}

/// The status page: HTML, CSS and script in one file, nothing loaded from elsewhere.
pub const STATUS_PAGE: &str = include_str!("status_page.html");

/// What the page may load: its own inline script and style, and `/status` from the same
/// origin; nothing else (a CDN script or a stray image would be refused by the browser).
pub const STATUS_PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'";

async fn page() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, STATUS_PAGE_CSP),
        ],
        axum::response::Html(STATUS_PAGE),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    let st = shared.lock();
    match &st.failed {
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("job failed: {reason}\n"),
        )
            .into_response(),
        None => "ready\n".into_response(),
    }
}

async fn metrics(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    let body = {
        let mut st = shared.lock();
        prometheus(&shared, &mut st, Instant::now())
    };
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

async fn status(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    let body = {
        let mut st = shared.lock();
        status_json(&shared, &mut st, Instant::now())
    };
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// The job's state in one word: `waiting`, `training`, `done` or `failed`.
pub fn phase(st: &State) -> &'static str {
    match (&st.failed, st.done, st.membership.generation()) {
        (Some(_), _, _) => "failed",
        (None, true, _) => "done",
        (None, false, 0) => "waiting",
        (None, false, _) => "training",
    }
}

fn task_names(shared: &Shared) -> Vec<String> {
    shared
        .ctx
        .job
        .funnel
        .targets()
        .map(|(_, s)| s.name.clone())
        .collect()
}

/// Lease counts of the epoch in progress: planned, handed out, handed out again (a slot
/// re-read after its reader died), not handed out yet.
fn lease_counts(shared: &Shared, st: &mut State) -> (usize, usize, usize, usize) {
    let epoch = st.epoch;
    let planned = shared.plan(st, epoch).len();
    let book = shared.book(st, epoch);
    (planned, book.handed_out(), book.reread(), book.unassigned())
}

/// Rows committed in the epoch in progress, and rows in its plan.
fn epoch_rows(shared: &Shared, st: &State) -> (u64, u64) {
    // Every epoch plans every row group of the training data.
    (
        st.ledger.epoch_rows(st.epoch),
        shared.ctx.train.total_rows(),
    )
}

/// `/metrics`.
pub fn prometheus(shared: &Shared, st: &mut State, now: Instant) -> String {
    let names = task_names(shared);
    let (planned, handed_out, reread, unassigned) = lease_counts(shared, st);
    let (rows_done, rows_planned) = epoch_rows(shared, st);
    let t = &st.telemetry;
    let mut e = Exposition::new();
    e.single(
        "funnel_up",
        Kind::Gauge,
        "1 while the job has not failed.",
        f64::from(u8::from(st.failed.is_none())),
    )
    .single(
        "funnel_generation",
        Kind::Gauge,
        "The ring's generation.",
        st.membership.generation() as f64,
    )
    .single(
        "funnel_epoch",
        Kind::Gauge,
        "Epochs completed.",
        f64::from(st.epoch),
    )
    .single(
        "funnel_epochs",
        Kind::Gauge,
        "Epochs the job trains.",
        shared.ctx.job.spec.train.epochs as f64,
    )
    .single(
        "funnel_step",
        Kind::Gauge,
        "The last committed step.",
        st.ledger.committed_step().unwrap_or(0) as f64,
    )
    .single(
        "funnel_steps_committed_total",
        Kind::Counter,
        "Steps committed by this coordinator process.",
        t.steps as f64,
    )
    .single(
        "funnel_steps_redone_total",
        Kind::Counter,
        "Step votes answered 'not committed' (redone after a ring change).",
        t.steps_redone as f64,
    )
    .single(
        "funnel_samples_total",
        Kind::Counter,
        "Training rows in committed steps.",
        t.rows as f64,
    )
    .single(
        "funnel_samples_per_second",
        Kind::Gauge,
        "Training rows per second over the last 10 s.",
        t.samples_per_second(now),
    )
    .single(
        "funnel_epoch_rows_committed",
        Kind::Gauge,
        "Rows of the epoch in progress committed so far.",
        rows_done as f64,
    )
    .single(
        "funnel_epoch_rows_planned",
        Kind::Gauge,
        "Rows in the epoch's plan.",
        rows_planned as f64,
    )
    .family(
        "funnel_task_loss",
        Kind::Gauge,
        "The last committed step's all-reduced mean loss per task.",
        names
            .iter()
            .zip(&t.task_losses)
            .map(|(n, l)| (vec![("task", n.as_str())], *l)),
    )
    .family(
        "funnel_task_weight",
        Kind::Gauge,
        "The task weight in force.",
        names
            .iter()
            .zip(&st.weighting.weights)
            .map(|(n, w)| (vec![("task", n.as_str())], *w)),
    )
    .single(
        "funnel_compute_seconds_total",
        Kind::Counter,
        "Gather, forward and backward seconds of committed steps, summed over workers.",
        t.compute_seconds,
    )
    .single(
        "funnel_allreduce_seconds_total",
        Kind::Counter,
        "All-reduce and sparse-exchange seconds of committed steps, summed over workers.",
        t.allreduce_seconds,
    )
    .single(
        "funnel_allreduce_bytes_total",
        Kind::Counter,
        "Bytes workers sent in the all-reduces of committed steps.",
        t.allreduce_bytes as f64,
    )
    .family(
        "funnel_leases",
        Kind::Gauge,
        "Leases of the epoch in progress: planned, handed_out, reread (handed out again after a death), unassigned.",
        [
            (vec![("state", "planned")], planned as f64),
            (vec![("state", "handed_out")], handed_out as f64),
            (vec![("state", "reread")], reread as f64),
            (vec![("state", "unassigned")], unassigned as f64),
        ],
    )
    .single(
        "funnel_workers",
        Kind::Gauge,
        "Workers in the ring.",
        st.membership.members().len() as f64,
    )
    .single(
        "funnel_workers_expected",
        Kind::Gauge,
        "Workers the job asks for.",
        st.membership.expected() as f64,
    )
    .single(
        "funnel_worker_failures_total",
        Kind::Counter,
        "Workers removed from the ring (dead, cut off or fenced).",
        st.failures.len() as f64,
    )
    .single(
        "funnel_recoveries_total",
        Kind::Counter,
        "Rings re-formed after a failure that committed a step again.",
        t.recoveries as f64,
    )
    .single(
        "funnel_last_recovery_seconds",
        Kind::Gauge,
        "Seconds from the last failure to the next committed step (NaN before any).",
        t.last_recovery_seconds.unwrap_or(f64::NAN),
    );
    e.finish()
}

/// The metrics of one epoch record that the page plots, per target: `{target: value}`.
fn per_target(record: &Value, key: &str) -> Value {
    let targets = record["eval"]["metrics"]["targets"].as_array();
    Value::Object(
        targets
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let name = m["name"].as_str().or(m["stage"].as_str())?;
                Some((name.to_string(), m[key].clone()))
            })
            .collect(),
    )
}

/// `/status`.
pub fn status_json(shared: &Shared, st: &mut State, now: Instant) -> Value {
    let names = task_names(shared);
    let (planned, handed_out, reread, unassigned) = lease_counts(shared, st);
    let (rows_done, rows_planned) = epoch_rows(shared, st);
    let now_ms = shared.now_ms();
    let t = &st.telemetry;
    let workers: Vec<Value> = st
        .membership
        .members()
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "name": m.name,
                "rank": m.rank,
                "slot": m.slot,
                "peer": m.peer_addr,
                "joined_generation": m.joined_in,
                "heartbeat_age_ms": now_ms.saturating_sub(m.last_seen_ms),
            })
        })
        .collect();
    let history: Vec<Value> = t
        .epochs
        .iter()
        .map(|r| {
            json!({
                "epoch": r["epoch"],
                "step": r["step"],
                "rows_per_s": r["train"]["rows_per_s"],
                "loss": r["train"]["loss"],
                "task_losses": r["train"]["task_losses"],
                "weights": r["weights"],
                "auc": per_target(r, "auc"),
                "calibration": per_target(r, "calibration"),
            })
        })
        .collect();
    json!({
        "job": shared.ctx.job.spec.name,
        "state": phase(st),
        "reason": st.failed,
        "uptime_seconds": now_ms as f64 / 1000.0,
        "generation": st.membership.generation(),
        "epoch": st.epoch,
        "epochs": shared.ctx.job.spec.train.epochs,
        "step": st.ledger.committed_step().unwrap_or(0),
        "epoch_rows": {"committed": rows_done, "planned": rows_planned},
        "samples_per_second": t.samples_per_second(now),
        "samples_total": t.rows,
        "tasks": names,
        "task_losses": t.task_losses,
        "weights": st.weighting.weights,
        "workers": workers,
        "workers_expected": st.membership.expected(),
        "failures": st.failures,
        "recoveries": t.recoveries,
        "last_recovery_seconds": t.last_recovery_seconds,
        "steps_redone": t.steps_redone,
        "leases": {
            "planned": planned,
            "handed_out": handed_out,
            "reread": reread,
            "unassigned": unassigned,
        },
        "compute_seconds": t.compute_seconds,
        "allreduce": {"seconds": t.allreduce_seconds, "bytes": t.allreduce_bytes},
        "checkpoint": st.checkpoint,
        "output": shared.ctx.output,
        "history": history,
    })
}

#[cfg(test)]
mod tests {
    use super::STATUS_PAGE;

    #[test]
    fn the_status_page_is_self_contained_and_has_the_tested_ids() {
        // Nothing from a CDN: no absolute URLs in src/href, no imports.
        for bad in ["src=\"http", "href=\"http", "src=\"//", "@import", "<link"] {
            assert!(!STATUS_PAGE.contains(bad), "{bad}");
        }
        for id in [
            "id=\"state\"",
            "id=\"generation\"",
            "id=\"epoch\"",
            "id=\"rate\"",
            "id=\"progress-bar\"",
            "id=\"workers\"",
            "id=\"tasks\"",
            "id=\"auc-chart\"",
            "id=\"loss-chart\"",
            "id=\"weight-chart\"",
            "id=\"rate-chart\"",
        ] {
            assert!(STATUS_PAGE.contains(id), "{id}");
        }
        // It polls the relative path, so it works behind a proxy prefix too.
        assert!(STATUS_PAGE.contains("fetch(\"status\""));
    }
}
