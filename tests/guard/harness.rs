//! The guard detectors' calibration harness (used by
//! `tests/guard_calibration.rs` and `examples/guard_calibration.rs`):
//! streams fed through a linear model and the detectors the way the
//! trainer feeds them.
//!
//! Per example, in stream order: the outlier detector judges the
//! features; an outlier is held and goes no further. Otherwise the live
//! version (published every `PUBLISH_EVERY` examples, as the server's
//! minibatches do) scores the example before it is learned, and label
//! sanity observes that score; an example of a flagged source is held.
//! What is not held is learned by the model and by the outlier detector.
//! With the guard off everything is learned.

// Each includer uses part of it.
#![allow(dead_code)]

use std::sync::Arc;

use eddy::config::{LabelConfig, OutlierConfig};
use eddy::learn::guard::{FlagChange, LabelSanity, OutlierDetector};
use eddy::learn::{
    Example, FeatureHasher, LabelSpace, Learner, OptimizerConfig, Params, Target, TaskKind,
};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Examples per published version (the default minibatch).
pub const PUBLISH_EVERY: usize = 32;
/// Hash bits of the harness's models.
const HASH_BITS: u8 = 12;

/// One example of a stream, with who sent it.
#[derive(Debug, Clone)]
pub struct Row {
    pub example: Example,
    pub source: Option<String>,
}

/// What happened to one example.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outcome {
    pub outlier: bool,
    /// Held because its source was flagged (after observing it).
    pub held_for_labels: bool,
    /// The live version predicted it right (classification, before
    /// learning it; examples held as outliers are scored too).
    pub correct: bool,
}

/// A stream's run: outcomes in order, and every flag change with the
/// index of the example that caused it.
#[derive(Debug, Default)]
pub struct Run {
    pub outcomes: Vec<Outcome>,
    pub changes: Vec<(usize, FlagChange)>,
}

/// Which detectors run.
#[derive(Debug, Clone)]
pub struct Guard {
    pub outliers: Option<OutlierConfig>,
    pub labels: Option<LabelConfig>,
    pub max_sources: usize,
}

impl Guard {
    /// Both detectors at their defaults.
    pub fn on() -> Self {
        Self {
            outliers: Some(OutlierConfig::default()),
            labels: Some(LabelConfig::default()),
            max_sources: 1000,
        }
    }

    pub fn off() -> Self {
        Self {
            outliers: None,
            labels: None,
            max_sources: 1000,
        }
    }
}

/// Runs `rows` through a fresh binary model (AdaGrad, the server's
/// default) under `guard`.
pub fn run(rows: &[Row], guard: &Guard) -> Run {
    let space = Arc::new(LabelSpace::new(TaskKind::Binary, Vec::new()).expect("binary space"));
    let mut learner = Learner::new(Params::new(space, HASH_BITS), OptimizerConfig::default());
    let mut live = learner.params().clone();
    let mut outliers = guard.outliers.as_ref().map(OutlierDetector::new);
    let mut labels = guard
        .labels
        .as_ref()
        .map(|c| LabelSanity::new(c, guard.max_sources));
    let mut run = Run::default();
    let mut learned = 0usize;
    for (i, row) in rows.iter().enumerate() {
        let x = &row.example.features;
        let y = row.example.target;
        let scored = live.score(x, y);
        let mut outcome = Outcome {
            correct: scored.correct(),
            ..Outcome::default()
        };
        outcome.outlier = outliers.as_ref().is_some_and(|d| d.judge(x).is_some());
        if !outcome.outlier
            && let Some(l) = labels.as_mut()
        {
            let verdict = l.observe(row.source.as_deref(), &scored);
            if let Some(change) = verdict.change {
                run.changes.push((i, change));
            }
            outcome.held_for_labels = verdict.flagged;
        }
        if !outcome.outlier && !outcome.held_for_labels {
            learner.learn_one(x, y);
            if let Some(d) = outliers.as_mut() {
                d.learn(x);
            }
            learned += 1;
            if learned.is_multiple_of(PUBLISH_EVERY) {
                live = learner.params().clone();
            }
        }
        run.outcomes.push(outcome);
    }
    run
}

impl Run {
    pub fn outliers(&self) -> usize {
        self.outcomes.iter().filter(|o| o.outlier).count()
    }

    pub fn held_for_labels(&self) -> usize {
        self.outcomes.iter().filter(|o| o.held_for_labels).count()
    }

