//! `LogHistogram`: a decayed histogram of non-negative values on a
//! half-octave grid, for the tail questions the guard asks ("how far do
//! this feature's normal deviations reach?", "how large are the live
//! model's usual errors?").
//!
//! Why this shape: a log grid needs no prior scale (a feature in [0, 1]
//! and an epoch timestamp's deviations are binned alike), its relative
//! resolution (a factor of √2) is fine for a rule that multiplies the
//! answer by a threshold of several, and a fixed number of bins bounds the
//! memory. Only the top `BINS` half-octaves are kept: a new largest value
//! shifts the grid up and folds what falls off the bottom into bin 0,
//! which also holds zeros. Tail queries read from the top, so what is
//! folded never matters to them; a query whose answer would lie in bin 0
//! says the spread is below resolution instead of guessing.
//!
//! Decay is "forward": rather than shrinking every bin at each value, each
//! new value weighs `growth` times the previous one, and all weights are
//! rescaled by an exact power of two when they grow large. Bins are found
//! from the float's exponent and one comparison of its mantissa, never
//! with a logarithm, so the state evolves bit for bit the same on every
//! platform (snapshots replay exactly).

use serde::{Deserialize, Serialize};

/// Half-octaves kept: 24 octaves, a factor of about 1.7e7 between the
/// largest value's bin and the floor. Heavy-tailed deviations (Cauchy)
/// span about that much in the weight that matters.
pub const BINS: usize = 48;

/// When the weight of the next value passes this, every weight is
/// multiplied by `RESCALE_BY` (exact: both are powers of two).
const RESCALE_AT: f64 = 1.8446744073709552e19; // 2^64
const RESCALE_BY: f64 = 5.421010862427522e-20; // 2^-64

/// See the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogHistogram {
    /// `BINS` weights; bin `BINS - 1` is half-octave `top`, bin 0 holds
    /// everything at or below half-octave `top - BINS + 1`, zeros included.
    weights: Vec<f64>,
    /// Half-octave of the top bin; `None` until a positive value arrives.
    top: Option<i32>,
    /// Weight of the next value.
    next: f64,
    /// Weight of the last value added (the unit counts are measured in).
    last: f64,
    /// Sum of all weights.
    total: f64,
}

impl Default for LogHistogram {
    fn default() -> Self {
        Self {
            weights: vec![0.0; BINS],
            top: None,
            next: 1.0,
            last: 0.0,
            total: 0.0,
        }
    }
}

impl LogHistogram {
    /// The growth factor that gives values a memory of about `values`
    /// (a half-life of `values * ln 2`): `1 / (1 - 1 / values)`.
    pub fn growth_for_memory(values: f64) -> f64 {
        1.0 / (1.0 - 1.0 / values.max(2.0))
    }

    /// Adds `v` (negative or non-finite values are ignored), then makes the
    /// next value weigh `growth` times as much.
    pub fn add(&mut self, v: f64, growth: f64) {
        if !(v >= 0.0 && v.is_finite()) {
            return;
        }
        let w = self.next;
        self.total += w;
        self.last = w;
        let bin = if v > 0.0 {
            let h = half_octave(v);
            match self.top {
                None => {
                    self.top = Some(h);
                    BINS - 1
                }
                Some(top) if h > top => {
                    self.shift_up(h - top);
                    self.top = Some(h);
                    BINS - 1
                }
                Some(top) => usize::try_from(h - (top - (BINS as i32 - 1))).unwrap_or(0),
            }
        } else {
            0
        };
        self.weights[bin] += w;
        self.next *= growth;
        if self.next > RESCALE_AT {
            for b in &mut self.weights {
                *b *= RESCALE_BY;
            }
            self.total *= RESCALE_BY;
            self.last *= RESCALE_BY;
            self.next *= RESCALE_BY;
        }
    }

    /// Values seen, discounted by the decay: the number of equally recent
    /// values that would weigh as much.
    pub fn count(&self) -> f64 {
        if self.last > 0.0 {
            self.total / self.last
        } else {
            0.0
        }
    }

    /// The smallest bin edge with at most `values` (in units of the
    /// newest value's weight) above it: "the level all but the `values`
    /// largest lie under". `None` while fewer values than that have been
    /// seen, or when the level would be the floor bin (spread below
    /// resolution).
    pub fn level_above_count(&self, values: f64) -> Option<f64> {
        self.level_above_weight(values * self.last)
    }

    /// As `level_above_count`, with at most `share` of all the weight
    /// above: the `1 - share` quantile, rounded up to a bin edge.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.level_above_weight((1.0 - q) * self.total)
    }

    /// What the histogram holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.weights.capacity() * std::mem::size_of::<f64>()
    }

    fn level_above_weight(&self, budget: f64) -> Option<f64> {
        let top = self.top?;
        let mut above = 0.0;
        for j in (1..BINS).rev() {
            above += self.weights[j];
            if above > budget {
                return Some(upper_edge(top - (BINS as i32 - 1) + j as i32));
            }
        }
        None
    }

    /// Moves the grid up by `by` half-octaves, folding what falls off the
    /// bottom into bin 0.
    fn shift_up(&mut self, by: i32) {
        let by = by as usize;
        if by >= BINS {
            let sum: f64 = self.weights.iter().sum();
            self.weights.fill(0.0);
            self.weights[0] = sum;
            return;
        }
        let folded: f64 = self.weights[..=by].iter().sum();
        self.weights.copy_within(by + 1.., 1);
        self.weights[0] = folded;
        for b in &mut self.weights[BINS - by..] {
            *b = 0.0;
        }
    }
}

