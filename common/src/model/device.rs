//! Which burn backend the model computes on, chosen at run time.
//!
//! burn 0.22 has no `Backend` type parameter: the backend is the [`Device`] the tensors are
//! created on. Three are offered, each behind a cargo feature of `funnel-common` (and of the
//! `funnel` binary) except the default:
//!
//! | backend | feature | train device | eval device |
//! |---|---|---|---|
//! | `flex` | always | `Device::flex().autodiff()` | `Device::flex()` |
//! | `tch`  | `tch`  | `Device::libtorch().autodiff()` (LibTorch, CPU) | `Device::libtorch()` |
//! | `cuda` | `cuda` | `Device::cuda(DeviceIndex::Default).autodiff()` (CubeCL) | `Device::cuda(..)` |
//!
//! Asking for a backend that was not compiled in is a [`ModelError::Backend`] naming the
//! feature to build with, never a panic. See `docs/backends.md`.

use super::{ModelError, Result};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The environment variable the model tests read to pick their backend (`flex`, `tch`,
/// `cuda`; unset means `flex`), so one suite runs against every backend.
pub const TEST_BACKEND_ENV: &str = "FUNNEL_TEST_BACKEND";

/// A compute backend for the towers. Serialised in lower case (`"flex"`, `"tch"`, `"cuda"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeBackend {
    /// burn's pure-Rust CPU backend (burn-flex). Always compiled; the default.
    #[default]
    Flex,
    /// LibTorch on the CPU (burn-tch), feature `tch`. Needs libtorch 2.9.0 at build and run
    /// time (docs/backends.md).
    Tch,
    /// CubeCL's CUDA runtime (burn-cuda), feature `cuda`. Loads the CUDA driver and NVRTC at
    /// run time; the GPU is the default CUDA device (`CUDA_VISIBLE_DEVICES` picks it).
    Cuda,
}

impl ComputeBackend {
    /// Every backend, compiled or not.
    pub const ALL: [Self; 3] = [Self::Flex, Self::Tch, Self::Cuda];

    /// The name used in configs and `FUNNEL_TEST_BACKEND`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Tch => "tch",
            Self::Cuda => "cuda",
        }
    }

    /// The cargo feature that compiles this backend in (`None`: always compiled).
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Self::Flex => None,
            Self::Tch => Some("tch"),
            Self::Cuda => Some("cuda"),
        }
    }

    /// Whether this build can run the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            Self::Flex => true,
            Self::Tch => cfg!(feature = "tch"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends this build can run, in [`Self::ALL`] order.
    pub fn compiled() -> Vec<Self> {
        Self::ALL.into_iter().filter(|b| b.is_compiled()).collect()
    }

    /// The training (autodiff) and prediction devices, or [`ModelError::Backend`] when the
    /// backend is not compiled in. Creating a device is lazy: a missing GPU or driver shows up
    /// at the first tensor operation, inside burn.
    pub fn devices(self) -> Result<(Device, Device)> {
        let eval = self.eval_device()?;
        Ok((eval.clone().autodiff(), eval))
    }

    fn eval_device(self) -> Result<Device> {
        match self {
            Self::Flex => Ok(Device::flex()),
            #[cfg(feature = "tch")]
            // burn 0.22 deprecates burn-tch in favour of its CubeCL backends; it is still the
            // way to run on LibTorch, which is what this backend is for.
            #[allow(deprecated)]
            Self::Tch => Ok(Device::libtorch()),
            #[cfg(feature = "cuda")]
            Self::Cuda => Ok(Device::cuda(burn::tensor::DeviceIndex::Default)),
            #[allow(unreachable_patterns)] // every backend compiled in
            other => Err(other.not_compiled()),
        }
    }

    // Unused only in a build with every backend.
    #[cfg_attr(all(feature = "tch", feature = "cuda"), allow(dead_code))]
    fn not_compiled(self) -> ModelError {
        ModelError::Backend {
            backend: self.name(),
            feature: self.feature().unwrap_or_default(),
            compiled: Self::compiled()
                .iter()
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Reads a backend from the environment variable `var`: `Ok(None)` when it is unset or
    /// empty, an error naming the variable when it is not a backend name. Whether the backend
    /// is compiled in is checked when a model is built on it.
    pub fn from_env(var: &str) -> std::result::Result<Option<Self>, String> {
        match std::env::var(var) {
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) => v.parse().map(Some).map_err(|e| format!("{var}: {e}")),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(format!("{var}: {e}")),
        }
    }
}

impl fmt::Display for ComputeBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ComputeBackend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown compute backend {s:?}; expected flex, tch or cuda"))
    }
}

/// The backend the model tests run on: `FUNNEL_TEST_BACKEND`, default `flex`. Panics (failing
/// the test) on a bad name or a backend not compiled in, rather than quietly testing flex.
#[cfg(test)]
pub(crate) fn test_backend() -> ComputeBackend {
    let b = ComputeBackend::from_env(TEST_BACKEND_ENV)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_default();
    if let Err(e) = b.devices() {
        panic!("{TEST_BACKEND_ENV}={b}: {e}");
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_serialise_in_lower_case() {
        for b in ComputeBackend::ALL {
            assert_eq!(b.name().parse::<ComputeBackend>(), Ok(b));
            assert_eq!(
                b.to_string().to_uppercase().parse::<ComputeBackend>(),
                Ok(b)
            );
            let json = serde_json::to_string(&b).expect("serialise");
            assert_eq!(json, format!("\"{}\"", b.name()));
            assert_eq!(serde_json::from_str::<ComputeBackend>(&json).ok(), Some(b));
        }
        assert!("torch".parse::<ComputeBackend>().is_err());
        assert!(serde_json::from_str::<ComputeBackend>("\"wgpu\"").is_err());
        assert_eq!(ComputeBackend::default(), ComputeBackend::Flex);
    }

    #[test]
    fn compiled_backends_give_their_devices_and_others_an_error_naming_the_feature() {
        assert!(ComputeBackend::compiled().contains(&ComputeBackend::Flex));
        for b in ComputeBackend::ALL {
            match b.devices() {
                Ok((train, eval)) => {
                    assert!(b.is_compiled(), "{b}");
                    assert!(train.is_autodiff() && !eval.is_autodiff(), "{b}");
                    assert_eq!(train, eval, "{b}: same hardware");
                    let want = match b {
                        ComputeBackend::Flex => "Flex",
                        ComputeBackend::Tch => "LibTorch(Cpu)",
                        ComputeBackend::Cuda => "Cube",
                    };
                    let got = format!("{eval:?}");
                    assert!(got.contains(want), "{b}: {got}");
                }
                Err(e) => {
                    assert!(!b.is_compiled(), "{b}");
                    let msg = e.to_string();
                    let feature = b.feature().expect("flex is always compiled");
                    assert!(msg.contains(&format!("--features {feature}")), "{msg}");
                    assert!(matches!(e, ModelError::Backend { .. }), "{msg}");
                }
            }
        }
    }

    #[test]
    fn test_backend_is_the_one_asked_for() {
        let want = ComputeBackend::from_env(TEST_BACKEND_ENV)
            .expect("valid name")
            .unwrap_or_default();
        assert_eq!(test_backend(), want);
        eprintln!("model tests run on the {want} backend");
    }
}
