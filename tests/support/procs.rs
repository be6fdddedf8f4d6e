//! Processes of a distributed job for the end-to-end fault tests: generated data with a spec
//! for N workers (1 s heartbeat timeout, audit on), `funnel` processes whose output is
//! collected line by line with the instant each line was read, waiters that record when a
//! process ended, and the final eval AUC of a run.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::funnel;

/// Lines of one process, with the instant each was read.
pub type Log = Arc<Mutex<Vec<(Instant, String)>>>;

/// The job token every process of these tests uses.
pub const TOKEN: &str = "fault-test-token";

/// Generated data of `rows` rows in 2 objects of `row_group_rows`-row groups and a spec for
/// `workers` workers with a 1 s heartbeat timeout and the audit on.
pub fn setup(dir: &Path, rows: &str, row_group_rows: &str, workers: usize) -> String {
    let data = format!("file://{}/data", dir.display());
    let spec = dir.join("job.toml");
    funnel(&[
        "gen-data",
        "--output",
        &data,
        "--rows",
        rows,
        "--files",
        "2",
        "--row-group-rows",
        row_group_rows,
        "--eval-fraction",
        "0.2",
        "--users",
        "300",
        "--items",
        "1000",
        "--write-config",
        spec.to_str().expect("utf8"),
    ])
    .success();
    let text = std::fs::read_to_string(&spec)
        .expect("spec")
        .replace("hidden = [256, 128]", "hidden = [32, 16]")
        .replace("batch_size = 1024", "batch_size = 512")
        + &format!(
            "\n[cluster]\nworkers = {workers}\nheartbeat_interval_ms = 100\n\
             heartbeat_timeout_ms = 1000\nstep_timeout_ms = 20000\njoin_timeout_ms = 60000\n\
             audit = true\n"
        );
    std::fs::write(&spec, text).expect("write spec");
    spec.to_str().expect("utf8").to_string()
}

/// Starts `funnel ARGS` with piped output collected into a [`Log`] by reader threads.
pub fn spawn(args: &[&str], env: &[(&str, String)]) -> (Child, Log) {
    spawn_watched(args, env, None)
}

/// Called with each line a process prints, as it is read.
pub type LineHook = Arc<dyn Fn(&str) + Send + Sync>;

/// [`spawn`], calling `hook` with every line.
pub fn spawn_watched(
    args: &[&str],
    env: &[(&str, String)],
    hook: Option<LineHook>,
) -> (Child, Log) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_funnel"));
    cmd.args(args)
        .env("FUNNEL_JOB_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("funnel starts");
    let log: Log = Arc::default();
    for pipe in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let log = log.clone();
        let hook = hook.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(h) = &hook {
                    h(&line);
                }
                log.lock().expect("log").push((Instant::now(), line));
            }
        });
    }
    (child, log)
}

/// Waits for `child` on a thread; the handle yields its exit status and the instant it ended.
pub fn waiter(mut child: Child) -> std::thread::JoinHandle<(std::process::ExitStatus, Instant)> {
    std::thread::spawn(move || {
        let status = child.wait().expect("wait");
        (status, Instant::now())
    })
}

