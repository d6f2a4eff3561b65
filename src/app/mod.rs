//! Builds every part of the server from a `Config` and owns start-up and
//! shutdown order.
//!
//! `App::build` loads each model's newest valid snapshot (or starts it
//! fresh), creates its store, queue, join cache and trainer, and binds the
//! public listener (so the real port is known before `run`,
//! which tests rely on). `App::run` starts the trainers, serves until the
//! shutdown token is cancelled, then shuts down in order: stop accepting
//! and let in-flight requests finish, then let each trainer train what is
//! queued, publish and snapshot, all bounded by `server.shutdown_grace_ms`;
//! last, record each model's last version so the next start continues it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ListenerLimits, ModelConfig};
use crate::http::admin::{ADMIN_PROBES, AdminState, admin_router};
use crate::http::listener::{CertFiles, FeedbackLane, Listener, connection_room};
use crate::http::refusals::Refusals;
use crate::http::{AppState, PUBLIC_PROBES, is_feedback, protect, public_router};
use crate::learn::guard::Schema;
use crate::learn::{Example, FeatureHasher, LabelSpace, Learner};
use crate::persist::atomic::remove_stale_temps;
use crate::persist::wal::MemoryLog;
use crate::persist::wal::{FeedbackLog, LazyLog};
use crate::persist::{DirLock, SnapshotStore, VersionFloor};
use crate::serving::events::EventLog;
use crate::serving::guard::{Guard, GuardState};
use crate::serving::idempotency::IdempotencyKeys;
use crate::serving::ingest::IngestPool;
use crate::serving::monitor::{BaselineHandle, Checkpoint, Labelled, Monitor};
use crate::serving::pool::TrainerPool;

pub mod catalog;
mod model;

use crate::serving::sources::FeedbackSources;
use crate::serving::trainer::{CANDIDATE, LAST_GOOD, Recovery, TrainerState};
use crate::serving::trainer::{SnapshotPolicy, Unsaved, epoch_ms};
use crate::serving::{
    JoinCache, ModelRuntime, ModelStore, ModelVersion, PublishMeta, Registry, SharedClock,
    SystemClock, Trainer, TrainerParts, TrainingStats, feedback_channel,
};
use catalog::Catalog;

pub struct App {
    config: Arc<Config>,
    listener: TcpListener,
    admin_listener: TcpListener,
    /// `[server.tls]` and `[admin.tls]`, read at build.
    public_tls: Option<Arc<CertFiles>>,
    admin_tls: Option<Arc<CertFiles>>,
    state: AppState,
    trainers: Vec<Trainer>,
    /// The models' configuration, directory locks and trainers (on the
    /// pool of `server.trainer_threads`), and their changes at runtime.
    catalog: Arc<Catalog>,
    shutdown: CancellationToken,
    /// The threads that serve connections starting with a feedback post
    /// (`server.feedback_io_threads`); dropped after the listener.
    lane: Option<FeedbackLane>,
}

