//! Batch and out-of-core work with the server's engine: `train` (epochs,
//! shuffle buffer, holdout) and `eval` (as-is or prequential), reading
//! files through `data::ExampleStream`, writing and reading the server's
//! snapshot format (`snapshot`).

pub mod commands;
pub mod eval;
pub mod plot;
mod progress;
pub mod report;
pub mod shuffle;
pub mod snapshot;
pub mod train;

pub use eval::{EvalOptions, Evaluation, Marker, evaluate, evaluate_monitored};
pub use report::{Report, Tally};
pub use train::{DEFAULT_SHUFFLE_BUFFER, DEFAULT_SHUFFLE_MB, TrainOptions, Trained, train};
