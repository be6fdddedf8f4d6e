//! `funnel coordinator`, `funnel worker`, and `funnel train --workers N`: the local cluster
//! launcher that runs one coordinator and N workers of this same binary on 127.0.0.1 ephemeral
//! ports, with a fresh job token, their output prefixed in one stream, and a non-zero exit if
//! any process fails (the others are then stopped).

use crate::args::{CoordinatorArgs, TrainArgs, WorkerArgs};
use anyhow::{Context, Result, bail};
use funnel_common::spec::Job;
use funnel_common::store::StoreUrl;
use funnel_proto::auth::JobToken;
use funnel_proto::tls::Security;
use funnel_worker::cluster::WorkerOptions;
use indicatif::{ProgressBar, ProgressStyle};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The environment variable that carries the job token.
pub const TOKEN_ENV: &str = "FUNNEL_JOB_TOKEN";

/// What the coordinator prints once it listens (the launcher reads the address from it).
const LISTENING: &str = "coordinator listening on ";

/// What the coordinator prints, before [`LISTENING`], when it serves HTTP.
const HTTP_LISTENING: &str = "coordinator http on ";

pub async fn run_coordinator(a: CoordinatorArgs) -> Result<()> {
    let token = JobToken::load(a.token_file.as_deref(), TOKEN_ENV).map_err(anyhow::Error::msg)?;
    let security = security(token, &a.tls)?;
    let mut job = Job::load(&a.config)?;
    if let Some(w) = a.workers {
        job.spec.cluster.workers = w;
    }
    let output = match a.output.or_else(|| job.spec.output.clone()) {
        Some(o) => StoreUrl::open(&o, "output")?.url.to_string(),
        None => bail!(
            "{}: no output: set `output` in the spec or pass --output",
            a.config.display()
        ),
    };
    let origin = a.config.display().to_string();
    let reported = (!a.no_report).then(|| job.clone());
    let report_output = output.clone();
    let weights = funnel_worker::trainer::initial_weights(&job)?;
    let initial = funnel_common::weighting::WeightingState::new(job.spec.loss.weighting, &weights);
    let weighting = funnel_coordinator::server::resume_weighting(&output, initial).await?;
    let ctx = funnel_coordinator::prepare(job.spec, &origin, output).await?;
    let listener = funnel_coordinator::bind(a.listen).await?;
    let addr = listener.local_addr()?;
    let http = match a.http_listen {
        Some(h) => {
            let l = funnel_common::telemetry::bind_http(h).await?;
            let url = funnel_common::telemetry::http_url(l.local_addr()?);
            println!("{HTTP_LISTENING}{url}");
            Some(l)
        }
        None => None,
    };
    println!("{LISTENING}{addr}");
    let outcome = funnel_coordinator::serve(ctx, weighting, listener, http, &security).await?;
    println!(
        "job done: {} epochs, {} steps; last checkpoint {}",
        outcome.epochs,
        outcome.step,
        outcome.checkpoint.as_deref().unwrap_or("-")
    );
    if let Some(job) = reported
        && let Some(index) = crate::report::after_training(&report_output, &job, &origin).await
    {
        println!("report: {index}");
    }
    Ok(())
}

pub async fn run_worker(a: WorkerArgs) -> Result<()> {
    let token = JobToken::load(a.token_file.as_deref(), TOKEN_ENV).map_err(anyhow::Error::msg)?;
    let opts = WorkerOptions {
        coordinator: a.coordinator,
        security: security(token, &a.tls)?,
        listen: a.listen,
        advertise: a.advertise,
        threads: a.threads,
        progress: !a.no_progress,
        progress_lines: a.progress_lines,
        http_listen: a.http_listen,
        name: a.name.unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
            format!("{host}/{}", std::process::id())
        }),
    };
    let summary = crate::on_training_thread(move |runtime| {
        funnel_worker::cluster::run_worker(&opts, &runtime)
    })
    .await?;
    if let Some(url) = &summary.checkpoint {
        println!(
            "trained to epoch {} ({} steps); last checkpoint {url}",
            summary.epochs, summary.steps
        );
    }
    Ok(())
}

/// The token and the TLS material of the flags.
fn security(token: JobToken, tls: &crate::args::TlsArgs) -> Result<Security> {
    let tls = tls.files().load().map_err(anyhow::Error::msg)?;
    Ok(Security { token, tls })
}

/// A fresh random job token for a local cluster.
fn fresh_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the job token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Copies `child`'s stdout and stderr to ours, each line prefixed with `name`; `progress`
/// lines (rank 0's) move the one progress bar instead (drawn only on a terminal).
fn forward(child: &mut Child, name: String, bar: &ProgressBar) {
    if let Some(out) = child.stdout.take() {
        let name = name.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match l.strip_prefix("progress ") {
                    Some(json) => show_progress(&bar, json),
                    None => bar.suspend(|| println!("[{name}] {l}")),
                }
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                bar.suspend(|| eprintln!("[{name}] {l}"));
            }
        });
    }
}

