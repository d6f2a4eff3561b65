//! `eddy eval`: the figures of a model on data, either as it is (every row
//! predicted by the same weights) or prequentially (`--prequential`: each
//! row predicted, then learned, in order: River's `progressive_val_score`),
//! with rolling figures along the stream for reports and plots.

use std::sync::Arc;

use serde::Serialize;

use crate::config::ModelConfig;
use crate::data::{DataError, ExampleStream, Input, ReadOptions, ReadSummary};
use crate::learn::{LabelSpace, Learner, Output, Target};
use crate::serving::Trainer;
use crate::serving::events::EventKind;
use crate::serving::queue::Feedback;
use crate::serving::{Clock, ManualClock};

use super::report::{Report, Tally};

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub prequential: bool,
    /// Rows per point of the rolling series.
    pub every: u64,
    pub read: ReadOptions,
}

/// One point of the rolling series: figures over the last `every` rows.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub row: u64,
    pub value: f64,
}

/// A safety-loop decision along the stream (with `--monitor`).
#[derive(Debug, Clone, Serialize)]
pub struct Marker {
    /// Rows predicted when it happened.
    pub row: u64,
    pub kind: EventKind,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    #[serde(flatten)]
    pub report: Report,
    /// Which figure `rolling` follows (`accuracy` or `mae`).
    pub rolling_metric: &'static str,
    pub rolling: Vec<Point>,
    /// Rollbacks, refusals, promotions... when run through the monitor.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub markers: Vec<Marker>,
    pub read: ReadSummary,
}

/// The running figures of one evaluation: over all rows, and over each
/// block of `every` rows for the rolling series.
struct Series {
    space: Arc<LabelSpace>,
    every: u64,
    total: Tally,
    window: Tally,
    rolling: Vec<Point>,
}

impl Series {
    fn new(space: Arc<LabelSpace>, every: u64) -> Self {
        Self {
            total: Tally::new(&space),
            window: Tally::new(&space),
            every: every.max(1),
            rolling: Vec::new(),
            space,
        }
    }

    fn add(&mut self, out: &Output, y: Target) {
        self.total.add(out, y);
        self.window.add(out, y);
        if self.window.rows() >= self.every {
            self.rolling.push(Point {
                row: self.total.rows(),
                value: self.window.report().headline().1,
            });
            self.window = Tally::new(&self.space);
        }
    }

    fn rows(&self) -> u64 {
        self.total.rows()
    }

    fn finish(self, markers: Vec<Marker>, read: ReadSummary) -> Evaluation {
        let report = self.total.report();
        Evaluation {
            rolling_metric: report.headline().0,
            report,
            rolling: self.rolling,
            markers,
            read,
        }
    }
}

pub fn evaluate(
    learner: &mut Learner,
    inputs: &[Input],
    options: &EvalOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<Evaluation, DataError> {
    let space = learner.params().space.clone();
    let mut stream = ExampleStream::spawn(
        inputs.to_vec(),
        options.read.clone(),
        learner.params().hasher(),
        space.clone(),
    );
    let mut series = Series::new(space, options.every);
    while let Some(chunk) = stream.next_chunk() {
        for e in &chunk {
            series.add(&learner.params().predict(&e.features), e.target);
            if options.prequential {
                learner.learn_one(&e.features, e.target);
            }
        }
        progress(series.rows(), stream.bytes_read());
        stream.recycle(chunk);
    }
    let read = stream.finish()?;
    Ok(series.finish(Vec::new(), read))
}

/// Rows of a file carry no arrival times; `evaluate_monitored` takes them
/// to arrive this far apart on the trainer's clock.
pub const ROW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// Prequential evaluation through the server's trainer and monitor, with
/// the model's configuration as it is: each row is predicted by the live
/// version, then fed as feedback; a minibatch of `training.minibatch_size`
/// is trained as soon as it is queued. The trainer reads a manual clock
/// that moves `ROW_INTERVAL` per row, so the run is deterministic.
/// Rollbacks, gate refusals, promotions and blamed sources become markers
/// at the row where they happened.
pub fn evaluate_monitored(
    model: &ModelConfig,
    learner: Learner,
    inputs: &[Input],
    options: &EvalOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<Evaluation, DataError> {
    let space = learner.params().space.clone();
    let hasher = learner.params().hasher();
    let clock = Arc::new(ManualClock::at(
        crate::serving::SystemClock::default().now(),
    ));
    let (mut trainer, queue, _commands) = Trainer::in_memory_from(model, learner, clock.clone());
    let minibatch = model.training.minibatch_size.get();
    let mut stream =
        ExampleStream::spawn(inputs.to_vec(), options.read.clone(), hasher, space.clone());
    let mut series = Series::new(space, options.every);
    let mut markers = Vec::new();
    let mut seen = 0;
    while let Some(chunk) = stream.next_chunk() {
        for e in chunk {
            clock.advance(ROW_INTERVAL);
            series.add(&trainer.live().params.predict(&e.features), e.target);
            let fb = Feedback::labelled(e.features, e.target, None);
            let sent = queue
                .reserve(1)
                .map_err(|e| e.to_string())
                .and_then(|r| r.send(vec![fb]).map_err(|e| e.to_string()));
            if sent.is_err() {
                // Cannot happen: the queue is drained below at every
                // minibatch; stop rather than drop silently.
                return Err(DataError::Format {
                    file: "<monitor>".into(),
                    message: "the training queue refused an example".into(),
                });
            }
            if queue.depth() >= minibatch {
                trainer.step(minibatch);
                for ev in trainer.events().since(seen) {
                    markers.push(Marker {
                        row: series.rows(),
                        kind: ev.kind,
                        reason: ev.reason,
                    });
                }
                seen = trainer.events().total();
            }
        }
        progress(series.rows(), stream.bytes_read());
    }
    while trainer.step(minibatch) > 0 {}
    let read = stream.finish()?;
    Ok(series.finish(markers, read))
}
