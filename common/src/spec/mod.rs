//! The job spec: one TOML file, `version = 1`, every key documented in docs/config.md.
//!
//! `types` holds what serde reads (unknown keys are errors); `funnel` resolves presets into a
//! stage graph; `check` validates values and cross-references, naming each offending key path.

mod check;
mod funnel;
mod synthetic;
mod types;

pub use check::ConfigIssue;
pub use funnel::{Preset, ResolvedFunnel, ResolvedStage};
pub use synthetic::synthetic_job_toml;
pub use types::*;

use crate::error::{Error, Result};
use std::path::Path;

/// The spec format version this build reads.
pub const SPEC_VERSION: u32 = 1;

/// A job spec after parsing, preset resolution and validation: what the rest of Funnel uses.
#[derive(Debug, Clone)]
pub struct Job {
    /// The spec as written (with defaults filled in).
    pub spec: JobSpec,
    /// The funnel stages, parents before children.
    pub funnel: ResolvedFunnel,
}

impl Job {
    /// Reads, parses and validates a job spec file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.display().to_string(),
            source,
        })?;
        let origin = path.display().to_string();
        let mut spec = parse_spec(&text, &origin)?;
        // Relative local paths in the spec are relative to the spec file, not to the shell's
        // working directory, so a spec works from wherever it is launched.
        let base = path.parent().unwrap_or(Path::new("."));
        for url in [
            Some(&mut spec.data.train),
            spec.data.eval.as_mut(),
            spec.output.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if !url.contains("://") && Path::new(url.as_str()).is_relative() && !url.is_empty() {
                let joined = base.join(url.as_str());
                let mut s = joined.display().to_string();
                if url.ends_with('/') && !s.ends_with('/') {
                    s.push('/');
                }
                *url = s;
            }
        }
        Self::from_spec(spec, &origin)
    }

    /// Parses and validates a job spec from TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let spec = parse_spec(text, origin)?;
        Self::from_spec(spec, origin)
    }

    /// Validates an already-parsed spec.
    pub fn from_spec(spec: JobSpec, origin: &str) -> Result<Self> {
        let mut issues = check::check_spec(&spec);
        let funnel = match ResolvedFunnel::resolve(&spec.funnel) {
            Ok(f) => Some(f),
            Err(mut more) => {
                issues.append(&mut more);
                None
            }
        };
        if let Some(f) = &funnel {
            issues.extend(check::check_funnel_refs(&spec, f));
        }
        match funnel {
            Some(funnel) if issues.is_empty() => Ok(Self { spec, funnel }),
            _ => Err(Error::Config {
                origin: origin.to_string(),
                issues,
            }),
        }
    }
}

/// Parses TOML into a [`JobSpec`], reporting the key path of the first offending key.
fn parse_spec(text: &str, origin: &str) -> Result<JobSpec> {
    let de = toml::Deserializer::parse(text).map_err(|e| Error::Config {
        origin: origin.to_string(),
        issues: vec![ConfigIssue::new("", e.message().trim())],
    })?;
    let spec: JobSpec = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        Error::Config {
            origin: origin.to_string(),
            issues: vec![ConfigIssue::new(key, e.inner().message().trim())],
        }
    })?;
    if spec.version != SPEC_VERSION {
        return Err(Error::Config {
            origin: origin.to_string(),
            issues: vec![ConfigIssue::new(
                "version",
                format!(
                    "unsupported spec version {}; this build reads version {SPEC_VERSION}",
                    spec.version
                ),
            )],
        });
    }
    Ok(spec)
}

#[cfg(test)]
mod tests;
