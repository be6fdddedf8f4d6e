//! Sparse optimizers against dense f64 references, laziness, and bit-exact resume.

use super::set_tests::{batch, features, upstream};
use super::*;
use crate::spec::{OptimizerSpec, SparseOptimizer as Kind};

const ROWS: usize = 10;
const DIM: usize = 3;

fn table(seed: u64) -> EmbeddingTable {
    EmbeddingTable::new("t", ROWS as u64, DIM, seed, EmbeddingInit::default()).expect("table")
}

/// A gradient over `ids` with random values.
fn grad(ids: &[u32], seed: u64) -> SparseGrad {
    let rows = upstream(ids.len() * DIM, seed);
    SparseGrad::new(0, DIM, ids.to_vec(), rows).expect("grad")
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

/// torch.optim.Adam on a dense table, in f64: `(w, m, v)` after steps `1..=grads.len()`.
fn dense_adam(w0: &[f32], grads: &[Vec<f64>], c: AdamConfig) -> Vec<f64> {
    let mut w: Vec<f64> = w0.iter().map(|&x| x as f64).collect();
    let (mut m, mut v) = (vec![0.0; w.len()], vec![0.0; w.len()]);
    for (t, g) in grads.iter().enumerate() {
        let t = (t + 1) as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for i in 0..w.len() {
            m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
            v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
            w[i] -= c.lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + c.eps);
        }
    }
    w
}

fn dense(g: &SparseGrad) -> Vec<f64> {
    g.to_dense(ROWS).iter().map(|&x| x as f64).collect()
}

fn state(opt: &dyn SparseOptimizer, name: &str) -> Vec<f32> {
    let s = opt.export_state();
    s.buffers
        .into_iter()
        .find(|b| b.name == name)
        .expect("buffer")
        .data
}

#[test]
fn lazy_adam_one_step_equals_dense_adam_on_touched_rows_and_leaves_the_rest() {
    let c = AdamConfig::new(0.01);
    let (mut t, t0) = (table(1), table(1));
    let g = grad(&[1, 4, 7], 2);
    let mut opt = LazyAdam::new(c, ROWS, DIM);
    opt.step(&mut t, &g);
    let want = dense_adam(t0.data(), &[dense(&g)], c);
    let (m, v) = (state(&opt, "exp_avg"), state(&opt, "exp_avg_sq"));
    for id in 0..ROWS {
        let r = id * DIM..(id + 1) * DIM;
        if g.ids.contains(&(id as u32)) {
            for i in r {
                assert!(close(t.data()[i] as f64, want[i], 1e-6), "row {id}");
                assert_ne!(m[i], 0.0);
            }
        } else {
            assert_eq!(
                t.row(id as u32),
                t0.row(id as u32),
                "untouched row {id} moved"
            );
            assert!(m[r.clone()].iter().chain(&v[r]).all(|&x| x == 0.0));
        }
    }
}

#[test]
fn lazy_adam_equals_dense_adam_when_every_row_is_touched() {
    let c = AdamConfig::new(0.01);
    let (mut t, t0) = (table(3), table(3));
    let all: Vec<u32> = (0..ROWS as u32).collect();
    let grads: Vec<SparseGrad> = (0..6).map(|s| grad(&all, 10 + s)).collect();
    let mut opt = LazyAdam::new(c, ROWS, DIM);
    grads.iter().for_each(|g| opt.step(&mut t, g));
    let want = dense_adam(t0.data(), &grads.iter().map(dense).collect::<Vec<_>>(), c);
    for (x, y) in t.data().iter().zip(&want) {
        assert!(close(*x as f64, *y, 1e-5), "{x} vs {y}");
    }
}

#[test]
fn lazy_adam_bias_correction_follows_the_global_step() {
    // Row 2 is touched at steps 1 and 3 only; its moments freeze at step 2, and step 3 corrects
    // with t = 3 (PyTorch SparseAdam, TF LazyAdam), not with the row's own count 2.
    let c = AdamConfig::new(0.05);
    let (mut t, t0) = (table(4), table(4));
    let (g1, g2, g3) = (grad(&[2, 5], 1), grad(&[5], 2), grad(&[2], 3));
    let mut opt = LazyAdam::new(c, ROWS, DIM);
    opt.step(&mut t, &g1);
    let (m1, w1) = (state(&opt, "exp_avg"), t.data().to_vec());
    opt.step(&mut t, &g2);
    assert_eq!(state(&opt, "exp_avg")[6..9], m1[6..9]);
    assert_eq!(t.data()[6..9], w1[6..9]);
    opt.step(&mut t, &g3);
    assert_eq!(opt.steps(), 3);
    for j in 0..DIM {
        let (a, b) = (g1.row(0)[j] as f64, g3.row(0)[j] as f64);
        let mut w = t0.row(2)[j] as f64;
        let (mut m, mut v) = (0.0, 0.0);
        for (step, g) in [(1, a), (3, b)] {
            m = c.beta1 * m + (1.0 - c.beta1) * g;
            v = c.beta2 * v + (1.0 - c.beta2) * g * g;
            let (bc1, bc2) = (1.0 - c.beta1.powi(step), 1.0 - c.beta2.powi(step));
            w -= c.lr * bc2.sqrt() / bc1 * m / (v.sqrt() + c.eps);
        }
        assert!(close(t.row(2)[j] as f64, w, 1e-6), "{} vs {w}", t.row(2)[j]);
    }
}

