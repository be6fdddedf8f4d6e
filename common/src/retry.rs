//! Retries with backoff for the reads Funnel issues itself (issue 6 point 6): Parquet footers
//! and column chunks. Cloud clients retry 5xx inside object_store; this layer also covers
//! local files, truncated bodies (fewer bytes than the range asked for) and whatever a store
//! reports as a generic failure. A persistent failure ends with the last error, naming the
//! attempts; the caller names the object.

use std::future::Future;
use std::time::Duration;

use crate::rng::SplitMix64;

/// Attempts per read, the first included.
pub const ATTEMPTS: u32 = 6;

/// Whether `e` may succeed when tried again: generic failures (5xx, timeouts, cut
/// connections) may; a missing object, a refused permission or a bad request will not.
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

/// A read whose body has the wrong length: a truncated transfer.
pub fn truncated(got: usize, wanted: u64) -> object_store::Error {
    object_store::Error::Generic {
        store: "funnel",
        source: format!("truncated read: {got} bytes of {wanted}").into(),
    }
}

/// Runs `read` until it succeeds, fails with a non-transient error, or [`ATTEMPTS`] are
/// spent; then returns the last error with the number of attempts in its text.
pub async fn with_retries<T, F, Fut>(what: &str, mut read: F) -> Result<T, object_store::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, object_store::Error>>,
{
    let mut rng = SplitMix64::new(what.len() as u64 ^ 0x7E7);
    let mut attempt = 0;
    loop {
        tokio::time::sleep(backoff(attempt, &mut rng)).await;
        attempt += 1;
        match read().await {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) && attempt < ATTEMPTS => {
                tracing::warn!(what, attempt, error = %e, "read failed; retrying");
            }
            Err(e) if is_transient(&e) => {
                return Err(object_store::Error::Generic {
                    store: "funnel",
                    source: format!("{e} (gave up after {attempt} attempts)").into(),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn only_generic_failures_are_retried() {
        assert!(is_transient(&truncated(3, 8)));
        let missing = object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        };
        assert!(!is_transient(&missing));
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
                .contains(&format!("after {ATTEMPTS} attempts")),
            "{e}"
        );
    }
}