/// The job's progress bar: hidden unless stderr is a terminal.
fn job_bar(show: bool) -> ProgressBar {
    if !show || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {human_pos}/{human_len} rows, {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn show_progress(bar: &ProgressBar, json: &str) {
    let Ok(p) = serde_json::from_str::<serde_json::Value>(json) else {
        return;
    };
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    bar.set_length(n("total"));
    bar.set_position(n("rows"));
    bar.set_prefix(format!("epoch {}/{}", n("epoch") + 1, n("epochs")));
    bar.set_message(format!(
        "{:.0} rows/s, step {}, loss {:.4}",
        p["rows_per_s"].as_f64().unwrap_or(0.0),
        n("step"),
        p["loss"].as_f64().unwrap_or(f64::NAN)
    ));
}

pub async fn run_local_cluster(a: TrainArgs, workers: usize) -> Result<()> {
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the funnel binary")?;
    let token = fresh_token()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Workers share the machine: split the cores unless the user chose.
    let threads = a.threads.unwrap_or((cores / workers).max(1));

    let mut coordinator = Command::new(&exe);
    coordinator
        // The launcher writes the report itself once every process has exited.
        .args([
            "coordinator",
            "--no-report",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--workers",
        ])
        .arg(workers.to_string())
        .arg("--config")
        .arg(&a.config)
        .env(TOKEN_ENV, &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(o) = &a.output {
        coordinator.arg("--output").arg(o);
    }
    let mut coordinator = coordinator
        .spawn()
        .context("cannot start the coordinator")?;
    let mut out = BufReader::new(coordinator.stdout.take().context("coordinator stdout")?).lines();
    let mut status_page = None;
    let addr = loop {
        match out.next_line().await? {
            Some(l) => {
                if let Some(url) = l.strip_prefix(HTTP_LISTENING) {
                    status_page = Some(url.to_string());
                }
                match l.strip_prefix(LISTENING) {
                    Some(addr) => break addr.to_string(),
                    None => println!("[coordinator] {l}"),
                }
            }
            None => {
                let status = coordinator.wait().await?;
                // Its stderr says why; show it before failing.
                if let Some(err) = coordinator.stderr.take() {
                    let mut lines = BufReader::new(err).lines();
                    while let Ok(Some(l)) = lines.next_line().await {
                        eprintln!("[coordinator] {l}");
                    }
                }
                bail!("the coordinator exited before listening ({status})");
            }
        }
    };
    coordinator.stdout = Some(out.into_inner().into_inner());
    let bar = job_bar(!a.no_progress);
    forward(&mut coordinator, "coordinator".into(), &bar);
    println!("local cluster: coordinator at {addr}, {workers} workers x {threads} compute threads");
    if let Some(url) = &status_page {
        println!("status page: {url}/ (metrics: {url}/metrics)");
    }

    let mut children = Vec::new();
    for rank in 0..workers {
        let mut w = Command::new(&exe);
        w.args([
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--no-progress",
            "--progress-lines",
        ])
        .arg("--coordinator")
        .arg(format!("http://{addr}"))
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--name")
        .arg(format!("local-{rank}"))
        .env(TOKEN_ENV, &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        // Ranks follow registration order, so the name is the launch order, not the rank.
        let name = format!("local-{rank}");
        let mut child = w
            .spawn()
            .with_context(|| format!("cannot start worker {name}"))?;
        forward(&mut child, name.clone(), &bar);
        children.push((format!("worker {name}"), child));
    }
    children.push(("coordinator".to_string(), coordinator));

    // Wait for all; the first failure stops the rest (kill_on_drop) and fails the run.
    let mut pending: Vec<_> = children
        .into_iter()
        .map(|(name, mut child)| {
            Box::pin(async move {
                let status = child.wait().await;
                (name, status, child)
            })
        })
        .collect();
    while !pending.is_empty() {
        let ((name, status, _child), _, rest) = futures_select(pending).await;
        pending = rest;
        let status = status.with_context(|| format!("waiting for {name}"))?;
        if !status.success() {
            bail!("{name} failed ({status}); the local cluster is stopped");
        }
    }
    bar.finish_and_clear();
    println!("local cluster: all {workers} workers and the coordinator exited cleanly");
    Ok(())
}

/// The first of `futures` to finish, its index, and the others.
async fn futures_select<F: std::future::Future + Unpin>(
    futures: Vec<F>,
) -> (F::Output, usize, Vec<F>) {
    futures::future::select_all(futures).await
}
