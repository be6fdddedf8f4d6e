//! Task-loss weighting (DESIGN §6; issue 5): the pure update rules, and the state a job keeps
//! for them. Nothing here knows about workers or the network: the coordinator (or a single
//! worker) feeds in epoch aggregates and applies the weights that come out at the next epoch.
//!
//! - **fixed**: the spec's weights, unchanged.
//! - **GradNorm** (Chen et al. 2018), per epoch: `r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0))`,
//!   `target_i = mean_j(G_j) * r_i^alpha` (held constant), and a step on `|G_i - target_i|`.
//!   The step is taken on `log w_i` and scaled by `mean_j(G_j)`: with `G_i = w_i g_i`,
//!   `d|G_i - target_i| / d log w_i = sign(G_i - target_i) G_i`, so
//!   `log w_i -= lr * sign(G_i - target_i) * G_i / mean_j(G_j)`. A log-space step keeps every
//!   weight positive whatever alpha and the rate (the paper's additive step can cross zero and
//!   needs clipping), and dividing by the mean norm makes the rate independent of the gradients'
//!   scale, which matters when the update runs once an epoch instead of every step. Then the
//!   weights are renormalised to sum to the number of tasks.
//! - **DWA** (Liu et al. 2019): `w_i = T * softmax_i(r_i / temperature)`,
//!   `r_i = L_i(t-1) / L_i(t-2)`; weights 1 for the first two epochs.
//! - **UWL** (Kendall et al. 2018) is learned with the model, per step, by the trainer; its
//!   rule is [`uwl_weights`] / [`uwl_grad`] here.

use crate::spec::{LossSpec, Weighting};
use serde::{Deserialize, Serialize};

/// Renormalises `w` to sum to its length (the number of tasks).
pub fn renormalise(w: &mut [f64]) {
    let sum: f64 = w.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        let k = w.len() as f64 / sum;
        w.iter_mut().for_each(|x| *x *= k);
    }
}

/// One GradNorm update of `weights` from an epoch's mean task losses, the initial losses
/// `L(0)` and the mean norms `G_i` of each task's weighted gradient at the shared layer.
pub fn gradnorm_update(
    weights: &[f64],
    losses: &[f64],
    initial: &[f64],
    grad_norms: &[f64],
    alpha: f64,
    lr: f64,
) -> Vec<f64> {
    let t = weights.len();
    let ratio: Vec<f64> = losses
        .iter()
        .zip(initial)
        .map(|(l, l0)| if *l0 > 0.0 { l / l0 } else { 1.0 })
        .collect();
    let mean_ratio = ratio.iter().sum::<f64>() / t.max(1) as f64;
    let mean_g = grad_norms.iter().sum::<f64>() / t.max(1) as f64;
    if !(mean_g > 0.0 && mean_g.is_finite() && mean_ratio > 0.0) {
        return weights.to_vec();
    }
    let mut w: Vec<f64> = (0..t)
        .map(|i| {
            let r = ratio[i] / mean_ratio;
            let target = mean_g * r.powf(alpha);
            let g = grad_norms[i];
            let step = lr * (g - target).signum() * g / mean_g;
            // Bounded so one epoch cannot move a weight by more than e^±10.
            (weights[i].ln() - step.clamp(-10.0, 10.0)).exp()
        })
        .collect();
    renormalise(&mut w);
    w
}

/// DWA's weights from the last two epochs' mean task losses.
pub fn dwa_weights(last: &[f64], before: &[f64], temperature: f64) -> Vec<f64> {
    let t = last.len();
    let r: Vec<f64> = last
        .iter()
        .zip(before)
        .map(|(a, b)| if *b > 0.0 { a / b } else { 1.0 })
        .collect();
    let temp = temperature.max(1e-6);
    let max = r.iter().copied().fold(f64::MIN, f64::max);
    let e: Vec<f64> = r.iter().map(|x| ((x - max) / temp).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| t as f64 * x / sum).collect()
}

