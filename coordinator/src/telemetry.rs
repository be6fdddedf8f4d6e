//! What the coordinator measures for operators (the HTTP `/metrics`, `/status` and the status
//! page): committed steps and rows, the step's task losses, compute and all-reduce time and
//! bytes as the workers report them with their votes, samples/s over a recent window, failures
//! and recoveries, and the per-epoch records of `metrics.jsonl`. Nothing is decided from it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use funnel_proto::v1 as pb;

/// How far back samples/s looks.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Counters and recent history, kept in the coordinator's state.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// Distinct steps committed by this coordinator (an epoch-ending step is not counted).
    pub steps: u64,
    /// The last committed step number.
    pub last_step: u64,
    /// Rows of committed steps, all workers.
    pub rows: u64,
    /// The last committed step's all-reduced mean loss per task (job task order).
    pub task_losses: Vec<f64>,
    /// Sums over workers and committed steps.
    pub compute_seconds: f64,
    /// Seconds in the dense all-reduce and the sparse exchange, summed over workers.
    pub allreduce_seconds: f64,
    /// Bytes the workers sent in all-reduces of committed steps.
    pub allreduce_bytes: u64,
    /// Votes answered "not committed" (the step is redone after a ring change).
    pub steps_redone: u64,
    /// Rings re-formed after a failure that went on to commit a step.
    pub recoveries: u64,
    /// Seconds from the last failure to the next committed step.
    pub last_recovery_seconds: Option<f64>,
    /// When the last failure happened, until the next commit.
    failure_at: Option<Instant>,
    /// (when, rows) of recent commits, for samples/s.
    recent: VecDeque<(Instant, u64)>,
    /// The `metrics.jsonl` records of completed epochs, as rank 0 wrote them.
    pub epochs: Vec<serde_json::Value>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            steps: 0,
            last_step: 0,
            rows: 0,
            task_losses: Vec::new(),
            compute_seconds: 0.0,
            allreduce_seconds: 0.0,
            allreduce_bytes: 0,
            steps_redone: 0,
            recoveries: 0,
            last_recovery_seconds: None,
            failure_at: None,
            recent: VecDeque::new(),
            epochs: Vec::new(),
        }
    }
}

impl Telemetry {
    /// One worker's stats of committed step `step` (each worker's vote is recorded once).
    pub fn committed(&mut self, step: u64, stats: Option<&pb::StepStats>, now: Instant) {
        if step > self.last_step || self.steps == 0 {
            self.steps += 1;
            self.last_step = step;
        }
        if let Some(at) = self.failure_at.take() {
            self.recoveries += 1;
            self.last_recovery_seconds = Some(now.duration_since(at).as_secs_f64());
        }
        let Some(s) = stats else { return };
        self.rows += s.rows;
        if !s.task_losses.is_empty() {
            self.task_losses.clone_from(&s.task_losses);
        }
        if s.compute_seconds.is_finite() && s.compute_seconds >= 0.0 {
            self.compute_seconds += s.compute_seconds;
        }
        if s.allreduce_seconds.is_finite() && s.allreduce_seconds >= 0.0 {
            self.allreduce_seconds += s.allreduce_seconds;
        }
        self.allreduce_bytes += s.allreduce_bytes;
        self.recent.push_back((now, s.rows));
        prune(&mut self.recent, now);
    }

    /// A vote answered "not committed".
    pub fn redone(&mut self) {
        self.steps_redone += 1;
    }

    /// A worker was lost: the next commit ends the recovery.
    pub fn failure(&mut self, now: Instant) {
        self.failure_at.get_or_insert(now);
    }

    /// Rows per second over the last [`RATE_WINDOW`].
    pub fn samples_per_second(&self, now: Instant) -> f64 {
        rate(&self.recent, now, RATE_WINDOW)
    }
}

fn prune(recent: &mut VecDeque<(Instant, u64)>, now: Instant) {
    while recent
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
    {
        recent.pop_front();
    }
}

