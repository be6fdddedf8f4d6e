//! Model tests against the f64 reference (issue 3, point 3) and the DESIGN §3 formulas.

use super::device::test_backend;
use super::funnel::{stage_log_probs, stage_nodes};
use super::reference as r;
use super::*;
use crate::rng::SplitMix64;
use burn::tensor::{Tensor, TensorData};

/// Every model here is built on the backend `FUNNEL_TEST_BACKEND` names (default flex), so this
/// one suite checks each backend against the same f64 reference and tolerances.
fn new_model(job: &Job, dims: InputDims, seed: u64) -> Result<FunnelModel> {
    FunnelModel::with_backend(job, dims, seed, test_backend())
}

fn job(preset: &str, kind: &str, extra: &str) -> Job {
    let text = format!(
        r#"
version = 1
[data]
train = "file:///tmp/t/"
[[features.categorical]]
column = "user_id"
buckets = 1000
dim = 3
[[features.categorical]]
column = "item_id"
buckets = 1000
dim = 3
[funnel]
preset = "{preset}"
[towers]
kind = "{kind}"
hidden = [5, 3]
{extra}
"#
    );
    Job::parse(&text, "test.toml").expect("valid test spec")
}

/// Two embedding fields of width 3 (equal, so DeepFM applies) and two numeric features.
fn dims() -> InputDims {
    InputDims {
        fields: vec![3, 3],
        numeric: 2,
    }
}

const PRESETS: [&str; 3] = ["esmm", "esm2", "click-fav-order-pay"];

/// A batch: embeddings, numeric features and labels for every target.
struct Data {
    emb: Vec<f32>,
    numeric: Vec<f32>,
    labels: Vec<Vec<u8>>,
}

fn data(m: &FunnelModel, rows: usize, seed: u64) -> Data {
    let mut rng = SplitMix64::new(seed);
    let mut normal = |n: usize, s: f64| (0..n).map(|_| (rng.normal() * s) as f32).collect();
    let emb = normal(rows * m.dims.emb(), 0.8);
    let numeric = normal(rows * m.dims.numeric, 1.0);
    let labels = (0..m.targets.len())
        .map(|k| {
            (0..rows)
                .map(|r| ((r * 7 + k * 3 + r / 3) % 2) as u8)
                .collect()
        })
        .collect();
    Data {
        emb,
        numeric,
        labels,
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Central difference of `f` at every coordinate of `x`.
fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            x[i] = x0 + h;
            let up = f(&x);
            x[i] = x0 - h;
            let down = f(&x);
            x[i] = x0;
            (up - down) / (2.0 * h)
        })
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol,
            "{what}[{i}]: got {g}, f64 reference {w}"
        );
    }
}

#[test]
fn losses_and_gradients_match_the_f64_reference() {
    for preset in PRESETS {
        for kind in ["mlp", "dcn-v2", "deepfm", "deep-fwfm"] {
            let what = format!("{preset}/{kind}");
            let mut m = new_model(&job(preset, kind, ""), dims(), 11).expect("model");
            let d = data(&m, 6, 5);
            let weights: Vec<f32> = (0..m.targets.len()).map(|k| 1.0 + k as f32 * 0.5).collect();
            let out = m
                .train_step(&d.emb, &d.numeric, &d.labels, &weights)
                .expect("step");
            let (p, emb, num) = (f64s(&m.params), f64s(&d.emb), f64s(&d.numeric));
            let tasks = r::task_losses(&m, &p, &emb, &num, &d.labels);
            assert_close(
                &format!("{what} task losses"),
                &out.task_losses,
                &tasks,
                1e-6,
            );
            let total = r::total_loss(&m, &p, &emb, &num, &d.labels, &weights);
            assert_close(&format!("{what} total"), &[out.loss], &[total], 1e-6);
            let g_emb = numeric_grad(&emb, |e| {
                r::total_loss(&m, &p, e, &num, &d.labels, &weights)
            });
            assert_close(&format!("{what} d/d emb"), &out.emb_grad, &g_emb, 1e-6);
            let g_dense = numeric_grad(&p, |q| {
                r::total_loss(&m, q, &emb, &num, &d.labels, &weights)
            });
            assert_close(
                &format!("{what} d/d params"),
                &out.dense_grad,
                &g_dense,
                1e-6,
            );
            // Prediction: every stage's probability, DESIGN §3 in probability space.
            let probs = m.forward(&d.emb, &d.numeric).expect("forward");
            for row in 0..6 {
                let e = &emb[row * 6..row * 6 + 6];
                let logits = r::row_logits(&m, &p, e, &num[row * 2..row * 2 + 2]);
                let want = r::stage_probs(&m.nodes, &logits);
                let got: Vec<f32> = probs.iter().map(|s| s[row]).collect();
                assert_close(&format!("{what} P row {row}"), &got, &want, 1e-6);
            }
        }
    }
}

