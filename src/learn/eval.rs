//! Quality measures and the prequential (test-then-train) protocol.
//!
//! `Scores` accumulates accuracy and log loss (classification) or MAE and
//! RMSE (regression) over scored examples. `prequential` runs River's
//! `progressive_val_score` protocol: every example is predicted by the
//! version published at the last minibatch boundary, then learned.

use super::features::FeatureVec;
use super::label::{Target, TaskKind};
use super::linear::{Learner, Output, Params};

/// Probabilities are clipped to this before taking logs.
const LOG_LOSS_EPS: f64 = 1e-15;

/// Running totals of one quality measure set.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scores {
    pub n: u64,
    correct: u64,
    log_loss: f64,
    abs_err: f64,
    sq_err: f64,
}

/// One example's outcome under one model version.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Scored {
    Class { correct: bool, log_loss: f64 },
    Value { abs_err: f64, sq_err: f64 },
}

impl Scored {
    /// Scores an output against its true target.
    pub fn of(out: &Output, y: Target) -> Self {
        match (out, y) {
            (Output::Probabilities(p), Target::Class(c)) => {
                let pc = p.get(c).copied().unwrap_or(0.0) as f64;
                Self::class(out.argmax() == Some(c), pc)
            }
            (Output::Value(v), Target::Value(t)) => Self::value(*v - t),
            // A task mismatch cannot be built through the API; count it as
            // a miss rather than panic.
            (Output::Probabilities(_), _) => Self::class(false, 0.0),
            (Output::Value(_), _) => Self::value(f64::INFINITY),
        }
    }

    /// A classification outcome from the probability given to the true class.
    pub fn class(correct: bool, p_true: f64) -> Self {
        Self::Class {
            correct,
            log_loss: -p_true.clamp(LOG_LOSS_EPS, 1.0).ln(),
        }
    }

    /// As `class`, taking the log in f32 (the monitor's hot path; its
    /// figures need no more precision).
    #[inline]
    pub fn class_f32(correct: bool, p_true: f32) -> Self {
        Self::Class {
            correct,
            log_loss: f64::from(-p_true.clamp(LOG_LOSS_EPS as f32, 1.0).ln()),
        }
    }

    pub fn value(err: f64) -> Self {
        Self::Value {
            abs_err: err.abs(),
            sq_err: err * err,
        }
    }

    /// The per-example loss comparisons use: log loss, or squared error.
    pub fn loss(&self) -> f64 {
        match *self {
            Self::Class { log_loss, .. } => log_loss,
            Self::Value { sq_err, .. } => sq_err,
        }
    }

    pub fn correct(&self) -> bool {
        matches!(self, Self::Class { correct: true, .. })
    }
}

impl Scores {
    /// Adds one prediction and its true target.
    pub fn add(&mut self, out: &Output, y: Target) {
        self.add_scored(Scored::of(out, y));
    }

    /// Adds one scored example.
    pub fn add_scored(&mut self, s: Scored) {
        self.n += 1;
        match s {
            Scored::Class { correct, log_loss } => {
                self.correct += u64::from(correct);
                self.log_loss += log_loss;
            }
            Scored::Value { abs_err, sq_err } => {
                self.abs_err += abs_err;
                self.sq_err += sq_err;
            }
        }
    }

    fn mean(&self, total: f64) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            total / self.n as f64
        }
    }

    pub fn accuracy(&self) -> f64 {
        self.mean(self.correct as f64)
    }

    pub fn log_loss(&self) -> f64 {
        self.mean(self.log_loss)
    }

    pub fn mae(&self) -> f64 {
        self.mean(self.abs_err)
    }

    pub fn rmse(&self) -> f64 {
        self.mean(self.sq_err).sqrt()
    }
}

/// The figures that fit a task (accuracy and log loss, or MAE and RMSE),
/// by name; a figure with no examples behind it is absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Figures {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
}

impl Figures {
    /// The present figures as `(name, value)`, for metrics and metadata.
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        [
            ("accuracy", self.accuracy),
            ("log_loss", self.log_loss),
            ("mae", self.mae),
            ("rmse", self.rmse),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

impl Scores {
    /// The figures that fit `task`.
    pub fn figures(&self, task: TaskKind) -> Figures {
        let some = |v: f64| v.is_finite().then_some(v);
        match task {
            TaskKind::Regression => Figures {
                mae: some(self.mae()),
                rmse: some(self.rmse()),
                ..Figures::default()
            },
            TaskKind::Binary | TaskKind::Multiclass => Figures {
                accuracy: some(self.accuracy()),
                log_loss: some(self.log_loss()),
                ..Figures::default()
            },
        }
    }
}

/// Test-then-train over `examples` in order. With `minibatch == 1` every
/// prediction sees every earlier example; with a larger minibatch a
/// prediction lags up to one minibatch behind, as it does in the server.
pub fn prequential<'a, I>(learner: &mut Learner, examples: I, minibatch: usize) -> Scores
where
    I: IntoIterator<Item = (&'a FeatureVec, Target)>,
{
    let minibatch = minibatch.max(1);
    let mut scores = Scores::default();
    let mut published: Params = learner.params().clone();
    let mut pending: Vec<(&FeatureVec, Target)> = Vec::with_capacity(minibatch);
    for (x, y) in examples {
        scores.add(&published.predict(x), y);
        pending.push((x, y));
        if pending.len() == minibatch {
            for (x, y) in pending.drain(..) {
                learner.learn_one(x, y);
            }
            published = learner.params().clone();
        }
    }
    for (x, y) in pending {
        learner.learn_one(x, y);
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_hand_computation() {
        let mut s = Scores::default();
        s.add(&Output::Probabilities(vec![0.2, 0.8]), Target::Class(1));
        s.add(&Output::Probabilities(vec![0.6, 0.4]), Target::Class(1));
        assert_eq!(s.accuracy(), 0.5);
        let want = -(0.8f64.ln() + 0.4f64.ln()) / 2.0;
        assert!((s.log_loss() - want).abs() < 1e-6);
        let mut r = Scores::default();
        r.add(&Output::Value(1.0), Target::Value(2.0));
        r.add(&Output::Value(5.0), Target::Value(2.0));
        assert_eq!(r.mae(), 2.0);
        assert_eq!(r.rmse(), 5.0f64.sqrt());
        assert!(Scores::default().accuracy().is_nan());
    }
}
