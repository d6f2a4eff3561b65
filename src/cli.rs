//! Command-line interface: `eddy serve`, `eddy config`, `eddy train`,
//! `eddy eval` and `eddy snapshot`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::data::Format;

#[derive(Debug, Parser)]
#[command(name = "eddy", version, about = "An online-learning model server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the configured models over HTTP, learning from feedback.
    Serve {
        /// TOML file laid over the built-in default configuration.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Truncate a feedback log at mid-log corruption (dropping what
        /// follows) instead of refusing to start: `storage.repair`.
        #[arg(long)]
        repair: bool,
    },
    /// Print the effective configuration (built-in default, file and
    /// EDDY_* variables) as TOML, after validating it.
    Config {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Train a configured model on files (batch or out-of-core) and write
    /// a snapshot that `eddy serve` loads.
    Train(TrainArgs),
    /// Evaluate a model on files: as it is, or prequentially.
    Eval(EvalArgs),
    /// Read a snapshot file.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Print the public API's OpenAPI 3.1 document (what `GET
    /// /openapi.json` serves; committed as deploy/openapi.json).
    Openapi,
}

/// What every data-reading command shares.
#[derive(Debug, Args)]
pub struct DataArgs {
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The configured model (its task, classes, hash_bits, optimizer).
    #[arg(long)]
    pub model: String,
    /// CSV (header row) or JSON Lines files, plain or gzip; `-` is stdin; a
    /// directory of feedback log segments (a model's `wal/` or its
    /// `storage.archive_dir` folder) reads the examples the server accepted.
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// The CSV column holding the label.
    #[arg(long, default_value = "label")]
    pub label: String,
    /// Force the format instead of reading it from the file names.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Bad rows to tolerate (each reported) before failing.
    #[arg(long, default_value_t = 0)]
    pub skip_bad_rows: u64,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Passes over the data (files are re-read each time).
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    /// Examples held and released in random order (bounded memory); 0
    /// keeps file order.
    #[arg(long, default_value_t = crate::batch::DEFAULT_SHUFFLE_BUFFER)]
    pub shuffle_buffer: usize,
    /// And at most this many MB of them (wide rows reach it first).
    #[arg(long, default_value_t = crate::batch::DEFAULT_SHUFFLE_MB)]
    pub shuffle_buffer_mb: usize,
    /// Share of rows never trained on and evaluated at the end.
    #[arg(long, default_value_t = 0.0)]
    pub holdout: f64,
    /// Seed of the shuffle buffer.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the snapshot; default the model's storage directory,
    /// so `eddy serve` starts from it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start from this snapshot (file or directory) instead of a fresh model.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// A snapshot file or directory; default the model's storage
    /// directory (a fresh model with --prequential when there is none).
    #[arg(long)]
    pub snapshot: Option<PathBuf>,
    /// Test-then-train over the stream, in order.
    #[arg(long)]
    pub prequential: bool,
    /// With --prequential: run through the server's trainer and monitor
    /// (gate, promotion, rollback), reporting its decisions by row.
    #[arg(long, requires = "prequential")]
    pub monitor: bool,
    /// Rows per point of the rolling figures.
    #[arg(long, default_value_t = 1000)]
    pub every: u64,
    /// Print the final figures as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG chart of the rolling figure along the stream.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Metadata, shape and checksum of a snapshot (file or directory).
    Inspect { path: PathBuf },
    /// The whole model as JSON.
    Export {
        path: PathBuf,
        #[arg(long, value_enum, default_value = "json")]
        format: ExportFormat,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Json,
}
