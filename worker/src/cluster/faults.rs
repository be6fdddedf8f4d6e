//! Deterministic worker deaths for end-to-end tests (issue 6 point 1).
//!
//! `FUNNEL_FAULT_KILL=<step>:<phase>` makes a worker SIGKILL itself at one point of one step:
//! no destructor runs and no socket is closed politely, exactly what a lost node looks like to
//! its peers and the coordinator. A test harness picks (worker, step, phase) from a seeded
//! generator, so a failing run can be replayed. Unset (always, outside tests) it costs one
//! branch per phase.

use std::sync::OnceLock;

use crate::ring::{ChunkSend, RingError, RingSend, SharedBuf};

/// The environment variable.
pub const KILL_ENV: &str = "FUNNEL_FAULT_KILL";

/// Where in a step the worker dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The batch was taken from the reader; nothing computed.
    Read,
    /// Forward/backward done; nothing sent.
    Compute,
    /// After the first all-reduce chunk went out: the ring is mid-reduction.
    AllReduce,
    /// The reduction completed here; the vote was not sent.
    Vote,
    /// The coordinator answered "committed"; the update was not applied here.
    Commit,
    /// At the first epoch end after the step: its steps are committed, rank 0 has neither
    /// evaluated nor checkpointed, nobody has reported at the barrier.
    Barrier,
}

impl Phase {
    /// Every phase, in step order.
    pub const ALL: [Phase; 6] = [
        Phase::Read,
        Phase::Compute,
        Phase::AllReduce,
        Phase::Vote,
        Phase::Commit,
        Phase::Barrier,
    ];

    /// The name used in [`KILL_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            Phase::Read => "read",
            Phase::Compute => "compute",
            Phase::AllReduce => "allreduce",
            Phase::Vote => "vote",
            Phase::Commit => "commit",
            Phase::Barrier => "barrier",
        }
    }
}

/// A parsed kill point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillPoint {
    /// The step (1-based, as in logs and checkpoints).
    pub step: u64,
    /// The phase.
    pub phase: Phase,
}

/// Parses `<step>:<phase>`.
pub fn parse(text: &str) -> Result<KillPoint, String> {
    let bad = || {
        let phases: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
        format!(
            "{KILL_ENV}={text:?}: expected <step>:<phase> with phase one of {}",
            phases.join(", ")
        )
    };
    let (step, phase) = text.split_once(':').ok_or_else(bad)?;
    let step = step.trim().parse::<u64>().map_err(|_| bad())?;
    let phase = Phase::ALL
        .into_iter()
        .find(|p| p.name() == phase.trim())
        .ok_or_else(bad)?;
    Ok(KillPoint { step, phase })
}

/// The kill point of this process, read once (a malformed value is reported and ignored).
pub fn configured() -> Option<KillPoint> {
    static POINT: OnceLock<Option<KillPoint>> = OnceLock::new();
    *POINT.get_or_init(|| {
        let text = std::env::var(KILL_ENV).ok()?;
        match parse(&text) {
            Ok(p) => {
                tracing::warn!(
                    step = p.step,
                    phase = p.phase.name(),
                    "fault injection: this worker will kill itself"
                );
                Some(p)
            }
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        }
    })
}

/// Whether the process dies at (`step`, `phase`).
pub fn armed(step: u64, phase: Phase) -> bool {
    configured() == Some(KillPoint { step, phase })
}

/// Dies at (`step`, `phase`) if configured so.
pub fn point(step: u64, phase: Phase) {
    if armed(step, phase) {
        die(step, phase);
    }
}

/// Dies at the first epoch end whose last committed step is `step` or later, if configured so.
pub fn barrier(step: u64) {
    if let Some(p) = configured()
        && p.phase == Phase::Barrier
        && step >= p.step
    {
        die(step, Phase::Barrier);
    }
}

