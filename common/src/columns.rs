//! The decode plan: which Parquet columns a job reads, how each becomes part of a batch, and the
//! schema check that names the object, column and job key of every mismatch.

use crate::error::DataLocation;
use crate::hash::table_seed;
use crate::spec::{BadRowPolicy, InconsistentPolicy, Job, Transform};
use arrow_schema::{DataType, Schema};

/// A hashed single-valued feature.
#[derive(Debug, Clone)]
pub struct HashedField {
    /// Column name.
    pub column: String,
    /// Spec key of the feature (`features.categorical[2]`).
    pub key: String,
    /// Hash seed of its table.
    pub seed: u64,
    /// Hash buckets.
    pub buckets: u64,
    /// For list features, the most ids kept per row.
    pub max_len: usize,
    /// For list features stored as delimited strings, the delimiter.
    pub separator: Option<String>,
    /// For a categorical cross, the columns crossed with `column` (see [`crate::hash`]).
    pub cross: Vec<String>,
}

/// A numeric feature.
#[derive(Debug, Clone)]
pub struct NumericField {
    /// Column name.
    pub column: String,
    /// Spec key (`features.numeric[0]`).
    pub key: String,
    /// Transform.
    pub transform: Transform,
    /// Fill for nulls and non-finite values.
    pub fill: f32,
    /// Mean and std for standardize.
    pub mean: f64,
    /// Standard deviation (1 unless standardizing).
    pub std: f64,
}

/// A labelled stage.
#[derive(Debug, Clone)]
pub struct LabelField {
    /// Stage name.
    pub stage: String,
    /// Label columns, OR-ed.
    pub columns: Vec<String>,
    /// Spec key of the label.
    pub key: String,
    /// Index (into the plan's labels) of the nearest labelled ancestor stage.
    pub ancestor: Option<usize>,
}

/// Everything the decoder needs, derived once from the job.
#[derive(Debug, Clone)]
pub struct DecodePlan {
    /// Categorical features in spec order.
    pub categorical: Vec<HashedField>,
    /// List features in spec order.
    pub lists: Vec<HashedField>,
    /// Numeric features in spec order.
    pub numeric: Vec<NumericField>,
    /// Labelled stages in funnel order (parents first).
    pub labels: Vec<LabelField>,
    /// Policy for funnel-inconsistent rows.
    pub inconsistent: InconsistentPolicy,
    /// Policy for null or out-of-range labels.
    pub bad_rows: BadRowPolicy,
}

impl DecodePlan {
    /// The plan of a validated job.
    pub fn new(job: &Job) -> Self {
        let f = &job.spec.features;
        let categorical = f
            .categorical
            .iter()
            .enumerate()
            .map(|(i, c)| HashedField {
                column: c.column.clone(),
                key: format!("features.categorical[{i}]"),
                seed: table_seed(&c.table_name()),
                buckets: c.buckets,
                max_len: 1,
                separator: None,
                cross: c.cross.clone(),
            })
            .collect();
        let lists = f
            .list
            .iter()
            .enumerate()
            .map(|(i, c)| HashedField {
                column: c.column.clone(),
                key: format!("features.list[{i}]"),
                seed: table_seed(&c.table_name()),
                buckets: c.buckets,
                max_len: c.max_len,
                separator: c.separator.clone(),
                cross: Vec::new(),
            })
            .collect();
        let numeric = f
            .numeric
            .iter()
            .enumerate()
            .map(|(i, n)| NumericField {
                column: n.column.clone(),
                key: format!("features.numeric[{i}]"),
                transform: n.transform,
                fill: n.fill_null,
                mean: n.mean.unwrap_or(0.0),
                std: n.std.unwrap_or(1.0),
            })
            .collect();
        let targets: Vec<usize> = job.funnel.targets().map(|(i, _)| i).collect();
        let labels = targets
            .iter()
            .map(|&i| {
                let s = &job.funnel.stages[i];
                LabelField {
                    stage: s.name.clone(),
                    columns: s.label_columns.clone(),
                    key: s.label_key.clone(),
                    ancestor: job
                        .funnel
                        .labelled_ancestor(i)
                        .and_then(|a| targets.iter().position(|&t| t == a)),
                }
            })
            .collect();
        Self {
            categorical,
            lists,
            numeric,
            labels,
            inconsistent: job.spec.data.inconsistent_labels,
            bad_rows: job.spec.data.bad_rows,
        }
    }

    /// The plan of `funnel predict`: the job's features only. Label columns are neither read nor
    /// required, so no label policy applies and [`crate::decode::decode`] keeps every row, in
    /// order: each input row yields one prediction.
    pub fn for_prediction(job: &Job) -> Self {
        Self {
            labels: Vec::new(),
            ..Self::new(job)
        }
    }