pub fn text(log: &Log) -> String {
    let lines = log.lock().expect("log");
    lines
        .iter()
        .map(|(_, l)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last epoch's eval AUC per target.
pub fn final_auc(output: &Path) -> Vec<f64> {
    let lines = std::fs::read_to_string(output.join("metrics.jsonl")).expect("metrics");
    let last: serde_json::Value =
        serde_json::from_str(lines.lines().last().expect("line")).expect("json");
    last["eval"]["metrics"]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| t["auc"].as_f64().expect("auc"))
        .collect()
}

/// Starts `funnel coordinator` for `spec` on `listen` (`127.0.0.1:0`: an ephemeral port) with
/// output `out`, and waits for its "listening" line. Returns the process, its log and address.
pub fn start_coordinator(
    spec: &str,
    out: &str,
    listen: &str,
    env: &[(&str, String)],
    hook: Option<LineHook>,
) -> (Child, Log, String) {
    let (mut child, log) = spawn_watched(
        &[
            "coordinator",
            "--config",
            spec,
            "--listen",
            listen,
            "--output",
            out,
        ],
        env,
        hook,
    );
    loop {
        let found = log.lock().expect("log").iter().find_map(|(_, l)| {
            l.strip_prefix("coordinator listening on ")
                .map(str::to_string)
        });
        if let Some(addr) = found {
            return (child, log, addr);
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!("coordinator exited {s}:\n{}", text(&log));
        }
        std::thread::yield_now();
    }
}

/// Starts `funnel worker` of the coordinator at `url` (one compute thread, an ephemeral port).
pub fn spawn_worker(url: &str, env: &[(&str, String)]) -> (Child, Log) {
    spawn(
        &[
            "worker",
            "--coordinator",
            url,
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
        ],
        env,
    )
}

/// Runs `funnel audit` on `out` and checks that every epoch counted each row exactly once.
pub fn audit_passes(out: &str) {
    let audit = funnel(&["audit", out]).success();
    assert!(audit.stdout.contains("exactly once"), "{}", audit.stdout);
    assert!(!audit.stdout.contains("FAILED"), "{}", audit.stdout);
}

/// Asserts that each AUC of `got` is within `tolerance` of `want`'s (`what` names the run).
pub fn assert_auc_close(want: &[f64], got: &[f64], tolerance: f64, what: &str) {
    eprintln!("final eval AUC without faults {want:?}; {what} {got:?}");
    assert_eq!(want.len(), got.len());
    for (x, y) in want.iter().zip(got) {
        assert!(
            (x - y).abs() <= tolerance,
            "AUC {y:.4} ({what}) vs {x:.4} without faults"
        );
    }
}

/// Waits until a line of `child`'s log starts with `prefix`; returns the rest of the line.
pub fn wait_for_line(child: &mut Child, log: &Log, prefix: &str) -> String {
    loop {
        let found = log
            .lock()
            .expect("log")
            .iter()
            .find_map(|(_, l)| l.strip_prefix(prefix).map(str::to_string));
        if let Some(rest) = found {
            return rest;
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!(
                "process exited {s} before printing {prefix:?}:\n{}",
                text(log)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A running job whose coordinator and workers serve their HTTP endpoints.
pub struct HttpJob {
    /// The coordinator process and its log.
    pub coordinator: (Child, Log),
    /// The coordinator's gRPC address (`127.0.0.1:port`) and HTTP URL (`http://...`).
    pub grpc: String,
    pub http: String,
    /// Worker processes, their logs and HTTP URLs.
    pub workers: Vec<(Child, Log, String)>,
}

/// Starts a coordinator for `spec` (output `out`) and `workers` workers, every process with
/// `--http-listen 127.0.0.1:0`; `worker_args` go to every worker (e.g. `--log-format json`
/// before the subcommand is not possible, so they are global flags placed first).
pub fn start_http_job(spec: &str, out: &str, workers: usize, worker_args: &[&str]) -> HttpJob {
    let http_env = [("FUNNEL_HTTP_LISTEN", "127.0.0.1:0".to_string())];
    let (mut c, c_log, grpc) = start_coordinator(spec, out, "127.0.0.1:0", &http_env, None);
    let http = wait_for_line(&mut c, &c_log, "coordinator http on ");
    let url = format!("http://{grpc}");
    let mut started = Vec::new();
    for _ in 0..workers {
        let mut args: Vec<&str> = worker_args.to_vec();
        args.extend([
            "worker",
            "--coordinator",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
        ]);
        // Info level: the tests read the epoch's checkpoint line.
        let env = [http_env[0].clone(), ("RUST_LOG", "info".to_string())];
        let (mut w, w_log) = spawn(&args, &env);
        let w_http = wait_for_line(&mut w, &w_log, "worker http on ");
        started.push((w, w_log, w_http));
    }
    HttpJob {
        coordinator: (c, c_log),
        grpc,
        http,
        workers: started,
    }
}

/// Polls the coordinator's `/status` until `ready` holds, failing if the coordinator exits
/// first; returns that status.
pub fn status_when(
    job: &mut HttpJob,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        if let Ok(Some(s)) = job.coordinator.0.try_wait() {
            panic!("coordinator exited {s}:\n{}", text(&job.coordinator.1));
        }
        let (code, _, body) = super::http::get(&format!("{}/status", job.http));
        assert_eq!(code, 200, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
        if ready(&status) {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