fn die(step: u64, phase: Phase) -> ! {
    funnel_common::fault::sigkill_self(&format!("worker at step {step}, phase {}", phase.name()))
}

/// The environment variable that makes a worker a hostile peer: `<step>:<kind>`.
pub const CORRUPT_ENV: &str = "FUNNEL_FAULT_CORRUPT";

/// How a hostile worker corrupts its first all-reduce chunk of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// A NaN among the values.
    Nan,
    /// An infinity among the values.
    Inf,
    /// Another model layout hash.
    Layout,
    /// An older generation.
    Stale,
    /// One value fewer than the segment needs.
    Truncated,
    /// One value more than the segment holds.
    Oversized,
}

impl Corruption {
    /// Every kind, with its name in [`CORRUPT_ENV`].
    pub const ALL: [(Corruption, &'static str); 6] = [
        (Corruption::Nan, "nan"),
        (Corruption::Inf, "inf"),
        (Corruption::Layout, "layout"),
        (Corruption::Stale, "stale"),
        (Corruption::Truncated, "truncated"),
        (Corruption::Oversized, "oversized"),
    ];

    /// Parses `<step>:<kind>`.
    pub fn parse(text: &str) -> Result<(u64, Corruption), String> {
        let bad = || {
            let kinds: Vec<&str> = Self::ALL.iter().map(|(_, n)| *n).collect();
            format!(
                "{CORRUPT_ENV}={text:?}: expected <step>:<kind> with kind one of {}",
                kinds.join(", ")
            )
        };
        let (step, kind) = text.split_once(':').ok_or_else(bad)?;
        let step = step.trim().parse::<u64>().map_err(|_| bad())?;
        let kind = Self::ALL
            .iter()
            .find(|(_, n)| *n == kind.trim())
            .map(|(k, _)| *k)
            .ok_or_else(bad)?;
        Ok((step, kind))
    }

    /// The corruption configured for `step`, if any (read once).
    pub fn at(step: u64) -> Option<Corruption> {
        static POINT: OnceLock<Option<(u64, Corruption)>> = OnceLock::new();
        let point = *POINT.get_or_init(|| {
            let text = std::env::var(CORRUPT_ENV).ok()?;
            Corruption::parse(&text)
                .inspect_err(|e| tracing::error!("{e}"))
                .ok()
        });
        point.filter(|(s, _)| *s == step).map(|(_, k)| k)
    }

    /// `chunk`, corrupted.
    pub fn apply(self, mut chunk: crate::ring::Chunk) -> crate::ring::Chunk {
        let mut v = chunk.values.to_vec();
        match self {
            Corruption::Nan | Corruption::Inf => {
                let bad = if self == Corruption::Nan {
                    f32::NAN
                } else {
                    f32::INFINITY
                };
                match v.first_mut() {
                    Some(x) => *x = bad,
                    None => v.push(bad),
                }
            }
            Corruption::Layout => chunk.tag.layout_hash ^= 1,
            Corruption::Stale => chunk.tag.generation = chunk.tag.generation.wrapping_sub(1),
            Corruption::Truncated => {
                v.pop();
            }
            Corruption::Oversized => v.push(0.0),
        }
        chunk.values = v.into();
        chunk
    }
}

/// A sender that corrupts its first chunk (a hostile or broken peer).
pub struct CorruptFirst<'a, S> {
    /// The real sender.
    pub inner: &'a mut S,
    /// How.
    pub kind: Option<Corruption>,
}

impl<S: RingSend<crate::ring::Chunk>> RingSend<crate::ring::Chunk> for CorruptFirst<'_, S> {
    async fn send(&mut self, msg: crate::ring::Chunk) -> Result<(), RingError> {
        let msg = match self.kind.take() {
            Some(k) => {
                tracing::warn!(kind = ?k, "fault injection: sending a corrupted chunk");
                k.apply(msg)
            }
            None => msg,
        };
        self.inner.send(msg).await
    }
}