/// UWL's weights `exp(-s_i)` from the learned log-variances `s_i`.
pub fn uwl_weights(log_vars: &[f64]) -> Vec<f64> {
    log_vars.iter().map(|s| (-s).exp()).collect()
}

/// d/ds_i of UWL's objective `sum_i exp(-s_i) L_i + s_i`, from the step's mean task losses.
pub fn uwl_grad(log_vars: &[f64], losses: &[f64]) -> Vec<f64> {
    log_vars
        .iter()
        .zip(losses)
        .map(|(s, l)| 1.0 - (-s).exp() * l)
        .collect()
}

/// UWL's learned log-variances `s_i` and their Adam moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct UwlState {
    /// `s_i = log sigma_i^2`; the weight is `exp(-s_i)`.
    pub log_vars: Vec<f64>,
    /// Adam's first moments.
    pub m: Vec<f64>,
    /// Adam's second moments.
    pub v: Vec<f64>,
    /// Adam steps taken.
    pub t: u64,
}

impl UwlState {
    /// Log-variances that start at the given weights (`s_i = -ln w_i`).
    pub fn new(weights: &[f64]) -> Self {
        let n = weights.len();
        Self {
            log_vars: weights.iter().map(|w| -w.max(1e-12).ln()).collect(),
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    /// One Adam step (betas 0.9, 0.999) on `s` from the step's mean task losses. Every worker
    /// takes it from the same all-reduced losses, so the log-variances stay identical: they
    /// are all-reduced parameters whose gradient is a function of reduced values.
    pub fn step(&mut self, losses: &[f64], lr: f64) {
        let g = uwl_grad(&self.log_vars, losses);
        self.t += 1;
        let (b1, b2) = (0.9f64, 0.999f64);
        let (c1, c2) = (1.0 - b1.powi(self.t as i32), 1.0 - b2.powi(self.t as i32));
        let slots = self.log_vars.iter_mut().zip(&mut self.m).zip(&mut self.v);
        for (((s, m), v), g) in slots.zip(g) {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *s -= lr * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
        }
    }
}

/// What a job remembers about its weighting, checkpointed with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct WeightingState {
    /// The weights in force, in target order.
    pub weights: Vec<f64>,
    /// GradNorm's `L_i(0)`: the task losses of the job's first step.
    #[serde(default)]
    pub initial_losses: Option<Vec<f64>>,
    /// Mean task losses of each completed epoch (DWA reads the last two).
    #[serde(default)]
    pub epoch_losses: Vec<Vec<f64>>,
    /// UWL's learned state.
    #[serde(default)]
    pub uwl: Option<UwlState>,
    /// GradNorm every N steps: the open window's sums.
    #[serde(default)]
    pub window: StepWindow,
}

/// Sums over the steps since GradNorm's last step-level update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StepWindow {
    /// Per task, the sum of the steps' mean losses.
    pub loss_sums: Vec<f64>,
    /// Steps summed in `loss_sums`.
    pub steps: u64,
    /// Per task, the sum of the sampled steps' `G_i`.
    pub grad_norm_sums: Vec<f64>,
    /// Sampled steps summed in `grad_norm_sums`.
    pub samples: u64,
}

/// Whether weights are updated on the workers as training goes (UWL every step, GradNorm
/// every `gradnorm_update_every` steps) rather than at epoch ends.
pub fn learned_on_workers(spec: &LossSpec) -> bool {
    spec.weighting == Weighting::Uwl
        || (spec.weighting == Weighting::Gradnorm && spec.gradnorm_update_every > 0)
}

impl WeightingState {
    /// The state at the start of a job with `initial` weights.
    pub fn new(strategy: Weighting, initial: &[f32]) -> Self {
        let weights: Vec<f64> = initial.iter().map(|&w| f64::from(w)).collect();
        let uwl = (strategy == Weighting::Uwl).then(|| UwlState::new(&weights));
        Self {
            weights,
            initial_losses: None,
            epoch_losses: Vec::new(),
            uwl,
            window: StepWindow::default(),
        }
    }

