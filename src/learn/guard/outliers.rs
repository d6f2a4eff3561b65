//! `OutlierDetector`: is a numeric feature's value far outside what the
//! model has learned from that feature?
//!
//! Per tracked row: a robust running centre (a mean whose steps are
//! clipped at a few typical deviations, so one wild value cannot drag it,
//! that forgets at a rate that follows slow drift) and a decayed
//! `LogHistogram` of the feature's own deviations from that centre. The
//! feature's *calibrated extreme* is the level all but its `TAIL_VALUES`
//! largest recent deviations lie under; a value is an outlier when its
//! deviation is more than `threshold` times that. The calibration is per
//! feature, so a heavy-tailed but stable feature (its extreme is large)
//! is judged against its own tail, and a tight one against its own.
//!
//! A feature is judged only once it has had `warmup` values and more than
//! `TAIL_VALUES` of its recent deviations lie above the histogram's floor:
//! a feature that was constant (Elec2's `vicprice` for its first 17,424
//! rows) has no spread and is not judged; its first variations are
//! learned and teach it one, which then widens with every admitted value
//! up to `threshold` times the extreme (a range that widens, even fast,
//! is followed).
//!
//! The caller feeds `learn` only examples it admitted, so what is
//! quarantined never widens the extreme it is judged by. The flip side:
//! a permanent shift larger than `threshold` extremes stays an outlier
//! until an operator releases such examples (and they are learned).
//!
//! Memory: per tracked row about `ROW_BYTES` bytes, for at most
//! `max_features` rows (first come, first tracked).

use serde::{Deserialize, Serialize};

use super::histogram::{BINS, LogHistogram};
use crate::config::OutlierConfig;
use crate::learn::FeatureVec;

/// Recent deviations allowed above a feature's calibrated extreme: it is
/// about the third largest of the last `DEVIATION_MEMORY` (a quantile of
/// 1 - 2/8192, far out in the tail, yet not a single value).
const TAIL_VALUES: f64 = 2.0;
/// Values the deviation histogram remembers (its decay).
const DEVIATION_MEMORY: f64 = 8192.0;
/// Values the centre remembers: it follows drift slower than a day of
/// half-hourly data but much faster than the extreme forgets.
const CENTRE_MEMORY: f64 = 256.0;
/// A value moves the centre by at most this many typical (median)
/// deviations.
const CENTRE_CLIP: f64 = 3.0;

/// Values between refreshes of the median deviation.
const TYPICAL_EVERY: u64 = 8;

/// Approximate memory of one tracked row (state plus histogram).
pub const ROW_BYTES: usize =
    std::mem::size_of::<Track>() + std::mem::size_of::<(u32, u32)>() + BINS * 8;

/// See the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutlierDetector {
    threshold: f64,
    warmup: u64,
    max_features: usize,
    /// `(row, index into tracks)`, sorted by row.
    index: Vec<(u32, u32)>,
    /// In the order rows were first learned.
    tracks: Vec<Track>,
}

/// The worst feature of an example beyond the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Outlier {
    /// Hashed row of the feature.
    pub row: u32,
    pub value: f64,
    /// Deviation from the centre, in calibrated extremes (above `threshold`).
    pub score: f64,
    /// Where the feature's values centre.
    pub centre: f64,
    /// How far its normal values reach from the centre.
    pub extreme: f64,
}

/// What is known of one numeric row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Track {
    row: u32,
    /// Values learned.
    n: u64,
    centre: f64,
    deviations: LogHistogram,
    /// The calibrated extreme, or 0 while the spread is unknown.
    extreme: f64,
    /// The median deviation, or 0 while unknown (clips the centre's steps).
    typical: f64,
}

impl OutlierDetector {
    pub fn new(config: &OutlierConfig) -> Self {
        Self {
            threshold: config.threshold,
            warmup: config.warmup,
            max_features: config.max_features,
            index: Vec::new(),
            tracks: Vec::new(),
        }
    }

    /// The numeric feature of `x` lying furthest beyond its calibrated
    /// extreme, if any lies beyond `threshold` of them.
    pub fn judge(&self, x: &FeatureVec) -> Option<Outlier> {
        let mut worst: Option<Outlier> = None;
        for f in x.features.iter().filter(|f| f.numeric) {
            let Some(t) = self.track(f.index) else {
                continue;
            };
            if t.n < self.warmup || t.extreme <= 0.0 {
                continue;
            }
            // The hasher refuses non-finite values; should one get here it
            // is as far out as a value can be.
            let deviation = (f.value - t.centre).abs();
            let score = if deviation.is_finite() {
                deviation / t.extreme
            } else {
                f64::INFINITY
            };
            if score > self.threshold && worst.is_none_or(|w| score > w.score) {
                worst = Some(Outlier {
                    row: f.index,
                    value: f.value,
                    score,
                    centre: t.centre,
                    extreme: t.extreme,
                });
            }
        }
        worst
    }

