"""The coordinator's /metrics parses with Prometheus' own Python parser (prometheus_client),
strictly: every family has a HELP and a TYPE, names and label values are well formed, and the
values move while a real 2-worker job (`funnel train --workers 2`, FUNNEL_BIN) trains.

The Rust end-to-end test (tests/ops.rs) checks the content with a small parser of its own;
this one checks the format against the reference implementation that Prometheus users run."""
import json
import os
import pathlib
import subprocess
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

FUNNEL = os.environ.get(
    "FUNNEL_BIN", str(pathlib.Path(__file__).parents[2] / "target" / "debug" / "funnel")
)


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def test_metrics_parse_with_prometheus_client_while_a_job_trains(tmp_path):
    data = tmp_path / "data"
    spec = tmp_path / "job.toml"
    subprocess.run(
        [FUNNEL, "gen-data", "--output", str(data), "--rows", "80000", "--files", "2",
         "--row-group-rows", "2000", "--users", "300", "--items", "1000",
         "--write-config", str(spec)],
        check=True, capture_output=True,
    )
    text = spec.read_text().replace("hidden = [256, 128]", "hidden = [32, 16]")
    text = text.replace("batch_size = 1024", "batch_size = 256")
    spec.write_text(text)
    job = subprocess.Popen(
        [FUNNEL, "train", "--config", str(spec), "--output", str(tmp_path / "out"),
         "--workers", "2", "--threads", "1", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = None
        for line in job.stdout:
            if line.startswith("status page: "):
                url = line.split()[2].rstrip("/")
                break
        assert url, "the launcher printed no status page line"

        families = {}
        while True:
            assert job.poll() is None, "the job ended before it committed a step"
            status, ctype, body = get(url + "/metrics")
            assert status == 200
            assert ctype.startswith("text/plain; version=0.0.4"), ctype
            families = {f.name: f for f in text_string_to_metric_families(body)}
            steps = families["funnel_steps_committed"].samples[0].value
            if steps >= 2:
                break
            time.sleep(0.05)

        # prometheus_client strips `_total` from counter family names.
        kinds = {name: f.type for name, f in families.items()}
        for counter in ["funnel_steps_committed", "funnel_samples", "funnel_allreduce_bytes",
                        "funnel_allreduce_seconds", "funnel_worker_failures", "funnel_recoveries"]:
            assert kinds[counter] == "counter", (counter, kinds)
        for gauge in ["funnel_generation", "funnel_samples_per_second", "funnel_task_loss",
                      "funnel_task_weight", "funnel_leases", "funnel_workers"]:
            assert kinds[gauge] == "gauge", (gauge, kinds)
        weights = {s.labels["task"]: s.value for s in families["funnel_task_weight"].samples}
        assert sorted(weights) == ["click", "favorite", "order", "pay"], weights
        states = {s.labels["state"] for s in families["funnel_leases"].samples}
        assert states == {"planned", "handed_out", "reread", "unassigned"}, states
        assert families["funnel_workers"].samples[0].value == 2
        assert families["funnel_samples"].samples[0].value > 0

        _, ctype, body = get(url + "/status")
        assert ctype.startswith("application/json"), ctype
        status = json.loads(body)
        assert status["state"] == "training" and len(status["workers"]) == 2, status
    finally:
        rest, _ = job.communicate(timeout=300)
    assert job.returncode == 0, rest
