//! Command-line interface: `eddy serve` and `eddy config`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    },
    /// Print the effective configuration (built-in default, file and
    /// EDDY_* variables) as TOML, after validating it.
    Config {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}
