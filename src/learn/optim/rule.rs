//! Per-coordinate update rules: SGD, AdaGrad, Adam, FTRL-Proximal and the
//! RMS-normalised constant rate the `auto` optimizer's candidates use.
//!
//! Each weight owns `Rule::slots()` floats of state (AdaGrad's sum of
//! squared gradients, Adam's two moments, FTRL's `z` and `n`, RMS's mean
//! square). The state lives in the trainer's working copy and in
//! snapshots, never in a published version: predict needs weights only.
//! Updates are sparse: only the coordinates an example touches move, so
//! L1/L2 act lazily on them.

/// Which update rule a set of weights learns with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Sgd,
    Adagrad,
    Adam,
    Ftrl,
    /// A constant rate on the gradient divided by its running root mean
    /// square (RMSprop without a decaying rate): it keeps adapting to
    /// change for as long as the stream runs, which AdaGrad's growing sum
    /// does not.
    Rms,
}

/// An update rule with its settings, ready to apply (rates in f32, as
/// the weights are).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    pub kind: RuleKind,
    pub learning_rate: f32,
    pub l1: f32,
    pub l2: f32,
}

impl RuleKind {
    /// The name a report shows (`kind` names in config for the shared ones).
    pub fn name(self) -> &'static str {
        match self {
            RuleKind::Sgd => "sgd",
            RuleKind::Adagrad => "adagrad",
            RuleKind::Adam => "adam",
            RuleKind::Ftrl => "ftrl",
            RuleKind::Rms => "rms",
        }
    }

    /// A stable number for snapshots.
    pub fn code(self) -> u8 {
        match self {
            RuleKind::Sgd => 0,
            RuleKind::Adagrad => 1,
            RuleKind::Adam => 2,
            RuleKind::Ftrl => 3,
            RuleKind::Rms => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        [
            RuleKind::Sgd,
            RuleKind::Adagrad,
            RuleKind::Adam,
            RuleKind::Ftrl,
            RuleKind::Rms,
        ]
        .into_iter()
        .find(|k| k.code() == code)
    }
}

const ADAGRAD_EPS: f32 = 1e-6;
const ADAM_BETA1: f32 = 0.9;
const ADAM_BETA2: f32 = 0.999;
const ADAM_EPS: f32 = 1e-8;
/// FTRL's beta: the per-coordinate rate starts at `alpha / beta`.
pub(super) const FTRL_BETA: f32 = 1.0;
/// RMS's memory of squared gradients: about the last 1,000 updates of a
/// coordinate.
const RMS_BETA: f32 = 0.999;
const RMS_EPS: f32 = 1e-6;

/// Where in its run an update happens: Adam's bias corrections for the
/// update count, worked out once per example rather than once per
/// coordinate (a `powi` per weight once took half of an AdaGrad step's
/// time, hoisted by the compiler out of the rule that needs it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// `1 - beta1^t` and `1 - beta2^t` (1 when no Adam rule runs).
    adam_c1: f32,
    adam_c2: f32,
}

impl Step {
    /// The `n`th update (from 1) of rules among which `adam` says whether
    /// one is Adam.
    pub fn new(n: u64, adam: bool) -> Self {
        if !adam {
            return Self {
                adam_c1: 1.0,
                adam_c2: 1.0,
            };
        }
        let t = n.min(i32::MAX as u64) as i32;
        Self {
            adam_c1: 1.0 - ADAM_BETA1.powi(t),
            adam_c2: 1.0 - ADAM_BETA2.powi(t),
        }
    }
}

impl Rule {
    /// The `n`th update of this rule.
    pub fn step(&self, n: u64) -> Step {
        Step::new(n, self.kind == RuleKind::Adam)
    }

    /// State floats per weight.
    pub fn slots(&self) -> usize {
        match self.kind {
            RuleKind::Sgd => 0,
            RuleKind::Adagrad | RuleKind::Rms => 1,
            RuleKind::Adam | RuleKind::Ftrl => 2,
        }
    }

    /// One step on one coordinate. `g` is the loss gradient for this
    /// weight; `step` is `self.step(n)` for the `n`th update (Adam's bias
    /// correction); `regularize` is false for intercepts.
    #[inline]
    pub fn update(&self, w: &mut f32, state: &mut [f32], g: f32, step: Step, regularize: bool) {
        self.update_inline(w, state, g, step, regularize)
    }

