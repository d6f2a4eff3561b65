//! Per-coordinate optimizers: SGD, AdaGrad, Adam and FTRL-Proximal.
//!
//! Each weight owns `Optimizer::slots()` floats of state (AdaGrad's sum of
//! squared gradients, Adam's two moments, FTRL's `z` and `n`). The state
//! lives in the trainer's working copy and in snapshots, never in a
//! published version: predict needs weights only. Updates are sparse: only
//! the coordinates an example touches move, so L1/L2 act lazily on them.

use serde::{Deserialize, Serialize};

/// Which update rule; see the README for why AdaGrad is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adagrad,
    Adam,
    Ftrl,
}

/// The `[models.optimizer]` table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    #[serde(default = "default_kind")]
    pub kind: OptimizerKind,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default)]
    pub l1: f64,
    #[serde(default)]
    pub l2: f64,
}

fn default_kind() -> OptimizerKind {
    OptimizerKind::Adagrad
}

fn default_learning_rate() -> f64 {
    0.8
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: default_kind(),
            learning_rate: default_learning_rate(),
            l1: 0.0,
            l2: 0.0,
        }
    }
}

const ADAGRAD_EPS: f32 = 1e-6;
const ADAM_BETA1: f32 = 0.9;
const ADAM_BETA2: f32 = 0.999;
const ADAM_EPS: f32 = 1e-8;
/// FTRL's beta: the per-coordinate rate starts at `alpha / beta`.
const FTRL_BETA: f32 = 1.0;

impl OptimizerConfig {
    /// State floats per weight.
    pub fn slots(&self) -> usize {
        match self.kind {
            OptimizerKind::Sgd => 0,
            OptimizerKind::Adagrad => 1,
            OptimizerKind::Adam | OptimizerKind::Ftrl => 2,
        }
    }

    /// One step on one coordinate. `g` is the loss gradient for this
    /// weight; `step` counts updates so far (from 1), for Adam's bias
    /// correction; `regularize` is false for intercepts.
    #[inline]
    pub fn update(&self, w: &mut f32, state: &mut [f32], g: f32, step: u64, regularize: bool) {
        let lr = self.learning_rate as f32;
        let (l1, l2) = if regularize {
            (self.l1 as f32, self.l2 as f32)
        } else {
            (0.0, 0.0)
        };
        match self.kind {
            OptimizerKind::Ftrl => {
                let (z, n) = (state[0], state[1]);
                let n_new = n + g * g;
                let sigma = (n_new.sqrt() - n.sqrt()) / lr;
                let z_new = z + g - sigma * *w;
                state[0] = z_new;
                state[1] = n_new;
                *w = if z_new.abs() <= l1 {
                    0.0
                } else {
                    -(z_new - z_new.signum() * l1) / ((FTRL_BETA + n_new.sqrt()) / lr + l2)
                };
            }
            kind => {
                let g = g + l2 * *w;
                let rate = match kind {
                    OptimizerKind::Sgd => lr,
                    OptimizerKind::Adagrad => {
                        state[0] += g * g;
                        lr / (state[0].sqrt() + ADAGRAD_EPS)
                    }
                    OptimizerKind::Adam => {
                        state[0] = ADAM_BETA1 * state[0] + (1.0 - ADAM_BETA1) * g;
                        state[1] = ADAM_BETA2 * state[1] + (1.0 - ADAM_BETA2) * g * g;
                        let t = step.min(i32::MAX as u64) as i32;
                        let m_hat = state[0] / (1.0 - ADAM_BETA1.powi(t));
                        let v_hat = state[1] / (1.0 - ADAM_BETA2.powi(t));
                        // Express Adam's step as a rate times g so L1 below
                        // shrinks by the same scale; guard g == 0.
                        let step_len = lr * m_hat / (v_hat.sqrt() + ADAM_EPS);
                        *w -= step_len;
                        if l1 > 0.0 {
                            *w = shrink(*w, lr * l1);
                        }
                        return;
                    }
                    OptimizerKind::Ftrl => unreachable!("handled above"),
                };
                *w -= rate * g;
                if l1 > 0.0 {
                    *w = shrink(*w, rate * l1);
                }
            }
        }
    }
}

/// Soft thresholding: the proximal step of L1.
fn shrink(w: f32, by: f32) -> f32 {
    w.signum() * (w.abs() - by).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: OptimizerKind) -> OptimizerConfig {
        OptimizerConfig {
            kind,
            learning_rate: 0.1,
            l1: 0.0,
            l2: 0.0,
        }
    }

    /// Minimises (w - 3)^2 / 2 with each optimizer from w = 0.
    fn converges(c: OptimizerConfig, steps: u64) -> f32 {
        let mut w = 0.0;
        let mut state = vec![0.0; c.slots()];
        for t in 1..=steps {
            let g = w - 3.0;
            c.update(&mut w, &mut state, g, t, true);
        }
        w
    }

    #[test]
    fn every_optimizer_descends_a_quadratic() {
        for (kind, steps) in [
            (OptimizerKind::Sgd, 200),
            (OptimizerKind::Adagrad, 5000),
            (OptimizerKind::Adam, 5000),
            (OptimizerKind::Ftrl, 5000),
        ] {
            let mut c = cfg(kind);
            if kind != OptimizerKind::Sgd {
                c.learning_rate = 1.0;
            }
            let w = converges(c, steps);
            assert!((w - 3.0).abs() < 0.05, "{kind:?} ended at {w}");
        }
    }

    #[test]
    fn zero_gradient_leaves_weight_alone() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adagrad,
            OptimizerKind::Adam,
            OptimizerKind::Ftrl,
        ] {
            let c = cfg(kind);
            let mut w = 0.5;
            let mut state = vec![0.0; c.slots()];
            if kind == OptimizerKind::Ftrl {
                // FTRL keeps its weight in z: w = -z * alpha / beta.
                state[0] = -0.5 * FTRL_BETA / c.learning_rate as f32;
            }
            c.update(&mut w, &mut state, 0.0, 1, true);
            assert!((w - 0.5).abs() < 1e-6, "{kind:?} moved to {w}");
        }
    }

    #[test]
    fn l1_shrinks_weights_and_zeroes_small_ones() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adagrad,
            OptimizerKind::Adam,
            OptimizerKind::Ftrl,
        ] {
            let mut c = cfg(kind);
            if kind != OptimizerKind::Sgd {
                c.learning_rate = 1.0;
            }
            // FTRL's L1 weighs against the accumulated loss, so its pull
            // shows early in a run; the others shrink at every step.
            let steps = if kind == OptimizerKind::Ftrl {
                50
            } else {
                3000
            };
            let plain = converges(c, steps);
            c.l1 = if kind == OptimizerKind::Ftrl {
                30.0
            } else {
                0.5
            };
            let shrunk = converges(c, steps);
            assert!(
                shrunk > 0.0 && shrunk < plain - 0.01,
                "{kind:?}: {shrunk} vs {plain}"
            );
            c.l1 = if kind == OptimizerKind::Ftrl {
                1e6
            } else {
                10.0
            };
            assert_eq!(
                converges(c, 3000),
                0.0,
                "{kind:?}: strong L1 zeroes the weight"
            );
        }
    }
}
