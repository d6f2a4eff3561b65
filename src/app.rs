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
use crate::http::listener::{CertFiles, Listener, connection_room};
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
use crate::serving::sources::FeedbackSources;
use crate::serving::trainer::{CANDIDATE, LAST_GOOD, Recovery, TrainerState};
use crate::serving::trainer::{SnapshotPolicy, Unsaved, epoch_ms};
use crate::serving::{
    JoinCache, ModelRuntime, ModelStore, ModelVersion, PublishMeta, Registry, SharedClock,
    SystemClock, Trainer, TrainerParts, TrainingStats, feedback_channel,
};

pub struct App {
    config: Arc<Config>,
    listener: TcpListener,
    admin_listener: TcpListener,
    /// `[server.tls]` and `[admin.tls]`, read at build.
    public_tls: Option<Arc<CertFiles>>,
    admin_tls: Option<Arc<CertFiles>>,
    state: AppState,
    trainers: Vec<Trainer>,
    /// Where the trainers run (`server.trainer_threads`).
    pool: TrainerPool,
    shutdown: CancellationToken,
    /// The model directories this process owns, until it ends.
    _locks: Vec<DirLock>,
}

impl App {
    /// Validates the config (as `Config::load` does) and binds the
    /// listeners; no task runs until `run`.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // The same checks `Config::load` made (and `eddy config` shows), for
        // a config built or changed in code; among them, no admin listener
        // off loopback without a token.
        config.validate()?;
        let mut registry = Registry::default();
        let mut trainers = Vec::new();
        let mut locks = Vec::new();
        let clock: SharedClock = Arc::new(SystemClock::default());
        for m in &config.models {
            let space = Arc::new(m.label_space()?);
            let dir = config.storage.model_dir(&m.name);
            // One owner per model directory: a second server, or `eddy
            // train --out`, fails here at once, so version numbers are
            // never handed out twice. Held until the app is dropped.
            let lock = DirLock::acquire(&dir, "eddy serve")?;
            let stale = remove_stale_temps(&dir)
                .with_context(|| format!("model {}: cannot clean {}", m.name, dir.display()))?;
            if stale > 0 {
                tracing::info!(model = %m.name, files = stale, "removed temp files a crash left behind");
            }
            locks.push(lock);
            let snapshots = SnapshotStore::configured(dir.clone(), &config.storage);
            let loaded = if config.storage.wal {
                snapshots.load_newest_resumable()?
            } else {
                snapshots.load_newest_valid()?
            };
            let loaded_skipped = loaded.skipped.len();
            for skipped in &loaded.skipped {
                tracing::error!(model = %m.name, error = %skipped, "damaged snapshot skipped");
            }
            let seeded = match (&loaded.snapshot, m.init_snapshot.as_str()) {
                (None, path) if !path.is_empty() => {
                    let (snapshot, file) = crate::batch::snapshot::load(std::path::Path::new(path))
                        .with_context(|| format!("models[{}].init_snapshot", m.name))?;
                    tracing::info!(model = %m.name, path = %file.display(), "seeded from init_snapshot");
                    Some((snapshot, file))
                }
                _ => None,
            };
            let loaded_from_file = loaded.snapshot.is_some() || seeded.is_some();
            let (learner, version, meta, created_ms, names, part, optimizer_resumes) = match loaded
                .snapshot
                .or(seeded)
            {
                Some((mut snapshot, path)) => {
                    snapshot.check_compatible(m, &path)?;
                    tracing::info!(model = %m.name, version = snapshot.meta.version, path = %path.display(), "loaded snapshot");
                    let meta = PublishMeta {
                        examples_trained: snapshot.meta.examples_trained,
                        feedback_position: snapshot.meta.feedback_position,
                        rolled_back_from: None,
                    };
                    let (version, created) =
                        (snapshot.meta.version, snapshot.meta.model_created_at_ms);
                    let names = snapshot.meta.feature_names.clone();
                    let resumes = snapshot.optimizer_resumes(&m.optimizer);
                    let part = snapshot.trainer.take();
                    let saved_with = snapshot.meta.optimizer;
                    let learner = snapshot.adopt(m.optimizer);
                    let part = part.map(|mut part| {
                        // Last-good and the candidate go on under the
                        // configured optimizer too, so a rollback keeps it.
                        for (_, l) in &mut part.learners {
                            *l = crate::persist::snapshot::adopt(l, &saved_with, m.optimizer);
                        }
                        part
                    });
                    (learner, version, meta, created, names, part, resumes)
                }
                None => {
                    let fresh = Learner::new(m.fresh_params(space.clone()), m.optimizer);
                    let meta = PublishMeta {
                        examples_trained: 0,
                        feedback_position: 0,
                        rolled_back_from: None,
                    };
                    (fresh, 1, meta, epoch_ms(), Arc::default(), None, true)
                }
            };
            let has_state = part.is_some();
            let mut guard_state: Option<GuardState> = None;
            let state: Option<(TrainerState, Vec<(String, Learner)>)> = part
                .map(|part| {
                    if let Some(bytes) = &part.guard {
                        guard_state = Some(GuardState::decode(bytes).map_err(|e| {
                            anyhow::anyhow!(
                                "model {}: the snapshot's guard state cannot be read: {e}",
                                m.name
                            )
                        })?);
                    }
                    postcard::from_bytes::<TrainerState>(&part.state)
                        .map(|s| (s, part.learners))
                        .with_context(|| {
                            format!(
                                "model {}: the snapshot's trainer state cannot be read",
                                m.name
                            )
                        })
                })
                .transpose()?;
            let floor = VersionFloor::open(&dir)
                .with_context(|| format!("model {}: version record", m.name))?;
            let store = Arc::new(
                ModelStore::open(learner.params().clone(), version, meta, floor).with_context(
                    || {
                        format!(
                            "model {}: cannot record versions in {}",
                            m.name,
                            dir.display()
                        )
                    },
                )?,
            );
            let keys = Arc::new(IdempotencyKeys::new(
                m.idempotency.capacity,
                m.idempotency.ttl(),
            ));
            // Where a restart continues: the snapshot's trainer state, or
            // (without one) its position with everything after it learned
            // afresh; with no snapshot at all, the log from its start.
            let next_example = state
                .as_ref()
                .map_or(meta.feedback_position, |(s, _)| s.next_example);
            let log: Arc<dyn FeedbackLog> = if config.storage.wal {
                // Keys saved with the snapshot; those after it come back
                // with the log's replay.
                if let Err(e) = keys.load(&dir, next_example, std::time::SystemTime::now()) {
                    if !config.storage.repair {
                        return Err(anyhow::Error::new(e)
                            .context(format!("model {}: idempotency keys", m.name)));
                    }
                    tracing::warn!(model = %m.name, error = %e, "idempotency keys cannot be read; going on without them (repair)");
                }
                open_log(&m.name, &dir, &config, meta.feedback_position)?
            } else {
                Arc::new(MemoryLog::starting_at(meta.feedback_position))
            };
            let recovery = log.keeps_records().then(|| {
                let (s, _) = state
                    .as_ref()
                    .map_or((None, None), |(s, _)| (Some(s), s.monitor.as_ref()));
                let mut waiting = guard_state
                    .as_ref()
                    .map(|g| g.waiting.clone())
                    .unwrap_or_default();
                waiting.sort_unstable();
                // The logged steps are replayed exactly only under the
                // guard and the optimizer that took them: the ones the
                // snapshot's state was saved with (no guard in a snapshot
                // from before the guard).
                // Without a snapshot the log's guard is not known, so only
                // a model without one replays it exactly. Otherwise the
                // examples are learned afresh, as after a stateless
                // snapshot.
                let guard_now = m
                    .guard
                    .enabled
                    .then(|| crate::serving::guard::fingerprint(&m.guard));
                let guard_then = guard_state.as_ref().map(|g| g.config);
                let same_guard = guard_now == guard_then;
                Recovery {
                    from: s.map_or(meta.feedback_position, |s| {
                        Trainer::log_from_state(s, guard_state.as_ref())
                    }),
                    waiting,
                    next_example,
                    applied: s.map_or(0, |s| s.applied),
                    trained_position: s.map_or(meta.feedback_position, |s| s.trained_position),
                    exact: (s.is_some() || !loaded_from_file) && same_guard && optimizer_resumes,
                    held: s.map(|s| s.held.clone()).unwrap_or_default(),
                    buffer: s
                        .and_then(|s| s.monitor.as_ref())
                        .map(|m| m.buffer.clone())
                        .unwrap_or_default(),
                    to: log.next_position(),
                    keys: Some(keys.clone()),
                }
            });
            let (queue, stream) = feedback_channel(m.training.queue_capacity.get(), log.clone());
            let stats = Arc::new(TrainingStats {
                recovering: recovery.is_some().into(),
                paused: state.as_ref().is_some_and(|(s, _)| s.paused).into(),
                examples_base: meta.examples_trained,
                snapshots_skipped: (loaded_skipped as u64).into(),
                ..TrainingStats::default()
            });
            let name: Arc<str> = Arc::from(m.name.as_str());
            let (commands_tx, commands) = tokio::sync::mpsc::channel(8);
            let live = store.live();
            let baseline = BaselineHandle::default();
            let monitor = match state {
                Some((
                    TrainerState {
                        monitor: Some(saved),
                        ..
                    },
                    mut learners,
                )) if m.monitor.enabled => {
                    let mut take = |name: &str| {
                        learners
                            .iter()
                            .position(|(n, _)| n == name)
                            .map(|i| learners.swap_remove(i).1)
                    };
                    let last_good = take(LAST_GOOD).with_context(|| {
                        format!(
                            "model {}: the snapshot's state has no last-good weights",
                            m.name
                        )
                    })?;
                    let candidate = take(CANDIDATE);
                    Some(Monitor::restore(
                        m.monitor.clone(),
                        m.task,
                        reference_set(m, &space)?,
                        saved,
                        last_good,
                        candidate,
                        baseline.clone(),
                    ))
                }
                _ => build_monitor(m, &space, &snapshots, &learner, &live, &baseline)?,
            };
            if let Some(monitor) = &monitor {
                // Readable before the trainer thread starts.
                stats.monitor.store(Arc::new(monitor.report()));
            }
            let guard = m.guard.enabled.then(|| match guard_state {
                Some(state) => Guard::restore(&m.guard, state),
                None => Guard::new(&m.guard),
            });
            if let Some(guard) = &guard {
                stats.guard.store(Arc::new(guard.report()));
            }
            let events = Arc::new(EventLog::default());
            trainers.push(Trainer::new(TrainerParts {
                model: name.clone(),
                learner,
                stream,
                sink: store.clone(),
                stats: stats.clone(),
                config: m.training,
                snapshots: Some(
                    SnapshotPolicy::new(
                        snapshots,
                        config.storage.snapshot_interval(),
                        m.clone(),
                        created_ms,
                        names,
                    )
                    .every_examples(config.storage.snapshot_every_examples)
                    .saving_keys(keys.clone())
                    // A run starts from a snapshot with its trainer's state,
                    // so that a crash before the next one replays exactly.
                    .owing(config.storage.wal && !has_state),
                ),
                live,
                commands,
                monitor,
                guard,
                events: events.clone(),
                clock: clock.clone(),
                journal: log,
                recovery,
            }));
            registry.insert(ModelRuntime {
                name,
                config: m.clone(),
                space,
                hasher: FeatureHasher::new(m.hash_bits)
                    .with_max_per_example(m.features.max_per_example),
                store,
                queue,
                joins: JoinCache::new(m.join.ttl(), m.join.capacity, m.join.max_bytes),
                keys,
                history: Default::default(),
                schema: (m.guard.enabled && !m.guard.features.is_empty())
                    .then(|| Schema::new(&m.guard.features, m.guard.unknown_features)),
                stats,
                created_at: UNIX_EPOCH + Duration::from_millis(created_ms),
                trainer: commands_tx,
                events,
                baseline,
            });
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
        let sources = FeedbackSources::new(&config);
        let shutdown = CancellationToken::new();
        let pool = TrainerPool::new(
            config.server.trainer_pool_threads(),
            shutdown.clone(),
            config.server.shutdown_grace(),
        )
        .context("cannot start the trainer pool")?;
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
            pool,
            shutdown,
            _locks: locks,
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

    /// Serves until the shutdown token is cancelled, then shuts down in
    /// order. Fails if a trainer died, so `main` can exit non-zero.
    pub async fn run(self) -> anyhow::Result<()> {
        let grace = self.config.server.shutdown_grace();
        let tracker = TaskTracker::new();
        for trainer in self.trainers {
            self.pool.start(trainer);
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
        let all_ended = self.pool.stop_all(grace * 2).await;
        // The admin listener and the status sampler stop on the shutdown
        // token.
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("the admin listener did not stop within the grace period");
        }
        if !all_ended {
            // Their final snapshots may still fail after this: say so
            // rather than exit 0 on work that may not be saved.
            let ended = self.pool.ended();
            unconfirmed = self
                .state
                .registry
                .iter()
                .map(|m| m.name.clone())
                .filter(|name| !ended.contains(name))
                .collect();
            tracing::warn!(models = ?unconfirmed, waited_ms = (grace * 2).as_millis() as u64, "trainers did not stop within the grace period; their final snapshots are not confirmed");
        } else {
            // Every trainer has published its last version: record it so
            // the next start continues right after it.
            for model in self.state.registry.iter() {
                if let Err(e) = model.store.settle() {
                    tracing::error!(model = %model.name, error = %e, "cannot record the last version");
                }
            }
        }
        if self.pool.failed() {
            anyhow::bail!("a trainer ended unexpectedly");
        }
        let unsaved = self.pool.take_unsaved();
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

/// Opens the model's feedback log (`<dir>/wal`), whose positions continue
/// the snapshot's: the records from `position` on are what the snapshot
/// does not hold, to be replayed. A model whose log holds nothing yet gets
/// it at its first record (`LazyLog`: no file, thread or buffer until
/// then). A log that ends before the snapshot's position holds nothing the
/// snapshot lacks (it was written while the log was off, or came with a
/// copied snapshot): it is moved aside, kept for the operator, and a new
/// one starts at the snapshot's position.
fn open_log(
    model: &str,
    dir: &std::path::Path,
    config: &Config,
    position: u64,
) -> anyhow::Result<Arc<dyn FeedbackLog>> {
    let wal = dir.join("wal");
    let options = config.storage.log_options(model);
    if LazyLog::absent(&wal) {
        return Ok(Arc::new(LazyLog::new(&wal, options, position)));
    }
    let open = |options| {
        LazyLog::new(&wal, options, position)
            .opened()
            .with_context(|| format!("model {model}: feedback log {}", wal.display()))
    };
    let (log, report) = open(options.clone())?;
    if log.next_position() < position {
        drop(log);
        let aside = dir.join(format!("wal-before-{position}-{}", epoch_ms()));
        tracing::warn!(model, log = %wal.display(), moved_to = %aside.display(), position, "the feedback log ends before the snapshot's position; starting a new one");
        std::fs::rename(&wal, &aside)
            .with_context(|| format!("model {model}: cannot move {} aside", wal.display()))?;
        return Ok(Arc::new(LazyLog::new(&wal, options, position)));
    }
    if let Some(torn) = &report.torn_tail {
        tracing::warn!(model, file = %torn.path.display(), offset = torn.offset, bytes = torn.bytes_dropped, "the feedback log ended in a torn record (a crash mid-write); truncated there");
    }
    Ok(Arc::new(log))
}

/// The model's monitor, unless disabled. Last-good starts as the newest
/// valid last-good snapshot, or else the version the model starts with.
fn build_monitor(
    m: &ModelConfig,
    space: &Arc<LabelSpace>,
    snapshots: &SnapshotStore,
    learner: &Learner,
    live: &ModelVersion,
    baseline: &BaselineHandle,
) -> anyhow::Result<Option<Monitor>> {
    if !m.monitor.enabled {
        return Ok(None);
    }
    let reference = reference_set(m, space)?;
    let last_good = match snapshots.load_newest_last_good()? {
        Some((snapshot, path)) => {
            snapshot.check_compatible(m, &path)?;
            tracing::info!(model = %m.name, version = snapshot.meta.version, "last-good from snapshot");
            Checkpoint {
                version: snapshot.meta.version,
                position: snapshot.meta.feedback_position,
                examples_trained: snapshot.meta.examples_trained,
                learner: snapshot.adopt(m.optimizer),
            }
        }
        None => Checkpoint {
            version: live.version,
            learner: learner.clone(),
            position: live.feedback_position,
            examples_trained: live.examples_trained,
        },
    };
    Ok(Some(Monitor::new(
        m.monitor.clone(),
        m.task,
        reference,
        last_good,
        baseline.clone(),
    )))
}

/// The model's reference set (`monitor.reference_set`), if it has one.
fn reference_set(m: &ModelConfig, space: &LabelSpace) -> anyhow::Result<Vec<Labelled>> {
    if m.monitor.reference_set.is_empty() {
        return Ok(Vec::new());
    }
    load_reference(std::path::Path::new(&m.monitor.reference_set), m, space)
        .with_context(|| format!("models[{}].monitor.reference_set", m.name))
}

/// Reads a reference set: JSON Lines `{"features": ..., "label": ...}`,
/// gzip when the name ends in `.gz`. Any bad line is an error naming it.
fn load_reference(
    path: &std::path::Path,
    m: &ModelConfig,
    space: &LabelSpace,
) -> anyhow::Result<Vec<Labelled>> {
    use std::io::BufRead;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let hasher = FeatureHasher::new(m.hash_bits);
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let ex = Example::from_json(&line, &hasher, space)
            .with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        out.push((ex.features, ex.target));
    }
    anyhow::ensure!(!out.is_empty(), "{} holds no examples", path.display());
    Ok(out)
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
        let at_ms = epoch_ms();
        for model in state.registry.iter() {
            model.history.record(model.status_point(at_ms));
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
