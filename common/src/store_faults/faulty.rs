//! The wrapper store of [`super`]: draws a fault per Parquet read, deterministically per read,
//! and counts what it injected so that tests can check the faults really happened.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

use super::{FaultKind, FaultSpec};
use crate::rng::SplitMix64;

/// How many Parquet reads a [`FaultyStore`] saw and how many faults it injected, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultCounts {
    /// Reads of `.parquet` objects, faulted or not.
    pub reads: u64,
    /// `503 SlowDown` errors (persistent failures included).
    pub slowdown: u64,
    /// Timeouts.
    pub timeout: u64,
    /// Truncated bodies.
    pub truncate: u64,
}

/// A store whose Parquet reads fail at a seeded rate.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    spec: FaultSpec,
    /// Times each read (object and ranges) was drawn for, so that its n-th draw is fixed.
    seen: Mutex<HashMap<String, u64>>,
    /// Faults injected, indexed by `FaultKind as usize`, then reads seen.
    counts: [AtomicU64; 4],
}

impl FaultyStore {
    /// Wraps `inner`, injecting faults as `spec` says.
    pub fn new(inner: Arc<dyn ObjectStore>, spec: FaultSpec) -> Self {
        Self {
            inner,
            spec,
            seen: Mutex::default(),
            counts: Default::default(),
        }
    }

    /// The reads seen and faults injected so far.
    pub fn injected(&self) -> FaultCounts {
        let n = |k: FaultKind| self.counts[k as usize].load(Ordering::Relaxed);
        FaultCounts {
            reads: self.counts[3].load(Ordering::Relaxed),
            slowdown: n(FaultKind::SlowDown),
            timeout: n(FaultKind::Timeout),
            truncate: n(FaultKind::Truncate),
        }
    }

    /// The fault for a read of `location` described by `read` (its ranges), if one is drawn.
    fn draw(&self, location: &Path, read: &str) -> Option<FaultKind> {
        let path = location.as_ref();
        if !path.ends_with(".parquet") {
            return None;
        }
        self.counts[3].fetch_add(1, Ordering::Relaxed);
        let kind = if self
            .spec
            .persistent
            .as_ref()
            .is_some_and(|p| path.contains(p))
        {
            FaultKind::SlowDown
        } else {
            let key = format!("{path} {read}");
            let nth = {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                let n = seen.entry(key.clone()).or_default();
                *n += 1;
                *n
            };
            if nth > super::TRANSIENT_DRAWS {
                return None;
            }
            let stream = crate::hash::table_seed(&key) ^ nth.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut rng = SplitMix64::derive(self.spec.seed, stream);
            if self.spec.kinds.is_empty() || rng.next_f64() >= self.spec.rate {
                return None;
            }
            self.spec.kinds[rng.below(self.spec.kinds.len() as u64) as usize]
        };
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
        Some(kind)
    }

    /// The error of a failing read of `kind` (a timeout first waits, as a real one does).
    async fn fail(&self, kind: FaultKind) -> object_store::Error {
        let what = if kind == FaultKind::Timeout {
            tokio::time::sleep(self.spec.delay).await;
            format!("operation timed out after {:?}", self.spec.delay)
        } else {
            "503 SlowDown: please reduce your request rate".to_string()
        };
        object_store::Error::Generic {
            store: "fault injection",
            source: what.into(),
        }
    }
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
        let read = format!("get {:?} head={}", options.range, options.head);
        let fault = self.draw(location, &read);
        match fault {
            None => self.inner.get_opts(location, options).await,
            Some(FaultKind::Truncate) if options.head => {
                self.inner.get_opts(location, options).await
            }
            Some(k @ (FaultKind::SlowDown | FaultKind::Timeout)) => Err(self.fail(k).await),
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
        let fault = self.draw(location, &format!("ranges {ranges:?}"));
        match fault {
            None => self.inner.get_ranges(location, ranges).await,
            Some(k @ (FaultKind::SlowDown | FaultKind::Timeout)) => Err(self.fail(k).await),
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
    use object_store::ObjectStoreExt;

    /// A fault is transient: even at rate 1 a read fails only on its first draws, so retries
    /// that share a read's draws (several callers of one footer read) all get through.
    #[test]
    fn only_the_first_draws_of_a_read_can_fail() {
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let spec = FaultSpec::parse("rate=1,seed=3,kinds=timeout,delay_ms=0").expect("spec");
        let store = FaultyStore::new(inner, spec);
        let fails: Vec<bool> = (0..6)
            .map(|_| store.draw(&Path::from("a.parquet"), "r").is_some())
            .collect();
        let n = crate::store_faults::TRANSIENT_DRAWS as usize;
        assert_eq!(fails, [vec![true; n], vec![false; 6 - n]].concat());
    }

    /// The same reads draw the same faults in any order, only `.parquet` objects are faulted,
    /// and a persistent substring fails every read of its objects.
    #[tokio::test]
    async fn draws_depend_on_the_read_not_on_the_interleaving() {
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        for name in ["a.parquet", "b.parquet", "c.json"] {
            inner
                .put(&Path::from(name), Bytes::from(vec![7u8; 64]).into())
                .await
                .expect("put");
        }
        let spec = FaultSpec::parse("rate=0.5,seed=3,kinds=slowdown,delay_ms=0").expect("spec");
        let outcomes = |order: &[&str]| {
            let store = FaultyStore::new(inner.clone(), spec.clone());
            let mut out: HashMap<String, Vec<bool>> = HashMap::new();
            for _ in 0..8 {
                for name in order {
                    let ok = store.draw(&Path::from(*name), "r").is_none();
                    out.entry(name.to_string()).or_default().push(ok);
                }
            }
            out
        };
        let ab = outcomes(&["a.parquet", "b.parquet", "c.json"]);
        assert_eq!(ab, outcomes(&["c.json", "b.parquet", "a.parquet"]));
        assert!(ab["c.json"].iter().all(|ok| *ok), "only Parquet is faulted");
        assert!(ab["a.parquet"].contains(&false) && ab["a.parquet"].contains(&true));

        let mut spec = spec;
        spec.rate = 0.0;
        spec.persistent = Some("b.par".into());
        let store = FaultyStore::new(inner, spec);
        assert!(store.get(&Path::from("a.parquet")).await.is_ok());
        for _ in 0..3 {
            let e = store
                .head(&Path::from("b.parquet"))
                .await
                .expect_err("fails");
            assert!(e.to_string().contains("SlowDown"), "{e}");
        }
        let n = store.injected();
        assert_eq!((n.reads, n.slowdown, n.timeout, n.truncate), (4, 3, 0, 0));
    }
}