/// σ(27.631021) = 1 - 1e-12 and σ(-27.631021) = 1e-12.
const EXTREME: f32 = 27.631_021;
/// Saturated: σ(±100) rounds to exactly 1 or 0 in f32 (log-sigmoid is -3.7e-44 or -100).
const SATURATED: f32 = 100.0;

#[test]
fn funnel_is_finite_and_precise_at_extreme_probabilities() {
    let funnel = job("click-fav-order-pay", "mlp", "").funnel;
    let nodes = stage_nodes(&funnel);
    let towers = funnel.tower_count();
    let values = [-SATURATED, -EXTREME, -10.0, 0.0, 3.0, EXTREME, SATURATED];
    // Every combination of tower logits, each with labels all 0, all 1 and mixed.
    let combos = values.len().pow(towers as u32);
    let rows = combos * 3;
    let mut logits = Vec::with_capacity(rows * towers);
    for c in 0..rows {
        let mut code = c % combos;
        for _ in 0..towers {
            logits.push(values[code % values.len()]);
            code /= values.len();
        }
    }
    let (device, _) = test_backend().devices().expect("backend");
    let leaf = Tensor::<2>::from_data(TensorData::new(logits.clone(), [rows, towers]), &device)
        .require_grad();
    let cols: Vec<Tensor<2>> = (0..towers).map(|t| leaf.clone().narrow(1, t, 1)).collect();
    let lp = stage_log_probs(&nodes, &cols);
    let read = |t: &Tensor<2>| t.clone().detach().try_into_vec_as::<f32>().expect("read");
    let mut total: Option<Tensor<1>> = None;
    for (k, (stage, _)) in funnel.targets().enumerate() {
        let y: Vec<f32> = (0..rows)
            .map(|r| match r / combos {
                0 => 0.0,
                1 => 1.0,
                _ => ((r + k) % 2) as f32,
            })
            .collect();
        let y = Tensor::<2>::from_data(TensorData::new(y, [rows, 1]), &device);
        let l = super::funnel::bce(lp.log_p[stage].clone(), lp.log_not_p[stage].clone(), y);
        total = Some(match total {
            None => l,
            Some(t) => t + l,
        });
    }
    let total = total.expect("targets");
    let loss = read(&total.clone().unsqueeze())[0];
    assert!(loss.is_finite(), "loss {loss}");
    let grad = leaf.grad(&total.backward()).expect("grad");
    let grad = grad.try_into_vec_as::<f32>().expect("read");
    assert!(grad.iter().all(|g| g.is_finite()), "non-finite gradient");
    for (s, (lp_s, lnp_s)) in lp.log_p.iter().zip(&lp.log_not_p).enumerate() {
        let (got_p, got_n) = (read(lp_s), read(lnp_s));
        // Finite, and at most rounding above 0 (log-sums of terms that add up to 1).
        let bad = |v: &f32| !v.is_finite() || *v > 1e-7;
        assert!(!got_p.iter().chain(&got_n).any(bad), "stage {s}");
        for row in 0..combos {
            let row_logits = &logits[row * towers..(row + 1) * towers];
            if row_logits.iter().any(|l| l.abs() == SATURATED) {
                continue; // f32 cannot hold these probabilities' distance from 0 or 1
            }
            let (want_p, want_n) = r::stage_log_probs(&nodes, &f64s(row_logits));
            // An error e in log P (log (1 - P)) is a relative error e in P (1 - P): at
            // P = 1 - 2e-12, log (1 - P) must be log(2e-12), not log(1e-12).
            for (got, want) in [(got_p[row], want_p[s]), (got_n[row], want_n[s])] {
                let err = (f64::from(got) - want).abs();
                assert!(
                    err < 1e-6 * want.abs().max(1.0),
                    "stage {s} row {row}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn esmm_pctcvr_is_pctr_times_pcvr() {
    let m = new_model(&job("esmm", "mlp", ""), dims(), 3).expect("model");
    assert_eq!(m.tower_names(), ["click", "purchase"]);
    let d = data(&m, 8, 2);
    let logits = m.tower_logits(&d.emb, &d.numeric).expect("logits");
    let p = m.forward(&d.emb, &d.numeric).expect("forward");
    let sig = |x: f32| 1.0 / (1.0 + (-f64::from(x)).exp());
    for row in 0..8 {
        let (pctr, pcvr) = (sig(logits[0][row]), sig(logits[1][row]));
        assert_close("pCTR", &[p[0][row]], &[pctr], 1e-7);
        assert_close("pCTCVR", &[p[1][row]], &[pctr * pcvr], 1e-7);
    }
}

#[test]
fn esm2_and_click_fav_order_pay_follow_design_formulas() {
    let sig = |x: f32| 1.0 / (1.0 + (-f64::from(x)).exp());
    let m = new_model(&job("esm2", "mlp", ""), dims(), 4).expect("model");
    assert_eq!(
        m.tower_names(),
        ["click", "action", "purchase|action", "purchase|~action"]
    );
    let d = data(&m, 8, 3);
    let l = m.tower_logits(&d.emb, &d.numeric).expect("logits");
    let p = m.forward(&d.emb, &d.numeric).expect("forward");
    for row in 0..8 {
        let t: Vec<f64> = l.iter().map(|t| sig(t[row])).collect();
        let purchase = t[0] * (t[1] * t[2] + (1.0 - t[1]) * t[3]);
        let got: Vec<f32> = p.iter().map(|s| s[row]).collect();
        assert_close("esm2", &got, &[t[0], t[0] * t[1], purchase], 1e-7);
    }
    let m = new_model(&job("click-fav-order-pay", "mlp", ""), dims(), 4).expect("model");
    assert_eq!(
        m.tower_names(),
        [
            "click",
            "favorite",
            "order|favorite",
            "order|~favorite",
            "pay"
        ]
    );
    let l = m.tower_logits(&d.emb, &d.numeric).expect("logits");
    let p = m.forward(&d.emb, &d.numeric).expect("forward");
    for row in 0..8 {
        let t: Vec<f64> = l.iter().map(|t| sig(t[row])).collect();
        let (click, fav) = (t[0], t[0] * t[1]);
        let order = t[0] * (t[1] * t[2] + (1.0 - t[1]) * t[3]);
        let got: Vec<f32> = p.iter().map(|s| s[row]).collect();
        assert_close("cfop", &got, &[click, fav, order, order * t[4]], 1e-7);
    }
}

/// Runs `steps` train steps + updates on one batch; returns the losses.
fn train(m: &mut FunnelModel, d: &Data, steps: usize) -> Vec<StepOutput> {
    let w = vec![1.0; m.targets.len()];
    (0..steps)
        .map(|_| {
            let out = m
                .train_step(&d.emb, &d.numeric, &d.labels, &w)
                .expect("step");
            m.apply_dense_update(&out.dense_grad).expect("update");
            out
        })
        .collect()
}

#[test]
fn a_few_sgd_and_adam_steps_reduce_the_loss() {
    for (opt, lr) in [("sgd", 0.5), ("adam", 0.01)] {
        let extra = format!("[optimizer]\ndense = \"{opt}\"\nlr = {lr}");
        let mut m = new_model(&job("esm2", "mlp", &extra), dims(), 9).expect("model");
        let d = data(&m, 32, 8);
        let losses: Vec<f32> = train(&mut m, &d, 20).iter().map(|o| o.loss).collect();
        assert!(
            losses.windows(2).take(5).all(|w| w[1] < w[0]),
            "{opt}: {losses:?}"
        );
        assert!(losses[19] < 0.9 * losses[0], "{opt}: {losses:?}");
    }
}

#[test]
fn init_and_training_are_deterministic_per_seed() {
    let j = job("click-fav-order-pay", "dcn-v2", "dropout = 0.25");
    let mk = |seed| new_model(&j, dims(), seed).expect("model");
    let (mut a, mut b, c) = (mk(1), mk(1), mk(2));
    assert_eq!(a.params(), b.params());
    assert_ne!(a.params(), c.params());
    let d = data(&a, 16, 4);
    assert_eq!(train(&mut a, &d, 3), train(&mut b, &d, 3));
    assert_eq!(a.params(), b.params());
    // Dropout is on in training only: prediction is deterministic and mask-free.
    assert_eq!(
        a.forward(&d.emb, &d.numeric).ok(),
        b.forward(&d.emb, &d.numeric).ok()
    );
}

#[test]
fn layout_names_are_readable_and_hash_is_pinned() {
    let m = new_model(&job("esm2", "mlp", ""), dims(), 1).expect("model");
    let names: Vec<(&str, &[usize])> = m.named_params().map(|(n, s, _)| (n, s)).take(6).collect();
    let want: [(&str, &[usize]); 6] = [
        ("towers.click.layers.0.weight", &[5, 8]),
        ("towers.click.layers.0.bias", &[5]),
        ("towers.click.layers.1.weight", &[3, 5]),
        ("towers.click.layers.1.bias", &[3]),
        ("towers.click.out.weight", &[1, 3]),
        ("towers.click.out.bias", &[1]),
    ];
    assert_eq!(names, want);
    let last = m.layout().params().last().expect("params");
    assert_eq!(last.name, "towers.purchase|~action.out.bias");
    assert_eq!(m.layout().len(), 4 * (8 * 5 + 5 + 5 * 3 + 3 + 3 + 1));
    // Changing this value breaks checkpoints and mixed-version rings: bump it on purpose only.
    assert_eq!(m.layout_hash(), PINNED_ESM2_HASH, "{:#x}", m.layout_hash());
}

const PINNED_ESM2_HASH: u64 = 0x1a16_d693_220c_2c21;

#[test]
fn bad_inputs_are_errors_not_panics() {
    let mut m = new_model(&job("esmm", "mlp", ""), dims(), 1).expect("model");
    let d = data(&m, 4, 1);
    let w = [1.0, 1.0];
    assert!(m.forward(&d.emb[1..], &d.numeric).is_err());
    assert!(
        m.train_step(&d.emb, &d.numeric, &d.labels[..1], &w)
            .is_err()
    );
    let mut bad = d.labels.clone();
    bad[1][2] = 2;
    assert!(matches!(
        m.train_step(&d.emb, &d.numeric, &bad, &w),
        Err(ModelError::Label {
            target: 1,
            row: 2,
            value: 2
        })
    ));
    assert!(m.apply_dense_update(&[0.0; 3]).is_err());
    let deepfm = new_model(
        &job("esmm", "deepfm", ""),
        InputDims {
            fields: vec![3, 2],
            numeric: 1,
        },
        1,
    );
    assert!(matches!(deepfm, Err(ModelError::Config(_))));
}

#[test]
fn task_gradient_norms_equal_a_single_task_backward() {
    // GradNorm's statistic for task k equals the embedding gradient of a training step whose
    // only non-zero weight is task k's (no dropout), squared and summed.
    for preset in PRESETS {
        let m = new_model(&job(preset, "mlp", ""), dims(), 5).expect("model");
        let d = data(&m, 16, 9);
        let t = m.target_stages().len();
        let weights: Vec<f32> = (0..t).map(|k| 0.5 + k as f32).collect();
        let norms = m
            .task_grad_sq_norms(&d.emb, &d.numeric, &d.labels, &weights)
            .expect("norms");
        assert_eq!(norms.len(), t);
        for k in 0..t {
            let mut one = vec![0.0; t];
            one[k] = weights[k];
            let mut m2 = new_model(&job(preset, "mlp", ""), dims(), 5).expect("model");
            let out = m2
                .train_step(&d.emb, &d.numeric, &d.labels, &one)
                .expect("step");
            let want: f32 = out.emb_grad.iter().map(|v| v * v).sum();
            assert!(
                (norms[k] - want).abs() <= 1e-5 * want.max(1e-12),
                "{preset} task {k}: {} vs {want}",
                norms[k]
            );
            assert!(want > 0.0);
        }
    }
}
