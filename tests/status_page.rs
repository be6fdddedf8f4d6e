//! The coordinator's status page in a real headless browser (issue 7 point 3): Debian's
//! chromium loads `http://<coordinator>/` while a 2-worker job trains, runs the page's script
//! (which polls `/status`), and the test checks the DOM it produced: the job's state, the
//! generation, one row per worker, and one AUC, loss and weight curve per target from the
//! completed epochs. It keeps screenshots for the notes: `target/test-output/status-page.png`
//! and, after the job, the run report's AUC plot as `target/test-output/report-auc.png`.
//!
//! Without a chromium the test says so and passes, unless `FUNNEL_REQUIRE_BROWSER=1` (set by
//! scripts/test.sh, which installs it), when it fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::procs::{setup, start_http_job, status_when, text};

/// The browser: `FUNNEL_CHROMIUM`, else the first of Debian's names on PATH.
fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FUNNEL_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-headless-shell", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Runs headless chromium on `url` with `args`; returns its stdout.
fn browse(browser: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` in `dom` (its first text node).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the DOM"));
    let open = at + dom[at..].find('>').expect("tag end") + 1;
    let close = open + dom[open..].find('<').expect("text end");
    &dom[open..close]
}

/// The part of `dom` from the element with `id` to the next `end`.
fn element<'a>(dom: &'a str, id: &str, end: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the DOM"));
    let stop = at + dom[at..].find(end).expect("element end");
    &dom[at..stop]
}

/// Checks that `path` is a PNG of at least `min` bytes.
fn assert_png(path: &Path, min: u64) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    assert!(
        bytes.len() as u64 >= min,
        "{}: only {} bytes",
        path.display(),
        bytes.len()
    );
}

#[test]
fn the_status_page_shows_a_running_job_in_a_headless_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("FUNNEL_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "FUNNEL_REQUIRE_BROWSER=1 but no chromium on PATH (scripts/test.sh installs it)"
        );
        eprintln!("SKIPPED: no chromium on PATH (set FUNNEL_CHROMIUM or install chromium)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = setup(dir.path(), "60000", "2000", 2);
    // Enough epochs that the job still trains while the browser looks at it after the second.
    let text_spec = std::fs::read_to_string(&spec).expect("spec");
    assert!(text_spec.contains("epochs = 2"));
    std::fs::write(&spec, text_spec.replace("epochs = 2", "epochs = 7")).expect("spec");
    let out_dir = dir.path().join("out");
    let out = format!("file://{}", out_dir.display());
    let mut job = start_http_job(&spec, &out, 2, &[]);

    // Two completed epochs: the curves are lines, not single points.
    let status = status_when(&mut job, |s| {
        s["history"].as_array().is_some_and(|h| h.len() >= 2) && s["state"] == "training"
    });
    let page = format!("{}/", job.http);
    // Served as HTML with a policy that lets the page load nothing from elsewhere: the
    // browser below runs it under that policy.
    let (code, headers, _) = support::http::get(&page);
    assert_eq!(code, 200);
    let header = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert!(header("content-type").is_some_and(|v| v.starts_with("text/html")));
    assert!(
        header("content-security-policy").is_some_and(|v| v.contains("default-src 'none'")),
        "{headers:?}"
    );
    let profile = dir.path().join("chromium-profile");
    // The DOM after the page's script ran (a second of virtual time: one poll at least).
    let dom = browse(
        &browser,
        &profile,
        &["--virtual-time-budget=3000", "--dump-dom"],
        &page,
    );
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page never rendered /status:\n{dom}"
    );
    assert_eq!(text_of(&dom, "state"), "training", "{dom}");
    assert_eq!(text_of(&dom, "job"), status["job"].as_str().expect("job"));
    let generation: u64 = text_of(&dom, "generation")
        .parse()
        .expect("a generation number");
    assert!(generation >= status["generation"].as_u64().expect("generation"));
    let workers = element(&dom, "workers", "</table>");
    assert_eq!(workers.matches("<tr><td>").count(), 2, "{workers}");
    let tasks = element(&dom, "tasks", "</table>");
    assert_eq!(tasks.matches("<tr><td>").count(), 4, "{tasks}");
    for chart in ["auc-chart", "loss-chart", "weight-chart"] {
        let svg = element(&dom, chart, "</svg>");
        assert_eq!(svg.matches("class=\"series\"").count(), 4, "{chart}: {svg}");
    }
    for target in ["click", "favorite", "order", "pay"] {
        assert!(
            element(&dom, "auc-chart", "</svg>").contains(&format!("data-series=\"{target}\"")),
            "no AUC curve for {target}"
        );
    }

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output");
    std::fs::create_dir_all(&shots).expect("test-output dir");
    let shot = shots.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &browser,
        &profile,
        &[
            "--virtual-time-budget=3000",
            "--window-size=1280,1100",
            &format!("--screenshot={}", shot.display()),
        ],
        &page,
    );
    assert_png(&shot, 20_000);

    // The job completes; the coordinator (not the launcher) writes the run report.
    for (mut w, log, _) in std::mem::take(&mut job.workers) {
        let s = w.wait().expect("wait");
        assert!(s.success(), "worker failed:\n{}", text(&log));
    }
    let s = job.coordinator.0.wait().expect("wait");
    assert!(
        s.success(),
        "coordinator failed:\n{}",
        text(&job.coordinator.1)
    );
    let plot = out_dir.join("report/auc.svg");
    assert!(plot.is_file(), "no {}", plot.display());
    let report_shot = shots.join("report-auc.png");
    let _ = std::fs::remove_file(&report_shot);
    browse(
        &browser,
        &profile,
        &[
            "--window-size=720,420",
            &format!("--screenshot={}", report_shot.display()),
        ],
        &format!("file://{}", plot.display()),
    );
    assert_png(&report_shot, 10_000);
    eprintln!(
        "screenshots: {} and {}",
        shot.display(),
        report_shot.display()
    );
}
