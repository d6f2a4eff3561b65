//! The linear model family on hashed features: logistic regression
//! (binary), softmax regression (multiclass) and linear regression (squared
//! loss), each with an intercept.
//!
//! Learning is scale-robust without tuning: numeric features are
//! standardised online (running mean and variance per hashed row, updated
//! before each step, as River's `StandardScaler` in front of a linear
//! model), and regression targets are standardised the same way so the
//! intercept does not have to crawl to the target's mean. That state is
//! part of `Params`, so every published version predicts with the
//! statistics it was trained with.
//!
//! `Params` is what predict reads (immutable once published); `Learner`
//! owns a working copy plus optimizer state and is what trainers mutate.
//! With the `auto` optimizer the working copy's weights are the
//! combination of its candidates' (`optim::AutoState`), kept exact row by
//! row as they learn.

use std::sync::Arc;

use ndarray::Array2;

use super::blocked::Blocked;
use super::eval::Scored;
use super::features::{FeatureHasher, FeatureVec};
use super::label::{LabelSpace, Target, TaskKind};
use super::mlp::{Net, NetLearner, NetState};
use super::optim::{AutoState, MixtureWeight, OptimizerConfig, Rule};

/// Largest standardised input magnitude the model sees (a million standard
/// deviations: no real feature gets there, and it keeps sums finite).
pub const MAX_Z: f64 = 1e6;

/// Largest regression label magnitude accepted; beyond it the squared
/// deviations of the target statistics could overflow.
pub const MAX_TARGET: f64 = 1e15;

/// Running count, mean and sum of squared deviations (Welford), with the
/// inverse standard deviation kept up to date so that standardising an
/// input (every predict and score) is a subtraction and a product.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: f64,
    pub mean: f64,
    pub m2: f64,
    /// `1 / std`, or 0 while the spread is unknown.
    inv_std: f64,
}

impl Moments {
    /// Rebuilds from saved count, mean and M2.
    pub fn from_parts(n: f64, mean: f64, m2: f64) -> Self {
        let mut m = Self {
            n,
            mean,
            m2,
            inv_std: 0.0,
        };
        m.inv_std = m.inverse_std();
        m
    }

    /// Whether the spread is known: a variance above 1e-24 (written
    /// without the division, as both `std` and `inverse_std` test it).
    #[inline]
    fn spread_known(&self) -> bool {
        self.n > 0.0 && self.m2 > 1e-24 * self.n
    }

    /// `1 / std` as `sqrt(n / M2)` (one division and one root: this runs
    /// for every numeric feature of every example learned), or 0 while the
    /// spread is unknown.
    #[inline]
    fn inverse_std(&self) -> f64 {
        if self.spread_known() {
            (self.n / self.m2).sqrt()
        } else {
            0.0
        }
    }

    #[inline]
    pub fn push(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.n += 1.0;
        let d = x - self.mean;
        self.mean += d / self.n;
        self.m2 += d * (x - self.mean);
        self.inv_std = self.inverse_std();
    }

    /// Population standard deviation, or `None` before two distinct values.
    #[inline]
    pub fn std(&self) -> Option<f64> {
        self.spread_known().then(|| (self.m2 / self.n).sqrt())
    }

    /// `(x - mean) / std`, and 0 while the spread is unknown. Computed in
    /// f64 and clamped to `MAX_Z` so that a wild but finite input cannot
    /// become an infinity (and then a NaN) in the f32 model.
    #[inline]
    pub fn standardise(&self, x: f64) -> f32 {
        ((x - self.mean) * self.inv_std).clamp(-MAX_Z, MAX_Z) as f32
    }
}

/// Everything a prediction needs. Cheap to clone: weights and feature
/// statistics are copy-on-write blocks shared between versions.
#[derive(Debug, Clone)]
pub struct Params {
    pub space: Arc<LabelSpace>,
    pub hash_bits: u8,
    /// `2^hash_bits x outputs`.
    pub weights: Blocked<f32>,
    /// One intercept per output.
    pub bias: Vec<f32>,
    /// Per hashed row: statistics of the numeric feature(s) hashed there.
    pub scaler: Blocked<Moments>,
    /// Regression only: statistics of the target.
    pub target: Moments,
    /// The `mlp` family's network (`learn::mlp`), whose output adds to the
    /// weights above; `None` for the linear family.
    pub net: Option<Net>,
    /// With the `auto` optimizer: the candidates and their weights in the
    /// combination these weights are (for reports; predict does not read
    /// it).
    pub mixture: Option<Arc<[MixtureWeight]>>,
}

