//! The update rules of the sparse optimizers ([`LazyAdam`], [`Adagrad`], [`Sgd`]); each step
//! reads and writes only the rows named by a [`SparseGrad`]. Arithmetic is `f32` per value, in
//! the order the docs write it; scalars (bias corrections) are computed in `f64` and rounded once.

use super::{AdagradConfig, AdamConfig, EmbeddingError, EmbeddingTable, SparseGrad};
use super::{OptimizerState, SparseOptimizer, StateBuffer};

/// Panics unless `grad` fits `table` and an optimizer of dimension `dim`.
fn check(table: &EmbeddingTable, grad: &SparseGrad, dim: usize) {
    assert!(
        grad.dim == dim && table.dim() == dim && grad.rows.len() == grad.ids.len() * dim,
        "gradient of dim {} ({} values for {} ids) given to an optimizer of dim {dim} \
         for table `{}` of dim {}",
        grad.dim,
        grad.rows.len(),
        grad.ids.len(),
        table.name(),
        table.dim()
    );
    debug_assert!(
        grad.ids.windows(2).all(|w| w[0] < w[1]),
        "ids sorted, unique"
    );
}

/// Adam on touched rows, with PyTorch `SparseAdam` semantics: the moments `m`, `v` of a row
/// change only when the row is touched, but bias correction uses the table's global step count
/// `t` (one per call to `step`, touched or not), as PyTorch `SparseAdam` and TF's `LazyAdam` do
/// (not a per-row count). Per value, with `g += weight_decay * w` first (L2 on touched rows
/// only; `optimizer.sparse_weight_decay`, 0 by default):
/// `m += (1 - b1)(g - m)`, `v += (1 - b2)(g^2 - v)`,
/// `w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`.
/// `eps` is added to `sqrt(v)` before bias correction, exactly as in `SparseAdam` (dense
/// `torch.optim.Adam` adds it after; the difference is of order `eps`).
#[derive(Debug, Clone)]
pub struct LazyAdam {
    config: AdamConfig,
    dim: usize,
    step: u64,
    /// First moments, `[rows, dim]`.
    m: Vec<f32>,
    /// Second moments, `[rows, dim]`.
    v: Vec<f32>,
}

