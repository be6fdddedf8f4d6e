//! `model.json`: everything a serving system needs to reproduce the model's scores from
//! `model.safetensors` alone (DESIGN §7): how raw values become embedding rows (the hash),
//! how features lay out the tower input, the towers' structure and the funnel that turns tower
//! logits into stage probabilities. `tests/python/test_consumer.py` reimplements the forward
//! pass from this file and checks it against `funnel predict`.
//!
//! The job spec is embedded too (`job`), so Funnel rebuilds the exact model from a checkpoint.

use crate::embedding::EmbeddingSet;
use crate::model::FunnelModel;
use crate::spec::{Job, JobSpec, TowerKind, Transform};
use serde::{Deserialize, Serialize};

/// Format version of model.json.
pub const MODEL_CARD_FORMAT: u32 = 1;

/// model.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Format version ([`MODEL_CARD_FORMAT`]).
    pub format: u32,
    /// Job name.
    pub name: String,
    /// Hex of the dense-parameter layout hash (what peers and checkpoints compare).
    pub layout_hash: String,
    /// The feature hash (docs/hashing.md).
    pub hash: HashCard,
    /// How raw column values become the tower input.
    #[serde(default)]
    pub encoding: EncodingCard,
    /// Embedding tables: tensor `embeddings.<name>`, `[buckets, dim]`.
    pub tables: Vec<TableCard>,
    /// The tower input, in order: each feature's slice `[offset, offset + width)`.
    pub input: Vec<InputCard>,
    /// Width of the tower input.
    pub input_dim: usize,
    /// Tower structure, shared by all towers.
    pub towers: TowersCard,
    /// Stages in funnel order (parents first), with the towers and formula of each.
    pub stages: Vec<StageCard>,
    /// The job spec the model was trained with.
    pub job: JobSpec,
}

/// The hash rule, spelled out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashCard {
    /// `xxh64`.
    pub algorithm: String,
    /// How a table's seed is derived.
    pub table_seed: String,
    /// How values become bytes.
    pub value_bytes: String,
    /// How a hash becomes a bucket.
    pub bucket: String,
}

/// How each kind of input is encoded, spelled out (with [`HashCard`], what a consumer needs to
/// turn raw columns into the tower input `x`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodingCard {
    /// How `x` is assembled from the `input` entries.
    pub input: String,
    /// A `categorical` input.
    pub categorical: String,
    /// A `list` input.
    pub list: String,
    /// A `numeric` input.
    pub numeric: String,
}

impl Default for EncodingCard {
    fn default() -> Self {
        Self {
            input: "x = float32 row of width input_dim; each `input` entry fills \
                    x[offset .. offset + width]"
                .into(),
            categorical: "the row bucket(value) of the entry's table tensor; a null value has \
                          its own bucket (the hash of the byte 0xff). With `cross`, the value is \
                          the tuple of the row's values of [column] + cross, and its bucket is \
                          XXH64(h_1 ++ ... ++ h_k, seed) mod buckets, h_i = XXH64(value bytes of \
                          member i, seed) written as 8 bytes little-endian (nulls as above)"
                .into(),
            list: "the mean of the table rows of the list's ids: null elements are skipped, then \
                   the first max_len elements are kept (a repeated id counts each time); a null \
                   or empty list gives zeros. With `separator`, the value is a string split on \
                   it, empty pieces skipped, pieces hashed as strings"
                .into(),
            numeric: "x = the value as float64 (booleans 0 or 1); a null or non-finite value \
                      (NaN, +-inf) gives fill_null as is; otherwise transform in float64, then \
                      round to float32: none = x, log1p = sign(x) ln(1 + |x|), standardize = \
                      (x - mean) / std"
                .into(),
        }
    }
}

/// One embedding table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableCard {
    /// Table name (also the hash seed's input).
    pub name: String,
    /// Rows (hash buckets).
    pub buckets: u64,
    /// Embedding dimension.
    pub dim: usize,
    /// Its tensor in model.safetensors.
    pub tensor: String,
}

/// One feature's place in the tower input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputCard {
    /// `categorical` (one row), `list` (mean of the rows of its ids; zeros when empty) or
    /// `numeric` (one value).
    pub kind: String,
    /// Parquet column.
    pub column: String,
    /// First position in the input.
    pub offset: usize,
    /// Width (the table's dim; 1 for numeric).
    pub width: usize,
    /// Embedding table (categorical and list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Categorical cross: the columns crossed with `column`, in hashing order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross: Option<Vec<String>>,
    /// List: only the first `max_len` ids count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    /// List: the delimiter of a string column holding joined ids (pieces hashed as strings,
    /// empty pieces skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// Numeric: `none`, `log1p` (`sign(x) ln(1 + |x|)`) or `standardize` (`(x - mean) / std`),
    /// computed in f64 and rounded to f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Transform>,
    /// Numeric: the value used for nulls and non-finite values (not transformed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill_null: Option<f32>,
    /// Numeric `standardize`: mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Numeric `standardize`: standard deviation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
}

/// The towers' structure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TowersCard {
    /// `mlp`, `dcn-v2`, `deepfm` or `deep-fwfm`.
    pub kind: TowerKind,
    /// Hidden widths.
    pub hidden: Vec<usize>,
    /// DCN-v2 cross layers.
    pub cross_layers: usize,
    /// The forward pass in words, with tensor names relative to `towers.<tower>.`.
    pub forward: String,
}

