//! Step-time measurement for the reference tower config (issue 3): batch 1024, input
//! 20 fields x 16 + 8 numeric, click-fav-order-pay (5 towers), MLP 256-128, Adam.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo test --config 'profile.dev.package.funnel-common.opt-level=3' \
//!     -p funnel-common --lib model::bench -- --ignored --nocapture
//! ```
//! flex runs matmuls and reductions on the global rayon pool, so the variable pins one thread.
//! `FUNNEL_TEST_BACKEND=tch` (with `--features tch`) measures LibTorch instead; it runs on its
//! own OpenMP threads (`OMP_NUM_THREADS`).
//! The `--config` optimises this crate (the dev profile already optimises dependencies, where
//! the matmuls run); without it the flat Adam loop alone takes ~10 ms instead of ~0.4 ms.

use super::*;
use crate::rng::SplitMix64;
use std::time::Instant;

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn train_step_time() {
    let text = r#"
version = 1
[data]
train = "file:///tmp/t/"
[[features.categorical]]
column = "user_id"
buckets = 1000
dim = 16
[funnel]
preset = "click-fav-order-pay"
[towers]
hidden = [256, 128]
"#;
    let job = Job::parse(text, "bench.toml").expect("spec");
    let dims = InputDims {
        fields: vec![16; 20],
        numeric: 8,
    };
    let mut m = FunnelModel::with_backend(&job, dims.clone(), 1, super::device::test_backend())
        .expect("model");
    let rows = 1024;
    let mut rng = SplitMix64::new(3);
    let mut normal = |n: usize| {
        (0..n)
            .map(|_| rng.normal() as f32 * 0.1)
            .collect::<Vec<_>>()
    };
    let emb = normal(rows * dims.emb());
    let numeric = normal(rows * dims.numeric);
    let labels: Vec<Vec<u8>> = (0..4)
        .map(|k| (0..rows).map(|r| u8::from((r * 31 + k) % 7 == 0)).collect())
        .collect();
    let weights = [1.0f32; 4];
    let (mut step_ms, mut update_ms) = (Vec::new(), Vec::new());
    for i in 0..13 {
        let t0 = Instant::now();
        let out = m
            .train_step(&emb, &numeric, &labels, &weights)
            .expect("step");
        let t1 = Instant::now();
        m.apply_dense_update(&out.dense_grad).expect("update");
        let t2 = Instant::now();
        if i >= 3 {
            step_ms.push((t1 - t0).as_secs_f64() * 1e3);
            update_ms.push((t2 - t1).as_secs_f64() * 1e3);
        }
    }
    let t0 = Instant::now();
    let probs = m.forward(&emb, &numeric).expect("forward");
    let fwd_ms = t0.elapsed().as_secs_f64() * 1e3;
    assert_eq!(probs.len(), 4);
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0])
    };
    let (step_med, step_min) = stats(&mut step_ms);
    let (upd_med, upd_min) = stats(&mut update_ms);
    println!(
        "params {} | train_step median {step_med:.1} ms (min {step_min:.1}) | \
         adam update median {upd_med:.2} ms (min {upd_min:.2}) | forward {fwd_ms:.1} ms | \
         {:.0} rows/s (step + update) | rayon threads {} | backend {}",
        m.layout().len(),
        rows as f64 / ((step_med + upd_med) / 1e3),
        rayon_threads(),
        m.backend(),
    );
}

/// The rayon pool size, read from the environment the way rayon does (no rayon dependency).
fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default (all cores)".into())
}