#[test]
fn adagrad_equals_the_dense_reference_on_touched_rows_only() {
    let c = AdagradConfig {
        lr: 0.1,
        initial_accumulator: 0.1,
        eps: 1e-10,
    };
    let (mut t, t0) = (table(5), table(5));
    let grads = [grad(&[0, 3, 9], 1), grad(&[3], 2), grad(&[0, 9], 3)];
    let mut opt = Adagrad::new(c, ROWS, DIM);
    grads.iter().for_each(|g| opt.step(&mut t, g));
    let mut w: Vec<f64> = t0.data().iter().map(|&x| x as f64).collect();
    let mut s = vec![c.initial_accumulator; w.len()];
    for g in &grads {
        // PyTorch's dense Adagrad with zero gradients elsewhere moves nothing there either.
        for (i, g) in dense(g).into_iter().enumerate() {
            s[i] += g * g;
            w[i] -= c.lr * g / (s[i].sqrt() + c.eps);
        }
    }
    let sum = state(&opt, "sum");
    for i in 0..ROWS * DIM {
        assert!(close(t.data()[i] as f64, w[i], 1e-6), "value {i}");
        assert!(close(sum[i] as f64, s[i], 1e-6), "accumulator {i}");
    }
    for id in [1u32, 2, 4, 5, 6, 7, 8] {
        assert_eq!(t.row(id), t0.row(id));
    }
}

#[test]
fn sgd_moves_touched_rows_by_lr_times_gradient() {
    let (mut t, t0) = (table(6), table(6));
    let g = grad(&[2, 8], 7);
    Sgd::new(0.5, DIM).step(&mut t, &g);
    for (k, &id) in g.ids.iter().enumerate() {
        for j in 0..DIM {
            assert_eq!(t.row(id)[j], t0.row(id)[j] + -0.5 * g.row(k)[j]);
        }
    }
    assert_eq!(t.row(0), t0.row(0));
}

#[test]
fn spec_maps_to_optimizers() {
    let mut spec = OptimizerSpec::default();
    assert_eq!(
        SparseOptimizerConfig::from_spec(&spec),
        SparseOptimizerConfig::LazyAdam(AdamConfig::new(1e-3))
    );
    spec.sparse = Kind::Adagrad;
    spec.sparse_lr = Some(0.05);
    assert_eq!(
        SparseOptimizerConfig::from_spec(&spec),
        SparseOptimizerConfig::Adagrad(AdagradConfig::new(0.05))
    );
    let sgd = SparseOptimizerConfig::from_kind(Kind::Sgd, 0.1).build(ROWS, DIM);
    assert_eq!(sgd.kind(), "sgd");
}

/// Trains an [`EmbeddingSet`] for `steps` steps; with `resume_at`, exports everything there and
/// continues from fresh objects rebuilt from the exports alone.
fn train(config: SparseOptimizerConfig, steps: u64, resume_at: Option<u64>) -> EmbeddingSet {
    let f = features();
    let mut set = EmbeddingSet::new(&f, 21).expect("set");
    let mut opt = EmbeddingOptimizers::new(&config, &set);
    for step in 0..steps {
        if resume_at == Some(step) {
            let tables: Vec<EmbeddingTable> = set
                .tables()
                .iter()
                .map(|t| {
                    let data = t.data().to_vec();
                    EmbeddingTable::from_data(t.name(), t.rows(), t.dim(), data).expect("table")
                })
                .collect();
            let states = opt.export_state();
            set = EmbeddingSet::from_tables(&f, tables).expect("tables");
            opt = EmbeddingOptimizers::restore(&config, &set, states).expect("restore");
        }
        let b = batch(32, 100 + step);
        let g = upstream(32 * set.total_dim(), 200 + step);
        let mut grads = set.backward(&b, &g).expect("backward");
        grads.iter_mut().for_each(|g| g.divide(32.0));
        opt.step(&mut set, &grads);
    }
    set
}

#[test]
fn resume_from_exported_state_is_bit_exact() {
    let configs = [
        SparseOptimizerConfig::LazyAdam(AdamConfig::new(0.01)),
        SparseOptimizerConfig::Adagrad(AdagradConfig::new(0.05)),
        SparseOptimizerConfig::Sgd(0.5),
    ];
    for config in configs {
        let straight = train(config, 8, None);
        let resumed = train(config, 8, Some(3));
        let bits = |s: &EmbeddingSet| -> Vec<u32> {
            s.tables()
                .iter()
                .flat_map(|t| t.data().iter().map(|v| v.to_bits()))
                .collect()
        };
        assert_eq!(bits(&straight), bits(&resumed), "{config:?}");
        let moved = train(config, 0, None);
        assert_ne!(bits(&straight), bits(&moved), "{config:?} trained nothing");
    }
}

