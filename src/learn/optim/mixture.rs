//! How `auto` weighs its candidates: exponentially weighted averaging of
//! their recent prequential loss.
//!
//! Each candidate's loss on every example, taken before it learns that
//! example (a mistake for a classifier, half the squared standardised
//! error for regression: the learner's `loss_of`), is added to a
//! discounted sum (half-life `HALF_LIFE` examples, so a candidate that
//! was best long ago but not lately loses its weight). The target weights are `exp(-ETA * loss) / sum`.
//!
//! The published model is `sum_k weight_k * w_k`, so a change of weights
//! changes every row ever learned. To keep a publish copy-on-write, the
//! weights the combination is built with (`applied`) move only at coarse
//! intervals: after at least `MIN_INTERVAL` examples, once the examples
//! since the last change have touched as many input rows as the model has
//! active ones (so rewriting them all costs no more than learning those
//! examples once more), and only when some weight would move by more than
//! `SETTLED`. Between changes a step writes the combined values of the
//! rows it touched with the applied weights, and the published matrix is
//! exactly the combination.

/// How many examples back a loss counts half.
pub const HALF_LIFE: f64 = 2000.0;
/// Inverse temperature of the exponential weights, per unit of loss (one
/// mistake): 1. With log loss as the loss (before mistakes), 0.05 to 1
/// gave the same accuracy within 0.3 point everywhere but SEA, where 1
/// was best.
pub const ETA: f64 = 1.0;
/// Fewest examples between two changes of the applied weights.
pub const MIN_INTERVAL: u64 = 64;
/// A change of every weight below this leaves the combination alone.
pub const SETTLED: f32 = 0.01;
/// One example's loss counts at most this much: one mistake's worth, so
/// a single wild example (a regression error far out) moves the shares by
/// at most a factor e and cannot decide the mixture. (Capped at 16, a
/// run of 40 examples with one feature 100 times too large drove a
/// regression model's steadiest candidate to a share of exactly 0.)
const MAX_LOSS: f64 = 1.0;

/// The mixture's state: losses, the weights in use, and the counters of
/// the change cadence.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixture {
    /// Discounted sum of each candidate's prequential loss.
    losses: Vec<f64>,
    /// The weights the combined (published) matrix is built with.
    applied: Vec<f32>,
    /// Examples learned since `applied` last changed (or was checked).
    examples_since: u64,
    /// Input rows those examples touched.
    rows_since: u64,
}

/// One candidate's share, as a report shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixtureWeight {
    pub rule: super::Rule,
    pub weight: f32,
}

impl Mixture {
    /// Equal weights, no losses yet.
    pub fn new(candidates: usize) -> Self {
        Self {
            losses: vec![0.0; candidates],
            applied: vec![1.0 / candidates as f32; candidates],
            examples_since: 0,
            rows_since: 0,
        }
    }

    /// Rebuilds saved state; `None` if the parts do not fit together.
    pub fn from_parts(
        losses: Vec<f64>,
        applied: Vec<f32>,
        examples_since: u64,
        rows_since: u64,
    ) -> Option<Self> {
        let valid = !losses.is_empty()
            && losses.len() == applied.len()
            && losses.iter().all(|l| l.is_finite() && *l >= 0.0)
            && applied.iter().all(|w| w.is_finite() && *w >= 0.0);
        valid.then_some(Self {
            losses,
            applied,
            examples_since,
            rows_since,
        })
    }

    pub fn losses(&self) -> &[f64] {
        &self.losses
    }

    /// The weights the combined matrix is built with now.
    pub fn applied(&self) -> &[f32] {
        &self.applied
    }

    pub fn counters(&self) -> (u64, u64) {
        (self.examples_since, self.rows_since)
    }

