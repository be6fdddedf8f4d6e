//! TLS (issue 6 point 8): a job whose coordinator and peer servers speak only TLS, with mutual
//! TLS (every client presents a certificate of the job's CA), completes; a plaintext client,
//! a client without a certificate, and a worker told to dial `http://` are refused; so is
//! `cluster.ring_transport = "tcp"` (plaintext ring links) on a TLS job. The
//! certificates are made here by rcgen: a CA, and one `localhost` identity for every process.

mod support;

use std::path::{Path, PathBuf};

use funnel_proto::v1 as pb;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::funnel_env;
use support::procs::{TOKEN, setup, spawn_worker, start_coordinator, text, waiter};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA and a `localhost` identity it signed, as PEM files in `dir`.
fn pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("cert");
    let p = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&p.ca, ca.pem()).expect("write");
    std::fs::write(&p.cert, cert.pem()).expect("write");
    std::fs::write(&p.key, key.serialize_pem()).expect("write");
    p
}

/// GetJob over `endpoint`: Ok if the coordinator answered.
fn get_job(endpoint: Endpoint) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let channel: Channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        let token = funnel_proto::auth::JobToken::new(TOKEN).expect("token");
        let mut c =
            pb::coordinator_client::CoordinatorClient::with_interceptor(channel, token.bearer());
        c.get_job(pb::GetJobRequest {})
            .await
            .map(|_| ())
            .map_err(|s| format!("{s:?}"))
    })
}

#[test]
fn a_job_over_mutual_tls_completes_and_plaintext_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki(dir.path());
    let spec = setup(dir.path(), "20000", "1000", 2);
    let out = format!("file://{}/out", dir.path().display());
    let path = |p: &PathBuf| p.to_str().expect("utf8").to_string();
    let server_env = vec![
        ("FUNNEL_TLS_CERT", path(&p.cert)),
        ("FUNNEL_TLS_KEY", path(&p.key)),
        ("FUNNEL_TLS_CLIENT_CA", path(&p.ca)),
        ("FUNNEL_TLS_CA", path(&p.ca)),
    ];
    let (coordinator, clog, addr) =
        start_coordinator(&spec, &out, "127.0.0.1:0", &server_env, None);
    let https = format!("https://{addr}");

    // Refused: plaintext, and TLS without a client certificate.
    let plain = Endpoint::from_shared(format!("http://{addr}")).expect("url");
    let e = get_job(plain).expect_err("plaintext to a TLS server");
    eprintln!("plaintext client: {e}");
    let ca = Certificate::from_pem(std::fs::read(&p.ca).expect("ca"));
    let anonymous = Endpoint::from_shared(https.clone())
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .domain_name("localhost"),
        )
        .expect("tls");
    let e = get_job(anonymous).expect_err("no client certificate under mutual TLS");
    eprintln!("client without a certificate: {e}");
    // Accepted: the job's CA and a certificate it signed.
    let identity = tonic::transport::Identity::from_pem(
        std::fs::read(&p.cert).expect("cert"),
        std::fs::read(&p.key).expect("key"),
    );
    let mutual = Endpoint::from_shared(https.clone())
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("localhost")
                .identity(identity),
        )
        .expect("tls");
    get_job(mutual).expect("a client with the job's certificate is served");

    // A TLS worker told to dial plaintext refuses before connecting.
    let env: Vec<(&str, &str)> = server_env
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain([("FUNNEL_JOB_TOKEN", TOKEN)])
        .collect();
    funnel_env(
        &["worker", "--coordinator", &format!("http://{addr}")],
        &env,
    )
    .failure_naming(&["plaintext is refused"]);

    // The job itself, every connection over mutual TLS (coordinator and peers).
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (child, log) = spawn_worker(&https, &server_env);
            (waiter(child), log)
        })
        .collect();
    let (status, _) = waiter(coordinator).join().expect("waiter");
    assert!(status.success(), "coordinator failed:\n{}", text(&clog));
    for (h, log) in workers {
        let (status, _) = h.join().expect("waiter");
        assert!(status.success(), "worker failed:\n{}", text(&log));
    }
    assert!(dir.path().join("out/metrics.jsonl").exists());

    // The ring's raw TCP links carry no encryption: a TLS job that asks for them explicitly
    // is refused by its workers, naming the key (`auto`, the default, used gRPC above).
    let tcp_spec = dir.path().join("job-tcp.toml");
    let text_spec = std::fs::read_to_string(&spec).expect("spec") + "ring_transport = \"tcp\"\n";
    std::fs::write(&tcp_spec, text_spec).expect("write");
    let out2 = format!("file://{}/out2", dir.path().display());
    let (mut coordinator, _clog, addr) = start_coordinator(
        tcp_spec.to_str().expect("utf8"),
        &out2,
        "127.0.0.1:0",
        &server_env,
        None,
    );
    let (worker, log) = spawn_worker(&format!("https://{addr}"), &server_env);
    let (status, _) = waiter(worker).join().expect("waiter");
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    assert!(
        !status.success(),
        "a TLS worker must refuse raw TCP ring links"
    );
    let log = text(&log);
    assert!(
        log.contains("cluster.ring_transport") && log.contains("in the clear"),
        "{log}"
    );
}
