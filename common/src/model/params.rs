//! The dense parameters as one flat `f32` buffer in a fixed order, and its layout.
//!
//! The flat buffer, not burn, owns the parameters: workers all-reduce gradients in exactly this
//! order (DESIGN §5), the optimizer steps it in place, and checkpoints write it under the same
//! names. burn only sees per-step leaf tensors built from slices of it, so nothing depends on
//! burn's per-process `ParamId`s (DESIGN §7).
//!
//! Linear weights are stored `[out, in]`, PyTorch's layout, so a safetensors export is a plain
//! copy of each slice. (burn's own `nn::Linear` stores `[in, out]`; we do not use it.)

use crate::rng::SplitMix64;
use xxhash_rust::xxh64::xxh64;

/// How a parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform in `[-bound, bound]` (PyTorch's `nn.Linear` default uses `1/sqrt(fan_in)`).
    Uniform(f32),
    /// All zeros.
    Zeros,
    /// Every element this value.
    Constant(f32),
}

/// One named parameter: a slice `offset..offset + numel` of the flat buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Stable, readable name, e.g. `towers.order|favorite.layers.0.weight`.
    pub name: String,
    /// Shape; linear weights are `[out, in]`.
    pub shape: Vec<usize>,
    /// Start in the flat buffer.
    pub offset: usize,
    /// Initialisation rule.
    pub init: Init,
}

impl ParamSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The slice of the flat buffer this parameter occupies.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// The ordered list of dense parameters. Order is part of the wire format: see [`Self::hash`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamLayout {
    params: Vec<ParamSpec>,
    len: usize,
}

/// Version tag mixed into the layout hash, bumped if the hashing rule itself changes.
const LAYOUT_HASH_TAG: &[u8] = b"funnel-model-layout-v1";

impl ParamLayout {
    /// An empty layout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a parameter and returns its index.
    pub fn push(&mut self, name: String, shape: Vec<usize>, init: Init) -> usize {
        debug_assert!(self.get(&name).is_none(), "duplicate parameter {name}");
        let spec = ParamSpec {
            name,
            shape,
            offset: self.len,
            init,
        };
        self.len += spec.numel();
        self.params.push(spec);
        self.params.len() - 1
    }

    /// Appends a linear layer `in_dim -> out_dim` as `{prefix}.weight` `[out, in]` and
    /// `{prefix}.bias` `[out]`, both `U(±1/sqrt(in))` like PyTorch; returns `(weight, bias)`.
    pub fn push_linear(&mut self, prefix: &str, in_dim: usize, out_dim: usize) -> (usize, usize) {
        let bound = 1.0 / (in_dim.max(1) as f32).sqrt();
        let w = self.push(
            format!("{prefix}.weight"),
            vec![out_dim, in_dim],
            Init::Uniform(bound),
        );
        let b = self.push(
            format!("{prefix}.bias"),
            vec![out_dim],
            Init::Uniform(bound),
        );
        (w, b)
    }

    /// The parameters in buffer order.
    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    /// Total number of `f32`s in the flat buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the layout has no parameters.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A parameter by name.
    pub fn get(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// The model layout hash: XXH64 (seed 0) over `"funnel-model-layout-v1"` followed, for each
    /// parameter in buffer order, by its UTF-8 name, a 0 byte, its rank as u32 LE and each dim
    /// as u64 LE. Peers and checkpoints compare it before trusting a flat buffer.
    pub fn hash(&self) -> u64 {
        let mut bytes = LAYOUT_HASH_TAG.to_vec();
        for p in &self.params {
            bytes.extend_from_slice(p.name.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(&(p.shape.len() as u32).to_le_bytes());
            for &d in &p.shape {
                bytes.extend_from_slice(&(d as u64).to_le_bytes());
            }
        }
        xxh64(&bytes, 0)
    }

    /// Deterministic initial values for `seed`. Each parameter draws from its own stream,
    /// `SplitMix64::derive(seed, XXH64(name))`, so adding a tower does not change the others.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut buf = vec![0.0f32; self.len];
        for p in &self.params {
            let out = &mut buf[p.range()];
            match p.init {
                Init::Zeros => {}
                Init::Constant(c) => out.fill(c),
                Init::Uniform(bound) => {
                    let mut rng = SplitMix64::derive(seed, xxh64(p.name.as_bytes(), 0));
                    for x in out {
                        *x = ((2.0 * rng.next_f64() - 1.0) * f64::from(bound)) as f32;
                    }
                }
            }
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ParamLayout {
        let mut l = ParamLayout::new();
        l.push_linear("towers.click.layers.0", 3, 2);
        l.push("towers.click.cross.0.bias".into(), vec![3], Init::Zeros);
        l
    }

    #[test]
    fn offsets_are_contiguous_in_push_order() {
        let l = layout();
        let names: Vec<_> = l.params().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "towers.click.layers.0.weight",
                "towers.click.layers.0.bias",
                "towers.click.cross.0.bias"
            ]
        );
        let ranges: Vec<_> = l.params().iter().map(ParamSpec::range).collect();
        assert_eq!(ranges, [0..6, 6..8, 8..11]);
        assert_eq!(l.len(), 11);
    }

    #[test]
    fn hash_depends_on_names_shapes_and_order() {
        let base = layout().hash();
        assert_eq!(base, layout().hash());
        let mut renamed = ParamLayout::new();
        renamed.push_linear("towers.clicks.layers.0", 3, 2);
        renamed.push("towers.click.cross.0.bias".into(), vec![3], Init::Zeros);
        assert_ne!(base, renamed.hash());
        let mut reshaped = ParamLayout::new();
        reshaped.push_linear("towers.click.layers.0", 2, 3);
        reshaped.push("towers.click.cross.0.bias".into(), vec![3], Init::Zeros);
        assert_ne!(base, reshaped.hash());
    }

    #[test]
    fn init_is_deterministic_bounded_and_per_parameter() {
        let l = layout();
        let a = l.init(7);
        assert_eq!(a, l.init(7));
        assert_ne!(a, l.init(8));
        let bound = 1.0 / 3f32.sqrt();
        assert!(a[..8].iter().all(|x| x.abs() <= bound));
        assert!(a[8..].iter().all(|&x| x == 0.0));
        // A parameter's values do not depend on what precedes it.
        let mut alone = ParamLayout::new();
        alone.push_linear("towers.click.layers.0", 3, 2);
        assert_eq!(alone.init(7)[..], a[..8]);
    }
}
