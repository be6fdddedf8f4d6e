//! Dense optimizers on the flat parameter buffer (Adam, Adagrad, SGD).
//!
//! Why not burn-optim: its state is keyed by per-process `ParamId`s and lives in burn tensors,
//! so restoring it bit-exactly needs burn's own record format (safetensors silently drops it,
//! DESIGN §7); and every worker must apply the same update to the all-reduced flat buffer
//! anyway. A loop over `f32` slices with PyTorch's update rules is simple, bit-exact across
//! processes, and its state is just `step` and one or two `Vec<f32>` in layout order.

use crate::spec::{DenseOptimizer, OptimizerSpec};

/// Adam's β1, β2 and ε, and Adagrad's ε: PyTorch's defaults.
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f32 = 1e-8;
const ADAGRAD_EPS: f32 = 1e-10;

/// A dense optimizer and its state, laid out like the parameter buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseOptim {
    kind: DenseOptimizer,
    lr: f32,
    weight_decay: f32,
    step: u64,
    /// Adam: first moment; Adagrad: sum of squared gradients; SGD: empty.
    slot0: Vec<f32>,
    /// Adam: second moment; otherwise empty.
    slot1: Vec<f32>,
}

impl DenseOptim {
    /// A fresh optimizer for `len` parameters.
    pub fn new(spec: &OptimizerSpec, len: usize) -> Self {
        let (s0, s1) = match spec.dense {
            DenseOptimizer::Adam => (len, len),
            DenseOptimizer::Adagrad => (len, 0),
            DenseOptimizer::Sgd => (0, 0),
        };
        Self {
            kind: spec.dense,
            lr: spec.lr as f32,
            weight_decay: spec.weight_decay as f32,
            step: 0,
            slot0: vec![0.0; s0],
            slot1: vec![0.0; s1],
        }
    }

    /// Which optimizer this is.
    pub fn kind(&self) -> DenseOptimizer {
        self.kind
    }

    /// Updates applied so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The state slots, for checkpoints: (Adam m, v) / (Adagrad sum, empty) / (empty, empty).
    pub fn slots(&self) -> (&[f32], &[f32]) {
        (&self.slot0, &self.slot1)
    }

    /// Restores state written from [`Self::step_count`] and [`Self::slots`]; `false` (and no
    /// change) if the slot lengths do not fit this optimizer.
    pub fn restore(&mut self, step: u64, slot0: Vec<f32>, slot1: Vec<f32>) -> bool {
        if slot0.len() != self.slot0.len() || slot1.len() != self.slot1.len() {
            return false;
        }
        self.step = step;
        self.slot0 = slot0;
        self.slot1 = slot1;
        true
    }

    /// Sets the learning rate (schedules live with the trainer).
    pub fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }

    /// One update of `params` by `grads` (same length as the layout). L2 weight decay is
    /// added to the gradient, as PyTorch's `weight_decay` does for these three optimizers.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) {
        debug_assert_eq!(params.len(), grads.len());
        self.step += 1;
        let (lr, wd) = (self.lr, self.weight_decay);
        let grad = |p: f32, g: f32| if wd == 0.0 { g } else { g + wd * p };
        match self.kind {
            DenseOptimizer::Sgd => {
                for (p, &g) in params.iter_mut().zip(grads) {
                    *p -= lr * grad(*p, g);
                }
            }
            DenseOptimizer::Adagrad => {
                for ((p, &g), s) in params.iter_mut().zip(grads).zip(&mut self.slot0) {
                    let g = grad(*p, g);
                    *s += g * g;
                    *p -= lr * g / (s.sqrt() + ADAGRAD_EPS);
                }
            }
            DenseOptimizer::Adam => {
                // PyTorch's form: p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
                let t = self.step as i32;
                let bc1 = 1.0 - BETA1.powi(t);
                let bc2_sqrt = (1.0 - BETA2.powi(t)).sqrt() as f32;
                let step_size = (f64::from(lr) / bc1) as f32;
                let (b1, b2) = (BETA1 as f32, BETA2 as f32);
                let moments = self.slot0.iter_mut().zip(self.slot1.iter_mut());
                for ((p, &g), (m, v)) in params.iter_mut().zip(grads).zip(moments) {
                    let g = grad(*p, g);
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *p -= step_size * *m / (v.sqrt() / bc2_sqrt + ADAM_EPS);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dense: DenseOptimizer, lr: f64) -> OptimizerSpec {
        OptimizerSpec {
            dense,
            lr,
            ..OptimizerSpec::default()
        }
    }

    #[test]
    fn adam_matches_the_textbook_update_in_f64() {
        let mut o = DenseOptim::new(&spec(DenseOptimizer::Adam, 0.01), 2);
        let mut p = [1.0f32, -2.0];
        let (mut m, mut v, mut q) = ([0.0f64; 2], [0.0f64; 2], [1.0f64, -2.0]);
        for t in 1..=5 {
            let g = [0.3 * t as f32, -0.1];
            o.step(&mut p, &g);
            for i in 0..2 {
                let gi = f64::from(g[i]);
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                q[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
            }
        }
        for i in 0..2 {
            assert!((f64::from(p[i]) - q[i]).abs() < 1e-6, "{p:?} vs {q:?}");
        }
        assert_eq!(o.step_count(), 5);
    }

    #[test]
    fn sgd_and_adagrad_follow_their_rules() {
        let mut sgd = DenseOptim::new(&spec(DenseOptimizer::Sgd, 0.5), 1);
        let mut p = [1.0f32];
        sgd.step(&mut p, &[0.2]);
        assert_eq!(p, [0.9]);
        let mut ada = DenseOptim::new(&spec(DenseOptimizer::Adagrad, 0.1), 1);
        let mut p = [1.0f32];
        ada.step(&mut p, &[2.0]);
        ada.step(&mut p, &[2.0]);
        let expect = 1.0 - 0.1 * 2.0 / 2.0 - 0.1 * 2.0 / 8f32.sqrt();
        assert!((p[0] - expect).abs() < 1e-6);
    }

    #[test]
    fn restored_state_continues_bit_exactly() {
        let s = spec(DenseOptimizer::Adam, 0.01);
        let grads = |t: usize| vec![(t as f32 * 0.7).sin(), (t as f32 * 0.3).cos()];
        let mut a = DenseOptim::new(&s, 2);
        let mut pa = vec![0.5f32, 0.25];
        for t in 0..3 {
            a.step(&mut pa, &grads(t));
        }
        let mut b = DenseOptim::new(&s, 2);
        let (m, v) = a.slots();
        assert!(b.restore(a.step_count(), m.to_vec(), v.to_vec()));
        assert!(!b.clone().restore(1, vec![0.0; 3], v.to_vec()));
        let mut pb = pa.clone();
        for t in 3..6 {
            a.step(&mut pa, &grads(t));
            b.step(&mut pb, &grads(t));
        }
        assert_eq!(pa, pb);
        assert_eq!(a, b);
    }
}