#[test]
fn restoring_mismatched_state_fails() {
    let adam = SparseOptimizerConfig::LazyAdam(AdamConfig::new(0.01));
    let adagrad = SparseOptimizerConfig::Adagrad(AdagradConfig::new(0.01));
    let state = adam.build(ROWS, DIM).export_state();
    assert!(adam.restore(ROWS, DIM, state.clone()).is_ok());
    assert!(adagrad.restore(ROWS, DIM, state.clone()).is_err());
    assert!(adam.restore(ROWS + 1, DIM, state.clone()).is_err());
    let mut renamed = state;
    renamed.buffers.swap(0, 1);
    assert!(adam.restore(ROWS, DIM, renamed).is_err());
    let set = EmbeddingSet::new(&features(), 1).expect("set");
    assert!(EmbeddingOptimizers::restore(&adam, &set, Vec::new()).is_err());
}

#[test]
#[should_panic(expected = "dim")]
fn a_gradient_of_another_dimension_panics() {
    let mut t = table(1);
    let g = SparseGrad::new(0, 2, vec![1], vec![1.0, 2.0]).expect("grad");
    LazyAdam::new(AdamConfig::new(0.1), ROWS, DIM).step(&mut t, &g);
}

#[test]
fn lazy_adam_weight_decay_adds_l2_to_touched_rows_only() {
    // sparse_weight_decay from the spec reaches LazyAdam; a step with it equals a step without
    // it on the gradient g + wd * w of the touched rows, and untouched rows do not decay.
    let spec = OptimizerSpec {
        sparse: Kind::LazyAdam,
        sparse_lr: Some(0.01),
        sparse_weight_decay: 0.5,
        ..OptimizerSpec::default()
    };
    let SparseOptimizerConfig::LazyAdam(c) = SparseOptimizerConfig::from_spec(&spec) else {
        panic!("lazy-adam expected");
    };
    assert_eq!(c.weight_decay, 0.5);
    let (mut t, t0) = (table(5), table(5));
    let g = grad(&[0, 6], 7);
    let mut opt = LazyAdam::new(c, ROWS, DIM);
    opt.step(&mut t, &g);
    let mut g_l2 = dense(&g);
    for &id in &g.ids {
        let r = id as usize * DIM..(id as usize + 1) * DIM;
        for (g, &w) in g_l2[r.clone()].iter_mut().zip(&t0.data()[r]) {
            *g += 0.5 * f64::from(w);
        }
    }
    let plain = AdamConfig {
        weight_decay: 0.0,
        ..c
    };
    let want = dense_adam(t0.data(), &[g_l2], plain);
    for id in 0..ROWS as u32 {
        if g.ids.contains(&id) {
            let r = id as usize * DIM..(id as usize + 1) * DIM;
            for (&got, &w) in t.data()[r.clone()].iter().zip(&want[r]) {
                assert!(close(f64::from(got), w, 1e-6), "row {id}");
            }
        } else {
            assert_eq!(t.row(id), t0.row(id), "untouched row {id} moved");
        }
    }
}

#[test]
fn set_lr_changes_the_rate_of_the_steps_that_follow() {
    // Two steps at 0.01, then `set_lr(0.002)`: the third step equals that of an optimizer
    // built with 0.002 and restored from the same state, for every kind.
    let configs = [
        (
            SparseOptimizerConfig::LazyAdam(AdamConfig::new(0.01)),
            SparseOptimizerConfig::LazyAdam(AdamConfig::new(0.002)),
        ),
        (
            SparseOptimizerConfig::Adagrad(AdagradConfig::new(0.01)),
            SparseOptimizerConfig::Adagrad(AdagradConfig::new(0.002)),
        ),
        (
            SparseOptimizerConfig::Sgd(0.01),
            SparseOptimizerConfig::Sgd(0.002),
        ),
    ];
    for (fast, slow) in configs {
        let mut t = table(3);
        let mut opt = fast.build(ROWS, DIM);
        opt.step(&mut t, &grad(&[1, 4], 8));
        opt.step(&mut t, &grad(&[4, 6], 9));
        let mut other = slow
            .restore(ROWS, DIM, opt.export_state())
            .expect("restore");
        let mut t2 = t.clone();
        opt.set_lr(0.002);
        let g = grad(&[1, 6], 10);
        opt.step(&mut t, &g);
        other.step(&mut t2, &g);
        assert_eq!(t, t2, "{}", opt.kind());
        let before = t.clone();
        opt.set_lr(0.01);
        opt.step(&mut t, &g);
        other.step(&mut t2, &g);
        assert_ne!(t, t2, "{}: the rate had no effect", opt.kind());
        assert_ne!(t, before);
    }
}
