//! `eddy train`: batch and out-of-core training with the server's engine.
//! Each epoch re-streams the inputs through `ExampleStream` (parsing on
//! its own thread, bounded chunks), optionally through a bounded shuffle
//! buffer, into `Learner::learn_one`, exactly the update the server's
//! trainer applies. A `holdout` share of rows (chosen by row number, the
//! same rows every epoch) is never trained on and is evaluated at the end.

use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::data::{DataError, ExampleStream, Input, ReadOptions, ReadSummary, held_out};
use crate::learn::{FeatureNames, LabelSpace, Learner};

use super::report::{Report, Tally};
use super::shuffle::ShuffleBuffer;

/// The shuffle buffer `eddy train` uses unless told otherwise. Files are
/// often in time order, and consecutive rows of a stream are alike: fed in
/// that order, SGD takes correlated steps and ends fitted to the end of the
/// file. Releasing rows in random order from a bounded buffer breaks that
/// up. On Elec2 × 20 (log loss of the final model on Elec2; the full-batch
/// optimum is 0.513):
///
/// | buffer | log loss |
/// | ---: | ---: |
/// | 0 (file order) | 0.576 |
/// | 2,048 | 0.557 |
/// | 4,096 | 0.531 |
/// | 10,000 | 0.515 |
///
/// With `ShuffleBuffer`'s prefetch a 10,000-row buffer trains as fast as
/// file order end to end (parsing is the bound), and costs about 1.5 MB of
/// narrow rows. Memory grows with the row width (about 16 bytes per
/// feature per row), bounded by `DEFAULT_SHUFFLE_MB`.
pub const DEFAULT_SHUFFLE_BUFFER: usize = 10_000;
/// And at most this many MB of them, so wide rows cannot make the default
/// costly (10,000 rows of 1,000 features would be 160 MB).
pub const DEFAULT_SHUFFLE_MB: usize = 32;

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: u32,
    /// Examples held back and released in random order; 0: file order.
    pub shuffle_buffer: usize,
    /// Bytes the shuffle buffer may hold (wide rows reach it first).
    pub shuffle_bytes: usize,
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
            shuffle_bytes: DEFAULT_SHUFFLE_MB << 20,
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
    /// Time spent learning alone (the shuffle buffer and `learn_one`, not
    /// waiting for the reader), and examples learned per second of it.
    pub learning_seconds: f64,
    pub learning_rows_per_second: f64,
    /// Figures on the held-out rows, when there were some.
    pub holdout: Option<Report>,
    /// The shuffle buffer used (0: file order) and its seed.
    pub shuffle_buffer: usize,
    pub seed: u64,
    /// The last pass's read summary; its `names` are those of the first.
    pub read: ReadSummary,
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
    let mut shuffle = ShuffleBuffer::new(options.shuffle_buffer, options.shuffle_bytes);
    let mut names = FeatureNames::default();
    let mut learning = std::time::Duration::ZERO;
    for epoch in 0..options.epochs.max(1) {
        // Feature names are noted on the first pass (later ones repeat
        // it), for the rows that are trained on.
        let read = ReadOptions {
            names: epoch == 0,
            holdout: options.holdout,
            ..options.read.clone()
        };
        let mut stream = ExampleStream::spawn(inputs.to_vec(), read, hasher, space.clone());
        let mut n = 0u64;
        while let Some(chunk) = stream.next_chunk() {
            // Learned (and held-out) examples go back to the reader, whose
            // next rows reuse their feature buffers.
            let mut spent = Vec::with_capacity(chunk.len());
            let learning_from = Instant::now();
            for e in chunk {
                if held_out(n, options.holdout) {
                    spent.push(e);
                } else {
                    shuffle.push(e, &mut rng, |e| {
                        learner.learn_one(&e.features, e.target);
                        examples += 1;
                        spent.push(e);
                    });
                }
                n += 1;
            }
            learning += learning_from.elapsed();
            stream.recycle(spent);
            progress(epoch, n, stream.bytes_read());
        }
        summary = stream.finish()?;
        if epoch == 0 {
            names = std::mem::take(&mut summary.names);
        }
        rows = n;
    }
    // What the shuffle buffer still holds, in random order.
    let learning_from = Instant::now();
    shuffle.drain(&mut rng, |e| {
        learner.learn_one(&e.features, e.target);
        examples += 1;
    });
    learning += learning_from.elapsed();
    let learning_seconds = learning.as_secs_f64();
    let holdout = if options.holdout > 0.0 {
        let mut tally = Tally::new(&space);
        let mut stream =
            ExampleStream::spawn(inputs.to_vec(), options.read.clone(), hasher, space.clone());
        let mut n = 0u64;
        while let Some(chunk) = stream.next_chunk() {
            for e in &chunk {
                if held_out(n, options.holdout) {
                    tally.add(&learner.params().predict(&e.features), e.target);
                }
                n += 1;
            }
            stream.recycle(chunk);
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
        learning_seconds,
        learning_rows_per_second: examples as f64 / learning_seconds.max(1e-9),
        holdout,
        shuffle_buffer: options.shuffle_buffer,
        seed: options.seed,
        read: ReadSummary { names, ..summary },
    })
}
