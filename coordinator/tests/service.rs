//! The coordinator's gRPC service on 127.0.0.1, driven by a raw client: refusals (wrong token,
//! config hash, layout hash, stale generation), the ring, round-robin leases, the step vote,
//! and a silent worker: fenced, a new generation, its leases returned without committed rows.

use std::time::Duration;

use funnel_common::spec::{Job, synthetic_job_toml};
use funnel_common::synth::{GenOptions, generate};
use funnel_proto::auth::JobToken;
use funnel_proto::v1 as pb;
use pb::coordinator_client::CoordinatorClient;
use tonic::Code;
use tonic::transport::Channel;

type Client = CoordinatorClient<
    tonic::service::interceptor::InterceptedService<Channel, funnel_proto::auth::AttachToken>,
>;

struct Running {
    url: String,
    token: JobToken,
    job: tokio::task::JoinHandle<
        Result<funnel_coordinator::JobOutcome, funnel_coordinator::CoordinatorError>,
    >,
    _dir: tempfile::TempDir,
}

/// A coordinator for 2 workers over 4 objects x 2 row groups of generated data.
async fn start(heartbeat_timeout_ms: u64) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = format!("file://{}/data", dir.path().display());
    generate(&GenOptions {
        rows: 4000,
        files: 4,
        row_group_rows: 500,
        eval_fraction: 0.0,
        output: data.clone(),
        ..GenOptions::default()
    })
    .await
    .expect("data");
    let text = synthetic_job_toml(&data, &format!("file://{}/out", dir.path().display()))
        .replace("eval = ", "# eval = ");
    let mut job = Job::parse(&text, "test").expect("spec");
    job.spec.cluster.workers = 2;
    job.spec.cluster.heartbeat_interval_ms = 50;
    job.spec.cluster.heartbeat_timeout_ms = heartbeat_timeout_ms;
    job.spec.cluster.step_timeout_ms = 20_000;
    job.spec.cluster.join_timeout_ms = 20_000;
    let ctx = funnel_coordinator::prepare(job.spec, "test", "file:///tmp/unused".into())
        .await
        .expect("prepare");
    let listener = funnel_coordinator::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let token = JobToken::new("test-token").expect("token");
    let serve_token = token.clone();
    let job = tokio::spawn(async move {
        let weighting = funnel_common::weighting::WeightingState::new(
            funnel_common::spec::Weighting::Fixed,
            &[1.0; 4],
        );
        funnel_coordinator::serve(
            ctx,
            weighting,
            listener,
            None,
            &funnel_proto::tls::Security::plain(serve_token),
        )
        .await
    });
    Running {
        url,
        token,
        job,
        _dir: dir,
    }
}

async fn client(url: &str, token: &JobToken) -> Client {
    let channel = Channel::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    CoordinatorClient::with_interceptor(channel, token.bearer())
}

fn register(hash: u64, layout: u64, name: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        config_hash: hash,
        layout_hash: layout,
        peer_addr: format!("127.0.0.1:{}", 9000 + name.len()),
        worker_name: name.into(),
    }
}