/// The half-octave of a positive finite `v`: `2e` for `v` in
/// `[2^e, 2^e √2)`, `2e + 1` for `[2^e √2, 2^(e+1))`. Subnormals share the
/// lowest index.
fn half_octave(v: f64) -> i32 {
    let bits = v.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        return 2 * -1023;
    }
    let mantissa = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    2 * (biased - 1023) + i32::from(mantissa >= std::f64::consts::SQRT_2)
}

/// The upper edge of half-octave `h` (the lower edge of `h + 1`).
fn upper_edge(h: i32) -> f64 {
    let h = h + 1;
    let e = h.div_euclid(2);
    let base = pow2(e);
    if h.rem_euclid(2) == 1 {
        base * std::f64::consts::SQRT_2
    } else {
        base
    }
}

/// `2^e`, exactly, saturating to 0 and infinity outside f64's normal range.
fn pow2(e: i32) -> f64 {
    if e < -1022 {
        0.0
    } else if e > 1023 {
        f64::INFINITY
    } else {
        f64::from_bits(((e + 1023) as u64) << 52)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_octaves_split_each_power_of_two_at_its_root() {
        for (v, h) in [
            (1.0, 0),
            (1.4, 0),
            (1.5, 1),
            (2.0, 2),
            (0.5, -2),
            (0.75, -1),
            (1024.0, 20),
        ] {
            assert_eq!(half_octave(v), h, "{v}");
        }
        assert_eq!(upper_edge(0), std::f64::consts::SQRT_2);
        assert_eq!(upper_edge(1), 2.0);
        assert_eq!(upper_edge(-2), std::f64::consts::SQRT_2 / 2.0);
        assert!(half_octave(f64::MIN_POSITIVE / 4.0) < half_octave(f64::MIN_POSITIVE));
    }

    #[test]
    fn the_tail_level_bounds_all_but_the_largest_values() {
        let mut h = LogHistogram::default();
        for i in 1..=1000 {
            h.add(i as f64 / 1000.0, 1.0);
        }
        h.add(50.0, 1.0);
        // With one value allowed above, the level covers the single 50.
        let one = h.level_above_count(1.0).unwrap();
        assert!((1.0..=std::f64::consts::SQRT_2).contains(&one), "{one}");
        // With none allowed above, it must cover the 50 itself.
        assert!(h.level_above_count(0.5).unwrap() >= 50.0);
        let median = h.quantile(0.5).unwrap();
        assert!((0.5..=0.75).contains(&median), "{median}");
        assert_eq!(h.count(), 1001.0);
    }

    #[test]
    fn an_empty_or_flat_histogram_has_no_level() {
        let mut h = LogHistogram::default();
        assert_eq!(h.level_above_count(2.0), None);
        for _ in 0..100 {
            h.add(0.0, 1.0);
        }
        assert_eq!(h.level_above_count(2.0), None, "zeros have no spread");
        h.add(3.0, 1.0);
        assert_eq!(h.level_above_count(2.0), None, "one value is not a spread");
        assert_eq!(h.quantile(0.999), Some(4.0));
    }

    #[test]
    fn a_far_larger_value_folds_the_bottom_into_bin_zero() {
        let mut h = LogHistogram::default();
        for _ in 0..10 {
            h.add(1e-3, 1.0);
        }
        h.add(1e9, 1.0);
        // 1e-3 now lies more than BINS half-octaves below the top: folded.
        assert_eq!(h.weights[0], 10.0);
        assert_eq!(h.total, 11.0);
        assert_eq!(h.quantile(0.5), None, "the median is below resolution");
        assert!(h.level_above_count(0.5).unwrap() >= 1e9);
    }

    #[test]
    fn decay_forgets_old_values_and_rescaling_keeps_the_answers() {
        let growth = LogHistogram::growth_for_memory(100.0);
        let mut h = LogHistogram::default();
        for _ in 0..1000 {
            h.add(100.0, growth);
        }
        for _ in 0..2000 {
            h.add(1.0, growth);
        }
        // Old hundreds weigh (0.99)^2000 ≈ 2e-9 of the newest value now.
        assert!(h.level_above_count(1e-6).unwrap() <= 2.0);
        assert!((h.count() - 100.0).abs() < 1.0, "{}", h.count());
        // Enough values to rescale several times, and weights stay finite.
        for _ in 0..100_000 {
            h.add(1.0, growth);
        }
        assert!(h.next.is_finite() && h.next <= RESCALE_AT);
        assert!((h.count() - 100.0).abs() < 1.0);
    }

    #[test]
    fn values_that_are_not_finite_or_negative_are_ignored() {
        let mut h = LogHistogram::default();
        h.add(f64::NAN, 1.0);
        h.add(f64::INFINITY, 1.0);
        h.add(-1.0, 1.0);
        assert_eq!(h, LogHistogram::default());
    }
}