    /// After a step, with its (global) mean task losses and, on sampled steps, its GradNorm
    /// statistics: the step-level GradNorm update every `gradnorm_update_every` steps. Returns
    /// whether the weights changed.
    pub fn after_step(
        &mut self,
        spec: &LossSpec,
        step: u64,
        losses: &[f64],
        grad_norms: Option<&[f64]>,
    ) -> bool {
        if spec.weighting != Weighting::Gradnorm || spec.gradnorm_update_every == 0 {
            return false;
        }
        let t = self.weights.len();
        let w = &mut self.window;
        if w.loss_sums.len() != t {
            *w = StepWindow {
                loss_sums: vec![0.0; t],
                grad_norm_sums: vec![0.0; t],
                ..StepWindow::default()
            };
        }
        w.loss_sums
            .iter_mut()
            .zip(losses)
            .for_each(|(s, l)| *s += l);
        w.steps += 1;
        if let Some(g) = grad_norms {
            w.grad_norm_sums
                .iter_mut()
                .zip(g)
                .for_each(|(s, x)| *s += x);
            w.samples += 1;
        }
        if !step.is_multiple_of(spec.gradnorm_update_every as u64) || w.samples == 0 {
            return false;
        }
        let mean = |v: &[f64], n: u64| -> Vec<f64> { v.iter().map(|x| x / n as f64).collect() };
        let (losses, norms) = (
            mean(&w.loss_sums, w.steps),
            mean(&w.grad_norm_sums, w.samples),
        );
        self.window = StepWindow::default();
        let Some(l0) = &self.initial_losses else {
            return false;
        };
        self.weights = gradnorm_update(
            &self.weights,
            &losses,
            l0,
            &norms,
            spec.gradnorm_alpha,
            spec.gradnorm_lr,
        );
        true
    }

