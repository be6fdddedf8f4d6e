//! Retries with backoff for the reads Funnel issues itself (issue 6 point 6): Parquet footers,
//! the head of a one-object dataset, and column chunks. Cloud clients retry 5xx inside
//! object_store; this layer also covers local files, truncated bodies (fewer bytes than the
//! range asked for) and whatever a store reports as a generic failure. A persistent failure
//! ends with the last error, naming the attempts; the caller names the object.
//!
//! The decision is [`decide`], a pure function of the error, the attempts made and the time
//! spent, so that the policy is tested without a store or a clock.

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::rng::SplitMix64;

/// Attempts per read, the first included. At a 30% fault rate (the tests' rate) a read fails
/// for good with probability 0.3^6 < 0.1%.
pub const ATTEMPTS: u32 = 6;

/// No attempt starts after this much time on one read (waits and attempts together), so a
/// store that answers slowly and wrongly cannot hold a worker for long; the lease it holds is
/// better given back by a job failure than kept forever.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Whether `e` may succeed when tried again: generic failures (5xx, timeouts, cut
/// connections, truncated bodies) may; a missing object, a refused permission, a failed
/// precondition or a bad request will not.
pub fn is_transient(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}

/// The wait before attempt `attempt` (1-based; 0 before the first): 50 ms doubling, capped
/// at 2 s, with jitter in [50%, 100%] from `rng` so that many readers do not retry in step.
pub fn backoff(attempt: u32, rng: &mut SplitMix64) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let base = (50u64 << (attempt - 1).min(10)).min(2_000) as f64;
    Duration::from_millis((base * (0.5 + 0.5 * rng.next_f64())) as u64)
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wait this long, then try again.
    Retry(Duration),
    /// A transient error, but the attempts or the time are spent.
    GiveUp,
    /// An error that another attempt will not fix: return it as it is.
    Fatal,
}

/// The decision after `attempts` failed attempts ending in `e`, `elapsed` after the first
/// began; `rng` draws the jitter of the wait.
pub fn decide(
    e: &object_store::Error,
    attempts: u32,
    elapsed: Duration,
    rng: &mut SplitMix64,
) -> Decision {
    if !is_transient(e) {
        return Decision::Fatal;
    }
    if attempts >= ATTEMPTS {
        return Decision::GiveUp;
    }
    let wait = backoff(attempts, rng);
    if elapsed + wait > DEADLINE {
        return Decision::GiveUp;
    }
    Decision::Retry(wait)
}

/// A read whose body has the wrong length: a truncated transfer.
pub fn truncated(got: usize, wanted: u64) -> object_store::Error {
    object_store::Error::Generic {
        store: "funnel",
        source: format!("truncated read: {got} bytes of {wanted}").into(),
    }
}

/// Checks that a ranged read returned one body per range, each exactly as long as its range:
/// a store that cuts a transfer short may still report success, and a short column chunk
/// would otherwise surface later as a confusing decode error.
pub fn check_lengths(parts: &[Bytes], ranges: &[Range<u64>]) -> Result<(), object_store::Error> {
    if parts.len() != ranges.len() {
        return Err(object_store::Error::Generic {
            store: "funnel",
            source: format!(
                "truncated read: {} bodies for {} ranges",
                parts.len(),
                ranges.len()
            )
            .into(),
        });
    }
    for (p, r) in parts.iter().zip(ranges) {
        if p.len() as u64 != r.end - r.start {
            return Err(truncated(p.len(), r.end - r.start));
        }
    }
    Ok(())
}

/// A jitter stream for one call of [`with_retries`]: distinct per call (a process-wide
/// counter) and per object, so that readers failing together do not wait in step.
fn jitter_rng(what: &str) -> SplitMix64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    SplitMix64::derive(crate::hash::table_seed(what), call)
}

