//! Object-store URLs: one place that turns a URL from the spec or the CLI into a store and a
//! prefix, with credentials from the standard environment and retries with backoff.
//!
//! Schemes: `s3://`/`s3a://` (AWS_* variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
//! AWS_REGION, AWS_ENDPOINT_URL, AWS_SESSION_TOKEN, ...), `gs://` (GOOGLE_*), `az://`/`abfs://`/
//! `abfss://` (AZURE_*), `file://`, `memory://NAME/` (a process-wide in-memory store per NAME, for
//! tests and single-process demos) and plain paths, which mean local files.

use crate::error::{DataLocation, Error, Result};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use url::Url;

/// A store and the prefix inside it that a URL addresses.
#[derive(Debug, Clone)]
pub struct StoreUrl {
    /// The URL, normalised (plain paths become `file://`).
    pub url: Url,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The prefix (or object) path inside the store.
    pub prefix: Path,
}

/// Schemes Funnel reads and writes.
pub const SUPPORTED_SCHEMES: &str =
    "s3://, s3a://, gs://, az://, abfs://, abfss://, file://, memory://, or a local path";

impl StoreUrl {
    /// Opens the store for `url`; `key` names the spec key or flag that gave it, for errors.
    pub fn open(url: &str, key: &str) -> Result<Self> {
        let bad = |reason: String| Error::Url {
            url: url.to_string(),
            key: key.to_string(),
            reason,
        };
        let parsed = parse(url).map_err(&bad)?;
        let prefix = Path::from_url_path(parsed.path()).map_err(|e| bad(e.to_string()))?;
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" => Arc::new(LocalFileSystem::new()),
            "memory" => memory_store(parsed.host_str().unwrap_or_default()),
            "s3" | "s3a" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(parsed.as_str())
                    .with_retry(retry_config());
                if endpoint_is_http() {
                    b = b.with_allow_http(true);
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(parsed.as_str())
                    .with_retry(retry_config())
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "az" | "abfs" | "abfss" | "azure" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(parsed.as_str())
                    .with_retry(retry_config())
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            other => {
                return Err(bad(format!(
                    "unknown scheme `{other}://`; supported: {SUPPORTED_SCHEMES}"
                )));
            }
        };
        Ok(Self {
            url: parsed,
            // Wrapped only when fault injection is on (tests); a bad FUNNEL_STORE_FAULTS fails
            // here rather than let a fault test run without faults.
            store: crate::store_faults::wrap(store).map_err(&bad)?,
            prefix,
        })
    }

    /// The URL of an object of this store, for messages and manifests.
    pub fn object_url(&self, path: &Path) -> String {
        let mut base = format!("{}://", self.url.scheme());
        if let Some(host) = self.url.host_str() {
            base.push_str(host);
        }
        format!("{base}/{path}")
    }

