//! `auto`'s candidates: linear learners at different rules and rates that
//! learn the same examples on the same standardised inputs, and the rows
//! any of them has learned.
//!
//! All candidates live in one table, a row per hashed feature holding
//! each candidate's weights followed by its rule state, so that one step
//! reads and writes each touched row once (one copy-on-write check, one
//! cache line or two) however many candidates there are. The table is
//! copy-on-write blocks like the published weights, so a checkpoint of the
//! learner (the monitor keeps some) stays cheap. The published matrix is
//! the mixture of the candidates' weights; `Mixture` decides its weights.

use crate::learn::blocked::Blocked;

use super::{Mixture, MixtureWeight, Rule, RuleKind, Step};

/// Everything `auto` keeps beside the published weights.
#[derive(Debug, Clone)]
pub struct AutoState {
    rules: Vec<Rule>,
    outputs: usize,
    /// Where each candidate's columns start in a row of `table`.
    offsets: Vec<usize>,
    /// `rows x width`: per row, for each candidate in turn, its `outputs`
    /// weights then its `outputs * slots` rule state.
    table: Blocked<f32>,
    /// The intercepts and their rule state, in a row's layout.
    bias: Vec<f32>,
    pub mixture: Mixture,
    pub active: ActiveRows,
    /// Scratch: every candidate's scores, then gradients, one example.
    scores: Vec<f32>,
}

/// Which rows any candidate has learned: the rows a change of mixture
/// weights rewrites (the others are zero in every candidate, and so in
/// the combination).
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveRows {
    /// Bits by chunk of `CHUNK_ROWS` rows, a chunk allocated at its first
    /// row: memory follows the rows learned, not `2^hash_bits`.
    chunks: Vec<Option<Box<[u64; 64]>>>,
    count: usize,
}

/// The saved form of `AutoState`: what a snapshot stores.
#[derive(Debug, Clone)]
pub struct AutoParts {
    pub rules: Vec<Rule>,
    pub table: Blocked<f32>,
    pub bias: Vec<f32>,
    pub mixture: Mixture,
    pub active: ActiveRows,
}

impl AutoState {
    /// Candidates for `rules`, all starting from `weights` and `bias`
    /// (zeros for a new model; a saved model's when a snapshot of another
    /// optimizer is adopted), so the combination equals those weights,
    /// with equal mixture weights.
    pub fn starting_from(rules: &[Rule], weights: &Blocked<f32>, bias: &[f32]) -> Self {
        let outputs = bias.len();
        let (offsets, width) = layout(rules, outputs);
        let mut table = Blocked::new(weights.rows(), width);
        let active = ActiveRows::nonzero(weights);
        for r in active.iter() {
            let row = table.row_slice_mut(r);
            for off in &offsets {
                row[*off..*off + outputs].copy_from_slice(weights.row_slice(r));
            }
        }
        table.take_touched();
        let mut b = vec![0.0; width];
        for off in &offsets {
            b[*off..*off + outputs].copy_from_slice(bias);
        }
        Self::from_parts(AutoParts {
            rules: rules.to_vec(),
            table,
            bias: b,
            mixture: Mixture::new(rules.len()),
            active,
        })
        .expect("the layout was built for these rules")
    }

    /// Rebuilds saved state; `None` if the parts do not fit together.
    pub fn from_parts(parts: AutoParts) -> Option<Self> {
        let k = parts.rules.len();
        let width: usize = parts.rules.iter().map(|r| 1 + r.slots()).sum();
        if k == 0 || width == 0 || parts.mixture.applied().len() != k {
            return None;
        }
        let outputs = parts.table.cols() / width;
        let (offsets, width) = layout(&parts.rules, outputs);
        if outputs == 0 || parts.table.cols() != width || parts.bias.len() != width {
            return None;
        }
        Some(Self {
            rules: parts.rules,
            outputs,
            offsets,
            table: parts.table,
            bias: parts.bias,
            mixture: parts.mixture,
            active: parts.active,
            scores: vec![0.0; k * outputs],
        })
    }