/// Runs `read` until it succeeds or [`decide`] says stop; a transient failure that persists
/// returns the last error with the number of attempts and the time spent in its text.
/// `what` (the object's URL) appears in the retry warnings.
pub async fn with_retries<T, F, Fut>(what: &str, mut read: F) -> Result<T, object_store::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, object_store::Error>>,
{
    let mut rng = jitter_rng(what);
    let start = tokio::time::Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let e = match read().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        match decide(&e, attempts, start.elapsed(), &mut rng) {
            Decision::Retry(wait) => {
                tracing::warn!(what, attempt = attempts, error = %e, "read failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Decision::GiveUp => {
                return Err(object_store::Error::Generic {
                    store: "funnel",
                    source: format!(
                        "{e} (gave up after {attempts} attempts in {:.1?})",
                        start.elapsed()
                    )
                    .into(),
                });
            }
            Decision::Fatal => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_found() -> object_store::Error {
        object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let mut rng = SplitMix64::new(1);
        assert_eq!(backoff(0, &mut rng), Duration::ZERO);
        for attempt in 1..12 {
            let d = backoff(attempt, &mut rng).as_millis() as u64;
            let base = (50u64 << (attempt - 1)).min(2_000);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d} ms");
        }
    }

    #[test]
    fn only_transient_failures_are_retried_and_only_within_the_bounds() {
        let mut rng = SplitMix64::new(2);
        let slow = || object_store::Error::Generic {
            store: "s3",
            source: "503 SlowDown".into(),
        };
        let never = [
            not_found(),
            object_store::Error::PermissionDenied {
                path: "x".into(),
                source: "403".into(),
            },
            object_store::Error::Unauthenticated {
                path: "x".into(),
                source: "401".into(),
            },
            object_store::Error::Precondition {
                path: "x".into(),
                source: "412".into(),
            },
        ];
        for e in &never {
            assert_eq!(
                decide(e, 1, Duration::ZERO, &mut rng),
                Decision::Fatal,
                "{e}"
            );
        }
        for attempts in 1..ATTEMPTS {
            assert!(matches!(
                decide(&slow(), attempts, Duration::ZERO, &mut rng),
                Decision::Retry(w) if w > Duration::ZERO
            ));
        }
        assert_eq!(
            decide(&slow(), ATTEMPTS, Duration::ZERO, &mut rng),
            Decision::GiveUp
        );
        assert_eq!(decide(&slow(), 1, DEADLINE, &mut rng), Decision::GiveUp);
        assert!(is_transient(&truncated(3, 8)));
    }

    #[test]
    fn short_or_missing_bodies_are_truncated_reads() {
        let ranges = [0..4, 10..12];
        let body = |n: usize| Bytes::from(vec![0u8; n]);
        assert!(check_lengths(&[body(4), body(2)], &ranges).is_ok());
        for parts in [
            vec![body(4), body(1)],
            vec![body(4)],
            vec![body(5), body(2)],
        ] {
            let e = check_lengths(&parts, &ranges).expect_err("wrong lengths");
            assert!(
                is_transient(&e) && e.to_string().contains("truncated read"),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_and_a_persistent_one_gives_up_naming_attempts() {
        let mut calls = 0;
        let got = with_retries("ok after 2", || {
            calls += 1;
            let n = calls;
            async move { if n < 3 { Err(truncated(1, 2)) } else { Ok(n) } }
        })
        .await;
        assert_eq!(got.expect("third try"), 3);
        let e = with_retries("never", || async { Err::<(), _>(truncated(1, 2)) })
            .await
            .expect_err("gives up");
        assert!(
            e.to_string()
                .contains(&format!("gave up after {ATTEMPTS} attempts")),
            "{e}"
        );
        let mut calls = 0;
        let e = with_retries("missing", || {
            calls += 1;
            async { Err::<(), _>(not_found()) }
        })
        .await
        .expect_err("fails");
        assert!(matches!(e, object_store::Error::NotFound { .. }));
        assert_eq!(calls, 1, "a missing object is read once");
    }
}
