//! `eddy train`: batch and out-of-core training with the server's engine.
//! Each epoch re-streams the inputs through `ExampleStream` (parsing on
//! its own thread, bounded chunks), optionally through a bounded shuffle
//! buffer, into `Learner::learn_one`, exactly the update the server's
//! trainer applies. A `holdout` share of rows (chosen by row number, the
//! same rows every epoch) is never trained on and is evaluated at the end.

use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::data::{DataError, ExampleStream, Input, ReadOptions, ReadSummary};
use crate::learn::{Example, FeatureNames, LabelSpace, Learner};

use super::report::{Report, Tally};

/// The shuffle buffer `eddy train` uses unless told otherwise. Files are
/// often in time order, and consecutive rows of a stream are alike: fed in
/// that order, SGD takes correlated steps and ends fitted to the end of the
/// file. Releasing rows in random order from a buffer of this many makes
/// the result the fit of the whole file (on Elec2 × 20: log loss 0.514
/// against 0.576 in file order; the full-batch optimum is 0.513). It costs
/// a few MB (10,000 parsed rows), not a pass over the data.
pub const DEFAULT_SHUFFLE_BUFFER: usize = 10_000;

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: u32,
    /// Examples held back and released in random order; 0: file order.
    pub shuffle_buffer: usize,
    /// Share of rows held out for evaluation, in [0, 1).
    pub holdout: f64,
    pub seed: u64,
    pub read: ReadOptions,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 1,
            shuffle_buffer: DEFAULT_SHUFFLE_BUFFER,
            holdout: 0.0,
            seed: 0,
            read: ReadOptions::default(),
        }
    }
}

/// What training did.
#[derive(Debug, Clone, Serialize)]
pub struct Trained {
    pub epochs: u32,
    /// Examples learned, over all epochs.
    pub examples: u64,
    /// Rows read per epoch (training and held out).
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    /// Figures on the held-out rows, when there were some.
    pub holdout: Option<Report>,
    /// The shuffle buffer used (0: file order) and its seed.
    pub shuffle_buffer: usize,
    pub seed: u64,
    /// The last pass's read summary; its `names` are those of the first.
    pub read: ReadSummary,
}

/// Whether row `n` (counted across the inputs of a pass) is held out.
fn held_out(n: u64, share: f64) -> bool {
    share > 0.0
        && (xxh3_64_with_seed(&n.to_le_bytes(), 0x686f_6c64) as f64 / u64::MAX as f64) < share
}

/// Trains `learner` on `inputs`; `progress` is called after each chunk
/// with the epoch, and the rows and bytes read so far in it.
pub fn train(
    learner: &mut Learner,
    inputs: &[Input],
    options: &TrainOptions,
    mut progress: impl FnMut(u32, u64, u64),
) -> Result<Trained, DataError> {
    let space: Arc<LabelSpace> = learner.params().space.clone();
    let hasher = learner.params().hasher();
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut examples = 0u64;
    let mut rows = 0u64;
    let mut summary = ReadSummary::default();
    let mut shuffle: Vec<Example> = Vec::with_capacity(options.shuffle_buffer);
    let mut learn = |learner: &mut Learner, e: Example, rng: &mut StdRng, examples: &mut u64| {
        let e = if options.shuffle_buffer == 0 {
            e
        } else if shuffle.len() < options.shuffle_buffer {
            shuffle.push(e);
            return;
        } else {
            let i = rng.random_range(0..shuffle.len());
            std::mem::replace(&mut shuffle[i], e)
        };
        learner.learn_one(&e.features, e.target);
        *examples += 1;
    };
    let mut names = FeatureNames::default();
    for epoch in 0..options.epochs.max(1) {
        // Feature names are noted on the first pass; later ones repeat it.
        let read = ReadOptions {
            names: epoch == 0,
            ..options.read.clone()
        };
        let mut stream = ExampleStream::spawn(inputs.to_vec(), read, hasher, space.clone());
        let mut n = 0u64;
        while let Some(chunk) = stream.next_chunk() {
            for e in chunk {
                if !held_out(n, options.holdout) {
                    learn(learner, e, &mut rng, &mut examples);
                }
                n += 1;
            }
            progress(epoch, n, stream.bytes_read());
        }
        summary = stream.finish()?;
        if epoch == 0 {
            names = std::mem::take(&mut summary.names);
        }
        rows = n;
    }
    // What the shuffle buffer still holds, in random order.
    while !shuffle.is_empty() {
        let i = rng.random_range(0..shuffle.len());
        let e = shuffle.swap_remove(i);
        learner.learn_one(&e.features, e.target);
        examples += 1;
    }
    let holdout = if options.holdout > 0.0 {
        let mut tally = Tally::new(&space);
        let mut stream =
            ExampleStream::spawn(inputs.to_vec(), options.read.clone(), hasher, space.clone());
        let mut n = 0u64;
        while let Some(chunk) = stream.next_chunk() {
            for e in chunk {
                if held_out(n, options.holdout) {
                    tally.add(&learner.params().predict(&e.features), e.target);
                }
                n += 1;
            }
        }
        stream.finish()?;
        Some(tally.report())
    } else {
        None
    };
    let seconds = started.elapsed().as_secs_f64();
    Ok(Trained {
        epochs: options.epochs.max(1),
        examples,
        rows,
        seconds,
        rows_per_second: (rows as f64 * f64::from(options.epochs.max(1))) / seconds.max(1e-9),
        holdout,
        shuffle_buffer: options.shuffle_buffer,
        seed: options.seed,
        read: ReadSummary { names, ..summary },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holdout_share_is_stable_and_about_right() {
        let held = (0..100_000u64).filter(|n| held_out(*n, 0.2)).count();
        assert!((19_000..21_000).contains(&held), "{held}");
        assert_eq!(held_out(12, 0.2), held_out(12, 0.2));
        assert!(!(0..1000u64).any(|n| held_out(n, 0.0)));
    }
}