    /// Adds one example's losses (one per candidate); `rows` is how many
    /// input rows it touched.
    pub fn observe(&mut self, losses: &[f64], rows: usize) {
        let keep = discount();
        for (sum, loss) in self.losses.iter_mut().zip(losses) {
            let loss = if loss.is_finite() {
                loss.clamp(0.0, MAX_LOSS)
            } else {
                MAX_LOSS
            };
            *sum = *sum * keep + loss;
        }
        self.examples_since += 1;
        self.rows_since += rows as u64;
    }

    /// The weights the losses call for now.
    pub fn target(&self) -> Vec<f32> {
        let best = self.losses.iter().copied().fold(f64::INFINITY, f64::min);
        let raw: Vec<f64> = self
            .losses
            .iter()
            .map(|l| (-ETA * (l - best)).exp())
            .collect();
        let sum: f64 = raw.iter().sum();
        raw.iter().map(|r| (r / sum) as f32).collect()
    }

    /// Moves the applied weights to the target when a change is due (see
    /// the module doc); true when they changed, and the caller must then
    /// rewrite every active row. `active_rows` is how many rows any
    /// candidate has learned.
    pub fn advance(&mut self, active_rows: usize) -> bool {
        if self.examples_since < MIN_INTERVAL || self.rows_since < active_rows as u64 {
            return false;
        }
        self.examples_since = 0;
        self.rows_since = 0;
        let target = self.target();
        let moved = target
            .iter()
            .zip(&self.applied)
            .any(|(t, a)| (t - a).abs() > SETTLED);
        if moved {
            self.applied = target;
        }
        moved
    }
}

/// Per-example factor on the loss sums.
fn discount() -> f64 {
    static DISCOUNT: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *DISCOUNT.get_or_init(|| 0.5f64.powf(1.0 / HALF_LIFE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_goes_to_the_candidate_with_less_loss() {
        let mut m = Mixture::new(3);
        for _ in 0..MIN_INTERVAL {
            m.observe(&[0.57, 0.5, 0.53], 1);
        }
        let t = m.target();
        assert!(t[1] > t[2] && t[2] > t[0] && t[0] > 0.0, "{t:?}");
        assert!((t.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(m.advance(0));
        assert_eq!(m.applied(), &t[..]);
    }

    #[test]
    fn old_losses_fade() {
        let mut m = Mixture::new(2);
        for _ in 0..20_000 {
            m.observe(&[0.3, 0.6], 1);
        }
        assert!(m.target()[0] > 0.9);
        for _ in 0..20_000 {
            m.observe(&[0.6, 0.3], 1);
        }
        assert!(m.target()[1] > 0.9, "{:?}", m.target());
    }

    #[test]
    fn changes_wait_for_the_interval_and_the_rows() {
        let mut m = Mixture::new(2);
        for _ in 0..MIN_INTERVAL - 1 {
            m.observe(&[0.1, 5.0], 2);
        }
        assert!(!m.advance(10), "too few examples");
        m.observe(&[0.1, 5.0], 2);
        assert!(!m.advance(1000), "too few rows for a rewrite of 1000");
        assert!(m.advance(100));
        assert_eq!(m.counters(), (0, 0));
        for _ in 0..MIN_INTERVAL {
            m.observe(&[0.1, 5.0], 2);
        }
        assert!(!m.advance(0), "settled: nothing to rewrite");
    }

    #[test]
    fn wild_losses_are_bounded() {
        let mut m = Mixture::new(2);
        m.observe(&[f64::INFINITY, f64::NAN], 1);
        assert_eq!(m.losses(), &[MAX_LOSS, MAX_LOSS]);
    }

    #[test]
    fn one_wild_example_moves_the_shares_by_at_most_a_factor_e() {
        let mut m = Mixture::new(2);
        // A regression candidate's squared error on one far-out example.
        m.observe(&[1e6, 0.1], 1);
        let t = m.target();
        let ratio = f64::from(t[1] / t[0]);
        assert!(ratio <= std::f64::consts::E * 1.0001, "{t:?}");
    }
}
