//! Checkpoint commits against every store: `memory://`, `file://` and the real S3 server
//! (radosgw, whose create-only put is `If-None-Match: *`). Required on S3 when
//! FUNNEL_REQUIRE_S3=1, as in .ci/run.

use bytes::Bytes;
use funnel_common::checkpoint::{self, LATEST, MANIFEST};
use funnel_common::store::StoreUrl;
use object_store::ObjectStoreExt;

fn files(step: u64) -> Vec<(String, Bytes)> {
    vec![
        (
            "model.json".into(),
            Bytes::from(format!("{{\"step\": {step}}}")),
        ),
        (
            "model.safetensors".into(),
            Bytes::from(vec![step as u8; 1000]),
        ),
    ]
}

async fn suite(output: &str) {
    let output = output.trim_end_matches('/');
    let store = StoreUrl::open(output, "output").expect("store");
    assert!(checkpoint::latest(output).await.expect("reads").is_none());
    let msg = checkpoint::open(output)
        .await
        .expect_err("nothing committed")
        .to_string();
    assert!(msg.contains("no committed checkpoint"), "{msg}");

    let dir = checkpoint::commit(output, 7, files(7))
        .await
        .expect("commits");
    assert!(dir.ends_with("checkpoints/step-000000007"), "{dir}");
    let ck = checkpoint::open(output).await.expect("opens via LATEST");
    assert_eq!(ck.manifest.step, 7);
    assert_eq!(
        ck.file("model.json").expect("file"),
        &Bytes::from("{\"step\": 7}")
    );
    assert_eq!(ck.manifest.files.len(), 2);

    // Create-only: the same step cannot be committed twice.
    let msg = checkpoint::commit(output, 7, files(8))
        .await
        .expect_err("second commit")
        .to_string();
    assert!(msg.contains("already committed"), "{msg}");
    let again = checkpoint::open(&dir).await.expect("first commit intact");
    assert_eq!(again.file("model.safetensors").expect("file")[0], 7);

    // A newer commit moves LATEST.
    checkpoint::commit(output, 12, files(12))
        .await
        .expect("commits");
    assert_eq!(
        checkpoint::latest(output).await.expect("reads").as_deref(),
        Some("step-000000012")
    );
    assert_eq!(
        checkpoint::open(output).await.expect("opens").manifest.step,
        12
    );

    // Files written without a manifest (a crash before commit) are not a checkpoint.
    let partial = store.child("checkpoints/step-000000020/model.json");
    store
        .store
        .put(&partial, Bytes::from_static(b"{}").into())
        .await
        .expect("put");
    let msg = checkpoint::open(&format!("{output}/checkpoints/step-000000020"))
        .await
        .expect_err("no manifest")
        .to_string();
    assert!(
        msg.contains(MANIFEST) && msg.contains("never committed"),
        "{msg}"
    );
    assert_eq!(
        checkpoint::open(output)
            .await
            .expect("LATEST still good")
            .manifest
            .step,
        12
    );

    // A file that does not match its manifest is refused, naming it.
    let tampered = store.child("checkpoints/step-000000012/model.safetensors");
    store
        .store
        .put(&tampered, Bytes::from(vec![0u8; 1000]).into())
        .await
        .expect("put");
    let msg = checkpoint::open(output)
        .await
        .expect_err("tampered")
        .to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("does not match"),
        "{msg}"
    );

    // A missing file too.
    let gone = store.child("checkpoints/step-000000007/model.json");
    store.store.delete(&gone).await.expect("delete");
    let msg = checkpoint::open(&dir)
        .await
        .expect_err("missing")
        .to_string();
    assert!(
        msg.contains("model.json") && msg.contains("missing"),
        "{msg}"
    );

    // The store property commits rely on: a create-only put of an existing key fails.
    let key = store.child("checkpoints/create-only-probe");
    let create = || object_store::PutOptions {
        mode: object_store::PutMode::Create,
        ..Default::default()
    };
    store
        .store
        .put_opts(&key, Bytes::from_static(b"a").into(), create())
        .await
        .expect("first create");
    let err = store
        .store
        .put_opts(&key, Bytes::from_static(b"b").into(), create())
        .await
        .expect_err("second create");
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err}"
    );
    let kept = store
        .store
        .get(&key)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(kept, Bytes::from_static(b"a"));

    // Bad names are refused before anything is written.
    let msg = checkpoint::commit(output, 30, vec![("../x".into(), Bytes::new())])
        .await
        .expect_err("bad name")
        .to_string();
    assert!(msg.contains("not a valid checkpoint file name"), "{msg}");
    let msg = checkpoint::commit(
        output,
        30,
        vec![(LATEST.into(), Bytes::new()), (LATEST.into(), Bytes::new())],
    )
    .await
    .expect_err("duplicate")
    .to_string();
    assert!(msg.contains("twice"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store() {
    suite("memory://checkpoints/run").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store() {
    let dir = tempfile::tempdir().expect("tmp");
    suite(&format!("file://{}", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store() {
    let bucket = match std::env::var("FUNNEL_S3_BUCKET") {
        Ok(b) if std::env::var("AWS_ENDPOINT_URL").is_ok() => b,
        _ if std::env::var("FUNNEL_REQUIRE_S3").as_deref() == Ok("1") => {
            panic!("FUNNEL_REQUIRE_S3=1 but no S3 configured")
        }
        _ => {
            eprintln!("SKIPPED: no S3 server configured");
            return;
        }
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    suite(&format!(
        "s3://{bucket}/checkpoints-{}-{nanos}",
        std::process::id()
    ))
    .await;
}
