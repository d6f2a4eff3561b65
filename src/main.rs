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
            // Tokens are never printed (`Config::redacted`).
            print!("{}", toml::to_string(&config.redacted())?);
            // Then the models added at runtime, as comments: marked so, and
            // the output stays a configuration file eddy reads.
            match config.clone().with_runtime_models() {
                Ok(all) => print!("{}", eddy::config::runtime_models_comment(&all)?),
                Err(e) => eprintln!("warning: the models added at runtime cannot be read: {e}"),
            }
            Ok(())
        }
        Command::Train(args) => eddy::batch::commands::train_command(args),
        Command::Eval(args) => eddy::batch::commands::eval_command(args),
        Command::Snapshot(command) => eddy::batch::commands::snapshot_command(command),
        Command::Openapi => {
            print!(
                "{}",
                eddy::http::openapi::to_json(&eddy::http::public_document())
            );
            Ok(())
        }
        Command::Serve { config, repair } => {
            // Configuration errors end the process before any socket is bound.
            let mut config = Config::load(config.as_deref(), std::env::vars())?;
            config.storage.repair |= repair;
            eddy::telemetry::init(&config.log);
            eddy::serving::priority::keep_huge_pages(config.server.huge_pages);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("eddy-worker")
                .build()?;
            let served = runtime.block_on(serve(config));
            // A trainer past its shutdown bound (`NotSaved`) runs on a
            // blocking thread; dropping the runtime would wait for it.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            served
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Listening before anything else: a SIGTERM during start-up (replaying
    // a long log) is kept and stops the server as soon as it runs, instead
    // of meeting the default action or a handler not yet polled.
    let signals = Signals::listen()?;
    let models: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
    let app = App::build(config).await?;
    let token = app.shutdown_token();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutdown signal received");
        token.cancel();
    });
    tracing::info!(addr = %app.local_addr()?, admin = %app.admin_addr()?, ?models, "eddy serving");
    app.run().await
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere), registered when created.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use anyhow::Context;
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}

/// mimalloc: request handling allocates many small short-lived buffers
/// (bodies, feature lists, responses), where it is measurably faster than
/// the system allocator (README, performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
