//! The coordinator's journal (DESIGN §6; issue 6 point 3): what a restarted coordinator needs
//! besides the checkpoint, written to `<output>/coordinator/journal.json` each time an epoch
//! completes (after its checkpoint is committed).
//!
//! A restarted coordinator resumes from the latest checkpoint: the model, the optimizer and
//! the task weights are there, and the epoch plan is a pure function of (data, seed, epoch).
//! The journal adds what must not change across the restart, and checks it: the spec (its
//! hash) and the training objects (path, size, etag), so that a resumed job never silently
//! reads other data than the rows its ledger and audit describe; and the last generation, so
//! that the new ring's generations are newer than any message still in flight from before.
//! The ledger of the epoch in progress is not journaled: its rows are replayed together with
//! the model's rollback to the checkpoint, so exactly-once holds for the model's state.

use bytes::Bytes;
use funnel_common::manifest::DatasetManifest;
use funnel_common::store::StoreUrl;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::error::CoordinatorError;

/// The journal's format version.
pub const FORMAT: u32 = 1;

/// One training object as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalObject {
    /// Its URL.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// Its etag, when the store gives one.
    pub etag: Option<String>,
}

/// The journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// [`FORMAT`].
    pub format: u32,
    /// Hex hash of the spec text the workers ran.
    pub config_hash: String,
    /// Epochs completed.
    pub epochs_done: u32,
    /// Last committed step.
    pub step: u64,
    /// The last ring generation.
    pub generation: u64,
    /// Task weights for the next epoch.
    pub weights: Vec<f64>,
    /// Workers lost so far, with the reason.
    pub failures: Vec<String>,
    /// The training objects.
    pub data: Vec<JournalObject>,
}

/// The objects of `train` as the journal records them.
pub fn objects(train: &DatasetManifest) -> Vec<JournalObject> {
    train
        .objects
        .iter()
        .map(|o| JournalObject {
            url: o.url.clone(),
            size: o.size,
            etag: o.etag.clone(),
        })
        .collect()
}

/// Checks that a job about to resume runs the journaled spec over the journaled data.
pub fn check_resume(
    journal: &Journal,
    config_hash: u64,
    now: &[JournalObject],
) -> Result<(), CoordinatorError> {
    let refuse = |why: String| {
        CoordinatorError::Invalid(format!(
            "cannot resume this output: {why}; restart with the job's spec and data, or use a \
             new output"
        ))
    };
    if journal.format != FORMAT {
        return Err(refuse(format!(
            "journal format {} (expected {FORMAT})",
            journal.format
        )));
    }
    let ours = format!("{config_hash:016x}");
    if journal.config_hash != ours {
        return Err(refuse(format!(
            "the spec changed (hash {} in the journal, {ours} now)",
            journal.config_hash
        )));
    }
    for (then, now) in journal.data.iter().zip(now) {
        if then != now {
            return Err(refuse(format!(
                "training object {} changed (size {} -> {}, etag {:?} -> {:?})",
                then.url, then.size, now.size, then.etag, now.etag
            )));
        }
    }
    if journal.data.len() != now.len() {
        return Err(refuse(format!(
            "the training data had {} objects and has {}",
            journal.data.len(),
            now.len()
        )));
    }
    Ok(())
}

/// Reads the journal under `output`, if there is one.
pub async fn read(output: &str) -> Result<Option<Journal>, CoordinatorError> {
    let out = StoreUrl::open(output, "output")?;
    let path = out.child("coordinator/journal.json");
    let got = match out.store.get(&path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(out.error("read", &path, e).into()),
    };
    let bytes = got.bytes().await.map_err(|e| out.error("read", &path, e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CoordinatorError::Invalid(format!("{}: {e}", out.object_url(&path))))
}

/// Writes the journal under `output` (one PUT: readers see the old or the new one whole).
pub async fn write(output: &str, journal: &Journal) -> Result<(), CoordinatorError> {
    let out = StoreUrl::open(output, "output")?;
    let path = out.child("coordinator/journal.json");
    let body = serde_json::to_vec_pretty(journal)
        .map_err(|e| CoordinatorError::Invalid(format!("journal: {e}")))?;
    out.store
        .put(&path, Bytes::from(body).into())
        .await
        .map_err(|e| out.error("write", &path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(data: Vec<JournalObject>) -> Journal {
        Journal {
            format: FORMAT,
            config_hash: format!("{:016x}", 0xABCu64),
            epochs_done: 1,
            step: 40,
            generation: 3,
            weights: vec![1.0],
            failures: Vec::new(),
            data,
        }
    }

    fn objects_of(sizes: &[u64]) -> Vec<JournalObject> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| JournalObject {
                url: format!("s3://b/p{i}.parquet"),
                size,
                etag: Some(format!("e{i}")),
            })
            .collect()
    }

    #[test]
    fn a_resume_over_other_data_or_another_spec_is_refused_by_name() {
        let m = objects_of(&[10, 20]);
        let j = journal(m.clone());
        check_resume(&j, 0xABC, &m).expect("same spec, same data");
        let e = check_resume(&j, 0xABD, &m)
            .expect_err("other spec")
            .to_string();
        assert!(e.contains("spec changed"), "{e}");
        let e = check_resume(&j, 0xABC, &objects_of(&[10, 21]))
            .expect_err("object changed")
            .to_string();
        assert!(e.contains("p1.parquet") && e.contains("20 -> 21"), "{e}");
        let e = check_resume(&j, 0xABC, &objects_of(&[10]))
            .expect_err("object gone")
            .to_string();
        assert!(e.contains("2 objects and has 1"), "{e}");
    }
}
