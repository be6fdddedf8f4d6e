//! Object-store fault injection for tests (issue 6 point 6): a store wrapper that makes reads
//! of Parquet objects fail as real stores do, at a seeded rate.
//!
//! `FUNNEL_STORE_FAULTS=rate=0.2,seed=7,kinds=slowdown+timeout+truncate[,delay_ms=20]
//! [,persistent=SUBSTR]` (or [`inject`] inside a process) wraps every store
//! [`crate::store::StoreUrl::open`] opens; a test may also wrap one store with
//! [`FaultyStore::new`]. Only reads (`get`, ranges, `head`) of objects whose path ends in
//! `.parquet` are faulted, so checkpoints, metrics and the journal are written and read
//! normally; writes, lists, copies and deletes always pass through. Kinds:
//! - `slowdown`: an error like S3's `503 SlowDown`;
//! - `timeout`: a short wait (`delay_ms`), then a timeout error;
//! - `truncate`: the read succeeds but returns half the bytes asked for (a cut connection);
//!   a `head` has no body, so a truncate drawn for it lets it through.
//!
//! Each draw depends only on the seed, the read (object and ranges) and how many times this
//! store has seen that same read, and a fault is transient: only the first
//! [`TRANSIENT_DRAWS`] draws of a read can fail. Several callers may issue the same read (a
//! footer's tail, say) and their retries share its draws in whatever order they interleave; with
//! unbounded draws one caller could meet six failures in a row (seen once in CI: 0.3^6 on one
//! read), with the bound every caller succeeds by its fourth attempt, within the retry budget.
//!
//! `persistent=SUBSTR` makes every read of objects whose path contains SUBSTR fail, to check
//! that a persistent failure ends with an error naming the object. Retries live in
//! [`crate::retry`].

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::ObjectStore;

mod faulty;

pub use faulty::{FaultCounts, FaultyStore};

/// Draws of one read that may fail; later draws of it always succeed (see the module doc).
pub const TRANSIENT_DRAWS: u64 = 3;

/// The environment variable that turns injection on in a process.
pub const ENV: &str = "FUNNEL_STORE_FAULTS";

/// The longest `delay_ms` accepted: a timeout is simulated, never waited out for real.
pub const MAX_DELAY_MS: u64 = 10_000;

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
    /// How long a `timeout` waits before failing.
    pub delay: Duration,
    /// Objects whose path contains this always fail.
    pub persistent: Option<String>,
}

impl FaultSpec {
    /// Parses `key=value,...` (keys `rate`, `seed`, `kinds`, `delay_ms`, `persistent`); an
    /// error names the variable and the bad key.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut spec = FaultSpec {
            rate: 0.0,
            seed: 0,
            kinds: vec![FaultKind::SlowDown, FaultKind::Timeout, FaultKind::Truncate],
            delay: Duration::from_millis(20),
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
                "delay_ms" => {
                    let ms: u64 = value.parse().map_err(|_| bad("not an integer"))?;
                    if ms > MAX_DELAY_MS {
                        return Err(bad(&format!("at most {MAX_DELAY_MS}")));
                    }
                    spec.delay = Duration::from_millis(ms);
                }
                "persistent" => spec.persistent = Some(value.to_string()),
                _ => {
                    return Err(format!(
                        "{ENV}: unknown key `{key}` (rate, seed, kinds, delay_ms, persistent)"
                    ));
                }
            }
        }
        Ok(spec)
    }
}

/// The process-wide setting: read from [`ENV`] once, replaced by [`inject`]. A bad value is
/// kept as an error so that every store opened fails loudly rather than run without faults.
fn global() -> &'static Mutex<std::result::Result<Option<FaultSpec>, String>> {
    static SPEC: OnceLock<Mutex<std::result::Result<Option<FaultSpec>, String>>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let spec = match std::env::var(ENV) {
            Err(_) => Ok(None),
            Ok(text) => FaultSpec::parse(&text).map(|s| {
                tracing::warn!(spec = %text, "object-store fault injection is on");
                Some(s)
            }),
        };
        Mutex::new(spec)
    })
}

/// Turns injection on (or off) for stores opened from now on in this process.
pub fn inject(spec: Option<FaultSpec>) {
    *global().lock().unwrap_or_else(|p| p.into_inner()) = Ok(spec);
}

/// `store`, wrapped when injection is on; an error (naming [`ENV`] and the bad key) when its
/// value does not parse.
pub fn wrap(store: Arc<dyn ObjectStore>) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    let spec = global().lock().unwrap_or_else(|p| p.into_inner()).clone()?;
    Ok(match spec {
        Some(spec) => Arc::new(FaultyStore::new(store, spec)),
        None => store,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_keys_are_named() {
        let s = FaultSpec::parse(
            "rate=0.25,seed=9,kinds=slowdown+truncate,delay_ms=5,persistent=part-1",
        )
        .expect("parses");
        assert_eq!(s.rate, 0.25);
        assert_eq!(s.seed, 9);
        assert_eq!(s.kinds, [FaultKind::SlowDown, FaultKind::Truncate]);
        assert_eq!(s.delay, Duration::from_millis(5));
        assert_eq!(s.persistent.as_deref(), Some("part-1"));
        for (bad, named) in [
            ("rate=2", "rate"),
            ("rate=x", "rate"),
            ("seed=-1", "seed"),
            ("kinds=fire", "kinds"),
            ("kinds=", "kinds"),
            ("delay_ms=60000", "delay_ms"),
            ("color=red", "color"),
            ("rate", "rate"),
        ] {
            let e = FaultSpec::parse(bad).expect_err(bad);
            assert!(e.contains(ENV) && e.contains(named), "{e}");
        }
    }
}
