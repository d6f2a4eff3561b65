//! The ingestion guard's detectors, as pure deterministic logic: the
//! checks feedback passes before the trainer learns it.
//!
//! - `schema.rs`: `Schema`, declared features (type, range, categories,
//!   required, unknown ones refused) checked on the raw feature set.
//! - `outliers.rs`: `OutlierDetector`, numeric values far beyond what each
//!   feature's own history reaches.
//! - `labels.rs`: `LabelSanity`, per source, labels the live model
//!   confidently contradicts far more often than it used to and than the
//!   other sources' at the same time.
//! - `blocks.rs`: `TimeBlocks`, label sanity's recent period by blocks of
//!   arrival, to compare sources at the same moments.
//! - `histogram.rs`: `LogHistogram`, the decayed log-scale histogram both
//!   detectors calibrate on.
//!
//! No clocks, IO, threads or randomness: every decision depends only on
//! the examples observed and their order, and every state is `Clone +
//! Serialize + Deserialize`, so a snapshot restored and fed the same
//! examples continues bit for bit. Quarantine, log records, events and
//! metrics are the serving layer's (`serving::guard`); so is the choice of
//! what to feed: outliers learn only admitted examples, label sanity
//! observes what passed the feature checks.

pub mod blocks;
pub mod histogram;
pub mod labels;
pub mod outliers;
pub mod schema;

pub use histogram::LogHistogram;
pub use labels::{Evidence, FlagChange, LabelSanity, LabelVerdict, SourceLabels};
pub use outliers::{Outlier, OutlierDetector};
pub use schema::{JsonKind, Schema, Violation};
