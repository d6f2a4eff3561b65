//! Builds one served model from its configuration: takes its directory
//! (`DirLock`), restores its newest snapshot (or starts it fresh), opens
//! its feedback log, and creates its store, queue, join cache, monitor,
//! guard and trainer. The same for a model of the configuration file at
//! start-up and for one added at runtime (`PUT /admin/models/{model}`).

use super::*;

/// A model ready to serve: what requests use, its trainer (not started)
/// and the lock on its directory.
pub struct Built {
    pub runtime: ModelRuntime,
    pub trainer: Trainer,
    pub lock: DirLock,
    /// Its feedback log (`None` with `storage.wal = false`), retired when
    /// the model is deleted.
    pub log: Option<Arc<LazyLog>>,
}

/// Builds `m` (already validated as part of `config`).
pub fn build(config: &Config, m: &ModelConfig, clock: &SharedClock) -> anyhow::Result<Built> {
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
    // Seeded from another directory's snapshot: its own is written at
    // once, so a restart never goes back to the seed (which may be gone).
    let from_seed = loaded.snapshot.is_none() && seeded.is_some();
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
            let (version, created) = (snapshot.meta.version, snapshot.meta.model_created_at_ms);
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
    let floor =
        VersionFloor::open(&dir).with_context(|| format!("model {}: version record", m.name))?;
    let store = Arc::new(
        ModelStore::open(learner.params().clone(), version, meta, floor).with_context(|| {
            format!(
                "model {}: cannot record versions in {}",
                m.name,
                dir.display()
            )
        })?,
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
    let mut file_log = None;
    let log: Arc<dyn FeedbackLog> = if config.storage.wal {
        // Keys saved with the snapshot; those after it come back
        // with the log's replay.
        if let Err(e) = keys.load(&dir, next_example, std::time::SystemTime::now()) {
            if !config.storage.repair {
                return Err(
                    anyhow::Error::new(e).context(format!("model {}: idempotency keys", m.name))
                );
            }
            tracing::warn!(model = %m.name, error = %e, "idempotency keys cannot be read; going on without them (repair)");
        }
        let log = open_log(&m.name, &dir, config, meta.feedback_position)?;
        file_log = Some(log.clone());
        log
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
    let trainer = Trainer::new(TrainerParts {
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
            .owing(from_seed || (config.storage.wal && !has_state)),
        ),
        live,
        commands,
        monitor,
        guard,
        events: events.clone(),
        clock: clock.clone(),
        journal: log,
        recovery,
    });
    let runtime = ModelRuntime {
        name,
        config: m.clone(),
        space,
        hasher: FeatureHasher::new(m.hash_bits).with_max_per_example(m.features.max_per_example),
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
    };
    Ok(Built {
        log: file_log,
        runtime,
        trainer,
        lock,
    })
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
) -> anyhow::Result<Arc<LazyLog>> {
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
    use std::io::{BufRead, Read};
    /// The most a reference set may hold (decompressed): it is scored on
    /// every candidate, so a large one is a mistake, and a device that
    /// never ends must not exhaust memory.
    const MAX_BYTES: u64 = 256 << 20;
    // Checked before opening: opening a FIFO waits for a writer.
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a regular file", path.display());
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(
            flate2::read::GzDecoder::new(file).take(MAX_BYTES + 1),
        ))
    } else {
        Box::new(std::io::BufReader::new(file.take(MAX_BYTES + 1)))
    };
    let mut read = 0u64;
    let hasher = FeatureHasher::new(m.hash_bits);
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        read += line.len() as u64 + 1;
        anyhow::ensure!(
            read <= MAX_BYTES,
            "{} holds more than {} MiB",
            path.display(),
            MAX_BYTES >> 20
        );
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