impl App {
    /// Validates the config (as `Config::load` does) and binds the
    /// listeners; no task runs until `run`.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // The same checks `Config::load` made (and `eddy config` shows), for
        // a config built or changed in code; among them, no admin listener
        // off loopback without a token.
        config.validate()?;
        // A crash while `.models.json` was written leaves a temp file.
        remove_stale_temps(&config.storage.dir)
            .with_context(|| format!("cannot clean {}", config.storage.dir.display()))?;
        // Then the models added at runtime before (`.models.json`).
        let config = config.with_runtime_models()?;
        let mut registry = Registry::default();
        let mut trainers = Vec::new();
        let mut locks = Vec::new();
        let clock: SharedClock = Arc::new(SystemClock::default());
        for m in &config.models {
            let built = model::build(&config, m, &clock)?;
            locks.push((built.runtime.name.clone(), built.lock, built.log));
            trainers.push(built.trainer);
            registry.insert(built.runtime);
        }
        // Certificates are read before any socket is bound, so a bad file
        // stops start-up with its name.
        let load_tls = |tls: Option<&crate::config::TlsConfig>, key: &str| {
            tls.map(CertFiles::load)
                .transpose()
                .with_context(|| format!("{key}.tls"))
        };
        let public_tls = load_tls(config.server.tls.as_ref(), "server")?;
        let admin_tls = load_tls(config.admin.tls.as_ref(), "admin")?;
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot bind server.listen {}", config.server.listen))?;
        let admin_listener = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("cannot bind admin.listen {}", config.admin.listen))?;
        let request_timeout = config.server.limits().request_timeout;
        let max_body = config.server.max_body_bytes.get();
        let max_batch_instances = config.server.max_batch_instances.get();
        let ingest = IngestPool::start(config.server.ingest_options())
            .context("cannot start the feedback threads")?;
        let lane = config
            .server
            .feedback_lane()
            .map(|(threads, priority)| FeedbackLane::start(threads, priority))
            .transpose()
            .context("cannot start the feedback I/O threads")?;
        let sources = FeedbackSources::new(&config);
        let shutdown = CancellationToken::new();
        let pool = TrainerPool::new(
            config.server.trainer_pool_threads(),
            config.server.trainer_priority(),
            shutdown.clone(),
            config.server.shutdown_grace(),
        )
        .context("cannot start the trainer pool")?;
        let catalog = Arc::new(Catalog::new(config.clone(), clock, pool));
        for (name, lock, log) in locks {
            catalog.hold(name, lock, log);
        }
        Ok(Self {
            config: Arc::new(config),
            listener,
            admin_listener,
            public_tls,
            admin_tls,
            state: AppState::new(
                registry,
                max_body,
                max_batch_instances,
                ingest,
                sources,
                request_timeout,
            ),
            trainers,
            catalog,
            shutdown,
            lane,
        })
    }

    /// The bound public address (the real port when `listen` used port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound admin address (`/metrics`, `/admin/...`).
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin_listener.local_addr()
    }

    /// Cancelling this token starts a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Shared handles, for in-process tests.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The models' configuration and trainers (admin routes built by hand
    /// in tests).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone()
    }

    /// Serves until the shutdown token is cancelled, then shuts down in
    /// order. Fails if a trainer died, so `main` can exit non-zero.
    pub async fn run(self) -> anyhow::Result<()> {
        let grace = self.config.server.shutdown_grace();
        let tracker = TaskTracker::new();
        for trainer in self.trainers {
            self.catalog.start(trainer);
        }
        let (public_limits, admin_limits) = listener_limits(&self.config);
        let metrics = &self.state.metrics.listeners;
        let public_refusals = Refusals::new(metrics.instruments("public"));
        let admin_refusals = Refusals::new(metrics.instruments("admin"));
        let service = protect(
            public_router(self.state.clone(), &self.config.server),
            &public_limits,
            public_refusals.clone(),
            PUBLIC_PROBES,
            is_feedback,
        );
        let admin = protect(
            admin_router(AdminState {
                app: self.state.clone(),
                token: self.config.admin.token.clone(),
                storage: self.config.storage.clone(),
                trainer_timeout: self.config.admin.trainer_wait(),
                status_sample_ms: self.config.admin.status_sample_ms,
                catalog: self.catalog.clone(),
            }),
            &admin_limits,
            admin_refusals.clone(),
            ADMIN_PROBES,
            |_| false,
        );
        let admin_server = Listener::new(
            self.admin_listener,
            admin_limits,
            admin_refusals,
            self.admin_tls,
        );
        tracker.spawn(admin_server.serve(admin, self.shutdown.clone()));
        tracker.spawn(sample_status(
            self.state.clone(),
            Duration::from_millis(self.config.admin.status_sample_ms),
            self.shutdown.clone(),
        ));
        self.state.ready.store(true, Ordering::Release);
        let shutdown = self.shutdown.clone();
        let server = Listener::new(
            self.listener,
            public_limits,
            public_refusals,
            self.public_tls,
        )
        .with_lane(self.lane.as_ref().and_then(FeedbackLane::handle))
        .serve(service, shutdown.clone());
        tokio::pin!(server);
        tokio::select! {
            // The listener returns only after shutdown began and every
            // connection ended.
            () = &mut server => {}
            _ = shutdown.cancelled() => {
                self.state.ready.store(false, Ordering::Release);
                tracing::info!("shutting down: finishing in-flight requests");
                if tokio::time::timeout(grace, &mut server).await.is_err() {
                    tracing::warn!(grace_ms = grace.as_millis() as u64, "in-flight requests did not finish within the grace period");
                }
            }
        }
        self.state.ready.store(false, Ordering::Release);
        // A request that timed out or lost its client may still have its
        // feedback job running: let it log and queue before the trainers
        // close their queues.
        self.state.ingest.close();
        if !self.state.ingest.idle(grace).await {
            tracing::warn!("feedback jobs did not finish within the grace period");
        }
        tracing::info!("training what is queued");
        // The trainers bound their own draining by `grace`; allow a little
        // more for the final publish before giving up on them.
        let mut unconfirmed = Vec::new();
        let all_ended = self.catalog.pool().stop_all(grace * 2).await;
        // The admin listener and the status sampler stop on the shutdown
        // token.
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("the admin listener did not stop within the grace period");
        }
        if !all_ended {
            // Their final snapshots may still fail after this: say so
            // rather than exit 0 on work that may not be saved.
            let ended = self.catalog.pool().ended();
            unconfirmed = self
                .state
                .models()
                .iter()
                .map(|m| m.name.clone())
                .filter(|name| !ended.contains(name))
                .collect();
            tracing::warn!(models = ?unconfirmed, waited_ms = (grace * 2).as_millis() as u64, "trainers did not stop within the grace period; their final snapshots are not confirmed");
        } else {
            // Every trainer has published its last version: record it so
            // the next start continues right after it.
            for model in self.state.models().iter() {
                if let Err(e) = model.store.settle() {
                    tracing::error!(model = %model.name, error = %e, "cannot record the last version");
                }
            }
        }
        if self.catalog.pool().failed() {
            anyhow::bail!("a trainer ended unexpectedly");
        }
        let unsaved = self.catalog.pool().take_unsaved();
        if !unsaved.is_empty() || !unconfirmed.is_empty() {
            // Each trainer logged its own; the process exits with
            // `NotSaved::EXIT_CODE` and repeats them on stderr.
            return Err(NotSaved {
                unsaved,
                unconfirmed,
                waited: grace * 2,
            }
            .into());
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The shutdown finished, but the disk refused some model's final
/// snapshot, so trained work is not saved (and, without the feedback log,
/// lost), or a trainer did not stop in time, so its final snapshot is not
/// confirmed. `eddy serve` exits with `NotSaved::EXIT_CODE`.
#[derive(Debug)]
pub struct NotSaved {
    pub unsaved: Vec<Unsaved>,
    /// Models whose trainers had not stopped after `waited`.
    pub unconfirmed: Vec<Arc<str>>,
    pub waited: Duration,
}

impl NotSaved {
    /// `EX_IOERR` of sysexits.h: stopped, but an input/output error lost
    /// work. Distinct from 1 (any other failure) so a supervisor can tell.
    pub const EXIT_CODE: u8 = 74;
}

impl std::fmt::Display for NotSaved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped, but not everything was saved")?;
        for unsaved in &self.unsaved {
            write!(f, "\n  {unsaved}")?;
        }
        for model in &self.unconfirmed {
            write!(
                f,
                "\n  model {model}: the trainer had not stopped after {} ms (twice server.shutdown_grace_ms), so its final snapshot is not confirmed; with storage.wal the feedback log keeps what was accepted for the next start",
                self.waited.as_millis()
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for NotSaved {}

/// File descriptors kept out of the connection limits: snapshots, logs,
/// feedback-log segments, the runtime.
const FD_RESERVE: usize = 256;

/// Both listeners' limits, with the public `max_connections` lowered
/// (and a warning) if the file-descriptor limit cannot hold both
/// listeners' connections: refusing a connection beats failing to
/// accept it.
fn listener_limits(config: &Config) -> (ListenerLimits, ListenerLimits) {
    let mut public = config.server.limits();
    let admin = config.admin.limits();
    let room = connection_room(FD_RESERVE);
    if public.max_connections.saturating_add(admin.max_connections) > room {
        let lowered = room.saturating_sub(admin.max_connections).max(1);
        tracing::warn!(
            configured = public.max_connections,
            lowered,
            admin = admin.max_connections,
            "server.max_connections lowered to fit the file-descriptor limit (raise it with ulimit -n or LimitNOFILE)"
        );
        public.max_connections = lowered;
    }
    (public, admin)
}

/// Records each model's status point every `every` until shutdown (the
/// admin status page's history; `serving::history`).
async fn sample_status(state: AppState, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // Off the request runtime: with many models a pass is not free.
        let state = state.clone();
        let pass = tokio::task::spawn_blocking(move || {
            let at_ms = epoch_ms();
            for model in state.models().iter() {
                model.history.record(model.status_point(at_ms));
            }
        });
        if let Err(e) = pass.await {
            tracing::warn!(error = %e, "status sampling failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_saved_names_each_model_and_what_it_lost() {
        let e = NotSaved {
            unsaved: vec![Unsaved {
                model: Arc::from("a"),
                version: 9,
                examples_trained: 500,
                saved_version: 4,
                saved_examples: 320,
                in_log: false,
                cause: "No space left on device (os error 28)".into(),
            }],
            unconfirmed: vec![Arc::from("b")],
            waited: Duration::from_millis(20_000),
        };
        let text = e.to_string();
        for want in [
            "model a: the final snapshot of v9 was not written (No space left on device (os error 28)); 180 examples trained since the newest snapshot on disk (v4) are not saved",
            "they are lost",
            "model b: the trainer had not stopped after 20000 ms",
        ] {
            assert!(text.contains(want), "{text}");
        }
    }
}
