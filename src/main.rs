//! The `funnel` command: argument parsing and dispatch only; the work lives in the crates.

mod args;
mod cluster;
mod report;

/// mimalloc: decoding and training allocate and free large buffers every batch; glibc malloc
/// returns them to the kernel and faults them back in each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result, bail};
use args::{
    AuditArgs, Cli, Command, DemoArgs, GenDataArgs, LogFormat, PredictArgs, TrainArgs, ValidateArgs,
};
use clap::Parser;
use funnel_common::spec::{Job, synthetic_job_toml};
use funnel_common::store::StoreUrl;
use funnel_common::synth::{GenOptions, TruthRates, generate};
use funnel_common::validate::validate;
use funnel_worker::local::{LocalOptions, train_local};
use funnel_worker::predict::{PredictOptions, predict};
use funnel_worker::threads::init_compute_threads;
use std::path::Path;
use std::sync::Arc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Validate(a) => run_validate(a).await,
        Command::GenData(a) => run_gen_data(a).await,
        Command::Train(a) => run_train(a).await,
        Command::Predict(a) => run_predict(a).await,
        Command::Demo(a) => run_demo(a).await,
        Command::Coordinator(a) => cluster::run_coordinator(a).await,
        Command::Worker(a) => cluster::run_worker(a).await,
        Command::Audit(a) => run_audit(a).await,
        Command::Report(a) => report::run_report(a).await,
    }
}

async fn run_audit(a: AuditArgs) -> Result<()> {
    let epochs = funnel_common::audit::audit_output(&a.output).await?;
    if epochs.is_empty() {
        bail!(
            "{}: no audited epoch (run the job with `cluster.audit = true`)",
            a.output
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&epochs)?);
    }
    for e in &epochs {
        if !a.json {
            println!(
                "epoch {}: {} rows planned, {} recorded: {} missing, {} twice, {} outside the data: {}",
                e.epoch,
                e.planned,
                e.recorded,
                e.missing,
                e.duplicated,
                e.outside,
                if e.passed() { "exactly once" } else { "FAILED" }
            );
        }
        for x in &e.examples {
            eprintln!("  epoch {}: {x}", e.epoch);
        }
    }
    let failed: Vec<u32> = epochs
        .iter()
        .filter(|e| !e.passed())
        .map(|e| e.epoch)
        .collect();
    if !failed.is_empty() {
        bail!("audit of {} failed for epochs {failed:?}", a.output);
    }
    println!(
        "ok: every row of {} epochs counted exactly once",
        epochs.len()
    );
    Ok(())
}

async fn run_validate(a: ValidateArgs) -> Result<()> {
    let job = Job::load(&a.config)?;
    let report = validate(&job, !a.schema_only).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
        println!("ok: {} is valid", a.config.display());
    }
    Ok(())
}

async fn run_train(a: TrainArgs) -> Result<()> {
    if let Some(index) = train(a).await? {
        println!("report: {index}");
    }
    Ok(())
}

/// Trains (on this machine, or on a local cluster with `--workers`), then writes the run
/// report; returns where the report's page is, if it was written.
async fn train(a: TrainArgs) -> Result<Option<String>> {
    let mut job = Job::load(&a.config)?;
    let output = match a.output.clone().or_else(|| job.spec.output.clone()) {
        Some(o) => StoreUrl::open(&o, "output")?.url.to_string(),
        None => anyhow::bail!(
            "{}: no output: set `output` in the spec or pass --output",
            a.config.display()
        ),
    };
    let origin = a.config.display().to_string();
    if let Some(workers) = a.workers {
        cluster::run_local_cluster(a, workers).await?;
        return Ok(report::after_training(&output, &job, &origin).await);
    }
    if let Some(threads) = a.threads {
        job.spec.train.threads = threads;
    }
    let opts = LocalOptions {
        output: output.clone(),
        progress: !a.no_progress,
        prefetch: 8,
    };
    let trained = Arc::new(job);
    let job = trained.clone();
    let summary = on_training_thread(move |runtime| {
        let threads = init_compute_threads(trained.spec.train.threads);
        tracing::info!(threads, "compute threads");
        train_local(trained, &opts, &runtime)
    })
    .await?;
    match &summary.checkpoint {
        Some(url) => println!(
            "trained to epoch {} ({} steps); last checkpoint {url}",
            summary.epochs, summary.steps
        ),
        None => println!(
            "nothing to do: the output already holds all {} epochs ({} steps)",
            summary.epochs, summary.steps
        ),
    }
    Ok(report::after_training(&output, &job, &origin).await)
}