    /// Every column the job reads, each once, with the spec key that names it.
    pub fn columns(&self) -> Vec<(String, String, ColumnRole)> {
        let mut out: Vec<(String, String, ColumnRole)> = Vec::new();
        let mut add = |c: &str, key: String, role| {
            if !out.iter().any(|(o, _, _)| o == c) {
                out.push((c.to_string(), key, role));
            }
        };
        for f in &self.categorical {
            add(
                &f.column,
                format!("{}.column", f.key),
                ColumnRole::Categorical,
            );
            for c in &f.cross {
                add(c, format!("{}.cross", f.key), ColumnRole::Categorical);
            }
        }
        for f in &self.lists {
            let role = if f.separator.is_some() {
                ColumnRole::DelimitedList
            } else {
                ColumnRole::List
            };
            add(&f.column, format!("{}.column", f.key), role);
        }
        for f in &self.numeric {
            add(&f.column, format!("{}.column", f.key), ColumnRole::Numeric);
        }
        for l in &self.labels {
            for c in &l.columns {
                add(c, l.key.clone(), ColumnRole::Label);
            }
        }
        out
    }

    /// Checks an object's Arrow schema; returns every mismatch.
    pub fn check_schema(&self, object: &str, schema: &Schema) -> Vec<(DataLocation, String)> {
        let mut problems = Vec::new();
        for (column, key, role) in self.columns() {
            let at = DataLocation {
                object: object.to_string(),
                column: Some(column.clone()),
                key: Some(key),
                ..Default::default()
            };
            match schema.field_with_name(&column) {
                Err(_) => problems.push((at, "column is missing".to_string())),
                Ok(field) if !role.accepts(field.data_type()) => problems.push((
                    at,
                    format!(
                        "type {} cannot be read as {}",
                        field.data_type(),
                        role.expects()
                    ),
                )),
                Ok(_) => {}
            }
        }
        problems
    }
}

/// What a column is used for, which decides the Arrow types it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnRole {
    /// Hashed single value.
    Categorical,
    /// Hashed list of values.
    List,
    /// Hashed list stored as a delimited string.
    DelimitedList,
    /// Number.
    Numeric,
    /// 0/1 label.
    Label,
}

impl ColumnRole {
    fn accepts(self, t: &DataType) -> bool {
        match self {
            Self::Categorical => is_hashable(t),
            Self::List => match t {
                DataType::List(f) | DataType::LargeList(f) => is_hashable(f.data_type()),
                _ => false,
            },
            Self::DelimitedList => is_string(t),
            Self::Numeric => t.is_numeric() || *t == DataType::Boolean,
            Self::Label => t.is_integer() || t.is_floating() || *t == DataType::Boolean,
        }
    }

    fn expects(self) -> &'static str {
        match self {
            Self::Categorical => "a categorical feature (integer or string)",
            Self::List => "a list feature (list of integers or strings)",
            Self::DelimitedList => "a delimited list feature (string)",
            Self::Numeric => "a numeric feature (integer, float or boolean)",
            Self::Label => "a label (integer, float or boolean holding 0/1)",
        }
    }
}

fn is_hashable(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(_, v) => is_hashable(v),
        t => t.is_integer() || is_string(t),
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::Field;

    const JOB: &str = r#"
version = 1
[data]
train = "memory://t/x"
[[features.categorical]]
column = "user"
buckets = 10
dim = 2
[[features.numeric]]
column = "price"
[funnel]
preset = "esmm"
"#;

    fn job() -> Job {
        Job::parse(JOB, "t").expect("valid")
    }

    #[test]
    fn prediction_plan_reads_features_only() {
        let plan = DecodePlan::for_prediction(&job());
        assert!(plan.labels.is_empty());
        let names: Vec<String> = plan.columns().into_iter().map(|(c, _, _)| c).collect();
        assert_eq!(names, ["user", "price"]);
        // No label columns needed...
        let features = Schema::new(vec![
            Field::new("user", DataType::Int64, true),
            Field::new("price", DataType::Float32, true),
        ]);
        assert!(plan.check_schema("o", &features).is_empty());
        assert_eq!(
            DecodePlan::new(&job()).check_schema("o", &features).len(),
            2
        );
        // ...but a missing feature is named, with its key.
        let missing = Schema::new(vec![Field::new("user", DataType::Int64, true)]);
        let problems = plan.check_schema("o", &missing);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0.column.as_deref(), Some("price"));
        assert_eq!(
            problems[0].0.key.as_deref(),
            Some("features.numeric[0].column")
        );
    }

    #[test]
    fn cross_members_are_read_and_checked_under_the_cross_key() {
        let text = JOB.replace(
            "[[features.numeric]]",
            "[[features.categorical]]\ncolumn = \"user\"\ncross = [\"price\"]\nbuckets = 10\n\
             dim = 2\n[[features.numeric]]",
        );
        let plan = DecodePlan::for_prediction(&Job::parse(&text, "t").expect("valid"));
        let cols: Vec<(String, String)> =
            plan.columns().into_iter().map(|(c, k, _)| (c, k)).collect();
        let want = [
            ("user", "features.categorical[0].column"),
            ("price", "features.categorical[1].cross"),
        ];
        assert_eq!(cols, want.map(|(c, k)| (c.to_string(), k.to_string())));
        // A float column cannot be a member of a cross: named with the cross's key.
        let schema = Schema::new(vec![
            Field::new("user", DataType::Int64, true),
            Field::new("price", DataType::Float32, true),
        ]);
        let problems = plan.check_schema("o", &schema);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0.column.as_deref(), Some("price"));
        assert_eq!(
            problems[0].0.key.as_deref(),
            Some("features.categorical[1].cross")
        );
    }
}