    /// `update`, always inlined: a caller that makes the kind a constant
    /// gets the one rule's code without the others (`auto`'s candidates).
    #[inline(always)]
    pub(super) fn update_inline(
        &self,
        w: &mut f32,
        state: &mut [f32],
        g: f32,
        step: Step,
        regularize: bool,
    ) {
        let lr = self.learning_rate;
        let (l1, l2) = if regularize {
            (self.l1, self.l2)
        } else {
            (0.0, 0.0)
        };
        match self.kind {
            RuleKind::Ftrl => {
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
                    RuleKind::Sgd => lr,
                    RuleKind::Adagrad => {
                        state[0] += g * g;
                        lr / (state[0].sqrt() + ADAGRAD_EPS)
                    }
                    RuleKind::Rms => {
                        // The first gradient seeds the mean square, so the
                        // first step is `lr` long rather than 30 times that.
                        state[0] = if state[0] == 0.0 {
                            g * g
                        } else {
                            RMS_BETA * state[0] + (1.0 - RMS_BETA) * g * g
                        };
                        lr / (state[0].sqrt() + RMS_EPS)
                    }
                    RuleKind::Adam => {
                        state[0] = ADAM_BETA1 * state[0] + (1.0 - ADAM_BETA1) * g;
                        state[1] = ADAM_BETA2 * state[1] + (1.0 - ADAM_BETA2) * g * g;
                        let m_hat = state[0] / step.adam_c1;
                        let v_hat = state[1] / step.adam_c2;
                        // Express Adam's step as a rate times g so L1 below
                        // shrinks by the same scale; guard g == 0.
                        let step_len = lr * m_hat / (v_hat.sqrt() + ADAM_EPS);
                        *w -= step_len;
                        if l1 > 0.0 {
                            *w = shrink(*w, lr * l1);
                        }
                        return;
                    }
                    RuleKind::Ftrl => unreachable!("handled above"),
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

    const ALL_KINDS: [RuleKind; 5] = [
        RuleKind::Sgd,
        RuleKind::Adagrad,
        RuleKind::Adam,
        RuleKind::Ftrl,
        RuleKind::Rms,
    ];

    fn cfg(kind: RuleKind) -> Rule {
        Rule {
            kind,
            learning_rate: 0.1,
            l1: 0.0,
            l2: 0.0,
        }
    }

    /// Minimises (w - 3)^2 / 2 with each optimizer from w = 0.
    fn converges(c: Rule, steps: u64) -> f32 {
        let mut w = 0.0;
        let mut state = vec![0.0; c.slots()];
        for t in 1..=steps {
            let g = w - 3.0;
            c.update(&mut w, &mut state, g, c.step(t), true);
        }
        w
    }

    #[test]
    fn every_optimizer_descends_a_quadratic() {
        for (kind, steps) in [
            (RuleKind::Sgd, 200),
            (RuleKind::Adagrad, 5000),
            (RuleKind::Adam, 5000),
            (RuleKind::Ftrl, 5000),
            (RuleKind::Rms, 5000),
        ] {
            let mut c = cfg(kind);
            if kind != RuleKind::Sgd {
                c.learning_rate = 1.0;
            }
            let w = converges(c, steps);
            assert!((w - 3.0).abs() < 0.05, "{kind:?} ended at {w}");
        }
    }

    #[test]
    fn zero_gradient_leaves_weight_alone() {
        for kind in ALL_KINDS {
            let c = cfg(kind);
            let mut w = 0.5;
            let mut state = vec![0.0; c.slots()];
            if kind == RuleKind::Ftrl {
                // FTRL keeps its weight in z: w = -z * alpha / beta.
                state[0] = -0.5 * FTRL_BETA / c.learning_rate;
            }
            c.update(&mut w, &mut state, 0.0, c.step(1), true);
            assert!((w - 0.5).abs() < 1e-6, "{kind:?} moved to {w}");
        }
    }

    #[test]
    fn l1_shrinks_weights_and_zeroes_small_ones() {
        for kind in ALL_KINDS {
            let mut c = cfg(kind);
            if kind != RuleKind::Sgd {
                c.learning_rate = 1.0;
            }
            // FTRL's L1 weighs against the accumulated loss, so its pull
            // shows early in a run; the others shrink at every step.
            let steps = if kind == RuleKind::Ftrl { 50 } else { 3000 };
            let plain = converges(c, steps);
            c.l1 = if kind == RuleKind::Ftrl { 30.0 } else { 0.5 };
            let shrunk = converges(c, steps);
            assert!(
                shrunk > 0.0 && shrunk < plain - 0.01,
                "{kind:?}: {shrunk} vs {plain}"
            );
            c.l1 = if kind == RuleKind::Ftrl { 1e6 } else { 10.0 };
            assert_eq!(
                converges(c, 3000),
                0.0,
                "{kind:?}: strong L1 zeroes the weight"
            );
        }
    }
}