/// A model output.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Class probabilities, summing to 1, in class order.
    Probabilities(Vec<f32>),
    Value(f64),
}

impl Output {
    /// Index of the most probable class (ties: the lowest index).
    pub fn argmax(&self) -> Option<usize> {
        match self {
            Output::Probabilities(p) => {
                let mut best = 0;
                for (k, v) in p.iter().enumerate() {
                    if *v > p[best] {
                        best = k;
                    }
                }
                Some(best)
            }
            Output::Value(_) => None,
        }
    }
}

impl Params {
    pub fn new(space: Arc<LabelSpace>, hash_bits: u8) -> Self {
        let rows = FeatureHasher::new(hash_bits).rows();
        let outputs = space.outputs();
        Self {
            space,
            hash_bits,
            weights: Blocked::new(rows, outputs),
            bias: vec![0.0; outputs],
            scaler: Blocked::new(rows, 1),
            target: Moments::default(),
            net: None,
            mixture: None,
        }
    }

    pub fn hasher(&self) -> FeatureHasher {
        FeatureHasher::new(self.hash_bits)
    }

    pub fn outputs(&self) -> usize {
        self.bias.len()
    }

    /// Raw scores (logits, or the standardised regression value).
    fn scores(&self, x: &FeatureVec, out: &mut [f32]) {
        out.copy_from_slice(&self.bias);
        for f in &x.features {
            let r = f.index as usize;
            let v = self.input(f.index, f.value, f.numeric);
            if v == 0.0 {
                continue;
            }
            if let [o] = out {
                *o += self.weights.at(r, 0) * v;
            } else {
                let w = self.weights.row(r);
                for (o, wk) in out.iter_mut().zip(w.iter()) {
                    *o += wk * v;
                }
            }
        }
    }

    /// The value the model sees for one feature.
    #[inline]
    fn input(&self, row: u32, value: f64, numeric: bool) -> f32 {
        if numeric {
            self.scaler.at(row as usize, 0).standardise(value)
        } else {
            value as f32
        }
    }

    pub fn predict(&self, x: &FeatureVec) -> Output {
        if let Some(net) = &self.net {
            return net.predict(self, x);
        }
        let mut z = [0.0f32; 1];
        match self.space.kind() {
            TaskKind::Binary => {
                self.scores(x, &mut z);
                let p = sigmoid(z[0]);
                Output::Probabilities(vec![1.0 - p, p])
            }
            TaskKind::Regression => {
                self.scores(x, &mut z);
                Output::Value(self.target_value(z[0]))
            }
            TaskKind::Multiclass => {
                let mut z = vec![0.0; self.outputs()];
                self.scores(x, &mut z);
                softmax(&mut z);
                Output::Probabilities(z)
            }
        }
    }

    /// Scores one labelled example; the same outcome as scoring
    /// `predict`'s output, without allocating for binary and regression
    /// models (the monitor scores every example this way).
    pub fn score(&self, x: &FeatureVec, y: Target) -> Scored {
        if let Some(net) = &self.net {
            return net.score(self, x, y);
        }
        self.score_one_output(y, |z| self.scores(x, z))
            .unwrap_or_else(|| Scored::of(&self.predict(x), y))
    }

    /// The score of a binary or regression model from its one raw output,
    /// which `raw` computes; `None` for other tasks (or a target of the
    /// wrong kind), which score `predict`'s output instead. Both families
    /// score through it.
    #[inline]
    pub(crate) fn score_one_output(
        &self,
        y: Target,
        raw: impl FnOnce(&mut [f32; 1]),
    ) -> Option<Scored> {
        let mut z = [0.0f32; 1];
        match (self.space.kind(), y) {
            (TaskKind::Binary, Target::Class(c)) => {
                raw(&mut z);
                let p1 = sigmoid(z[0]);
                let p0 = 1.0 - p1;
                let (p_true, correct) = if c == 1 {
                    (p1, p1 > p0)
                } else {
                    (p0, p0 >= p1)
                };
                Some(Scored::class_f32(correct, p_true))
            }
            (TaskKind::Regression, Target::Value(t)) => {
                raw(&mut z);
                Some(Scored::value(self.target_value(z[0]) - t))
            }
            _ => None,
        }
    }

