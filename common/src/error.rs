//! The one error type of `funnel-common`. Every variant names what a user needs to find the
//! problem: the config key, the object URL, the row group, the row and the column.

use crate::spec::ConfigIssue;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in a dataset something went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataLocation {
    /// Object URL (`s3://bucket/train/part-00001.parquet`).
    pub object: String,
    /// Row group index within the object.
    pub row_group: Option<usize>,
    /// Row index within the row group.
    pub row: Option<u64>,
    /// Column name.
    pub column: Option<String>,
    /// Job-spec key that refers to the column (`features.categorical[2].column`).
    pub key: Option<String>,
}

impl std::fmt::Display for DataLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "object {}", self.object)?;
        if let Some(rg) = self.row_group {
            write!(f, ", row group {rg}")?;
        }
        if let Some(row) = self.row {
            write!(f, ", row {row}")?;
        }
        if let Some(c) = &self.column {
            write!(f, ", column `{c}`")?;
        }
        if let Some(k) = &self.key {
            write!(f, " (job key {k})")?;
        }
        Ok(())
    }
}

/// Errors of the data plane and job spec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec file could not be read.
    #[error("cannot read job spec {path}: {source}")]
    ConfigRead {
        /// File path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The spec is malformed or inconsistent; every issue names its key path.
    #[error("invalid job spec {origin}:\n{}", issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Config {
        /// File the spec came from.
        origin: String,
        /// Every problem found.
        issues: Vec<ConfigIssue>,
    },
    /// A dataset or output URL that Funnel cannot open.
    #[error("bad URL `{url}` (job key {key}): {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// The spec key or CLI flag that gave it.
        key: String,
        /// Why.
        reason: String,
    },
    /// The object store refused or failed a request (after retries).
    #[error("{op} {url} failed: {source}{hint}")]
    Store {
        /// What Funnel was doing (`list`, `read footer of`, `read`, `write`).
        op: &'static str,
        /// Object or prefix URL.
        url: String,
        /// The store's error.
        source: Box<object_store::Error>,
        /// A hint for likely causes (credentials, endpoint).
        hint: &'static str,
    },
    /// Reading part of an object (a row group's column chunks) failed after retries; unlike
    /// [`Error::Store`] it names the row group, so a persistent failure points at the data.
    #[error("{location}: read failed: {source}{hint}")]
    StoreRead {
        /// The object and row group.
        location: Box<DataLocation>,
        /// The store's last error (with the attempts made, when retried).
        source: Box<object_store::Error>,
        /// A hint for likely causes (credentials, endpoint).
        hint: &'static str,
    },
    /// A dataset prefix with no Parquet objects.
    #[error("dataset {url} (job key {key}) has no Parquet objects")]
    EmptyDataset {
        /// The prefix URL.
        url: String,
        /// The spec key.
        key: String,
    },
    /// An object that is not valid Parquet, or a column that does not decode.
    #[error("{location}: {message}")]
    Parquet {
        /// Where.
        location: Box<DataLocation>,
        /// The decoder's message.
        message: String,
    },
    /// Columns missing or of the wrong type; every problem listed.
    #[error("dataset schema does not match the job spec:\n{}", problems.iter().map(|(l, m)| format!("  - {l}: {m}")).collect::<Vec<_>>().join("\n"))]
    Schema {
        /// Each problem with its location.
        problems: Vec<(DataLocation, String)>,
    },
    /// A label that is null or outside {0, 1}, under `bad_rows = "fail"`.
    #[error("{location}: {message} (data.bad_rows = \"fail\"; set \"skip\" to skip such rows)")]
    BadLabel {
        /// Where.
        location: Box<DataLocation>,
        /// What the value was.
        message: String,
    },
    /// A row whose labels break the funnel, under `inconsistent_labels = "fail"`.
    #[error(
        "{location}: {message} (data.inconsistent_labels = \"fail\"; choose \"drop\" or \"repair\" to go on)"
    )]
    InconsistentLabels {
        /// Where (column is the child stage's label).
        location: Box<DataLocation>,
        /// Which stages disagree.
        message: String,
    },
    /// Writing Parquet (gen-data) failed.
    #[error("cannot write {url}: {message}")]
    Write {
        /// Object URL.
        url: String,
        /// Why.
        message: String,
    },
    /// A checkpoint that cannot be written, found or trusted.
    /// The exactly-once audit's files cannot be written or read.
    #[error("audit {url}: {message}")]
    Audit {
        /// The audit file or directory.
        url: String,
        /// What went wrong.
        message: String,
    },
    #[error("checkpoint {url}: {message}")]
    Checkpoint {
        /// Checkpoint (or output) URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The model cannot be built or run on the given input.
    #[error("model: {0}")]
    Model(#[from] crate::model::ModelError),
    /// Embedding tables cannot be built, fed or restored.
    #[error("embeddings: {0}")]
    Embedding(#[from] crate::embedding::EmbeddingError),
    /// A background task (decode pool) died.
    #[error("internal task failed: {0}")]
    Task(String),
}