/// One funnel stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageCard {
    /// Stage name; `funnel predict` writes its probability as `p_<name>`.
    pub name: String,
    /// The stage it is conditioned on (`None`: the impression).
    pub given: Option<String>,
    /// The sibling whose outcome selects between two towers.
    pub branch_on: Option<String>,
    /// Tower names (tensor prefix `towers.<name>.`): one, or `[t|b, t|~b]` when branching.
    pub towers: Vec<String>,
    /// Label columns (OR-ed) when the stage is a training target.
    pub label: Vec<String>,
    /// `P(stage)` in terms of `sigmoid(logit)` of its towers and earlier stages.
    pub formula: String,
}

impl ModelCard {
    /// The card of a model built for `job`.
    pub fn new(job: &Job, set: &EmbeddingSet, model: &FunnelModel) -> Self {
        let f = &job.spec.features;
        let tables = set
            .tables()
            .iter()
            .map(|t| TableCard {
                name: t.name().to_string(),
                buckets: t.rows() as u64,
                dim: t.dim(),
                tensor: format!("embeddings.{}", t.name()),
            })
            .collect();
        let mut input: Vec<InputCard> = set
            .features()
            .iter()
            .map(|s| {
                let list = s.pooled.then(|| &f.list[s.field]);
                let cross = (!s.pooled)
                    .then(|| f.categorical[s.field].cross.clone())
                    .filter(|c| !c.is_empty());
                InputCard {
                    kind: if s.pooled { "list" } else { "categorical" }.into(),
                    column: s.column.clone(),
                    offset: s.offset,
                    width: s.dim,
                    table: Some(set.tables()[s.table].name().to_string()),
                    cross,
                    max_len: list.map(|l| l.max_len),
                    separator: list.and_then(|l| l.separator.clone()),
                    transform: None,
                    fill_null: None,
                    mean: None,
                    std: None,
                }
            })
            .collect();
        let emb = set.total_dim();
        input.extend(f.numeric.iter().enumerate().map(|(i, n)| InputCard {
            kind: "numeric".into(),
            column: n.column.clone(),
            offset: emb + i,
            width: 1,
            table: None,
            cross: None,
            max_len: None,
            separator: None,
            transform: Some(n.transform),
            fill_null: Some(n.fill_null),
            mean: n.mean,
            std: n.std,
        }));
        let names = model.tower_names();
        let mut next = 0;
        let funnel = &job.funnel;
        let stages = funnel
            .stages
            .iter()
            .map(|s| {
                let count = if s.branch_on.is_some() { 2 } else { 1 };
                let towers: Vec<String> = names[next..next + count]
                    .iter()
                    .map(|n| n.to_string())
                    .collect();
                next += count;
                let given = s.given.map(|g| funnel.stages[g].name.clone());
                let branch_on = s.branch_on.map(|b| funnel.stages[b].name.clone());
                let cond = match &branch_on {
                    None => format!("t[{}]", towers[0]),
                    Some(b) => {
                        let pb = format!("P({b} | {})", given.as_deref().unwrap_or("impression"));
                        format!("({pb} t[{}] + (1 - {pb}) t[{}])", towers[0], towers[1])
                    }
                };
                let formula = match &given {
                    None => format!("P({}) = {cond}", s.name),
                    Some(g) => format!("P({}) = P({g}) {cond}", s.name),
                };
                StageCard {
                    name: s.name.clone(),
                    given,
                    branch_on,
                    towers,
                    label: s.label_columns.clone(),
                    formula,
                }
            })
            .collect();
        let spec = &job.spec.towers;
        Self {
            format: MODEL_CARD_FORMAT,
            name: job.spec.name.clone(),
            layout_hash: format!("{:016x}", model.layout_hash()),
            hash: HashCard {
                algorithm: "xxh64".into(),
                table_seed: "xxh64(utf8(table name), seed = 0)".into(),
                value_bytes: "integers of any width: 8-byte little-endian two's complement \
                              (unsigned 64-bit values keep their bit pattern); strings \
                              (dictionary-encoded or not, and the pieces of delimited lists): \
                              their UTF-8 bytes; null: the single byte 0xff"
                    .into(),
                bucket: "xxh64(value bytes, seed = table seed) mod buckets".into(),
            },
            encoding: EncodingCard::default(),
            tables,
            input,
            input_dim: model.dims().input(),
            towers: TowersCard {
                kind: spec.kind,
                hidden: spec.hidden.clone(),
                cross_layers: spec.cross_layers,
                forward: forward_text(spec.kind),
            },
            stages,
            job: job.spec.clone(),
        }
    }
}

/// The forward pass of one tower, for the card.
fn forward_text(kind: TowerKind) -> String {
    let mlp = "h = x; for each i: h = relu(h @ layers.<i>.weight^T + layers.<i>.bias); \
               logit = h @ out.weight^T + out.bias";
    let s = match kind {
        TowerKind::Mlp => mlp.to_string(),
        TowerKind::DcnV2 => format!(
            "x0 = x; h = x; for each l: h = x0 * (h @ cross.<l>.weight^T + cross.<l>.bias) + h; \
             then on h: {mlp}"
        ),
        TowerKind::Deepfm => format!(
            "{mlp}; logit += x @ first_order.weight^T + first_order.bias + \
             0.5 * sum_k[(sum_f v_fk)^2 - sum_f v_fk^2], where v_f (f = 1..F, all of one width \
             k) are the slices of x of the categorical and list inputs"
        ),
        TowerKind::DeepFwfm => format!(
            "{mlp}; logit += x @ first_order.weight^T + first_order.bias + \
             sum_p fm_pairs.weight[0, p] * (v_f . v_g), over the pairs p = (f, g), f < g, in \
             order (0,1), (0,2), ..., (0,F-1), (1,2), ..., where v_f (f = 1..F, all of one \
             width k) are the slices of x of the categorical and list inputs"
        ),
    };
    format!("{s}; t = sigmoid(logit); linear weights are [out, in]")
}