impl<S: ChunkSend> ChunkSend for CorruptFirst<'_, S> {
    async fn send_range(
        &mut self,
        head: crate::ring::Chunk,
        buf: &SharedBuf<'_>,
        range: std::ops::Range<usize>,
    ) -> Result<(), RingError> {
        if self.kind.is_none() {
            return self.inner.send_range(head, buf, range).await;
        }
        // The corruption needs the chunk's values in hand.
        let values = buf.read(range, crate::ring::F32Bytes::from_f32);
        self.send(crate::ring::Chunk { values, ..head }).await
    }
}

/// The fault to inject into the raw TCP ring's all-reduce of `step`, if one is configured:
/// the same as [`DieAfterFirst`] and [`CorruptFirst`] do on the gRPC ring.
pub fn send_fault(step: u64) -> Option<crate::transport::tcp::direct::SendFault> {
    use crate::transport::tcp::direct::SendFault;
    if armed(step, Phase::AllReduce) {
        return Some(SendFault::AfterFirst(Box::new(move || {
            die(step, Phase::AllReduce)
        })));
    }
    Corruption::at(step).map(|k| SendFault::Corrupt(Box::new(move |c| k.apply(c))))
}

/// A sender that dies after its first message of `step` went out (mid all-reduce).
pub struct DieAfterFirst<'a, S> {
    /// The real sender.
    pub inner: &'a mut S,
    /// The step.
    pub step: u64,
}

impl<M: Send, S: RingSend<M>> RingSend<M> for DieAfterFirst<'_, S> {
    async fn send(&mut self, msg: M) -> Result<(), RingError> {
        self.inner.send(msg).await?;
        die(self.step, Phase::AllReduce)
    }
}

impl<S: ChunkSend> ChunkSend for DieAfterFirst<'_, S> {
    async fn send_range(
        &mut self,
        head: crate::ring::Chunk,
        buf: &SharedBuf<'_>,
        range: std::ops::Range<usize>,
    ) -> Result<(), RingError> {
        self.inner.send_range(head, buf, range).await?;
        die(self.step, Phase::AllReduce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruptions_parse_and_change_what_they_say() {
        use crate::ring::{Chunk, Phase as RingPhase, StepTag};
        assert_eq!(Corruption::parse("7:nan"), Ok((7, Corruption::Nan)));
        let e = Corruption::parse("7:fire").expect_err("unknown kind");
        assert!(e.contains(CORRUPT_ENV) && e.contains("oversized"), "{e}");
        let chunk = Chunk {
            tag: StepTag {
                generation: 3,
                step: 7,
                layout_hash: 8,
            },
            phase: RingPhase::ReduceScatter,
            round: 0,
            segment: 0,
            chunk: 0,
            offset: 0,
            values: vec![1.0, 2.0].into(),
        };
        let c = |k: Corruption| k.apply(chunk.clone());
        assert!(c(Corruption::Nan).values.to_vec()[0].is_nan());
        assert!(c(Corruption::Inf).values.to_vec()[0].is_infinite());
        assert_eq!(c(Corruption::Layout).tag.layout_hash, 9);
        assert_eq!(c(Corruption::Stale).tag.generation, 2);
        assert_eq!(c(Corruption::Truncated).values.len(), 1);
        assert_eq!(c(Corruption::Oversized).values.len(), 3);
    }

    #[test]
    fn kill_points_parse_and_bad_ones_name_the_variable() {
        assert_eq!(
            parse("12:allreduce"),
            Ok(KillPoint {
                step: 12,
                phase: Phase::AllReduce
            })
        );
        for p in Phase::ALL {
            assert_eq!(parse(&format!("3:{}", p.name())).map(|k| k.phase), Ok(p));
        }
        for bad in ["", "12", "x:read", "4:reed"] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(KILL_ENV) && e.contains("allreduce"), "{e}");
        }
    }
}
