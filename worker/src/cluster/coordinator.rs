//! The worker's side of `funnel.v1.Coordinator`: one client with the job token, and the job as
//! the coordinator hands it out (spec, output, datasets rebuilt from the footers it read).

use std::sync::Arc;
use std::time::Duration;

use funnel_common::manifest::{DatasetManifest, ObjectEntry};
use funnel_common::spec::Job;
use funnel_proto::auth::AttachToken;
use funnel_proto::tls::Security;
use funnel_proto::v1 as pb;
use pb::coordinator_client::CoordinatorClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::WorkerError;

/// A coordinator client that attaches the job token.
pub type Client = CoordinatorClient<InterceptedService<Channel, AttachToken>>;

/// Connects to `url` (`http://host:port`), retrying for up to `patience` while it starts.
pub async fn connect(
    url: &str,
    security: &Security,
    patience: Duration,
) -> Result<Client, WorkerError> {
    security.check_url(url).map_err(WorkerError::Coordinator)?;
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| WorkerError::Coordinator(format!("bad coordinator URL {url:?}: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = &security.tls {
        let config = tls.client().map_err(WorkerError::Coordinator)?;
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| WorkerError::Coordinator(format!("TLS to {url}: {e}")))?;
    }
    let token = &security.token;
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Duration::from_millis(50);
    let channel = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() + backoff > deadline => {
                return Err(WorkerError::Coordinator(format!(
                    "cannot reach the coordinator at {url} for {patience:?}: {e}"
                )));
            }
            Err(e) => {
                tracing::debug!(%url, error = %e, "coordinator not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    Ok(CoordinatorClient::with_interceptor(channel, token.bearer())
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(64 << 20))
}

/// A refused or failed coordinator call, naming the call. A broken connection (the
/// coordinator died or restarts) is [`WorkerError::CoordinatorLost`]; a refusal is not.
pub fn refused(call: &str, status: tonic::Status) -> WorkerError {
    let text = format!("{call}: {} ({:?})", status.message(), status.code());
    if connection_lost(&status) {
        WorkerError::CoordinatorLost(text)
    } else {
        WorkerError::Coordinator(text)
    }
}

/// Whether `status` says the connection failed rather than the coordinator answering: tonic
/// reports a refused or reset connection as UNAVAILABLE, and a stream cut mid-call as UNKNOWN
/// or CANCELLED with a transport message.
pub fn connection_lost(status: &tonic::Status) -> bool {
    use tonic::Code;
    let transport = || {
        let m = status.message().to_ascii_lowercase();
        [
            "transport",
            "connection",
            "h2 protocol",
            "broken pipe",
            "reset",
        ]
        .iter()
        .any(|w| m.contains(w))
    };
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Cancelled | Code::Internal => transport(),
        _ => false,
    }
}

/// The job as the coordinator serves it.
#[derive(Debug, Clone)]
pub struct ServedJob {
    /// The parsed job.
    pub job: Arc<Job>,
    /// Hash of the spec text (sent back at registration).
    pub config_hash: u64,
    /// Output URL.
    pub output: String,
    /// The training data.
    pub train: Arc<DatasetManifest>,
    /// The evaluation data.
    pub eval: Option<Arc<DatasetManifest>>,
}

/// Fetches the job and rebuilds its datasets from the footers the coordinator read.
pub async fn fetch_job(client: &mut Client, url: &str) -> Result<ServedJob, WorkerError> {
    let r = client
        .get_job(pb::GetJobRequest {})
        .await
        .map_err(|s| refused("GetJob", s))?
        .into_inner();
    let hash = xxhash_rust::xxh64::xxh64(r.spec_toml.as_bytes(), 0);
    if hash != r.config_hash {
        return Err(WorkerError::Coordinator(format!(
            "GetJob: spec text hashes to {hash:#018x}, the coordinator says {:#018x}",
            r.config_hash
        )));
    }
    let job = Arc::new(Job::parse(&r.spec_toml, &format!("the job of {url}"))?);
    let train = r
        .train
        .ok_or_else(|| WorkerError::Coordinator("GetJob: no training dataset".into()))?;
    Ok(ServedJob {
        job,
        config_hash: r.config_hash,
        output: r.output,
        train: Arc::new(dataset(train)?),
        eval: r.eval.map(dataset).transpose()?.map(Arc::new),
    })
}

fn dataset(d: pb::Dataset) -> Result<DatasetManifest, WorkerError> {
    let base = DatasetManifest::from_objects(&d.url, &d.key, Vec::new())?;
    let objects = d
        .objects
        .into_iter()
        .map(|o| {
            let path = object_store::path::Path::parse(o.path.as_str()).map_err(|e| {
                WorkerError::Coordinator(format!("GetJob: object path {:?}: {e}", o.path))
            })?;
            let url = base.store.object_url(&path);
            let etag = (!o.etag.is_empty()).then_some(o.etag);
            Ok(ObjectEntry::from_footer(path, url, o.size, etag, o.footer)?)
        })
        .collect::<Result<Vec<_>, WorkerError>>()?;
    Ok(DatasetManifest { objects, ..base })
}
