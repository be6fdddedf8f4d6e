//! [`FunnelMetrics`]: one [`TargetMetrics`] per labelled stage, plus conditional metrics over the
//! rows that reached an earlier stage, such as ESMM's CVR AUC over clicked rows.

use serde::{Deserialize, Serialize};

use super::{MetricsError, TargetMetrics, TargetSummary};
use crate::spec::ResolvedFunnel;

/// Exact, mergeable metrics of a whole funnel.
///
/// Targets are the labelled stages, in the order of [`crate::batch::Batch::labels`]; each gets a
/// [`TargetMetrics`] over every row with the prediction P(stage).
///
/// A conditional metric `stage | given` is computed over the rows whose `given` label is 1 only,
/// with the `stage` label, like the CVR AUC of the ESMM paper (Ma et al. 2018, §4.1): conversion
/// AUC on clicked samples, scored by pCVR. The caller supplies the per-row score, normally the
/// model's conditional probability P(stage) / P(given) (the pCVR tower for ESMM, or
/// exp(log P(stage) - log P(given)) in general). Ranking by the marginal P(stage) instead
/// measures something else (it also ranks by pCTR); that is the caller's explicit choice.
/// Rows whose `stage` label is 1 but whose `given` label is 0 (inconsistent labels, which the data
/// plane's policy normally removes) are outside the conditional metric.
#[derive(Debug, Clone, PartialEq)]
pub struct FunnelMetrics {
    targets: Vec<(String, TargetMetrics)>,
    conditionals: Vec<Conditional>,
}

#[derive(Debug, Clone, PartialEq)]
struct Conditional {
    name: String,
    /// Target index of the stage whose label is scored.
    stage: usize,
    /// Target index of the stage whose positive rows are kept.
    given: usize,
    metrics: TargetMetrics,
}

/// What [`FunnelMetrics::finish`] reports: one line of `metrics.jsonl` (with the caller's
/// epoch, split and step around it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunnelReport {
    /// Per labelled stage, in target order.
    pub targets: Vec<StageReport>,
    /// Per conditional metric, in declaration order.
    pub conditional: Vec<ConditionalReport>,
}

/// The metrics of one labelled stage over all rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// Stage name.
    pub stage: String,
    /// Its metrics.
    #[serde(flatten)]
    pub metrics: TargetSummary,
}

/// The metrics of `stage` over the rows where `given` is positive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionalReport {
    /// Metric name (`purchase|click` from [`FunnelMetrics::for_funnel`]).
    pub name: String,
    /// The stage whose label is scored.
    pub stage: String,
    /// The stage whose positive rows are kept.
    pub given: String,
    /// Its metrics (`rows` counts the kept rows).
    #[serde(flatten)]
    pub metrics: TargetSummary,
}

impl FunnelReport {
    /// The metrics of target `stage`.
    pub fn target(&self, stage: &str) -> Option<&TargetSummary> {
        self.targets
            .iter()
            .find(|t| t.stage == stage)
            .map(|t| &t.metrics)
    }

    /// The conditional metric called `name`.
    pub fn conditional(&self, name: &str) -> Option<&TargetSummary> {
        self.conditional
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.metrics)
    }
}