    /// Learns the numeric features of an admitted example.
    pub fn learn(&mut self, x: &FeatureVec) {
        for f in x
            .features
            .iter()
            .filter(|f| f.numeric && f.value.is_finite())
        {
            if let Some(t) = self.track_mut(f.index) {
                t.learn(f.value);
            }
        }
    }

    /// Rows tracked.
    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }

    /// What the detector holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.index.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.tracks.capacity() * std::mem::size_of::<Track>()
            + self
                .tracks
                .iter()
                .map(|t| t.deviations.heap_bytes())
                .sum::<usize>()
    }

    fn track(&self, row: u32) -> Option<&Track> {
        let i = self.index.binary_search_by_key(&row, |e| e.0).ok()?;
        Some(&self.tracks[self.index[i].1 as usize])
    }

    /// The row's track, made if there is room.
    fn track_mut(&mut self, row: u32) -> Option<&mut Track> {
        let slot = match self.index.binary_search_by_key(&row, |e| e.0) {
            Ok(i) => self.index[i].1,
            Err(_) if self.tracks.len() >= self.max_features => return None,
            Err(i) => {
                // `max_features` is at most config::MAX_BOUND (2^28), so
                // the slot fits in u32.
                let slot = self.tracks.len() as u32;
                self.index.insert(i, (row, slot));
                self.tracks.push(Track::new(row));
                slot
            }
        };
        Some(&mut self.tracks[slot as usize])
    }
}

impl Track {
    fn new(row: u32) -> Self {
        Self {
            row,
            n: 0,
            centre: 0.0,
            deviations: LogHistogram::default(),
            extreme: 0.0,
            typical: 0.0,
        }
    }