    pub(crate) fn target_scale(&self) -> (f64, f64) {
        (self.target.mean, self.target.std().unwrap_or(1.0))
    }

    pub(crate) fn target_value(&self, z: f32) -> f64 {
        let (mean, sd) = self.target_scale();
        mean + sd * z as f64
    }
}

#[inline]
pub fn sigmoid(z: f32) -> f32 {
    if z.is_nan() {
        return 0.5;
    }
    1.0 / (1.0 + (-z).exp())
}

/// In place, numerically stable; non-finite scores are clamped first so the
/// result is always a distribution.
pub fn softmax(z: &mut [f32]) {
    for v in z.iter_mut() {
        *v = if v.is_nan() {
            0.0
        } else {
            v.clamp(-1e30, 1e30)
        };
    }
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in z.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in z.iter_mut() {
        *v /= sum;
    }
}

/// Optimizer state, never published: only the trainer and snapshots see it.
#[derive(Debug, Clone)]
pub struct OptimState {
    /// `2^hash_bits x (outputs * slots)`, copy-on-write like the weights,
    /// so a checkpoint of the learner (the monitor keeps some) is cheap.
    pub weights: Blocked<f32>,
    /// `outputs x slots`.
    pub bias: Array2<f32>,
    /// Examples learned so far (Adam's bias correction counts them).
    pub steps: u64,
    /// The `auto` optimizer's candidates and mixture (then `weights` and
    /// `bias` above have no columns).
    pub auto: Option<AutoState>,
}

/// What the gradient is taken against: a class, or the standardised
/// regression target.
#[derive(Debug, Clone, Copy)]
enum Truth {
    Class(usize),
    Value(f32),
}

/// A trainer's private model: parameters plus optimizer state.
#[derive(Debug, Clone)]
pub struct Learner {
    params: Params,
    optimizer: OptimizerConfig,
    /// The update rule of an explicit kind (`None` with `auto`).
    rule: Option<Rule>,
    state: OptimState,
    /// Scratch for the standardised inputs of one example.
    inputs: Vec<(usize, f32)>,

    scores: Vec<f32>,
    /// The network's update state when `params.net` is set (the `mlp`
    /// family learns through it, not through `optimizer`).
    net: Option<NetLearner>,
}

impl Learner {
    /// A learner starting from `params` with fresh optimizer state (with
    /// `auto`, every candidate starts from `params`' weights).
    pub fn new(params: Params, optimizer: OptimizerConfig) -> Self {
        let slots = optimizer.slots();
        let outputs = params.outputs();
        let state = OptimState {
            weights: Blocked::new(params.weights.rows(), outputs * slots),
            bias: Array2::zeros((outputs, slots)),
            steps: 0,
            auto: None,
        };
        Self::with_state(params, optimizer, state)
    }

    /// Resumes from saved state; the caller checks the shapes match.
    /// With `auto`, saved candidates are kept when they are the ones this
    /// build runs (their L1 and L2 taken from `optimizer`), and started
    /// afresh from `params` otherwise; without `auto`, candidates are
    /// dropped.
    pub fn with_state(
        mut params: Params,
        optimizer: OptimizerConfig,
        mut state: OptimState,
    ) -> Self {
        let outputs = params.outputs();
        let net = params
            .net
            .as_ref()
            .map(|n| NetLearner::new(NetState::new(n, params.weights.rows(), outputs)));
        let rule = optimizer.rule();
        // A network takes its own constant normalised steps: the
        // optimizer's candidates are the linear family's.
        if rule.is_some() || net.is_some() {
            state.auto = None;
            params.mixture = None;
        } else {
            let rules = optimizer.candidates();
            let mut auto = match state.auto.take() {
                Some(a) if a.runs(&rules) => a,
                _ => AutoState::starting_from(&rules, &params.weights, &params.bias),
            };
            auto.set_regularization(optimizer.l1 as f32, optimizer.l2 as f32);
            params.mixture = Some(auto.weights().into());
            state.auto = Some(auto);
        }
        Self {
            params,
            optimizer,
            rule,
            state,
            inputs: Vec::new(),

            scores: vec![0.0; outputs],
            net,
        }
    }