/// Waits until `n` workers have registered (registration blocks until the ring is complete,
/// so the first one runs in a task and this polls the job status).
async fn registered(c: &mut Client, n: usize) {
    for _ in 0..2000 {
        let s = c.job_status(pb::JobStatusRequest {}).await.expect("status");
        if s.get_ref().workers.len() >= n {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{n} workers never registered");
}

#[tokio::test]
async fn refusals_ring_leases_and_the_step_vote() {
    let run = start(60_000).await;
    let mut c = client(&run.url, &run.token).await;

    let wrong = JobToken::new("not-the-token").expect("token");
    let err = client(&run.url, &wrong)
        .await
        .get_job(pb::GetJobRequest {})
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), Code::Unauthenticated);

    let job = c
        .get_job(pb::GetJobRequest {})
        .await
        .expect("job")
        .into_inner();
    assert_eq!(job.workers, 2);
    let train = job.train.expect("train dataset");
    assert_eq!(train.objects.len(), 4);
    assert!(train.objects.iter().all(|o| !o.footer.is_empty()));
    let hash = job.config_hash;

    let err = c
        .register(register(hash ^ 1, 7, "x"))
        .await
        .expect_err("config");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("config hash"), "{}", err.message());

    // Registration answers once the ring is complete: register both concurrently.
    let mut c2 = c.clone();
    let first = tokio::spawn(async move { c2.register(register(hash, 7, "a")).await });
    registered(&mut c, 1).await;
    // The second worker with another layout is refused; then the right one joins.
    let err = c
        .register(register(hash, 8, "bb"))
        .await
        .expect_err("layout");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("layout hash"), "{}", err.message());
    let b = c
        .register(register(hash, 7, "bb"))
        .await
        .expect("joins")
        .into_inner();
    let a = first.await.expect("task").expect("joins").into_inner();
    assert_eq!((a.generation, b.generation), (1, 1));
    assert_eq!(a.ring.len(), 2);
    let mut ranks = [a.rank, b.rank];
    ranks.sort_unstable();
    assert_eq!(ranks, [0, 1]);

    // A vote of a stale generation is not committed; each data slot (a rank's, without
    // failures) reads every second lease of the plan.
    let mut stale = vote(&a.worker_id, 1, 7, 0, &[0]);
    stale.generation = 0;
    let r = c.commit_step(stale).await.expect("answered").into_inner();
    assert!(!r.committed && r.generation == 1, "{r:?}");
    assert!(r.reason.contains("generation 1"), "{}", r.reason);
    let mut seen = Vec::new();
    for who in [&a, &b] {
        for index in 0.. {
            let r = c
                .next_lease(pb::NextLeaseRequest {
                    worker_id: who.worker_id.clone(),
                    generation: 1,
                    epoch: 0,
                    slot: who.rank,
                    index,
                })
                .await
                .expect("lease")
                .into_inner();
            match r.lease {
                Some(l) => seen.push((l.lease_id, who.rank)),
                None => break,
            }
        }
    }
    seen.sort_unstable();
    assert_eq!(seen.len(), 8, "every row group once: {seen:?}");
    assert!(seen.iter().all(|&(id, rank)| id % 2 == u64::from(rank)));

    // The step vote: a wrong layout is refused; the step commits when both voted; a row
    // committed once is refused the second time.
    let err = c
        .commit_step(vote(&a.worker_id, 1, 9, 0, &[0, 1]))
        .await
        .expect_err("layout");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("layout hash"), "{}", err.message());
    let err = c
        .commit_step(vote(&a.worker_id, 1, 7, 0, &[500]))
        .await
        .expect_err("row out of range");
    assert!(err.message().contains("row 500"), "{}", err.message());
    let mut c3 = c.clone();
    let wa = a.worker_id.clone();
    let waiting = tokio::spawn(async move { c3.commit_step(vote(&wa, 1, 7, 0, &[3, 1])).await });
    let rb = c
        .commit_step(vote(&b.worker_id, 1, 7, 1, &[2]))
        .await
        .expect("vote");
    let ra = waiting.await.expect("task").expect("vote");
    assert!(rb.get_ref().committed && ra.get_ref().committed);
    let status = c.job_status(pb::JobStatusRequest {}).await.expect("status");
    assert_eq!(status.get_ref().committed_step, 1);
    let err = c
        .commit_step(vote(&a.worker_id, 2, 7, 0, &[4, 3]))
        .await
        .expect_err("row 3 twice");
    assert!(
        err.message().contains("already counted"),
        "{}",
        err.message()
    );
    run.job.abort();
}

