//! The `eddy` binary: parses the command line, loads the configuration,
//! sets up logging and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use eddy::app::{App, NotSaved};
use eddy::cli::{Cli, Command};
use eddy::config::Config;

/// Exit codes: 0 a clean run; `NotSaved::EXIT_CODE` (74) stopped, but a
/// final snapshot could not be written (what was not saved is on stderr);
/// 2 a command-line error (clap); 1 anything else (a bad config, a
/// listener or trainer that failed).
fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eddy: {e:#}");
            if e.downcast_ref::<NotSaved>().is_some() {
                ExitCode::from(NotSaved::EXIT_CODE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Config { config } => {
            let config = Config::load(config.as_deref(), std::env::vars())?;
            print!("{}", toml::to_string(&config)?);
            Ok(())
        }
        Command::Train(args) => eddy::batch::commands::train_command(args),
        Command::Eval(args) => eddy::batch::commands::eval_command(args),
        Command::Snapshot(command) => eddy::batch::commands::snapshot_command(command),
        Command::Serve { config, repair } => {
            // Configuration errors end the process before any socket is bound.
            let mut config = Config::load(config.as_deref(), std::env::vars())?;
            config.storage.repair |= repair;
            eddy::telemetry::init(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("eddy-worker")
                .build()?;
            runtime.block_on(serve(config))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let models: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
    let app = App::build(config).await?;
    tracing::info!(addr = %app.local_addr()?, admin = %app.admin_addr()?, ?models, "eddy serving");
    let token = app.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        token.cancel();
    });
    app.run().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// mimalloc: request handling allocates many small short-lived buffers
/// (bodies, feature lists, responses), where it is measurably faster than
/// the system allocator (README, performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
