//! Reading labelled examples from files for batch and out-of-core training
//! (`eddy train`, `eddy eval`): CSV with a header row and JSON Lines
//! (`{"features": {...}, "label": ...}`), plain or gzip, from files or
//! stdin, hashed with the same `FeatureHasher` the server uses.
//!
//! `ExampleStream` parses on its own thread and hands over bounded chunks,
//! so memory stays flat whatever the file size and parsing overlaps
//! training. A bad row is an error naming file and line, unless the
//! `skip_bad_rows` budget allows it; skipped rows are counted and reported,
//! never dropped silently.

pub mod csv;
pub mod input;
pub mod jsonl;
pub mod kept_out;
pub mod stream;

pub use input::{Format, Input};
pub use stream::{BadRow, ExampleStream, ReadOptions, ReadSummary, held_out};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    BadRow {
        file: String,
        line: u64,
        message: String,
    },
    #[error("{file}: {message}")]
    Format { file: String, message: String },
    #[error("more than {budget} bad rows (--skip-bad-rows {budget}); the last: {last}")]
    TooManyBadRows { budget: u64, last: String },
}