impl LazyAdam {
    const BUFFERS: [&'static str; 2] = ["exp_avg", "exp_avg_sq"];

    /// Zero moments for a `[rows, dim]` table.
    pub fn new(config: AdamConfig, rows: usize, dim: usize) -> Self {
        let n = rows * dim;
        Self {
            config,
            dim,
            step: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// Continues from exported state.
    pub fn from_state(
        config: AdamConfig,
        rows: usize,
        dim: usize,
        state: OptimizerState,
    ) -> Result<Self, EmbeddingError> {
        let (step, mut bufs) = state.take("lazy-adam", &Self::BUFFERS, rows * dim)?;
        let v = bufs.pop().unwrap_or_default();
        let m = bufs.pop().unwrap_or_default();
        Ok(Self {
            config,
            dim,
            step,
            m,
            v,
        })
    }
}

impl SparseOptimizer for LazyAdam {
    fn step(&mut self, table: &mut EmbeddingTable, grad: &SparseGrad) {
        check(table, grad, self.dim);
        self.step += 1;
        let c = self.config;
        let t = self.step as f64;
        let (bc1, bc2) = (1.0 - c.beta1.powf(t), 1.0 - c.beta2.powf(t));
        let neg_step_size = (-(c.lr * bc2.sqrt() / bc1)) as f32;
        let (one_b1, one_b2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
        let eps = c.eps as f32;
        let wd = c.weight_decay as f32;
        let d = self.dim;
        let weights = table.data_mut();
        for (&id, g) in grad.ids.iter().zip(grad.rows.chunks_exact(d)) {
            let r = id as usize * d..(id as usize + 1) * d;
            let (w, m, v) = (
                &mut weights[r.clone()],
                &mut self.m[r.clone()],
                &mut self.v[r],
            );
            for (((w, m), v), &g) in w.iter_mut().zip(m).zip(v).zip(g) {
                let g = g + wd * *w;
                let m_new = *m + (g - *m) * one_b1;
                let v_new = *v + (g * g - *v) * one_b2;
                *m = m_new;
                *v = v_new;
                *w += neg_step_size * (m_new / (v_new.sqrt() + eps));
            }
        }
    }

    fn kind(&self) -> &'static str {
        "lazy-adam"
    }

    fn steps(&self) -> u64 {
        self.step
    }

    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn export_state(&self) -> OptimizerState {
        let [m, v] = Self::BUFFERS.map(String::from);
        OptimizerState {
            kind: self.kind().into(),
            step: self.step,
            buffers: vec![
                StateBuffer {
                    name: m,
                    data: self.m.clone(),
                },
                StateBuffer {
                    name: v,
                    data: self.v.clone(),
                },
            ],
        }
    }
}

/// Adagrad on touched rows, with PyTorch `Adagrad` semantics for sparse gradients (no
/// `lr_decay`, no weight decay): one accumulator per value, started at `initial_accumulator`;
/// per value `s += g^2`, `w -= lr * g / (sqrt(s) + eps)`. PyTorch's defaults: 0 and 1e-10.
/// (FBGEMM/TorchRec's row-wise Adagrad, one accumulator per row, is not implemented.)
#[derive(Debug, Clone)]
pub struct Adagrad {
    config: AdagradConfig,
    dim: usize,
    step: u64,
    /// Accumulated squared gradients, `[rows, dim]`.
    sum: Vec<f32>,
}

impl Adagrad {
    /// Accumulators at `initial_accumulator` for a `[rows, dim]` table.
    pub fn new(config: AdagradConfig, rows: usize, dim: usize) -> Self {
        Self {
            config,
            dim,
            step: 0,
            sum: vec![config.initial_accumulator as f32; rows * dim],
        }
    }

    /// Continues from exported state.
    pub fn from_state(
        config: AdagradConfig,
        rows: usize,
        dim: usize,
        state: OptimizerState,
    ) -> Result<Self, EmbeddingError> {
        let (step, mut bufs) = state.take("adagrad", &["sum"], rows * dim)?;
        Ok(Self {
            config,
            dim,
            step,
            sum: bufs.pop().unwrap_or_default(),
        })
    }
}

impl SparseOptimizer for Adagrad {
    fn step(&mut self, table: &mut EmbeddingTable, grad: &SparseGrad) {
        check(table, grad, self.dim);
        self.step += 1;
        let (neg_lr, eps) = (-self.config.lr as f32, self.config.eps as f32);
        let d = self.dim;
        let weights = table.data_mut();
        for (&id, g) in grad.ids.iter().zip(grad.rows.chunks_exact(d)) {
            let r = id as usize * d..(id as usize + 1) * d;
            let (w, s) = (&mut weights[r.clone()], &mut self.sum[r]);
            for ((w, s), &g) in w.iter_mut().zip(s).zip(g) {
                *s += g * g;
                *w += neg_lr * (g / (s.sqrt() + eps));
            }
        }
    }

    fn kind(&self) -> &'static str {
        "adagrad"
    }

    fn steps(&self) -> u64 {
        self.step
    }

    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn export_state(&self) -> OptimizerState {
        OptimizerState {
            kind: self.kind().into(),
            step: self.step,
            buffers: vec![StateBuffer {
                name: "sum".into(),
                data: self.sum.clone(),
            }],
        }
    }
}

/// Plain SGD on touched rows: `w -= lr * g`.
#[derive(Debug, Clone)]
pub struct Sgd {
    lr: f64,
    dim: usize,
    step: u64,
}

impl Sgd {
    /// SGD with learning rate `lr` for a table of dimension `dim`.
    pub fn new(lr: f64, dim: usize) -> Self {
        Self { lr, dim, step: 0 }
    }

    /// Continues from exported state (the step count only).
    pub fn from_state(lr: f64, dim: usize, state: OptimizerState) -> Result<Self, EmbeddingError> {
        let (step, _) = state.take("sgd", &[], 0)?;
        Ok(Self { lr, dim, step })
    }
}

impl SparseOptimizer for Sgd {
    fn step(&mut self, table: &mut EmbeddingTable, grad: &SparseGrad) {
        check(table, grad, self.dim);
        self.step += 1;
        let neg_lr = -self.lr as f32;
        let d = self.dim;
        let weights = table.data_mut();
        for (&id, g) in grad.ids.iter().zip(grad.rows.chunks_exact(d)) {
            let start = id as usize * d;
            for (w, &g) in weights[start..start + d].iter_mut().zip(g) {
                *w += neg_lr * g;
            }
        }
    }

    fn kind(&self) -> &'static str {
        "sgd"
    }

    fn steps(&self) -> u64 {
        self.step
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn export_state(&self) -> OptimizerState {
        OptimizerState {
            kind: self.kind().into(),
            step: self.step,
            buffers: Vec::new(),
        }
    }
}
