//! Funnel presets and their resolution into an ordered stage graph (DESIGN.md §3).

use super::check::ConfigIssue;
use super::types::{FunnelSpec, LabelRef, StageSpec};
use std::collections::BTreeMap;

/// The built-in funnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// ESMM: click; purchase given click.
    Esmm,
    /// ESM²: click; action (favourite or cart) given click; purchase given click, branching on
    /// the action.
    Esm2,
    /// click -> favorite -> order (branching on favorite) -> pay.
    ClickFavOrderPay,
}

impl Preset {
    /// All presets, in documentation order.
    pub const ALL: [Preset; 3] = [Preset::Esmm, Preset::Esm2, Preset::ClickFavOrderPay];

    /// The name used in the spec.
    pub fn name(self) -> &'static str {
        match self {
            Self::Esmm => "esmm",
            Self::Esm2 => "esm2",
            Self::ClickFavOrderPay => "click-fav-order-pay",
        }
    }

    /// Looks a preset up by its spec name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The preset's stages, each labelled by a column of its own name.
    pub fn stages(self) -> Vec<StageSpec> {
        let stage = |name: &str, given: Option<&str>, branch_on: Option<&str>| StageSpec {
            name: name.to_string(),
            label: Some(LabelRef::Column(name.to_string())),
            given: given.map(str::to_string),
            branch_on: branch_on.map(str::to_string),
        };
        match self {
            Self::Esmm => vec![
                stage("click", None, None),
                stage("purchase", Some("click"), None),
            ],
            Self::Esm2 => vec![
                stage("click", None, None),
                stage("action", Some("click"), None),
                stage("purchase", Some("click"), Some("action")),
            ],
            Self::ClickFavOrderPay => vec![
                stage("click", None, None),
                stage("favorite", Some("click"), None),
                stage("order", Some("click"), Some("favorite")),
                stage("pay", Some("order"), None),
            ],
        }
    }
}

/// One stage after resolution. Indices refer to [`ResolvedFunnel::stages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedStage {
    /// Stage name.
    pub name: String,
    /// Label columns (OR-ed); empty for stages without a label.
    pub label_columns: Vec<String>,
    /// The spec key that sets the label (`funnel.labels.pay`, `funnel.stages[3].label`).
    pub label_key: String,
    /// The conditioning stage; `None` is the impression.
    pub given: Option<usize>,
    /// The sibling stage whose outcome selects between this stage's two towers.
    pub branch_on: Option<usize>,
}

impl ResolvedStage {
    /// Whether this stage is a training target.
    pub fn is_labelled(&self) -> bool {
        !self.label_columns.is_empty()
    }
}

/// The funnel as a graph: parents always come before their children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFunnel {
    /// Stages in topological order.
    pub stages: Vec<ResolvedStage>,
    /// The preset it came from, if any.
    pub preset: Option<&'static str>,
}

