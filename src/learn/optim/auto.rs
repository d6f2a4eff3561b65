//! `auto`'s candidates: linear learners at different rules and rates that
//! learn the same examples on the same standardised inputs, and the rows
//! any of them has learned.
//!
//! Each candidate owns its weights, intercepts and rule state as
//! copy-on-write blocks, like the published weights, so a checkpoint of
//! the learner (the monitor keeps some) stays cheap. The combination of
//! their weights into the published matrix is `linear::Learner`'s job;
//! the weights of the combination are `Mixture`'s.

use crate::learn::blocked::Blocked;

use super::{Mixture, MixtureWeight, Rule};

/// One candidate learner.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub rule: Rule,
    /// `rows x outputs`.
    pub weights: Blocked<f32>,
    /// One intercept per output.
    pub bias: Vec<f32>,
    /// `rows x (outputs * slots)`.
    pub state: Blocked<f32>,
    /// `outputs * slots`.
    pub bias_state: Vec<f32>,
}

/// Which rows any candidate has learned: the rows a change of mixture
/// weights rewrites (the others are zero in every candidate, and so in
/// the combination).
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveRows {
    bits: Vec<u64>,
    count: usize,
}

/// Everything `auto` keeps beside the published weights.
#[derive(Debug, Clone)]
pub struct AutoState {
    pub candidates: Vec<Candidate>,
    pub mixture: Mixture,
    pub active: ActiveRows,
}

impl Candidate {
    /// A candidate that starts from given weights (all of them start from
    /// the same ones, so the combination equals those weights).
    pub fn starting_from(rule: Rule, weights: &Blocked<f32>, bias: &[f32]) -> Self {
        let outputs = bias.len();
        let slots = rule.slots();
        Self {
            rule,
            weights: weights.clone(),
            bias: bias.to_vec(),
            state: Blocked::new(weights.rows(), outputs * slots),
            bias_state: vec![0.0; outputs * slots],
        }
    }

    /// Adds this candidate's raw scores for standardised `inputs` to
    /// `out`, which holds its intercepts.
    #[inline]
    pub fn scores(&self, inputs: &[(usize, f32)], out: &mut [f32]) {
        out.copy_from_slice(&self.bias);
        for (r, v) in inputs {
            for (o, wk) in out.iter_mut().zip(self.weights.row(*r).iter()) {
                *o += wk * v;
            }
        }
    }

    /// One step along the loss gradient `g` (one value per output).
    #[inline]
    pub fn learn(&mut self, inputs: &[(usize, f32)], g: &[f32], step: u64) {
        let slots = self.rule.slots();
        for (r, v) in inputs {
            let mut w = self.weights.row_mut(*r);
            let mut s = self.state.row_mut(*r);
            let s = s.as_slice_mut().expect("state rows are contiguous");
            for (k, gk) in g.iter().enumerate() {
                self.rule
                    .update(&mut w[k], &mut s[k * slots..(k + 1) * slots], gk * v, step, true);
            }
        }
        for (k, gk) in g.iter().enumerate() {
            let s = &mut self.bias_state[k * slots..(k + 1) * slots];
            self.rule.update(&mut self.bias[k], s, *gk, step, false);
        }
    }
}

impl ActiveRows {
    pub fn new(rows: usize) -> Self {
        Self {
            bits: vec![0; rows.div_ceil(64)],
            count: 0,
        }
    }

    /// The rows where `weights` is not all zero.
    pub fn nonzero(weights: &Blocked<f32>) -> Self {
        let mut out = Self::new(weights.rows());
        for r in 0..weights.rows() {
            if weights.row(r).iter().any(|w| *w != 0.0) {
                out.mark(r);
            }
        }
        out
    }

    /// Rebuilds from a sorted list of rows; `None` if one is out of range.
    pub fn from_list(rows: usize, list: &[u32]) -> Option<Self> {
        let mut out = Self::new(rows);
        for r in list {
            let r = *r as usize;
            if r >= rows {
                return None;
            }
            out.mark(r);
        }
        Some(out)
    }

    #[inline]
    pub fn mark(&mut self, r: usize) {
        let (word, bit) = (r / 64, 1u64 << (r % 64));
        if self.bits[word] & bit == 0 {
            self.bits[word] |= bit;
            self.count += 1;
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The rows in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.bits.iter().enumerate().flat_map(|(i, word)| {
            let mut w = *word;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let b = w.trailing_zeros() as usize;
                    w &= w - 1;
                    i * 64 + b
                })
            })
        })
    }
}

impl AutoState {
    /// Candidates for `rules`, all starting from `weights` and `bias`
    /// (zeros for a new model; a saved model's when a snapshot of another
    /// optimizer is adopted), with equal mixture weights.
    pub fn starting_from(rules: &[Rule], weights: &Blocked<f32>, bias: &[f32]) -> Self {
        Self {
            candidates: rules
                .iter()
                .map(|r| Candidate::starting_from(*r, weights, bias))
                .collect(),
            mixture: Mixture::new(rules.len()),
            active: ActiveRows::nonzero(weights),
        }
    }

    pub fn rules(&self) -> Vec<Rule> {
        self.candidates.iter().map(|c| c.rule).collect()
    }

    /// Each candidate's rule with its weight in the combination.
    pub fn weights(&self) -> Vec<MixtureWeight> {
        self.candidates
            .iter()
            .zip(self.mixture.applied())
            .map(|(c, w)| MixtureWeight {
                rule: c.rule,
                weight: *w,
            })
            .collect()
    }

    /// The combined value of row `r` into `out` (one per output).
    #[inline]
    pub fn combine_row(&self, r: usize, out: &mut [f32]) {
        out.fill(0.0);
        for (c, pi) in self.candidates.iter().zip(self.mixture.applied()) {
            for (o, w) in out.iter_mut().zip(c.weights.row(r).iter()) {
                *o += pi * w;
            }
        }
    }

    /// The combined intercepts into `out`.
    pub fn combine_bias(&self, out: &mut [f32]) {
        out.fill(0.0);
        for (c, pi) in self.candidates.iter().zip(self.mixture.applied()) {
            for (o, b) in out.iter_mut().zip(&c.bias) {
                *o += pi * b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_rows_iterate_in_order_once() {
        let mut a = ActiveRows::new(300);
        for r in [299, 3, 64, 3, 0, 128] {
            a.mark(r);
        }
        assert_eq!(a.count(), 5);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![0, 3, 64, 128, 299]);
        let list: Vec<u32> = a.iter().map(|r| r as u32).collect();
        assert_eq!(ActiveRows::from_list(300, &list), Some(a));
        assert_eq!(ActiveRows::from_list(300, &[300]), None);
    }
}
