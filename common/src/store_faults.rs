//! Object-store fault injection for tests (issue 6 point 6): a store wrapper that makes reads
//! of Parquet objects fail as real stores do, at a seeded rate.
//!
//! `FUNNEL_STORE_FAULTS=rate=0.2,seed=7,kinds=slowdown+timeout+truncate[,persistent=SUBSTR]`
//! (or [`inject`] inside a process) wraps every store [`crate::store::StoreUrl::open`] opens.
//! Only reads (`get`, ranges) of objects whose path ends in `.parquet` are faulted, so
//! checkpoints and metrics are written and read normally. Kinds:
//! - `slowdown`: an error like S3's `503 SlowDown`;
//! - `timeout`: a short wait, then a timeout error;
//! - `truncate`: the read succeeds but returns half the bytes asked for (a cut connection).
//!
//! `persistent=SUBSTR` makes every read of objects whose path contains SUBSTR fail, to check
//! that a persistent failure ends with an error naming the object. Retries live in
//! [`crate::retry`].

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

use crate::rng::SplitMix64;

/// The environment variable that turns injection on in a process.
pub const ENV: &str = "FUNNEL_STORE_FAULTS";

/// A kind of injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `503 SlowDown`.
    SlowDown,
    /// A wait, then a timeout.
    Timeout,
    /// Half the bytes.
    Truncate,
}

/// What to inject.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    /// Probability that a read fails.
    pub rate: f64,
    /// Seed of the decisions.
    pub seed: u64,
    /// Kinds to draw from.
    pub kinds: Vec<FaultKind>,
    /// Objects whose path contains this always fail.
    pub persistent: Option<String>,
}

impl FaultSpec {
    /// Parses `key=value,...` (keys `rate`, `seed`, `kinds`, `persistent`).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut spec = FaultSpec {
            rate: 0.0,
            seed: 0,
            kinds: vec![FaultKind::SlowDown, FaultKind::Timeout, FaultKind::Truncate],
            persistent: None,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{ENV}: `{part}` is not key=value"))?;
            let bad = |why: &str| format!("{ENV}: key `{key}`: {why} (got `{value}`)");
            match key {
                "rate" => {
                    spec.rate = value.parse().map_err(|_| bad("not a number"))?;
                    if !(0.0..=1.0).contains(&spec.rate) {
                        return Err(bad("must be in 0..=1"));
                    }
                }
                "seed" => spec.seed = value.parse().map_err(|_| bad("not an integer"))?,
                "kinds" => {
                    spec.kinds = value
                        .split('+')
                        .map(|k| match k {
                            "slowdown" => Ok(FaultKind::SlowDown),
                            "timeout" => Ok(FaultKind::Timeout),
                            "truncate" => Ok(FaultKind::Truncate),
                            _ => Err(bad("kinds are slowdown, timeout, truncate, joined by +")),
                        })
                        .collect::<std::result::Result<_, _>>()?;
                }
                "persistent" => spec.persistent = Some(value.to_string()),
                _ => {
                    return Err(format!(
                        "{ENV}: unknown key `{key}` (rate, seed, kinds, persistent)"
                    ));
                }
            }
        }
        Ok(spec)
    }
}

fn global() -> &'static Mutex<Option<FaultSpec>> {
    static SPEC: OnceLock<Mutex<Option<FaultSpec>>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let spec = std::env::var(ENV)
            .ok()
            .and_then(|t| match FaultSpec::parse(&t) {
                Ok(s) => {
                    tracing::warn!(spec = %t, "object-store fault injection is on");
                    Some(s)
                }
                Err(e) => {
                    tracing::error!("{e}; no faults injected");
                    None
                }
            });
        Mutex::new(spec)
    })
}

/// Turns injection on (or off) for stores opened from now on in this process.
pub fn inject(spec: Option<FaultSpec>) {
    *global().lock().unwrap_or_else(|p| p.into_inner()) = spec;
}

/// `store`, wrapped when injection is on.
pub fn wrap(store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    let spec = global().lock().unwrap_or_else(|p| p.into_inner()).clone();
    match spec {
        Some(spec) => Arc::new(FaultyStore {
            rng: Mutex::new(SplitMix64::new(spec.seed)),
            spec,
            inner: store,
        }),
        None => store,
    }
}

/// A store whose Parquet reads fail at a seeded rate.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    spec: FaultSpec,
    rng: Mutex<SplitMix64>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({:?}, {})", self.spec, self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "fault injection",
        source: what.to_string().into(),
    }
}

/// The error of a failing read of `kind` (a timeout first waits a little, as a real one does).
async fn fail(kind: FaultKind) -> object_store::Error {
    if kind == FaultKind::Timeout {
        tokio::time::sleep(Duration::from_millis(20)).await;
        return injected("operation timed out");
    }
    injected("503 SlowDown: please reduce your request rate")
}

impl FaultyStore {
    /// The fault for a read of `location`, if one is drawn.
    fn draw(&self, location: &Path) -> Option<FaultKind> {
        if !location.as_ref().ends_with(".parquet") {
            return None;
        }
        if let Some(p) = &self.spec.persistent
            && location.as_ref().contains(p.as_str())
        {
            return Some(FaultKind::SlowDown);
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        if self.spec.kinds.is_empty() || rng.next_f64() >= self.spec.rate {
            return None;
        }
        Some(self.spec.kinds[rng.below(self.spec.kinds.len() as u64) as usize])
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let fault = if options.head {
            None
        } else {
            self.draw(location)
        };
        match fault {
            None => self.inner.get_opts(location, options).await,
            Some(k @ (FaultKind::SlowDown | FaultKind::Timeout)) => Err(fail(k).await),
            Some(FaultKind::Truncate) => {
                let got = self.inner.get_opts(location, options).await?;
                let (meta, range, attributes, extensions) = (
                    got.meta.clone(),
                    got.range.clone(),
                    got.attributes.clone(),
                    got.extensions.clone(),
                );
                let bytes = got.bytes().await?;
                let cut = bytes.slice(..bytes.len() / 2);
                Ok(GetResult {
                    payload: GetResultPayload::Stream(
                        futures::stream::once(async move { Ok(cut) }).boxed(),
                    ),
                    meta,
                    range,
                    attributes,
                    extensions,
                })
            }
        }
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        match self.draw(location) {
            None => self.inner.get_ranges(location, ranges).await,
            Some(k @ (FaultKind::SlowDown | FaultKind::Timeout)) => Err(fail(k).await),
            Some(FaultKind::Truncate) => {
                let mut parts = self.inner.get_ranges(location, ranges).await?;
                if let Some(last) = parts.last_mut() {
                    *last = last.slice(..last.len() / 2);
                }
                Ok(parts)
            }
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_keys_are_named() {
        let s = FaultSpec::parse("rate=0.25,seed=9,kinds=slowdown+truncate,persistent=part-1")
            .expect("parses");
        assert_eq!(s.rate, 0.25);
        assert_eq!(s.seed, 9);
        assert_eq!(s.kinds, [FaultKind::SlowDown, FaultKind::Truncate]);
        assert_eq!(s.persistent.as_deref(), Some("part-1"));
        for (bad, named) in [
            ("rate=2", "rate"),
            ("rate=x", "rate"),
            ("kinds=fire", "kinds"),
            ("color=red", "color"),
            ("rate", "rate"),
        ] {
            let e = FaultSpec::parse(bad).expect_err(bad);
            assert!(e.contains(ENV) && e.contains(named), "{e}");
        }
    }
}