impl ResolvedFunnel {
    /// Resolves a preset or explicit stages, collecting every problem with its key path.
    pub fn resolve(spec: &FunnelSpec) -> Result<Self, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let (declared, preset, key) = match (&spec.preset, spec.stages.is_empty()) {
            (Some(_), false) => {
                return Err(vec![ConfigIssue::new(
                    "funnel.stages",
                    "give either `preset` or `stages`, not both",
                )]);
            }
            (None, true) => {
                return Err(vec![ConfigIssue::new(
                    "funnel",
                    "declare a `preset` (esmm, esm2, click-fav-order-pay) or `[[funnel.stages]]`",
                )]);
            }
            (Some(name), true) => match Preset::from_name(name) {
                Some(p) => (p.stages(), Some(p.name()), "funnel.labels"),
                None => {
                    return Err(vec![ConfigIssue::new(
                        "funnel.preset",
                        format!(
                            "unknown preset `{name}`; expected one of: {}",
                            Preset::ALL.map(Preset::name).join(", ")
                        ),
                    )]);
                }
            },
            (None, false) => {
                if !spec.labels.is_empty() {
                    issues.push(ConfigIssue::new(
                        "funnel.labels",
                        "`labels` renames preset labels; with explicit stages set `label` per stage",
                    ));
                }
                (spec.stages.clone(), None, "")
            }
        };
        let mut declared = declared;
        for (stage, label) in &spec.labels {
            match declared.iter_mut().find(|s| &s.name == stage) {
                Some(s) if preset.is_some() => s.label = Some(label.clone()),
                Some(_) => {}
                None => issues.push(ConfigIssue::new(
                    format!("{key}.{stage}"),
                    format!(
                        "preset has no stage `{stage}`; its stages are: {}",
                        declared
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        }
        let order = topological_order(&declared, &mut issues);
        if !issues.is_empty() {
            return Err(issues);
        }
        let position: BTreeMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(pos, &i)| (declared[i].name.as_str(), pos))
            .collect();
        let stages = order
            .iter()
            .map(|&i| {
                let s = &declared[i];
                ResolvedStage {
                    name: s.name.clone(),
                    label_columns: s.label.as_ref().map(LabelRef::columns).unwrap_or_default(),
                    label_key: match preset {
                        Some(_) => format!("funnel.labels.{}", s.name),
                        None => format!("funnel.stages[{i}].label"),
                    },
                    given: s.given.as_deref().map(|g| position[g]),
                    branch_on: s.branch_on.as_deref().map(|b| position[b]),
                }
            })
            .collect();
        Ok(Self { stages, preset })
    }

    /// The labelled stages, in order: the training targets.
    pub fn targets(&self) -> impl Iterator<Item = (usize, &ResolvedStage)> {
        self.stages
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_labelled())
    }

    /// The nearest labelled ancestor of stage `i` (through `given`), if any.
    pub fn labelled_ancestor(&self, i: usize) -> Option<usize> {
        let mut cur = self.stages[i].given;
        while let Some(p) = cur {
            if self.stages[p].is_labelled() {
                return Some(p);
            }
            cur = self.stages[p].given;
        }
        None
    }

    /// Every label column the funnel reads, without repeats, in stage order.
    pub fn label_columns(&self) -> Vec<String> {
        let mut cols: Vec<String> = Vec::new();
        for c in self.stages.iter().flat_map(|s| s.label_columns.iter()) {
            if !cols.contains(c) {
                cols.push(c.clone());
            }
        }
        cols
    }

    /// How many towers the funnel needs: one per stage, two for a branching stage.
    pub fn tower_count(&self) -> usize {
        self.stages
            .iter()
            .map(|s| if s.branch_on.is_some() { 2 } else { 1 })
            .sum()
    }
}

/// Orders declared stages parents-first; reports unknown, duplicate and cyclic references.
fn topological_order(declared: &[StageSpec], issues: &mut Vec<ConfigIssue>) -> Vec<usize> {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in declared.iter().enumerate() {
        let key = format!("funnel.stages[{i}].name");
        if s.name.trim().is_empty() {
            issues.push(ConfigIssue::new(key, "stage name is empty"));
        } else if index.insert(s.name.as_str(), i).is_some() {
            issues.push(ConfigIssue::new(
                key,
                format!("duplicate stage `{}`", s.name),
            ));
        }
    }
    for (i, s) in declared.iter().enumerate() {
        if let Some(g) = &s.given
            && !index.contains_key(g.as_str())
        {
            issues.push(ConfigIssue::new(
                format!("funnel.stages[{i}].given"),
                format!("unknown stage `{g}`"),
            ));
        }
        if let Some(b) = &s.branch_on {
            match index.get(b.as_str()) {
                None => issues.push(ConfigIssue::new(
                    format!("funnel.stages[{i}].branch_on"),
                    format!("unknown stage `{b}`"),
                )),
                Some(&j) if j == i => issues.push(ConfigIssue::new(
                    format!("funnel.stages[{i}].branch_on"),
                    "a stage cannot branch on itself",
                )),
                Some(&j) if declared[j].given != s.given => issues.push(ConfigIssue::new(
                    format!("funnel.stages[{i}].branch_on"),
                    format!(
                        "`{b}` must be given the same stage as `{}` (both conditioned on {})",
                        s.name,
                        s.given.as_deref().unwrap_or("the impression")
                    ),
                )),
                Some(_) => {}
            }
        }
    }
    if !issues.is_empty() {
        return Vec::new();
    }
    // Kahn's algorithm over given/branch_on edges, stable in declaration order.
    let deps = |s: &StageSpec| -> Vec<usize> {
        [&s.given, &s.branch_on]
            .into_iter()
            .flatten()
            .map(|n| index[n.as_str()])
            .collect()
    };
    let mut placed = vec![false; declared.len()];
    let mut order = Vec::with_capacity(declared.len());
    while order.len() < declared.len() {
        let next = (0..declared.len())
            .find(|&i| !placed[i] && deps(&declared[i]).iter().all(|&d| placed[d]));
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => {
                let stuck: Vec<&str> = (0..declared.len())
                    .filter(|&i| !placed[i])
                    .map(|i| declared[i].name.as_str())
                    .collect();
                issues.push(ConfigIssue::new(
                    "funnel.stages",
                    format!("stages form a cycle: {}", stuck.join(", ")),
                ));
                return Vec::new();
            }
        }
    }
    order
}