    /// The path of `name` under this URL's prefix.
    pub fn child(&self, name: &str) -> Path {
        name.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.join(part))
    }

    /// The whole object at `path`; a failure names its URL.
    pub async fn read(&self, path: &Path) -> Result<bytes::Bytes> {
        use object_store::ObjectStoreExt as _;
        let got = self
            .store
            .get(path)
            .await
            .map_err(|e| self.error("read", path, e))?;
        got.bytes().await.map_err(|e| self.error("read", path, e))
    }

    /// [`Self::read`], or `None` when the object does not exist.
    pub async fn read_optional(&self, path: &Path) -> Result<Option<bytes::Bytes>> {
        match self.read(path).await {
            Ok(b) => Ok(Some(b)),
            Err(Error::Store { source, .. })
                if matches!(source.as_ref(), object_store::Error::NotFound { .. }) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A store error for `path`, with hints for the usual causes.
    pub fn error(&self, op: &'static str, path: &Path, source: object_store::Error) -> Error {
        store_error(op, self.object_url(path), source)
    }

    /// A failed read of part of an object (a row group's column chunks), located at `at`
    /// (object URL, row group), with the same hints as [`store_error`].
    pub fn read_error(&self, at: DataLocation, source: object_store::Error) -> Error {
        Error::StoreRead {
            location: Box::new(at),
            hint: hint(&source),
            source: Box::new(source),
        }
    }
}

/// Wraps a store error with the URL and a hint for credential and endpoint problems.
pub fn store_error(op: &'static str, url: String, source: object_store::Error) -> Error {
    Error::Store {
        op,
        url,
        hint: hint(&source),
        source: Box::new(source),
    }
}

/// A hint for the usual causes of `source`: credentials, a missing bucket, the endpoint.
fn hint(source: &object_store::Error) -> &'static str {
    let text = source.to_string();
    if matches!(
        source,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || [
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "403 Forbidden",
    ]
    .iter()
    .any(|s| text.contains(s))
    {
        "\n  hint: the store refused the credentials; check AWS_ACCESS_KEY_ID / \
         AWS_SECRET_ACCESS_KEY (or GOOGLE_* / AZURE_*) and AWS_ENDPOINT_URL"
    } else if text.contains("NoSuchBucket") {
        "\n  hint: the bucket does not exist"
    } else if text.contains("error sending request") || text.contains("Connection refused") {
        "\n  hint: the endpoint did not answer; check AWS_ENDPOINT_URL and the network"
    } else {
        ""
    }
}

fn parse(url: &str) -> std::result::Result<Url, String> {
    if url.trim().is_empty() {
        return Err("empty URL".into());
    }
    if !url.contains("://") {
        // A plain path: local files, relative to the working directory.
        let abs = normalize(&std::path::absolute(url).map_err(|e| e.to_string())?);
        let mut parsed = Url::from_file_path(&abs)
            .map_err(|()| format!("not a usable path: {}", abs.display()))?;
        if url.ends_with('/') && !parsed.path().ends_with('/') {
            parsed.set_path(&format!("{}/", parsed.path()));
        }
        return Ok(parsed);
    }
    let parsed = Url::parse(url).map_err(|e| e.to_string())?;
    if parsed.scheme() == "memory" && parsed.host_str().unwrap_or_default().is_empty() {
        return Err("memory URLs name a store: memory://NAME/prefix".into());
    }
    Ok(parsed)
}

/// Resolves `.` and `..` lexically (the path may not exist yet, so no canonicalize).
fn normalize(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Process-wide in-memory stores by name, so that a writer and a reader in one process (tests,
/// demos) see the same objects.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    let mut stores = stores
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    stores
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

fn endpoint_is_http() -> bool {
    ["AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .any(|v| v.starts_with("http://"))
}

/// Retries with exponential backoff for transient errors (5xx, 429, timeouts, resets).
/// `FUNNEL_STORE_MAX_RETRIES` (default 8) and `FUNNEL_STORE_RETRY_TIMEOUT_SECS` (default 120)
/// override the limits.
fn retry_config() -> RetryConfig {
    let env = |k: &str, default: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            base: 2.0,
        },
        max_retries: env("FUNNEL_STORE_MAX_RETRIES", 8) as usize,
        retry_timeout: Duration::from_secs(env("FUNNEL_STORE_RETRY_TIMEOUT_SECS", 120)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_become_file_urls() {
        let s = StoreUrl::open("/tmp/funnel-x/data", "data.train").expect("opens");
        assert_eq!(s.url.scheme(), "file");
        assert_eq!(s.prefix.as_ref(), "tmp/funnel-x/data");
        assert_eq!(
            s.object_url(&s.child("a/b.parquet")),
            "file:///tmp/funnel-x/data/a/b.parquet"
        );
    }

    #[test]
    fn relative_segments_are_resolved() {
        let s = StoreUrl::open("/tmp/a/../b/./c/", "k").expect("opens");
        assert_eq!(s.prefix.as_ref(), "tmp/b/c");
    }

    #[test]
    fn unknown_scheme_names_url_key_and_choices() {
        let err = StoreUrl::open("ftp://host/x", "data.eval").expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains("ftp://host/x"), "{msg}");
        assert!(msg.contains("data.eval"), "{msg}");
        assert!(msg.contains("s3://"), "{msg}");
    }

    #[test]
    fn memory_stores_are_shared_by_name() {
        let a = StoreUrl::open("memory://shared-test/x", "k").expect("opens");
        let b = StoreUrl::open("memory://shared-test/y", "k").expect("opens");
        assert!(Arc::ptr_eq(&a.store, &b.store));
        assert!(StoreUrl::open("memory:///x", "k").is_err());
    }
}