/// A step vote of generation 1 for `rows` of lease `lease`.
fn vote(w: &str, step: u64, layout: u64, lease: u64, rows: &[u32]) -> pb::CommitStepRequest {
    pb::CommitStepRequest {
        worker_id: w.into(),
        generation: 1,
        step,
        layout_hash: layout,
        rows: vec![pb::LeaseRows {
            lease_id: lease,
            rows: rows
                .iter()
                .flat_map(|r| r.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        }],
        epoch_end: false,
        stats: None,
    }
}

#[tokio::test]
async fn a_silent_worker_is_fenced_and_the_survivor_reads_its_data_slot() {
    let run = start(300).await;
    let mut c = client(&run.url, &run.token).await;
    let hash = c
        .get_job(pb::GetJobRequest {})
        .await
        .expect("job")
        .into_inner()
        .config_hash;
    let mut c2 = c.clone();
    let first = tokio::spawn(async move { c2.register(register(hash, 7, "a")).await });
    registered(&mut c, 1).await;
    let b = c
        .register(register(hash, 7, "bb"))
        .await
        .expect("joins")
        .into_inner();
    let a = first.await.expect("task").expect("joins").into_inner();
    let lease = |w: &str, slot: u32, index: u32| pb::NextLeaseRequest {
        worker_id: w.into(),
        generation: 1,
        epoch: 0,
        slot,
        index,
    };
    let la = c
        .next_lease(lease(&a.worker_id, a.rank, 0))
        .await
        .expect("lease")
        .into_inner();
    let lb = c
        .next_lease(lease(&b.worker_id, b.rank, 0))
        .await
        .expect("lease")
        .into_inner();
    let (la, lb) = (la.lease.expect("a's"), lb.lease.expect("b's"));
    assert_eq!((la.lease_id, lb.lease_id), (0, 1));
    // Step 1: a used rows 0..3 of lease 0, b rows 5 and 70 of lease 1. Both voted: committed.
    let mut c3 = c.clone();
    let wa = a.worker_id.clone();
    let waiting = tokio::spawn(async move { c3.commit_step(vote(&wa, 1, 7, 0, &[0, 1, 2])).await });
    let rb = c
        .commit_step(vote(&b.worker_id, 1, 7, 1, &[70, 5]))
        .await
        .expect("vote");
    assert!(rb.get_ref().committed);
    assert!(
        waiting
            .await
            .expect("task")
            .expect("vote")
            .get_ref()
            .committed
    );

    // Worker a keeps beating; b goes silent. a's step 2 vote waits, then is answered "not
    // committed" when b is removed, and a rejoins the ring of generation 2 alone.
    let beat = {
        let mut c = c.clone();
        let id = a.worker_id.clone();
        tokio::spawn(async move {
            loop {
                let _ = c
                    .heartbeat(pb::HeartbeatRequest {
                        worker_id: id.clone(),
                        generation: 1,
                        last_committed_step: 0,
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let r = c
        .commit_step(vote(&a.worker_id, 2, 7, 0, &[3]))
        .await
        .expect("vote answered")
        .into_inner();
    assert!(!r.committed && r.generation == 2, "{r:?}");
    let ring = c
        .rejoin(pb::RejoinRequest {
            worker_id: a.worker_id.clone(),
            generation: 1,
        })
        .await
        .expect("rejoins")
        .into_inner();
    assert_eq!((ring.generation, ring.rank, ring.ring.len()), (2, 0, 1));

    // b is fenced: its calls are refused, naming why.
    let err = c
        .heartbeat(pb::HeartbeatRequest {
            worker_id: b.worker_id.clone(),
            generation: 1,
            last_committed_step: 0,
        })
        .await
        .expect_err("fenced");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("no heartbeat"), "{}", err.message());

    // a now also reads b's data slot, from the start of its queue: lease 1 comes with the rows
    // b committed, then the rest of b's queue.
    let mut order = Vec::new();
    for index in 0.. {
        let r = c
            .next_lease(lease(&a.worker_id, b.rank, index))
            .await
            .expect("lease")
            .into_inner();
        let Some(l) = r.lease else { break };
        if l.lease_id == 1 {
            let bits = &l.shards[0].consumed;
            let set: Vec<u32> = (0..500u32)
                .filter(|&i| {
                    bits.get((i / 8) as usize)
                        .is_some_and(|b| b >> (i % 8) & 1 == 1)
                })
                .collect();
            assert_eq!(set, [5, 70], "the committed rows of b's first lease");
        }
        order.push(l.lease_id);
    }
    assert_eq!(order, [1, 3, 5, 7]);
    // A data slot the job does not have is refused.
    let err = c
        .next_lease(lease(&a.worker_id, 2, 0))
        .await
        .expect_err("slot 2 of 2");
    assert!(
        err.message().contains("data slot 2 of 2"),
        "{}",
        err.message()
    );
    let status = c.job_status(pb::JobStatusRequest {}).await.expect("status");
    assert_eq!(status.get_ref().generation, 2);
    beat.abort();
    run.job.abort();
}
