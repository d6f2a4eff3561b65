//! The `mlp` model family: an online network with one hidden layer over
//! the hashed features (`family = "mlp"`, `[models.mlp]`).
//!
//! The network is an embedding bag: every hashed input row owns a
//! `hidden`-vector, an example's hidden layer is the hidden bias plus the
//! sum of its inputs' vectors scaled by their values, then ReLU, then a
//! dense output layer (sigmoid for binary, softmax for multiclass, a
//! linear value for regression, exactly as the linear family reads its
//! outputs). Beside it, the linear family's own weights stay as a wide
//! (skip) part added to the output, so what a linear model learns fast
//! the network does not have to learn through its hidden layer.
//!
//! Numeric inputs are standardised online by the same per-row statistics
//! the linear family keeps (`Params::scaler`) and clipped; each numeric
//! input also switches on one of `bins` quantile bins (the standardised
//! value through a normal-shaped CDF), hashed as a feature of its own, so
//! a local boundary is a few bins' vectors rather than a fine balance of
//! weights; an example with few numeric inputs also switches on its
//! pairs' cells in a few shifted 2-D grids (`inputs.rs`). Categorical and 0/1 inputs pass as they are and are skipped
//! when 0. Steps are RMSprop-style normalised constant steps (no decay,
//! so the network keeps following drift), row-wise for the embedding and
//! wide tables; initialisation is from a fixed seed, and nothing reads
//! randomness or the clock, so a run is bit-for-bit repeatable (replay
//! after a crash depends on it).
//!
//! `net.rs` holds what predict reads (`Net`, inside `Params::net`),
//! `learner.rs` the trainer's side (`NetLearner`, `NetState`), `inputs.rs`
//! the expansion of a feature vector into the network's inputs. The
//! dispatch from `Params` and `Learner` is a single `if` at the top of
//! `predict`, `score` and `learn_one` in `linear.rs`.

mod inputs;
mod learner;
mod net;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use learner::{NetLearner, NetState};
pub use net::Net;

use super::label::LabelSpace;
use super::linear::Params;
use std::sync::Arc;

/// Largest hidden layer accepted (predict keeps the layer on the stack).
pub const MAX_HIDDEN: usize = 1024;

/// Largest number of quantile bins per numeric input.
pub const MAX_BINS: u32 = 1024;

/// Most numeric inputs crossed in pairs (`MAX_CROSSES * (MAX_CROSSES - 1)
/// / 2` grid cells per example at most).
pub const MAX_CROSSES: u32 = 16;

/// Most grids per crossed pair.
pub const MAX_TILINGS: u32 = 16;

/// `models[].family`: which model a model name serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Logistic, softmax or linear regression (`learn::linear`).
    #[default]
    Linear,
    /// The one-hidden-layer network of this module.
    Mlp,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Linear => "linear",
            Family::Mlp => "mlp",
        }
    }
}

/// The `[models.mlp]` table. Every default is the one in
/// `config/eddy.toml`; `Default` is the single source of both.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MlpConfig {
    /// Units in the hidden layer.
    pub hidden: usize,
    /// Rows of the embedding table, as a power of two; hashed rows beyond
    /// it share vectors (capped at the model's `hash_bits`).
    pub embedding_bits: u8,
    /// Quantile bins per numeric input (each its own hashed input); 0 = none.
    pub bins: u32,
    /// An example with at most `crosses` numeric inputs has every pair of
    /// them crossed: the pair's cell in each of `cross_tilings` grids of
    /// `cross_bins` x `cross_bins` quantile bins is a hashed input of its
    /// own; 0 = never.
    pub crosses: u32,
    /// Quantile bins per side of a crossed pair's grid.
    pub cross_bins: u32,
    /// Grids per crossed pair, each shifted by `1 / cross_tilings` of a bin
    /// from the last (tile coding).
    pub cross_tilings: u32,
    /// The step of the normalised (RMSprop-style) update.
    pub learning_rate: f64,
    /// Standardised numeric inputs are clipped to `±clip`.
    pub clip: f64,
    /// Seed of the initial weights.
    pub seed: u64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            hidden: 64,
            embedding_bits: 16,
            bins: 16,
            crosses: 4,
            cross_bins: 6,
            cross_tilings: 6,
            learning_rate: 0.003,
            clip: 3.0,
            seed: 0x6564_6479_6d6c_7030, // "eddymlp0"
        }
    }
}

impl MlpConfig {
    /// What is wrong with this table, as (key under `mlp.`, message).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !(1..=MAX_HIDDEN).contains(&self.hidden) {
            return Some(("hidden", format!("must lie in 1..={MAX_HIDDEN}")));
        }
        if !(super::features::MIN_HASH_BITS..=super::features::MAX_HASH_BITS)
            .contains(&self.embedding_bits)
        {
            return Some((
                "embedding_bits",
                format!(
                    "must lie in {}..={}",
                    super::features::MIN_HASH_BITS,
                    super::features::MAX_HASH_BITS
                ),
            ));
        }
        if self.bins > MAX_BINS || self.bins == 1 {
            return Some(("bins", format!("must be 0 (none) or lie in 2..={MAX_BINS}")));
        }
        if self.crosses > MAX_CROSSES {
            return Some(("crosses", format!("must lie in 0..={MAX_CROSSES}")));
        }
        if self.cross_bins > MAX_BINS || self.cross_bins < 2 {
            return Some(("cross_bins", format!("must lie in 2..={MAX_BINS}")));
        }
        if !(1..=MAX_TILINGS).contains(&self.cross_tilings) {
            return Some(("cross_tilings", format!("must lie in 1..={MAX_TILINGS}")));
        }
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate <= 1.0)
        {
            return Some(("learning_rate", "must be above 0 and at most 1".into()));
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return Some(("clip", "must be a finite number above 0".into()));
        }
        None
    }
}

/// Fresh parameters of a model of `family` (the network's initial weights
/// from `config.seed`).
pub fn fresh_params(
    space: Arc<LabelSpace>,
    hash_bits: u8,
    family: Family,
    config: &MlpConfig,
) -> Params {
    let mut p = Params::new(space, hash_bits);
    if family == Family::Mlp {
        p.net = Some(Net::new(config, hash_bits, p.outputs()));
    }
    p
}
