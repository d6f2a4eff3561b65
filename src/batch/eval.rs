//! `eddy eval`: the figures of a model on data, either as it is (every row
//! predicted by the same weights) or prequentially (`--prequential`: each
//! row predicted, then learned, in order: River's `progressive_val_score`),
//! with rolling figures along the stream for reports and plots.

use serde::Serialize;

use crate::data::{DataError, ExampleStream, Input, ReadOptions, ReadSummary};
use crate::learn::Learner;

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

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    #[serde(flatten)]
    pub report: Report,
    /// Which figure `rolling` follows (`accuracy` or `mae`).
    pub rolling_metric: &'static str,
    pub rolling: Vec<Point>,
    pub read: ReadSummary,
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
    let mut total = Tally::new(&space);
    let mut window = Tally::new(&space);
    let mut rolling = Vec::new();
    let every = options.every.max(1);
    while let Some(chunk) = stream.next_chunk() {
        for e in chunk {
            let out = learner.params().predict(&e.features);
            total.add(&out, e.target);
            window.add(&out, e.target);
            if options.prequential {
                learner.learn_one(&e.features, e.target);
            }
            if window.rows() >= every {
                rolling.push(Point {
                    row: total.rows(),
                    value: window.report().headline().1,
                });
                window = Tally::new(&space);
            }
        }
        progress(total.rows(), stream.bytes_read());
    }
    let read = stream.finish()?;
    let report = total.report();
    Ok(Evaluation {
        rolling_metric: report.headline().0,
        report,
        rolling,
        read,
    })
}