    /// Names flagged at any time.
    pub fn flagged_sources(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .changes
            .iter()
            .filter_map(|(_, c)| match c {
                FlagChange::Flagged(e) => Some(e.source.clone()),
                FlagChange::Cleared(_) => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Accuracy of the live version on the examples `pick` selects.
    pub fn accuracy(&self, pick: impl Fn(usize) -> bool) -> f64 {
        let (mut n, mut correct) = (0usize, 0usize);
        for (i, o) in self.outcomes.iter().enumerate() {
            if pick(i) {
                n += 1;
                correct += usize::from(o.correct);
            }
        }
        correct as f64 / n.max(1) as f64
    }
}

/// Parses JSON Lines values into rows, the sources taking turns from
/// `sources` (none: unattributed).
pub fn rows(values: &[Value], sources: &[&str]) -> Vec<Row> {
    let space = LabelSpace::new(TaskKind::Binary, Vec::new()).expect("binary space");
    let hasher = FeatureHasher::new(HASH_BITS);
    values
        .iter()
        .enumerate()
        .map(|(i, v)| Row {
            example: Example::from_json(&v.to_string(), &hasher, &space).expect("a valid example"),
            source: (!sources.is_empty()).then(|| sources[i % sources.len()].to_owned()),
        })
        .collect()
}

/// Like `rows`, but each source sends `batch` consecutive rows before the
/// next takes its turn (senders that post large batches).
pub fn rows_in_batches(values: &[Value], sources: &[&str], batch: usize) -> Vec<Row> {
    let mut out = rows(values, &[]);
    for (i, row) in out.iter_mut().enumerate() {
        row.source = Some(sources[(i / batch.max(1)) % sources.len()].to_owned());
    }
    out
}

/// Like `flood`, but everyone posts batches: the four honest sources take
/// turns sending `batch` rows each, and from row `from` on the attacker
/// follows each honest batch with one of its own, `copies` inverted
/// copies of every row in it.
pub fn flood_in_batches(
    values: &[Value],
    from: usize,
    copies: usize,
    batch: usize,
) -> (Vec<Row>, Vec<bool>) {
    let honest = rows_in_batches(values, &["h0", "h1", "h2", "h3"], batch);
    let mut out = Vec::with_capacity(values.len() + values.len().saturating_sub(from) * copies);
    let mut is_honest = Vec::with_capacity(out.capacity());
    for (c, chunk) in honest.chunks(batch.max(1)).enumerate() {
        out.extend(chunk.iter().cloned());
        is_honest.extend(std::iter::repeat_n(true, chunk.len()));
        for (j, row) in chunk.iter().enumerate() {
            if c * batch + j < from {
                continue;
            }
            let inverted = match row.example.target {
                Target::Class(k) => Target::Class(1 - k),
                t => t,
            };
            for _ in 0..copies {
                out.push(Row {
                    example: Example {
                        features: row.example.features.clone(),
                        target: inverted,
                    },
                    source: Some("attacker".to_owned()),
                });
                is_honest.push(false);
            }
        }
    }
    (out, is_honest)
}

/// The numeric row `name` hashes to in the harness's models.
pub fn row_of(name: &str) -> u32 {
    FeatureHasher::new(HASH_BITS).numeric(name)
}

/// A stable stream with heavy tails: `c` standard Cauchy, `l` lognormal
/// with sigma 2, `u` uniform; label = [u + 0.3 tanh(c) + noise > 0.5].
pub fn heavy_tailed(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let c = (std::f64::consts::PI * (rng.random::<f64>() - 0.5)).tan();
            let l = (2.0 * normal(&mut rng)).exp();
            let u: f64 = rng.random();
            let noise = 0.2 * normal(&mut rng);
            let label = u + 0.3 * c.tanh() + noise > 0.5;
            json!({"features": {"c": c, "l": l, "u": u}, "label": u8::from(label)})
        })
        .collect()
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut rand::rngs::StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `values` with feature `name` multiplied by `factor` on rows `broken`;
/// also says which rows' value actually changed (a 0 stays 0).
pub fn unit_error(
    values: &[Value],
    name: &str,
    factor: f64,
    broken: std::ops::Range<usize>,
) -> (Vec<Value>, Vec<bool>) {
    let mut changed = vec![false; values.len()];
    let out = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut v = v.clone();
            if broken.contains(&i)
                && let Some(x) = v["features"][name].as_f64()
            {
                changed[i] = x != 0.0;
                v["features"][name] = json!(x * factor);
            }
            v
        })
        .collect();
    (out, changed)
}

/// Four honest sources taking turns on `values`; from row `from` on, an
/// attacker resends each example `copies` times with its label inverted,
/// right after the honest one. Returns the rows and, per row, whether it
/// is honest.
pub fn flood(values: &[Value], from: usize, copies: usize) -> (Vec<Row>, Vec<bool>) {
    let honest = rows(values, &["h0", "h1", "h2", "h3"]);
    let mut out = Vec::with_capacity(values.len() + (values.len() - from) * copies);
    let mut is_honest = Vec::with_capacity(out.capacity());
    for (i, row) in honest.into_iter().enumerate() {
        let attack = i >= from;
        let inverted = match row.example.target {
            Target::Class(c) => Target::Class(1 - c),
            t => t,
        };
        let copy = Row {
            example: Example {
                features: row.example.features.clone(),
                target: inverted,
            },
            source: Some("attacker".to_owned()),
        };
        out.push(row);
        is_honest.push(true);
        if attack {
            for _ in 0..copies {
                out.push(copy.clone());
                is_honest.push(false);
            }
        }
    }
    (out, is_honest)
}

/// Share of `part` in `whole`, as a percentage.
pub fn percent(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}
