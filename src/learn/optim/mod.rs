//! Optimizers: the `[models.optimizer]` table and what it builds.
//!
//! An explicit `kind` (`sgd`, `adagrad`, `adam`, `ftrl`) is one update
//! rule at its `learning_rate` (`rule.rs`). `kind = "auto"`, the default,
//! needs no rate: a few candidate learners with different rules and rates
//! learn side by side on the same examples (`auto.rs`), and the published
//! model is their convex combination, weighted by each one's recent
//! prequential mistakes (`mixture.rs`). A convex combination of linear models
//! is one linear model, so predict still reads one weight matrix.

mod auto;
mod mixture;
mod rule;

use serde::{Deserialize, Serialize};

pub use auto::{ActiveRows, AutoParts, AutoState, MAX_CANDIDATES};
pub use mixture::{Mixture, MixtureWeight};
pub use rule::{Rule, RuleKind, Step};

/// Which optimizer; see the README ("Choosing the optimizer") for why
/// `auto` is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adagrad,
    Adam,
    Ftrl,
    /// Self-tuning: candidates at several constant rates, combined by
    /// their recent loss. `learning_rate` is not used.
    Auto,
}

/// The `[models.optimizer]` table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    #[serde(default = "default_kind")]
    pub kind: OptimizerKind,
    /// The rate of an explicit kind; `auto` chooses its own.
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default)]
    pub l1: f64,
    #[serde(default)]
    pub l2: f64,
}

fn default_kind() -> OptimizerKind {
    OptimizerKind::Auto
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

/// `auto`'s candidates: plain SGD at 0.01 (River's LogisticRegression
/// default), steady on stationary and misspecified streams; RMS 0.1, a
/// constant rate on RMS-normalised gradients that follows drift (Elec2,
/// SEA); AdaGrad 0.3, whose decaying rate wins on short stationary
/// streams (image_segments, phishing). README "Choosing the optimizer"
/// has the measurements and the alternatives tried.
pub const AUTO_CANDIDATES: [(RuleKind, f32); 3] = [
    (RuleKind::Sgd, 0.01),
    (RuleKind::Rms, 0.1),
    (RuleKind::Adagrad, 0.3),
];

const _: () = assert!(AUTO_CANDIDATES.len() <= MAX_CANDIDATES);

impl OptimizerConfig {
    /// The single rule of an explicit kind; `None` for `auto`.
    pub fn rule(&self) -> Option<Rule> {
        let kind = match self.kind {
            OptimizerKind::Sgd => RuleKind::Sgd,
            OptimizerKind::Adagrad => RuleKind::Adagrad,
            OptimizerKind::Adam => RuleKind::Adam,
            OptimizerKind::Ftrl => RuleKind::Ftrl,
            OptimizerKind::Auto => return None,
        };
        Some(self.with(kind, self.learning_rate as f32))
    }

    /// `auto`'s candidate rules (with this table's L1 and L2).
    pub fn candidates(&self) -> Vec<Rule> {
        AUTO_CANDIDATES
            .iter()
            .map(|&(kind, rate)| self.with(kind, rate))
            .collect()
    }

    fn with(&self, kind: RuleKind, learning_rate: f32) -> Rule {
        Rule {
            kind,
            learning_rate,
            l1: self.l1 as f32,
            l2: self.l2 as f32,
        }
    }

    /// State floats per weight kept beside the published weights (`auto`
    /// keeps its candidates' state apart, in `AutoState`).
    pub fn slots(&self) -> usize {
        self.rule().map_or(0, |r| r.slots())
    }
}