async fn run_predict(a: PredictArgs) -> Result<()> {
    let opts = PredictOptions {
        checkpoint: a.checkpoint,
        data: a.data,
        out: a.out,
        keep: a.keep,
        batch_rows: a.batch_rows,
    };
    let threads = a.threads;
    let s = on_training_thread(move |runtime| {
        let threads = init_compute_threads(threads);
        tracing::info!(threads, "compute threads");
        predict(&opts, &runtime)
    })
    .await?;
    println!(
        "scored {} rows of {} objects with {} (step {}) in {:.1} s ({:.0} rows/s)",
        s.rows,
        s.input_objects,
        s.checkpoint,
        s.step,
        s.seconds,
        s.rows as f64 / s.seconds.max(1e-9)
    );
    let mut columns = s.keep.clone();
    columns.extend(s.columns.iter().cloned());
    println!("columns: {}", columns.join(", "));
    for o in &s.outputs {
        println!("  wrote {} ({} rows)", o.url, o.rows);
    }
    Ok(())
}

/// Runs `work` on a dedicated OS thread (training never runs as an async task) and awaits it.
pub(crate) async fn on_training_thread<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::runtime::Handle) -> Result<T, funnel_worker::WorkerError> + Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("training".into())
        .spawn(move || {
            let _ = tx.send(work(runtime));
        })
        .context("cannot start the training thread")?;
    Ok(rx.await.context("the training thread died")??)
}

async fn run_gen_data(a: GenDataArgs) -> Result<()> {
    let opts = GenOptions {
        rows: a.rows,
        files: a.files,
        row_group_rows: a.row_group_rows,
        seed: a.seed,
        output: a.output.clone(),
        eval_fraction: a.eval_fraction,
        users: a.users,
        items: a.items,
        categories: a.categories,
        queries: a.queries,
        zipf_exponent: a.zipf_exponent,
        rates: TruthRates {
            click: a.click_rate,
            favorite: a.favorite_rate,
            order_given_fav: a.order_given_fav_rate,
            order_given_no_fav: a.order_given_no_fav_rate,
            pay: a.pay_rate,
        },
        ..GenOptions::default()
    };
    let started = std::time::Instant::now();
    let summary = generate(&opts).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {} train + {} eval rows in {} objects under {} ({secs:.1} s, {:.0} rows/s)",
        summary.train_rows,
        summary.eval_rows,
        summary.objects.len(),
        a.output,
        (summary.train_rows + summary.eval_rows) as f64 / secs.max(1e-9)
    );
    for (label, n) in &summary.positives {
        println!("  positives {label}: {n}");
    }
    if let Some(path) = a.write_config {
        write_config(&path, &a.output, "")?;
        println!("job spec for this data: {}", path.display());
    }
    Ok(())
}

async fn run_demo(a: DemoArgs) -> Result<()> {
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let dir = std::path::absolute(&a.dir)?;
    let data = dir.join("data");
    let data_url = format!("file://{}", data.display());
    let output_url = format!("file://{}", dir.join("output").display());
    println!(
        "[1/3] generating {} rows of synthetic funnel logs into {data_url}",
        a.rows
    );
    let opts = GenOptions {
        rows: a.rows,
        files: 2,
        row_group_rows: 16_384,
        output: data_url.clone(),
        ..GenOptions::default()
    };
    generate(&opts).await?;
    let config = dir.join("job.toml");
    write_config(&config, &data_url, &output_url)?;
    println!("[2/3] validating {}", config.display());
    let job = Job::load(&config)?;
    let report = validate(&job, true).await?;
    print!("{report}");
    // The demo starts from scratch: an output left by an earlier demo would be resumed.
    let output_dir = dir.join("output");
    if output_dir.exists() {
        std::fs::remove_dir_all(&output_dir)
            .with_context(|| format!("cannot clear {}", output_dir.display()))?;
    }
    println!(
        "[3/3] training {} on {} worker processes",
        config.display(),
        a.workers
    );
    let report = train(TrainArgs {
        config: config.clone(),
        output: None,
        threads: None,
        no_progress: false,
        workers: Some(a.workers),
    })
    .await?;
    println!(
        "demo ok: data, job spec, checkpoints and {}/metrics.jsonl are in {}",
        output_dir.display(),
        dir.display()
    );
    // The last line: where to look.
    match report {
        Some(index) => println!("report: {index}"),
        None => println!("report: not written (see the warning above)"),
    }
    Ok(())
}

fn write_config(path: &Path, data_url: &str, output_url: &str) -> Result<()> {
    // A relative path given on the command line is relative to the shell, but paths in a spec
    // are relative to the spec file: write the absolute URL.
    let data_url = &StoreUrl::open(data_url, "--output")?.url.to_string();
    let output = if output_url.is_empty() {
        format!("{}/output", data_url.trim_end_matches('/'))
    } else {
        output_url.to_string()
    };
    std::fs::write(path, synthetic_job_toml(data_url, &output))
        .with_context(|| format!("cannot write {}", path.display()))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: the local cluster pipes its children's logs into one stream.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
