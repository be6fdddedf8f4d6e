//! Checkpoint commits in object storage (DESIGN.md §7):
//!
//! ```text
//! <output>/checkpoints/step-000001234/   files of the checkpoint, then MANIFEST.json
//! <output>/checkpoints/LATEST            "step-000001234", rewritten after each commit
//! ```
//!
//! A checkpoint without its MANIFEST does not exist: files are written first, MANIFEST.json
//! (names, sizes, sha256) last with a create-only put, so a crash mid-write leaves nothing a
//! reader will trust, and two writers cannot both commit one step. Readers verify every file
//! against the manifest before using it. `tensors` encodes named f32 tensors as safetensors.

pub mod card;
pub mod tensors;

pub use card::ModelCard;

use crate::error::{Error, Result};
use crate::store::StoreUrl;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The manifest's name inside a checkpoint directory.
pub const MANIFEST: &str = "MANIFEST.json";
/// The pointer to the newest committed checkpoint.
pub const LATEST: &str = "LATEST";
/// Manifest format version.
pub const MANIFEST_FORMAT: u32 = 1;

/// One file as recorded in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

/// MANIFEST.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// Training step the checkpoint holds.
    pub step: u64,
    /// Files, sorted by name.
    pub files: Vec<ManifestEntry>,
}

/// A verified checkpoint: every file matched its manifest entry.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// URL of the checkpoint directory.
    pub url: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// File contents by name.
    pub files: BTreeMap<String, Bytes>,
}

impl Checkpoint {
    /// The content of `name`, or an error naming the checkpoint and the file.
    pub fn file(&self, name: &str) -> Result<&Bytes> {
        self.files.get(name).ok_or_else(|| Error::Checkpoint {
            url: self.url.clone(),
            message: format!("has no file `{name}`"),
        })
    }
}

/// The directory name of a step.
pub fn step_dir(step: u64) -> String {
    format!("step-{step:09}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Commits `files` as the checkpoint of `step` under `output_url`; returns the directory URL.
pub async fn commit(output_url: &str, step: u64, files: Vec<(String, Bytes)>) -> Result<String> {
    let out = StoreUrl::open(output_url, "output")?;
    let dir = out.child(&format!("checkpoints/{}", step_dir(step)));
    let dir_url = out.object_url(&dir);
    let fail = |message: String| Error::Checkpoint {
        url: dir_url.clone(),
        message,
    };
    let mut entries = Vec::with_capacity(files.len());
    for (name, bytes) in &files {
        if name.is_empty() || name.contains('/') || name == MANIFEST || name.starts_with('.') {
            return Err(fail(format!(
                "`{name}` is not a valid checkpoint file name"
            )));
        }
        if entries.iter().any(|e: &ManifestEntry| &e.name == name) {
            return Err(fail(format!("file `{name}` given twice")));
        }
        entries.push(ManifestEntry {
            name: name.clone(),
            size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let manifest_path = dir.clone().join(MANIFEST);
    // Refuse before touching the files of a committed step. Only the coordinator commits, so two
    // writers of one step do not race; if they ever did, the create-only manifest still admits
    // one, and readers' hash checks refuse files the other overwrote.
    match out.store.head(&manifest_path).await {
        Ok(_) => {
            return Err(fail(format!(
                "step {step} is already committed (its {MANIFEST} exists)"
            )));
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(out.error("read", &manifest_path, e)),
    }
    // Files first (overwriting leftovers of an attempt that never committed).
    for (name, bytes) in files {
        let path = dir.clone().join(name.as_str());
        out.store
            .put(&path, bytes.into())
            .await
            .map_err(|e| out.error("write", &path, e))?;
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        step,
        files: entries,
    };
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| fail(e.to_string()))?;
    let path = manifest_path;
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match out.store.put_opts(&path, body.into(), create).await {
        Ok(_) => {}
        Err(object_store::Error::AlreadyExists { .. }) => {
            return Err(fail(format!(
                "step {step} is already committed (its {MANIFEST} exists)"
            )));
        }
        Err(e) => return Err(out.error("write", &path, e)),
    }
    let latest = out.child(&format!("checkpoints/{LATEST}"));
    let pointer = Bytes::from(format!("{}\n", step_dir(step)));
    out.store
        .put(&latest, pointer.into())
        .await
        .map_err(|e| out.error("write", &latest, e))?;
    Ok(dir_url)
}

/// The directory name LATEST points to under `output_url`, if any checkpoint was committed.
pub async fn latest(output_url: &str) -> Result<Option<String>> {
    let out = StoreUrl::open(output_url, "output")?;
    let path = out.child(&format!("checkpoints/{LATEST}"));
    match out.store.get(&path).await {
        Ok(r) => {
            let bytes = r.bytes().await.map_err(|e| out.error("read", &path, e))?;
            let name = String::from_utf8_lossy(&bytes).trim().to_string();
            if !name.starts_with("step-") || name.contains('/') {
                return Err(Error::Checkpoint {
                    url: out.object_url(&path),
                    message: format!("LATEST holds `{name}`, not a step directory"),
                });
            }
            Ok(Some(name))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(out.error("read", &path, e)),
    }
}

/// Opens and verifies a checkpoint. `url` is a checkpoint directory, or an output URL whose
/// `checkpoints/LATEST` names one.
pub async fn open(url: &str) -> Result<Checkpoint> {
    let store = StoreUrl::open(url, "--checkpoint")?;
    let dir: Path = if store
        .prefix
        .filename()
        .is_some_and(|f| f.starts_with("step-"))
    {
        store.prefix.clone()
    } else {
        match latest(url).await? {
            Some(name) => store.child(&format!("checkpoints/{name}")),
            None => {
                return Err(Error::Checkpoint {
                    url: url.to_string(),
                    message: "no committed checkpoint (no checkpoints/LATEST)".into(),
                });
            }
        }
    };
    let dir_url = store.object_url(&dir);
    let fail = |message: String| Error::Checkpoint {
        url: dir_url.clone(),
        message,
    };
    let manifest_path = dir.clone().join(MANIFEST);
    let manifest: Manifest = match store.store.get(&manifest_path).await {
        Ok(r) => {
            let bytes = r
                .bytes()
                .await
                .map_err(|e| store.error("read", &manifest_path, e))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| fail(format!("{MANIFEST} is unreadable: {e}")))?
        }
        Err(object_store::Error::NotFound { .. }) => {
            return Err(fail(format!(
                "no {MANIFEST}: the checkpoint was never committed (incomplete write?) and is not used"
            )));
        }
        Err(e) => return Err(store.error("read", &manifest_path, e)),
    };
    if manifest.format != MANIFEST_FORMAT {
        return Err(fail(format!(
            "{MANIFEST} format {} is not supported",
            manifest.format
        )));
    }
    let mut files = BTreeMap::new();
    for entry in &manifest.files {
        let path = dir.clone().join(entry.name.as_str());
        let bytes = match store.store.get(&path).await {
            Ok(r) => r.bytes().await.map_err(|e| store.error("read", &path, e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(fail(format!(
                    "file `{}` listed in {MANIFEST} is missing",
                    entry.name
                )));
            }
            Err(e) => return Err(store.error("read", &path, e)),
        };
        if bytes.len() as u64 != entry.size || sha256_hex(&bytes) != entry.sha256 {
            return Err(fail(format!(
                "file `{}` does not match {MANIFEST} ({} bytes, expected {}; or its sha256 differs)",
                entry.name,
                bytes.len(),
                entry.size
            )));
        }
        files.insert(entry.name.clone(), bytes);
    }
    Ok(Checkpoint {
        url: dir_url,
        manifest,
        files,
    })
}