/// Rows per second of the commits within `window` before `now`: their rows over the time from
/// the oldest of them to `now` (at least one second, so a single early commit does not read as
/// a burst). Zero without commits in the window: a stalled job shows 0, not its old rate.
pub fn rate(recent: &VecDeque<(Instant, u64)>, now: Instant, window: Duration) -> f64 {
    let inside: Vec<&(Instant, u64)> = recent
        .iter()
        .filter(|(t, _)| now.duration_since(*t) <= window)
        .collect();
    let Some((first, _)) = inside.first() else {
        return 0.0;
    };
    let rows: u64 = inside.iter().map(|(_, r)| r).sum();
    let span = now.duration_since(*first).as_secs_f64().max(1.0);
    rows as f64 / span
}

/// Parses `metrics.jsonl` (one JSON record per epoch); unparsable lines are skipped with a
/// warning, since the records only feed the status page.
pub fn parse_metrics_jsonl(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .filter_map(|(i, l)| match serde_json::from_str(l) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(line = i + 1, error = %e, "metrics.jsonl: unreadable line");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(rows: u64, losses: &[f64]) -> pb::StepStats {
        pb::StepStats {
            rows,
            task_losses: losses.to_vec(),
            compute_seconds: 0.5,
            allreduce_seconds: 0.25,
            allreduce_bytes: 1000,
        }
    }

    #[test]
    fn each_workers_vote_adds_its_rows_and_a_step_counts_once() {
        let mut t = Telemetry::default();
        let now = Instant::now();
        t.committed(1, Some(&stats(100, &[0.5, 0.1])), now);
        t.committed(1, Some(&stats(28, &[0.5, 0.1])), now);
        t.committed(2, Some(&stats(128, &[0.4, 0.1])), now);
        assert_eq!((t.steps, t.last_step, t.rows), (2, 2, 256));
        assert_eq!(t.task_losses, [0.4, 0.1]);
        assert_eq!(t.allreduce_bytes, 3000);
        assert!((t.compute_seconds - 1.5).abs() < 1e-12);
    }

    #[test]
    fn a_recovery_is_the_first_commit_after_a_failure() {
        let mut t = Telemetry::default();
        let t0 = Instant::now();
        t.committed(1, None, t0);
        t.failure(t0);
        t.failure(t0 + Duration::from_millis(100)); // a second death before recovering
        t.redone();
        t.committed(2, None, t0 + Duration::from_millis(1500));
        t.committed(3, None, t0 + Duration::from_millis(1600));
        assert_eq!((t.recoveries, t.steps_redone), (1, 1));
        assert_eq!(t.last_recovery_seconds, Some(1.5));
    }

    #[test]
    fn the_rate_counts_the_window_only_and_is_zero_when_stalled() {
        let t0 = Instant::now();
        let recent: VecDeque<(Instant, u64)> = [
            (t0, 1000),
            (t0 + Duration::from_secs(8), 100),
            (t0 + Duration::from_secs(10), 100),
        ]
        .into();
        // At t0+12 s the first commit is out of the 10 s window: 200 rows over 4 s.
        let r = rate(&recent, t0 + Duration::from_secs(12), RATE_WINDOW);
        assert!((r - 50.0).abs() < 1e-9, "{r}");
        assert_eq!(
            rate(&recent, t0 + Duration::from_secs(60), RATE_WINDOW),
            0.0
        );
        // One commit just now: over at least one second.
        let one: VecDeque<(Instant, u64)> = [(t0, 64)].into();
        assert_eq!(rate(&one, t0, RATE_WINDOW), 64.0);
    }

    #[test]
    fn metrics_lines_that_do_not_parse_are_skipped() {
        let v = parse_metrics_jsonl("{\"epoch\":0}\nnot json\n\n{\"epoch\":1}\n");
        assert_eq!(v.len(), 2);
        assert_eq!(v[1]["epoch"], 1);
    }
}