    /// Records an epoch's mean task losses (and, for GradNorm, its mean statistics) and returns
    /// the next epoch's weights under `spec`'s strategy. UWL's weights move per step, not here.
    pub fn end_epoch(
        &mut self,
        spec: &LossSpec,
        losses: &[f64],
        grad_norms: Option<&[f64]>,
    ) -> Vec<f64> {
        self.epoch_losses.push(losses.to_vec());
        if learned_on_workers(spec) {
            return self.weights.clone();
        }
        let next = match spec.weighting {
            Weighting::Fixed | Weighting::Uwl => self.weights.clone(),
            Weighting::Gradnorm => match (grad_norms, &self.initial_losses) {
                (Some(g), Some(l0)) if g.len() == self.weights.len() => gradnorm_update(
                    &self.weights,
                    losses,
                    l0,
                    g,
                    spec.gradnorm_alpha,
                    spec.gradnorm_lr,
                ),
                _ => self.weights.clone(),
            },
            Weighting::Dwa => match self.epoch_losses.as_slice() {
                [.., before, last] => dwa_weights(last, before, spec.dwa_temperature),
                _ => self.weights.clone(),
            },
        };
        self.weights = next.clone();
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn gradnorm_matches_a_hand_computed_step() {
        // Two tasks, equal loss ratios (r = 1): targets are the mean norm 2.0.
        // Task 0: G = 3 > 2: log w -= 0.1 * 3/2; task 1: G = 1 < 2: log w += 0.1 * 1/2.
        let w = gradnorm_update(&[1.0, 1.0], &[0.5, 0.5], &[1.0, 1.0], &[3.0, 1.0], 1.5, 0.1);
        let (a, b) = ((-0.15f64).exp(), (0.05f64).exp());
        close(&w, &[2.0 * a / (a + b), 2.0 * b / (a + b)]);
        assert!(w[0] < 1.0 && w[1] > 1.0);
    }

    #[test]
    fn gradnorm_targets_follow_the_relative_inverse_training_rate() {
        // Equal norms, but task 1 trains slower (its loss ratio is higher): its target rises
        // above the mean, so its weight grows.
        let w = gradnorm_update(&[1.0, 1.0], &[0.2, 0.8], &[1.0, 1.0], &[1.0, 1.0], 1.0, 0.1);
        assert!(w[1] > w[0], "{w:?}");
        assert!((w.iter().sum::<f64>() - 2.0).abs() < 1e-12);
    }

    #[test]
    fn weights_stay_positive_under_extreme_settings() {
        let mut w = vec![1.0, 1.0, 1.0];
        for epoch in 0..50 {
            let g: Vec<f64> = w
                .iter()
                .zip([100.0, 1.0, 0.01])
                .map(|(w, g)| w * g)
                .collect();
            w = gradnorm_update(&w, &[0.1, 5.0, 1.0], &[1.0, 1.0, 1.0], &g, 3.0, 50.0);
            assert!(
                w.iter().all(|x| *x > 0.0 && x.is_finite()),
                "epoch {epoch}: {w:?}"
            );
            assert!((w.iter().sum::<f64>() - 3.0).abs() < 1e-9);
        }
    }

    #[test]
    fn gradnorm_shrinks_a_tenfold_gradient_imbalance() {
        // g: unweighted norms, task 0 ten times task 1; equal training rates.
        let g = [10.0, 1.0];
        let mut w = vec![1.0, 1.0];
        let mut ratios = Vec::new();
        for _ in 0..8 {
            let gn: Vec<f64> = w.iter().zip(g).map(|(w, g)| w * g).collect();
            ratios.push(gn[0] / gn[1]);
            w = gradnorm_update(&w, &[1.0, 1.0], &[1.0, 1.0], &gn, 1.5, 0.3);
        }
        // The imbalance shrinks epoch over epoch until it is within one step of balance, then
        // the sign step keeps it there (an L1 objective oscillates around its target).
        let gap: Vec<f64> = ratios.iter().map(|r| r.ln().abs()).collect();
        assert!(gap[..5].windows(2).all(|p| p[1] < p[0]), "{ratios:?}");
        assert!(gap[4..].iter().all(|g| *g < 0.6), "{ratios:?}");
    }

    #[test]
    fn step_level_gradnorm_updates_every_n_steps_from_window_means() {
        let spec = LossSpec {
            weighting: Weighting::Gradnorm,
            gradnorm_update_every: 2,
            gradnorm_lr: 0.1,
            ..LossSpec::default()
        };
        let mut st = WeightingState::new(Weighting::Gradnorm, &[1.0, 1.0]);
        st.initial_losses = Some(vec![1.0, 1.0]);
        assert!(!st.after_step(&spec, 1, &[0.5, 0.5], Some(&[4.0, 1.0])));
        assert!(st.after_step(&spec, 2, &[0.5, 0.5], Some(&[2.0, 1.0])));
        // Window means: losses (0.5, 0.5), norms (3, 1): the same as one epoch-level update.
        close(
            &st.weights,
            &gradnorm_update(&[1.0, 1.0], &[0.5, 0.5], &[1.0, 1.0], &[3.0, 1.0], 1.5, 0.1),
        );
        assert_eq!(st.window, StepWindow::default());
        // Epoch ends leave step-level weights alone.
        let w = st.weights.clone();
        assert_eq!(st.end_epoch(&spec, &[0.4, 0.4], Some(&[1.0, 1.0])), w);
    }

    #[test]
    fn dwa_matches_the_softmax_of_loss_ratios() {
        let w = dwa_weights(&[0.5, 0.9], &[1.0, 1.0], 2.0);
        let (a, b) = ((0.5f64 / 2.0).exp(), (0.9f64 / 2.0).exp());
        close(&w, &[2.0 * a / (a + b), 2.0 * b / (a + b)]);
        close(&dwa_weights(&[1.0; 3], &[2.0; 3], 2.0), &[1.0; 3]);
    }

    #[test]
    fn uwl_weights_and_gradients() {
        close(&uwl_weights(&[0.0, 2f64.ln()]), &[1.0, 0.5]);
        // d/ds (e^-s L + s) = 1 - e^-s L.
        close(&uwl_grad(&[0.0, 2f64.ln()], &[0.25, 1.0]), &[0.75, 0.5]);
    }
}