    /// The network's update state (`mlp` family only).
    pub fn net_state(&self) -> Option<&NetState> {
        self.net.as_ref().map(|n| n.state())
    }

    /// Resumes the network's update state; false (and nothing changed)
    /// unless this learner has a network that `state` fits.
    pub fn set_net_state(&mut self, state: NetState) -> bool {
        let p = &self.params;
        match &p.net {
            Some(n) if state.fits(n, p.weights.rows(), p.outputs()) => {
                self.net = Some(NetLearner::new(state));
                true
            }
            _ => false,
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }

    pub fn state(&self) -> &OptimState {
        &self.state
    }

    pub fn optimizer(&self) -> &OptimizerConfig {
        &self.optimizer
    }

    /// One test-free update on one example.
    pub fn learn_one(&mut self, x: &FeatureVec, y: Target) {
        if let Some(net) = &mut self.net {
            return net.learn_one(&mut self.params, x, y);
        }
        let p = &mut self.params;
        // Statistics first, so the step sees the same scale the next
        // prediction will.
        for f in &x.features {
            if f.numeric {
                p.scaler.row_mut(f.index as usize)[0].push(f.value);
            }
        }
        self.inputs.clear();
        for f in &x.features {
            let v = p.input(f.index, f.value, f.numeric);
            if v != 0.0 {
                self.inputs.push((f.index as usize, v));
            }
        }
        let truth = match (p.space.kind(), y) {
            (TaskKind::Binary | TaskKind::Multiclass, Target::Class(c)) => Truth::Class(c),
            (TaskKind::Regression, Target::Value(v)) => {
                p.target.push(v);
                let (mean, sd) = p.target_scale();
                Truth::Value(((v - mean) / sd) as f32)
            }
            // The label space validated the target; a mismatch is a bug in
            // the caller, and learning nothing is the safe answer.
            _ => return,
        };
        match self.rule {
            Some(rule) => self.learn_with(rule, truth),
            None => self.learn_auto(truth),
        }
    }

    /// An explicit kind's step: one rule on the published weights.
    fn learn_with(&mut self, rule: Rule, truth: Truth) {
        let p = &mut self.params;
        let z = &mut self.scores;
        z.copy_from_slice(&p.bias);
        for (r, v) in &self.inputs {
            for (o, wk) in z.iter_mut().zip(p.weights.row(*r).iter()) {
                *o += wk * v;
            }
        }
        // z becomes the loss gradient with respect to each output. A
        // diverged or overflowing step would poison every later version;
        // skip the example instead.
        if !gradient(p.space.kind(), truth, z) {
            return;
        }
        self.state.steps += 1;
        let step = rule.step(self.state.steps);
        let slots = rule.slots();
        for (r, v) in &self.inputs {
            let mut w = p.weights.row_mut(*r);
            let mut s = self.state.weights.row_mut(*r);
            let s = s.as_slice_mut().expect("state rows are contiguous");
            for (k, g) in z.iter().enumerate() {
                rule.update(
                    &mut w[k],
                    &mut s[k * slots..(k + 1) * slots],
                    g * v,
                    step,
                    true,
                );
            }
        }
        for (k, g) in z.iter().enumerate() {
            let mut s = self.state.bias.row_mut(k);
            let s = s.as_slice_mut().expect("state rows are contiguous");
            rule.update(&mut p.bias[k], s, *g, step, false);
        }
    }

    /// `auto`'s step: every candidate scores the example (its loss goes
    /// to the mixture) and learns it; then the rows it touched are
    /// combined again, or every active row when the mixture weights move.
    fn learn_auto(&mut self, truth: Truth) {
        let Some(auto) = self.state.auto.as_mut() else {
            return;
        };
        self.state.steps += 1;
        let p = &mut self.params;
        let kind = p.space.kind();
        let moved = auto.learn(
            &self.inputs,
            self.state.steps,
            |z| gradient(kind, truth, z).then(|| loss_of(truth, z)),
            &mut p.weights,
            &mut p.bias,
        );
        if moved {
            p.mixture = Some(auto.weights().into());
        }
    }
}

/// Turns raw scores `z` into the loss gradient with respect to each
/// output, in place; false when it is not finite.
#[inline]
fn gradient(kind: TaskKind, truth: Truth, z: &mut [f32]) -> bool {
    match (kind, truth) {
        (TaskKind::Binary, Truth::Class(c)) => z[0] = sigmoid(z[0]) - c as f32,
        (TaskKind::Multiclass, Truth::Class(c)) => {
            softmax(z);
            z[c] -= 1.0;
        }
        (TaskKind::Regression, Truth::Value(t)) => z[0] -= t,
        _ => return false,
    }
    z.iter().all(|g| g.is_finite())
}

/// The example's loss for `auto`'s mixture, from its gradient: for
/// classes a mistake (1 when another class is more probable than the
/// true one, 1/2 on a tie), for regression half the squared standardised
/// error. Mixing by mistakes (Hedge, the weighted majority) aims the
/// mixture at accuracy, what a classifier is judged by: mixing by log
/// loss picked a well calibrated but less accurate candidate on streams a
/// linear model cannot fit (a disc in the plane, Agrawal's function 3).
#[inline]
fn loss_of(truth: Truth, g: &[f32]) -> f64 {
    let verdict = |truth_p: f32, other_p: f32| match other_p.partial_cmp(&truth_p) {
        Some(std::cmp::Ordering::Greater) => 1.0,
        Some(std::cmp::Ordering::Equal) => 0.5,
        _ => 0.0,
    };
    match truth {
        // Binary: the gradient is p - c, so the true class's probability
        // is 1 - |g| and the other one's |g|.
        Truth::Class(_) if g.len() == 1 => verdict(1.0 - g[0].abs(), g[0].abs()),
        // Multiclass: g[k] is p_k, except g[c] = p_c - 1.
        Truth::Class(c) => {
            let truth_p = g[c] + 1.0;
            let other = g
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != c)
                .map(|(_, p)| *p)
                .fold(0.0f32, f32::max);
            verdict(truth_p, other)
        }
        Truth::Value(_) => 0.5 * f64::from(g[0]) * f64::from(g[0]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::features::RawFeatures;
    use crate::learn::optim::OptimizerKind;

    #[test]
    fn the_mixture_counts_mistakes_for_classes_and_squared_error_otherwise() {
        // Binary: the gradient is p - c.
        let binary = |p: f32, c: usize| loss_of(Truth::Class(c), &[p - c as f32]);
        assert_eq!(
            (binary(0.8, 1), binary(0.3, 1), binary(0.5, 1)),
            (0.0, 1.0, 0.5)
        );
        assert_eq!((binary(0.2, 0), binary(0.9, 0)), (0.0, 1.0));
        // Multiclass: probabilities with 1 taken off the true class.
        let multi = |p: [f32; 3], c: usize| {
            let mut g = p;
            g[c] -= 1.0;
            loss_of(Truth::Class(c), &g)
        };
        assert_eq!(multi([0.5, 0.3, 0.2], 0), 0.0);
        assert_eq!(multi([0.5, 0.3, 0.2], 2), 1.0);
        assert_eq!(multi([0.375, 0.375, 0.25], 1), 0.5);
        assert_eq!(loss_of(Truth::Value(0.0), &[2.0]), 2.0);
    }

    #[test]
    fn moments_know_the_spread_exactly_when_std_does() {
        let mut m = Moments::default();
        assert_eq!((m.std(), m.standardise(3.0)), (None, 0.0));
        m.push(2.0);
        m.push(2.0);
        assert_eq!((m.std(), m.standardise(3.0)), (None, 0.0), "no spread yet");
        m.push(f64::NAN);
        assert_eq!(m.n, 2.0, "non-finite values are not counted");
        m.push(4.0);
        let sd = m.std().unwrap();
        assert!((sd - (8.0f64 / 9.0).sqrt()).abs() < 1e-12);
        assert!((f64::from(m.standardise(4.0)) - (4.0 - m.mean) / sd).abs() < 1e-6);
        // Around the variance threshold both agree, whatever the rounding
        // of m2 / n (they share `spread_known`; this guards that they keep
        // sharing one test: a split once let std() say None while 1/std
        // was 1e12).
        for n in [1.0, 3.0, 675_770.0, 1e12] {
            for scale in [0.999_999, 1.0, 1.000_001] {
                let m = Moments::from_parts(n, 0.0, 1e-24 * n * scale);
                assert_eq!(m.std().is_some(), m.inv_std > 0.0, "n {n}, scale {scale}");
            }
        }
        let restored = Moments::from_parts(0.0, 0.0, 0.0);
        assert_eq!((restored.std(), restored.inv_std), (None, 0.0));
    }

    fn learner(kind: TaskKind, classes: &[&str]) -> Learner {
        let space = LabelSpace::new(kind, classes.iter().map(|s| s.to_string()).collect()).unwrap();
        Learner::new(Params::new(Arc::new(space), 12), OptimizerConfig::default())
    }

    fn x(json: &str) -> FeatureVec {
        let raw: RawFeatures = serde_json::from_str(json).unwrap();
        FeatureHasher::new(12).hash(&raw).unwrap()
    }

    #[test]
    fn fresh_models_are_uninformed() {
        let l = learner(TaskKind::Binary, &[]);
        assert_eq!(
            l.params().predict(&x(r#"{"a": 5}"#)),
            Output::Probabilities(vec![0.5, 0.5])
        );
        let l = learner(TaskKind::Multiclass, &["a", "b", "c", "d"]);
        assert_eq!(
            l.params().predict(&x(r#"{"a": 5}"#)),
            Output::Probabilities(vec![0.25; 4])
        );
    }

    #[test]
    fn logistic_learns_a_threshold_on_a_raw_scale() {
        let mut l = learner(TaskKind::Binary, &[]);
        // Feature on a scale of thousands: standardisation makes defaults work.
        for i in 0..2000 {
            let v = 1000.0 + (i % 100) as f64 * 10.0;
            let y = usize::from(v > 1500.0);
            l.learn_one(
                &x(&format!(r#"{{"v": {v}, "colour": "red"}}"#)),
                Target::Class(y),
            );
        }
        let p = |v: f64| {
            l.params()
                .predict(&x(&format!(r#"{{"v": {v}, "colour": "red"}}"#)))
                .argmax()
        };
        assert_eq!(p(1100.0), Some(0));
        assert_eq!(p(1900.0), Some(1));
    }

    #[test]
    fn softmax_probabilities_sum_to_one() {
        let mut l = learner(TaskKind::Multiclass, &["a", "b", "c"]);
        for i in 0..600 {
            let c = i % 3;
            l.learn_one(
                &x(&format!(r#"{{"k": "{c}", "noise": {}}}"#, i % 7)),
                Target::Class(c),
            );
        }
        for c in 0..3 {
            let out = l
                .params()
                .predict(&x(&format!(r#"{{"k": "{c}", "noise": 3}}"#)));
            let Output::Probabilities(p) = &out else {
                panic!("classification")
            };
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert_eq!(out.argmax(), Some(c));
        }
    }

    #[test]
    fn regression_finds_the_target_scale() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adagrad,
            OptimizerKind::Adam,
            OptimizerKind::Ftrl,
        ] {
            let mut l = learner(TaskKind::Regression, &[]);
            l.optimizer.kind = kind;
            l.optimizer.learning_rate = if kind == OptimizerKind::Sgd {
                0.01
            } else {
                0.1
            };
            l = Learner::new(l.params.clone(), l.optimizer);
            for i in 0..3000 {
                let a = (i % 50) as f64;
                l.learn_one(
                    &x(&format!(r#"{{"a": {a}, "date": {}}}"#, 736_000 + i)),
                    Target::Value(500.0 + 3.0 * a),
                );
            }
            let Output::Value(v) = l.params().predict(&x(r#"{"a": 10, "date": 739000}"#)) else {
                panic!()
            };
            assert!((v - 530.0).abs() < 5.0, "{kind:?}: {v}");
        }
    }

    #[test]
    fn wild_finite_inputs_still_give_distributions() {
        let mut l = learner(TaskKind::Multiclass, &["a", "b", "c"]);
        for i in 0..300 {
            let v = (i % 10) as f64 / 10.0;
            l.learn_one(
                &x(&format!(r#"{{"a": {v}, "b": {}}}"#, 1.0 - v)),
                Target::Class(i % 3),
            );
        }
        // Beyond what the hasher accepts (±1e30), as a file reader or a
        // snapshot's caller could still hand them over.
        let wild = |pairs: &[(&str, f64)]| FeatureVec {
            features: pairs
                .iter()
                .map(|(name, value)| crate::learn::Feature {
                    index: FeatureHasher::new(12).numeric(name),
                    value: *value,
                    numeric: true,
                })
                .collect(),
        };
        for pairs in [
            &[("a", 3e38), ("b", -3e38)][..],
            &[("a", 1e300)],
            &[("a", -1e300), ("b", 1e300)],
        ] {
            let Output::Probabilities(p) = l.params().predict(&wild(pairs)) else {
                panic!()
            };
            assert!(p.iter().all(|v| v.is_finite()), "{pairs:?}: {p:?}");
            assert!(
                (p.iter().sum::<f32>() - 1.0).abs() < 1e-5,
                "{pairs:?}: {p:?}"
            );
        }
        // Learning from such an example does not poison the model either.
        l.learn_one(&wild(&[("a", 1e300), ("b", -1e300)]), Target::Class(0));
        let Output::Probabilities(p) = l.params().predict(&x(r#"{"a": 0.5}"#)) else {
            panic!()
        };
        assert!(p.iter().all(|v| v.is_finite()), "{p:?}");
    }

    fn auto_learner(kind: TaskKind, classes: &[&str], bits: u8) -> Learner {
        let space = LabelSpace::new(kind, classes.iter().map(|s| s.to_string()).collect()).unwrap();
        let optimizer = OptimizerConfig {
            kind: OptimizerKind::Auto,
            ..OptimizerConfig::default()
        };
        Learner::new(Params::new(Arc::new(space), bits), optimizer)
    }

    fn mixture(l: &Learner) -> Vec<(f32, f32)> {
        l.params()
            .mixture
            .as_deref()
            .expect("auto reports its mixture")
            .iter()
            .map(|w| (w.rule.learning_rate, w.weight))
            .collect()
    }

    /// A deterministic pseudo-random number in [0, 1) for example `i`.
    fn noise(i: u64) -> f64 {
        (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn auto_weighs_the_candidate_that_fits_the_stream() {
        // A concept that flips every 300 examples: only a high constant
        // rate keeps up, and the mixture must find it.
        let mut drifting = auto_learner(TaskKind::Binary, &[], 12);
        for i in 0..6000u64 {
            let v = noise(i) * 2.0 - 1.0;
            let y = usize::from((v > 0.0) == ((i / 300) % 2 == 0));
            drifting.learn_one(&x(&format!(r#"{{"v": {v}}}"#)), Target::Class(y));
        }
        let w = mixture(&drifting);
        let best = w
            .iter()
            .copied()
            .fold((0.0, 0.0), |a, b| if b.1 > a.1 { b } else { a });
        assert_eq!(best.0, 0.1, "the fast RMS candidate leads on drift: {w:?}");
        assert!(best.1 > 0.5, "{w:?}");
        // A stationary concept under 20% label noise: the fast rate
        // chases the noise and loses its weight.
        let mut noisy = auto_learner(TaskKind::Binary, &[], 12);
        for i in 0..20_000u64 {
            let v = noise(i) * 2.0 - 1.0;
            let flip = noise(i + 1_000_000) < 0.2;
            let y = usize::from((v > 0.0) != flip);
            noisy.learn_one(
                &x(&format!(r#"{{"v": {v}, "w": {}}}"#, noise(i + 7))),
                Target::Class(y),
            );
        }
        let w = mixture(&noisy);
        let fast = w.iter().find(|(rate, _)| *rate == 0.1).unwrap().1;
        assert!(
            fast < 0.2,
            "the fast candidate gives way on a noisy stationary stream: {w:?}"
        );
        assert!((w.iter().map(|c| c.1).sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn auto_publishes_exactly_the_mixture_of_its_candidates() {
        let classes = ["a", "b", "c"];
        let mut l = auto_learner(TaskKind::Multiclass, &classes, 12);
        let example = |i: u64| {
            x(&format!(
                r#"{{"p": {}, "q": {}, "k": "{}"}}"#,
                noise(i) * 10.0,
                noise(i + 99) * 1000.0,
                i % 5
            ))
        };
        let label = |i: u64| Target::Class(((i / 500 + i % 3) % 3) as usize);
        let check = |l: &Learner| {
            let auto = l.state().auto.as_ref().unwrap();
            let shares = auto.mixture.applied();
            let p = l.params();
            let moved = shares.iter().any(|s| (s - 1.0 / 3.0).abs() > 1e-3);
            for r in 0..p.weights.rows() {
                for o in 0..3 {
                    let mut want = 0.0f32;
                    for (k, share) in shares.iter().enumerate() {
                        want += share * auto.candidate_row(k, r)[o];
                    }
                    assert_eq!(p.weights.row_slice(r)[o], want, "row {r} output {o}");
                }
            }
            for o in 0..3 {
                let mut want = 0.0f32;
                for (k, share) in shares.iter().enumerate() {
                    want += share * auto.candidate_bias(k)[o];
                }
                assert_eq!(p.bias[o], want);
            }
            // Predict's one dot product is the mixture of the candidates'
            // logits.
            for i in 0..20 {
                let e = example(10_000 + i);
                let mut logits = vec![0.0f32; 3];
                p.scores(&e, &mut logits);
                let inputs: Vec<(usize, f32)> = e
                    .features
                    .iter()
                    .map(|f| (f.index as usize, p.input(f.index, f.value, f.numeric)))
                    .collect();
                for (o, logit) in logits.iter().enumerate() {
                    let mut mixed = 0.0f32;
                    for (k, share) in shares.iter().enumerate() {
                        let mut z = auto.candidate_bias(k)[o];
                        for (r, v) in &inputs {
                            z += auto.candidate_row(k, *r)[o] * v;
                        }
                        mixed += share * z;
                    }
                    assert!((logit - mixed).abs() < 1e-4, "{logit} vs {mixed}");
                }
            }
            moved
        };
        let mut ever_moved = false;
        for i in 0..3000 {
            l.learn_one(&example(i), label(i));
            if i % 500 == 499 {
                ever_moved |= check(&l);
            }
        }
        assert!(ever_moved, "the mixture weights moved at some point");
    }

    #[test]
    fn auto_candidates_start_from_adopted_weights() {
        let mut adagrad = learner(TaskKind::Binary, &[]);
        adagrad = Learner::new(
            adagrad.params.clone(),
            OptimizerConfig {
                kind: OptimizerKind::Adagrad,
                ..OptimizerConfig::default()
            },
        );
        for i in 0..300u64 {
            let v = noise(i);
            adagrad.learn_one(
                &x(&format!(r#"{{"v": {v}}}"#)),
                Target::Class(usize::from(v > 0.5)),
            );
        }
        let probe = x(r#"{"v": 0.9}"#);
        let auto = Learner::with_state(
            adagrad.params().clone(),
            OptimizerConfig::default(),
            adagrad.state().clone(),
        );
        assert_eq!(
            auto.params().predict(&probe),
            adagrad.params().predict(&probe)
        );
        assert_eq!(auto.state().auto.as_ref().unwrap().active.count(), 1);
        // And back: an explicit kind drops the candidates.
        let back = Learner::with_state(
            auto.params().clone(),
            OptimizerConfig {
                kind: OptimizerKind::Sgd,
                ..OptimizerConfig::default()
            },
            auto.state().clone(),
        );
        assert!(back.state().auto.is_none() && back.params().mixture.is_none());
    }

    #[test]
    fn published_copy_does_not_move_while_learning() {
        let mut l = learner(TaskKind::Binary, &[]);
        l.learn_one(&x(r#"{"a": 1}"#), Target::Class(1));
        l.learn_one(&x(r#"{"a": 2}"#), Target::Class(0));
        let published = l.params().clone();
        let before = published.predict(&x(r#"{"a": 3}"#));
        for _ in 0..50 {
            l.learn_one(&x(r#"{"a": 3}"#), Target::Class(1));
        }
        assert_eq!(published.predict(&x(r#"{"a": 3}"#)), before);
        assert_ne!(l.params().predict(&x(r#"{"a": 3}"#)), before);
    }
}