impl FunnelMetrics {
    /// Metrics for these targets (labelled stage names, in batch label order) and no
    /// conditional metric yet.
    pub fn new<I, S>(targets: I) -> Result<Self, MetricsError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut me = Self {
            targets: Vec::new(),
            conditionals: Vec::new(),
        };
        for name in targets {
            let name = name.into();
            if me.target_index(&name).is_ok() {
                return Err(MetricsError::Duplicate(name));
            }
            me.targets.push((name, TargetMetrics::new()));
        }
        Ok(me)
    }

    /// Adds the conditional metric `name`: `stage`'s label over the rows where `given`'s is 1.
    pub fn with_conditional(
        mut self,
        name: impl Into<String>,
        stage: &str,
        given: &str,
    ) -> Result<Self, MetricsError> {
        let name = name.into();
        if self.conditionals.iter().any(|c| c.name == name) {
            return Err(MetricsError::Duplicate(name));
        }
        let (stage, given) = (self.target_index(stage)?, self.target_index(given)?);
        let metrics = TargetMetrics::new();
        self.conditionals.push(Conditional {
            name,
            stage,
            given,
            metrics,
        });
        Ok(self)
    }

    /// The funnel's labelled stages as targets, and for each one that has a labelled ancestor
    /// (through `given`), the conditional metric `stage|ancestor`: `purchase|click` (the CVR)
    /// for `esmm`; `action|click` and `purchase|click` for `esm2`; `favorite|click`,
    /// `order|click` and `pay|order` for `click-fav-order-pay`.
    pub fn for_funnel(funnel: &ResolvedFunnel) -> Self {
        let targets: Vec<(usize, &str)> = funnel
            .targets()
            .map(|(i, s)| (i, s.name.as_str()))
            .collect();
        let target_of = |stage: usize| targets.iter().position(|&(i, _)| i == stage);
        let mut me = Self {
            targets: targets
                .iter()
                .map(|&(_, n)| (n.to_owned(), TargetMetrics::new()))
                .collect(),
            conditionals: Vec::new(),
        };
        for (t, &(i, name)) in targets.iter().enumerate() {
            if let Some(given) = funnel.labelled_ancestor(i).and_then(target_of) {
                me.conditionals.push(Conditional {
                    name: format!("{name}|{}", targets[given].1),
                    stage: t,
                    given,
                    metrics: TargetMetrics::new(),
                });
            }
        }
        me
    }

    /// Adds one batch: `predictions[t]` is P(target t) per row, `labels[t]` its labels (as in
    /// [`crate::batch::Batch::labels`]), `conditional_scores[c]` the score of conditional metric
    /// `c` per row (every row; those whose `given` label is 0 are skipped). Everything is checked
    /// first: on an error nothing is added.
    pub fn push<P, L, S>(
        &mut self,
        predictions: &[P],
        labels: &[L],
        conditional_scores: &[P],
    ) -> Result<(), MetricsError>
    where
        P: AsRef<[S]>,
        L: AsRef<[u8]>,
        S: Copy + Into<f64>,
    {
        let arrays = |what, expected: usize, got: usize| {
            (expected != got).then_some(MetricsError::Arrays {
                what,
                expected,
                got,
            })
        };
        let n = self.targets.len();
        let checks = [
            arrays("predictions", n, predictions.len()),
            arrays("labels", n, labels.len()),
            arrays(
                "conditional scores",
                self.conditionals.len(),
                conditional_scores.len(),
            ),
        ];
        if let Some(e) = checks.into_iter().flatten().next() {
            return Err(e);
        }
        let rows = labels.first().map_or(0, |l| l.as_ref().len());
        let check_rows = |got: usize, what: &dyn Fn() -> String| {
            if got == rows {
                return Ok(());
            }
            let what = what();
            Err(MetricsError::Rows {
                what,
                expected: rows,
                got,
            })
        };
        for (t, (name, _)) in self.targets.iter().enumerate() {
            let (p, l) = (predictions[t].as_ref().len(), labels[t].as_ref().len());
            check_rows(p, &|| format!("predictions of target `{name}`"))?;
            check_rows(l, &|| format!("labels of target `{name}`"))?;
        }
        for (c, cond) in self.conditionals.iter().enumerate() {
            let got = conditional_scores[c].as_ref().len();
            check_rows(got, &|| format!("scores of conditional `{}`", cond.name))?;
        }
        for (t, (_, metrics)) in self.targets.iter_mut().enumerate() {
            metrics.push_batch(predictions[t].as_ref(), labels[t].as_ref())?;
        }
        for (c, cond) in self.conditionals.iter_mut().enumerate() {
            let scores = conditional_scores[c].as_ref();
            let (stage, given) = (labels[cond.stage].as_ref(), labels[cond.given].as_ref());
            for r in (0..rows).filter(|&r| given[r] != 0) {
                cond.metrics.push(scores[r], stage[r]);
            }
        }
        Ok(())
    }

    /// Adds every row of `other`, which must have the same targets and conditional metrics.
    pub fn merge(&mut self, other: &FunnelMetrics) -> Result<(), MetricsError> {
        if self.layout() != other.layout() {
            return Err(MetricsError::Layout {
                ours: self.layout(),
                theirs: other.layout(),
            });
        }
        for ((_, ours), (_, theirs)) in self.targets.iter_mut().zip(&other.targets) {
            ours.merge(theirs);
        }
        for (ours, theirs) in self.conditionals.iter_mut().zip(&other.conditionals) {
            ours.metrics.merge(&theirs.metrics);
        }
        Ok(())
    }

    /// Forgets every row, keeping the layout and allocations.
    pub fn clear(&mut self) {
        self.targets.iter_mut().for_each(|(_, m)| m.clear());
        self.conditionals.iter_mut().for_each(|c| c.metrics.clear());
    }

    /// The accumulator of target `stage` (e.g. to merge a peer's rows received over the wire).
    pub fn target_mut(&mut self, stage: &str) -> Option<&mut TargetMetrics> {
        self.targets
            .iter_mut()
            .find(|(n, _)| n == stage)
            .map(|(_, m)| m)
    }

    /// The accumulator of conditional metric `name`.
    pub fn conditional_mut(&mut self, name: &str) -> Option<&mut TargetMetrics> {
        let c = self.conditionals.iter_mut().find(|c| c.name == name);
        c.map(|c| &mut c.metrics)
    }

    /// Targets with their accumulators, in order.
    pub fn targets(&self) -> impl Iterator<Item = (&str, &TargetMetrics)> {
        self.targets.iter().map(|(n, m)| (n.as_str(), m))
    }

    /// Conditional metrics as (name, stage, given, accumulator), in order.
    pub fn conditionals(&self) -> impl Iterator<Item = (&str, &str, &str, &TargetMetrics)> {
        let name = |t: usize| self.targets[t].0.as_str();
        self.conditionals
            .iter()
            .map(move |c| (c.name.as_str(), name(c.stage), name(c.given), &c.metrics))
    }

    /// Every metric over all rows so far (see [`TargetMetrics::finish`]).
    pub fn finish(&self) -> FunnelReport {
        FunnelReport {
            targets: self
                .targets()
                .map(|(stage, m)| StageReport {
                    stage: stage.into(),
                    metrics: m.finish(),
                })
                .collect(),
            conditional: self
                .conditionals()
                .map(|(name, stage, given, m)| ConditionalReport {
                    name: name.into(),
                    stage: stage.into(),
                    given: given.into(),
                    metrics: m.finish(),
                })
                .collect(),
        }
    }

    fn target_index(&self, name: &str) -> Result<usize, MetricsError> {
        let i = self.targets.iter().position(|(n, _)| n == name);
        i.ok_or_else(|| MetricsError::UnknownTarget(name.into()))
    }

    /// "targets [click, purchase], conditional [purchase|click]".
    fn layout(&self) -> String {
        let targets: Vec<&str> = self.targets().map(|(n, _)| n).collect();
        let conds: Vec<String> = self
            .conditionals()
            .map(|(n, s, g, _)| format!("{n} = {s} given {g}"))
            .collect();
        format!(
            "targets [{}], conditional [{}]",
            targets.join(", "),
            conds.join(", ")
        )
    }
}

#[cfg(test)]
#[path = "funnel_tests.rs"]
mod tests;