    fn learn(&mut self, x: f64) {
        if self.n == 0 {
            self.centre = x;
        }
        let d = x - self.centre;
        self.deviations
            .add(d.abs(), LogHistogram::growth_for_memory(DEVIATION_MEMORY));
        self.n += 1;
        // A running mean at first, then an exponentially weighted one.
        let rate = (1.0 / self.n as f64).max(1.0 / CENTRE_MEMORY);
        let clip = CENTRE_CLIP * self.typical;
        let step = if clip > 0.0 { d.clamp(-clip, clip) } else { d };
        self.centre += rate * step;
        // The median only clips the centre's steps: refreshing it every
        // few values is as good, and spares a scan of the histogram.
        if self.n % TYPICAL_EVERY == 1 {
            self.typical = self.deviations.quantile(0.5).unwrap_or(0.0);
        }
        self.extreme = self
            .deviations
            .level_above_count(TAIL_VALUES)
            .unwrap_or(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::Feature;
    use rand::{Rng, SeedableRng};

    fn config(warmup: u64, max_features: usize) -> OutlierConfig {
        OutlierConfig {
            threshold: 4.0,
            warmup,
            max_features,
            ..OutlierConfig::default()
        }
    }

    fn one(row: u32, value: f64) -> FeatureVec {
        FeatureVec {
            features: vec![Feature {
                index: row,
                value,
                numeric: true,
            }],
        }
    }

    /// Feeds `values` the way the trainer does: judge, then learn what was
    /// admitted. Returns how many were judged outliers.
    fn run(d: &mut OutlierDetector, values: impl IntoIterator<Item = f64>) -> usize {
        let mut flagged = 0;
        for v in values {
            let x = one(7, v);
            if d.judge(&x).is_some() {
                flagged += 1;
            } else {
                d.learn(&x);
            }
        }
        flagged
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(12)
    }

    #[test]
    fn a_value_a_thousand_times_too_large_is_an_outlier_and_names_its_row() {
        let mut d = OutlierDetector::new(&config(100, 16));
        let mut r = rng();
        assert_eq!(run(&mut d, (0..2000).map(|_| r.random_range(0.2..0.8))), 0);
        let x = FeatureVec {
            features: vec![
                Feature {
                    index: 3,
                    value: 1.0,
                    numeric: false,
                },
                Feature {
                    index: 7,
                    value: 500.0,
                    numeric: true,
                },
            ],
        };
        let o = d.judge(&x).expect("an outlier");
        assert_eq!((o.row, o.value), (7, 500.0));
        assert!(o.score > 100.0, "{o:?}");
        assert!((o.centre - 0.5).abs() < 0.05, "{o:?}");
        assert!(o.extreme > 0.3 && o.extreme < 0.5, "{o:?}");
        // A value at the edge of the range is not.
        assert_eq!(d.judge(&one(7, 0.79)), None);
    }

    #[test]
    fn nothing_is_judged_before_warmup_or_beyond_max_features() {
        let mut d = OutlierDetector::new(&config(500, 2));
        let mut r = rng();
        for _ in 0..499 {
            let v = r.random_range(0.0..1.0);
            d.learn(&FeatureVec {
                features: vec![
                    Feature {
                        index: 1,
                        value: v,
                        numeric: true,
                    },
                    Feature {
                        index: 2,
                        value: v,
                        numeric: true,
                    },
                    Feature {
                        index: 3,
                        value: v,
                        numeric: true,
                    },
                ],
            });
        }
        assert_eq!(d.tracked(), 2, "row 3 came third: not tracked");
        assert_eq!(d.judge(&one(1, 1e6)), None, "499 values: still warming up");
        d.learn(&one(1, 0.5));
        assert!(d.judge(&one(1, 1e6)).is_some());
        assert_eq!(d.judge(&one(3, 1e6)), None, "untracked rows are not judged");
        assert!(d.heap_bytes() >= 2 * BINS * 8);
    }

    #[test]
    fn a_heavy_tailed_stable_feature_rarely_trips_it() {
        let mut r = rng();
        let cauchy =
            |r: &mut rand::rngs::StdRng| (std::f64::consts::PI * (r.random::<f64>() - 0.5)).tan();
        let mut d = OutlierDetector::new(&config(500, 4));
        let n = 50_000;
        let flagged = run(&mut d, (0..n).map(|_| cauchy(&mut r)));
        assert!(flagged * 1000 < n, "{flagged} of {n} Cauchy values flagged");
        // Yet it is judged: a value far beyond its own tail is an outlier.
        assert!(d.judge(&one(7, 1e9)).is_some());
    }

    #[test]
    fn slow_drift_and_a_gradually_widening_range_raise_no_alarm() {
        let mut r = rng();
        let mut d = OutlierDetector::new(&config(500, 4));
        // A level moving by a thousand times its spread over the stream:
        // followed, so where the values were at first is now an outlier.
        let drift = (0..40_000).map(|i| i as f64 / 40.0 + r.random_range(-0.5..0.5));
        assert_eq!(run(&mut d, drift), 0);
        assert_eq!(d.judge(&one(7, 1000.0)), None);
        assert!(d.judge(&one(7, 0.0)).is_some());
        // A timestamp-like feature that only grows.
        let mut d = OutlierDetector::new(&config(500, 4));
        assert_eq!(
            run(&mut d, (0..40_000).map(|i| 8.3e8 + 1800.0 * i as f64)),
            0
        );
        // A spread doubling every 5,000 values.
        let mut d = OutlierDetector::new(&config(500, 4));
        let widening = (0..40_000).map(|i| {
            let scale = 2f64.powf(i as f64 / 5000.0);
            scale * r.random_range(-1.0..1.0)
        });
        assert_eq!(run(&mut d, widening), 0);
    }

    #[test]
    fn a_feature_that_was_constant_is_not_judged_on_its_first_variations() {
        let mut r = rng();
        let mut d = OutlierDetector::new(&config(500, 4));
        let constant = std::iter::repeat_n(0.0035, 10_000);
        let varying = (0..5000).map(|_| 0.0035 * (r.random_range(-1.5f64..1.5)).exp());
        let flagged = run(&mut d, constant.chain(varying));
        assert!(
            flagged <= 10,
            "{flagged} flagged after the feature started to vary"
        );
        // Once it has a spread, a unit error on it is caught.
        assert!(d.judge(&one(7, 3.5)).is_some());
    }

    #[test]
    fn quarantined_values_do_not_teach_it_and_the_state_round_trips() {
        let mut r = rng();
        let mut d = OutlierDetector::new(&config(100, 4));
        run(&mut d, (0..1000).map(|_| r.random_range(0.0..1.0)));
        // A sustained unit error: judged, not learned, so it stays an outlier.
        let broken: Vec<f64> = (0..1000)
            .map(|_| 1000.0 * r.random_range(0.1..1.0))
            .collect();
        assert_eq!(run(&mut d, broken.iter().copied()), 1000);
        let bytes = postcard::to_stdvec(&d).expect("encode");
        let back: OutlierDetector = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, d);
        let x = one(7, 0.3);
        let mut a = d.clone();
        let mut b = back;
        for _ in 0..10 {
            a.learn(&x);
            b.learn(&x);
        }
        assert_eq!(a, b, "a restored detector continues bit for bit");
    }
}
