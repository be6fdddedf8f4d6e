//! The operational endpoints of a running job, as real processes (issue 7 points 2 and 5): a
//! coordinator and 2 workers, each with `--http-listen 127.0.0.1:0`.
//! - coordinator HTTP: `/healthz`, `/readyz`, `/status` (JSON) and `/metrics` (Prometheus text,
//!   every family declared before its samples) while the job trains;
//! - worker HTTP: `/healthz` and `/metrics`;
//! - gRPC `grpc.health.v1` on the coordinator and on a worker's peer server, without a token;
//!   server reflection listing the services, refused without the token;
//! - `--log-format json`: one JSON object per line, carrying job, worker, epoch and
//!   generation from the spans.

mod support;

use support::http::{get, prometheus_samples};
use support::procs::{TOKEN, setup, start_http_job, status_when, text};

fn value(samples: &[(String, String, f64)], name: &str, labels: &str) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l == labels)
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in {samples:?}"))
        .2
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

#[test]
fn a_running_job_serves_health_metrics_status_and_reflection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = setup(dir.path(), "60000", "2000", 2);
    let out = format!("file://{}/out", dir.path().display());
    let mut job = start_http_job(&spec, &out, 2, &["--log-format", "json"]);

    let status = status_when(&mut job, |s| s["step"].as_u64().unwrap_or(0) >= 3);
    assert_eq!(status["state"], "training", "{status:#}");
    assert_eq!(status["workers"].as_array().expect("workers").len(), 2);
    assert_eq!(status["workers_expected"], 2);
    for w in status["workers"].as_array().expect("workers") {
        assert!(w["id"].as_str().is_some_and(|id| !id.is_empty()), "{w}");
        assert!(w["joined_generation"].as_u64().is_some(), "{w}");
    }
    assert_eq!(status["tasks"].as_array().expect("tasks").len(), 4);
    assert_eq!(status["weights"].as_array().expect("weights").len(), 4);
    assert_eq!(status["task_losses"].as_array().expect("losses").len(), 4);
    assert!(
        status["samples_per_second"].as_f64().expect("rate") > 0.0,
        "{status:#}"
    );
    assert!(status["leases"]["planned"].as_u64().expect("leases") > 0);
    assert!(status["epoch_rows"]["committed"].as_u64().expect("rows") > 0);
    // gen-data's eval fraction is 0.2 of 60000 rows, drawn per row.
    let planned = status["epoch_rows"]["planned"].as_u64().expect("planned");
    assert!((46_000..50_000).contains(&planned), "{status:#}");

    let coordinator = &job.http;
    let (code, _, body) = get(&format!("{coordinator}/healthz"));
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    assert_eq!(get(&format!("{coordinator}/readyz")).0, 200);
    let (code, headers, body) = get(&format!("{coordinator}/metrics"));
    assert_eq!(code, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/plain; version=0.0.4")),
        "{headers:?}"
    );
    let m = prometheus_samples(&body);
    assert!(
        value(&m, "funnel_steps_committed_total", "") >= 3.0,
        "{body}"
    );
    assert!(
        value(&m, "funnel_samples_total", "") >= 3.0 * 512.0,
        "{body}"
    );
    assert_eq!(value(&m, "funnel_workers", ""), 2.0);
    assert_eq!(value(&m, "funnel_worker_failures_total", ""), 0.0);
    assert!(
        value(&m, "funnel_allreduce_bytes_total", "") > 0.0,
        "{body}"
    );
    assert!(
        value(&m, "funnel_allreduce_seconds_total", "") > 0.0,
        "{body}"
    );
    let weights: Vec<_> = m
        .iter()
        .filter(|(n, _, _)| n == "funnel_task_weight")
        .collect();
    assert_eq!(weights.len(), 4, "{body}");
    assert!(
        m.iter()
            .any(|(n, l, _)| n == "funnel_task_loss" && l == "task=\"click\""),
        "{body}"
    );
    assert!(value(&m, "funnel_leases", "state=\"planned\"") > 0.0);

    for (_, _, w_http) in &job.workers {
        assert_eq!(get(&format!("{w_http}/healthz")).2, "ok\n");
        let (code, _, body) = get(&format!("{w_http}/metrics"));
        assert_eq!(code, 200);
        let m = prometheus_samples(&body);
        let steps = m
            .iter()
            .find(|(n, _, _)| n == "funnel_worker_steps_total")
            .expect("steps");
        assert!(steps.1.starts_with("worker=\"w"), "{steps:?}");
        assert!(steps.2 >= 1.0, "{body}");
        assert!(
            m.iter()
                .any(|(n, _, v)| n == "funnel_worker_allreduce_bytes_total" && *v > 0.0),
            "{body}"
        );
    }

    let peer = status["workers"][0]["peer"]
        .as_str()
        .expect("peer")
        .to_string();
    let grpc = job.grpc.clone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        for (addr, service) in [
            (&grpc, "funnel.v1.Coordinator"),
            (&peer, "funnel.v1.Peer"),
            (&grpc, ""),
        ] {
            let mut health = HealthClient::new(channel(addr).await);
            let answer = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap_or_else(|s| panic!("health of {service:?} at {addr}: {s}"));
            assert_eq!(
                answer.into_inner().status,
                ServingStatus::Serving as i32,
                "{service}"
            );
        }

        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let ask = |token: Option<&str>| {
            let mut req = tonic::Request::new(tokio_stream::iter(vec![ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }]));
            if let Some(t) = token {
                req.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {t}").parse().expect("header"),
                );
            }
            req
        };
        let mut reflection = ServerReflectionClient::new(channel(&grpc).await);
        let refused = reflection.server_reflection_info(ask(None)).await;
        assert_eq!(
            refused.expect_err("no token").code(),
            tonic::Code::Unauthenticated
        );
        let mut stream = reflection
            .server_reflection_info(ask(Some(TOKEN)))
            .await
            .expect("reflection with the token")
            .into_inner();
        let answer = stream.message().await.expect("answer").expect("one answer");
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("not a service list: {answer:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in [
            "funnel.v1.Coordinator",
            "funnel.v1.Peer",
            "grpc.health.v1.Health",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
    });

    // The job completes; every process exits cleanly.
    for (mut w, log, _) in std::mem::take(&mut job.workers) {
        let s = w.wait().expect("wait");
        assert!(s.success(), "worker failed:\n{}", text(&log));
        // JSON logs: every line an object; the checkpoint line carries the spans' fields.
        let lines = text(&log);
        let mut checkpoint_lines = 0;
        for l in lines.lines().filter(|l| l.starts_with('{')) {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            if v["fields"]["message"] == "checkpoint committed" {
                checkpoint_lines += 1;
                let spans = v["spans"].as_array().expect("spans");
                let field = |k: &str| spans.iter().find_map(|s| s.get(k).cloned());
                assert!(field("job").is_some() && field("worker").is_some(), "{l}");
                assert!(
                    field("epoch").is_some() && field("generation").is_some(),
                    "{l}"
                );
            }
        }
        let rank0 = lines.contains("checkpoint committed:");
        assert_eq!(checkpoint_lines > 0, rank0, "{lines}");
    }
    let s = job.coordinator.0.wait().expect("wait");
    assert!(
        s.success(),
        "coordinator failed:\n{}",
        text(&job.coordinator.1)
    );
}