    pub fn to_parts(&self) -> AutoParts {
        AutoParts {
            rules: self.rules.clone(),
            table: self.table.clone(),
            bias: self.bias.clone(),
            mixture: self.mixture.clone(),
            active: self.active.clone(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether this state runs `rules` (the same kinds and rates, in
    /// order): only then can it be resumed under them.
    pub fn runs(&self, rules: &[Rule]) -> bool {
        self.rules.len() == rules.len()
            && self
                .rules
                .iter()
                .zip(rules)
                .all(|(a, b)| a.kind == b.kind && a.learning_rate == b.learning_rate)
    }

    /// Takes this table's L1 and L2 (the rules and rates stay).
    pub fn set_regularization(&mut self, l1: f32, l2: f32) {
        for r in &mut self.rules {
            r.l1 = l1;
            r.l2 = l2;
        }
    }

    /// Each candidate's rule with its weight in the combination.
    pub fn weights(&self) -> Vec<MixtureWeight> {
        self.rules
            .iter()
            .zip(self.mixture.applied())
            .map(|(rule, w)| MixtureWeight {
                rule: *rule,
                weight: *w,
            })
            .collect()
    }

    /// Candidate `k`'s weights of row `r`.
    pub fn candidate_row(&self, k: usize, r: usize) -> &[f32] {
        &self.table.row_slice(r)[self.offsets[k]..self.offsets[k] + self.outputs]
    }

    /// Candidate `k`'s intercepts.
    pub fn candidate_bias(&self, k: usize) -> &[f32] {
        &self.bias[self.offsets[k]..self.offsets[k] + self.outputs]
    }

    /// One example for every candidate. `gradient` turns one candidate's
    /// raw scores into its loss gradient in place and returns its loss
    /// (`None` when not finite: that candidate then learns nothing from
    /// the example and counts the largest loss). `weights` and `bias` are
    /// the published combination: the rows the example touched are
    /// combined again, or every active row when the mixture weights move
    /// (then it returns true).
    pub fn learn(
        &mut self,
        inputs: &[(usize, f32)],
        step: u64,
        gradient: impl Fn(&mut [f32]) -> Option<f64>,
        weights: &mut Blocked<f32>,
        bias: &mut [f32],
    ) -> bool {
        let o = self.outputs;
        let k = self.rules.len();
        for (z, off) in self.scores.chunks_exact_mut(o).zip(&self.offsets) {
            z.copy_from_slice(&self.bias[*off..*off + o]);
        }
        for (r, v) in inputs {
            let row = self.table.row_slice(*r);
            for (z, off) in self.scores.chunks_exact_mut(o).zip(&self.offsets) {
                for (zj, w) in z.iter_mut().zip(&row[*off..*off + o]) {
                    *zj += w * v;
                }
            }
        }
        let mut losses = [0.0f64; MAX_CANDIDATES];
        let losses = &mut losses[..k];
        for (z, loss) in self.scores.chunks_exact_mut(o).zip(losses.iter_mut()) {
            match gradient(z) {
                Some(l) => *loss = l,
                None => {
                    *loss = f64::INFINITY;
                    z.fill(0.0);
                }
            }
        }
        let step = Step::new(step, self.rules.iter().any(|r| r.kind == RuleKind::Adam));
        let shares = self.mixture.applied();
        let scores = &self.scores;
        let candidates = || {
            self.rules
                .iter()
                .zip(&self.offsets)
                .zip(scores.chunks_exact(o))
                .zip(shares)
                .map(|(((rule, off), g), share)| (rule, *off, g, *share))
        };
        for (r, v) in inputs {
            let row = self.table.row_slice_mut(*r);
            let out = weights.row_slice_mut(*r);
            step_row(candidates(), row, out, o, *v, step, true);
            self.active.mark(*r);
        }
        step_row(candidates(), &mut self.bias, bias, o, 1.0, step, false);
        self.mixture.observe(losses, inputs.len());
        let moved = self.mixture.advance(self.active.count());
        if moved {
            self.combine_all(weights, bias);
        }
        moved
    }

    /// Rewrites every active row and the intercepts of the published
    /// combination with the applied mixture weights.
    pub fn combine_all(&self, weights: &mut Blocked<f32>, bias: &mut [f32]) {
        let o = self.outputs;
        let shares = self.mixture.applied();
        for r in self.active.iter() {
            let row = self.table.row_slice(r);
            let out = weights.row_slice_mut(r);
            out.fill(0.0);
            for (off, share) in self.offsets.iter().zip(shares) {
                for (x, w) in out.iter_mut().zip(&row[*off..*off + o]) {
                    *x += share * w;
                }
            }
        }
        bias.fill(0.0);
        for (off, share) in self.offsets.iter().zip(shares) {
            for (x, w) in bias.iter_mut().zip(&self.bias[*off..*off + o]) {
                *x += share * w;
            }
        }
    }
}

/// Most candidates `auto` runs (a bound for a stack buffer).
pub const MAX_CANDIDATES: usize = 8;

/// Column offsets of each candidate and the row width.
fn layout(rules: &[Rule], outputs: usize) -> (Vec<usize>, usize) {
    let mut offsets = Vec::with_capacity(rules.len());
    let mut width = 0;
    for r in rules {
        offsets.push(width);
        width += outputs * (1 + r.slots());
    }
    (offsets, width)
}

/// A candidate's update, with the rules `auto` runs compiled inline (their
/// kind a constant in each arm) and any other through the general path.
#[inline(always)]
fn step_candidate(rule: &Rule, w: &mut f32, s: &mut [f32], g: f32, step: Step, regularize: bool) {
    match rule.kind {
        RuleKind::Rms => Rule {
            kind: RuleKind::Rms,
            ..*rule
        }
        .update_inline(w, s, g, step, regularize),
        RuleKind::Adagrad => Rule {
            kind: RuleKind::Adagrad,
            ..*rule
        }
        .update_inline(w, s, g, step, regularize),
        RuleKind::Sgd => Rule {
            kind: RuleKind::Sgd,
            ..*rule
        }
        .update_inline(w, s, g, step, regularize),
        _ => rule.update(w, s, g, step, regularize),
    }
}

/// Rows per chunk of `ActiveRows` (64 words of 64 bits).
const CHUNK_ROWS: usize = 4096;

impl ActiveRows {
    pub fn new(rows: usize) -> Self {
        Self {
            chunks: vec![None; rows.div_ceil(CHUNK_ROWS)],
            count: 0,
        }
    }

    /// The rows where `weights` is not all zero (only written blocks can
    /// hold any).
    pub fn nonzero(weights: &Blocked<f32>) -> Self {
        let mut out = Self::new(weights.rows());
        for r in weights.allocated_rows() {
            if weights.row_slice(r).iter().any(|w| *w != 0.0) {
                out.mark(r);
            }
        }
        out
    }

    /// Rebuilds from a list of rows; `None` if one is out of range.
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
        let chunk = self.chunks[r / CHUNK_ROWS].get_or_insert_with(|| Box::new([0; 64]));
        let (word, bit) = ((r % CHUNK_ROWS) / 64, 1u64 << (r % 64));
        if chunk[word] & bit == 0 {
            chunk[word] |= bit;
            self.count += 1;
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The rows in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.chunks
            .iter()
            .enumerate()
            .filter_map(|(c, chunk)| chunk.as_ref().map(|chunk| (c, chunk)))
            .flat_map(|(c, chunk)| {
                chunk.iter().enumerate().flat_map(move |(i, word)| {
                    let mut w = *word;
                    std::iter::from_fn(move || {
                        (w != 0).then(|| {
                            let b = w.trailing_zeros() as usize;
                            w &= w - 1;
                            c * CHUNK_ROWS + i * 64 + b
                        })
                    })
                })
            })
    }
}

/// One step of every candidate on one row of the table (or the
/// intercepts), `g * v` its gradient, and the row of the published
/// weights rewritten as their mixture.
#[inline]
fn step_row<'a>(
    candidates: impl Iterator<Item = (&'a Rule, usize, &'a [f32], f32)>,
    row: &mut [f32],
    out: &mut [f32],
    o: usize,
    v: f32,
    step: Step,
    regularize: bool,
) {
    out.fill(0.0);
    for (rule, off, g, share) in candidates {
        let slots = rule.slots();
        let (w, s) = row[off..off + o * (1 + slots)].split_at_mut(o);
        for (j, gj) in g.iter().enumerate() {
            step_candidate(
                rule,
                &mut w[j],
                &mut s[j * slots..(j + 1) * slots],
                gj * v,
                step,
                regularize,
            );
            out[j] += share * w[j];
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
