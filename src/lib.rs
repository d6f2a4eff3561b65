//! eddy: an online-learning model server. It answers predictions over REST
//! and keeps learning from labelled feedback, publishing each new version
//! of the weights atomically while requests are served.
//!
//! Codemap (see `ARCHITECTURE.md` at the repository root for more):
//! - `learn`: pure maths: feature hashing, linear models, optimizers, metrics;
//! - `serving`: per-model runtime: store, feedback queue, trainer, join cache;
//! - `http`: the REST API, its error table, and the connection layer of
//!   both listeners (accept loop, timeouts, limits, TLS);
//! - `data`: CSV and JSON Lines files to examples (batch training);
//! - `batch`: `eddy train` and `eddy eval`;
//! - `config`, `app`, `cli`, `telemetry`: wiring.

pub mod app;
pub mod batch;
pub mod cli;
pub mod config;
pub mod data;
pub mod http;
pub mod learn;
pub mod metrics;
pub mod persist;
pub mod serving;
pub mod telemetry;
