//! `Trainer`: one per model, on its own blocking thread. Drains the
//! feedback queue into minibatches (by size, or after `max_wait_ms`), hands
//! each to the model's `Monitor` (scored by the live and last-good versions
//! before it is learned), trains it on a private `Learner`, and publishes a
//! new version every `publish_every` minibatches through a `VersionSink`,
//! once the monitor's gate has passed the candidate.
//!
//! Publishing is cheap because weights are copy-on-write blocks: a publish
//! clones block pointers, and the next minibatch copies only the blocks it
//! writes. Under backlog publishes are also coalesced to at most one per
//! `min_publish_interval_ms` (and the gate to `gate_budget` of the
//! trainer's time); when the queue runs dry anything trained is published
//! at once, so feedback shows in predictions within about `max_wait_ms`.
//!
//! The trainer acts on the monitor's decisions: it promotes (and snapshots)
//! last-good versions, rolls back (publishing last-good's weights as a new
//! version that records `rolled_back_from`), and records events. A refused
//! candidate is never published: the working copy goes back to last-good,
//! the examples since are replayed without blamed sources (or dropped), and
//! that result is published at once as the rollback version.
//!
//! Waiting uses the tokio runtime's timers through `Handle::block_on`, but
//! the training itself runs on this thread, never on the request executor.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Serialize;
use thiserror::Error;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{ModelConfig, OnDegrade, TrainingConfig};
use crate::learn::{FeatureNames, Learner};
use crate::persist::{Snapshot, SnapshotFile, SnapshotMeta, SnapshotStore};

use super::clock::SharedClock;
use super::events::{Event, EventKind, EventLog};
use super::idempotency::IdempotencyKeys;
use super::monitor::{
    Checkpoint, Detection, GateVerdict, Monitor, MonitorReport, Trigger, WindowOutcome,
};
use super::queue::{Feedback, FeedbackQueue, FeedbackStream};
use super::store::{ModelVersion, PublishMeta, VersionSink};
use crate::persist::wal::FeedbackLog;

mod cadence;
mod commands;
mod recovery;
mod snapshots;
mod stats;

use cadence::Cadence;
pub use commands::{RollbackError, RolledBack, TrainerCommand};
pub use snapshots::{SnapshotPolicy, epoch_ms};
pub use stats::{Timings, TrainingStats};

/// A model's trainer. Built once with `Trainer::new`; its fields are its
/// own (the thread that runs it is the only one that touches them).
pub struct Trainer {
    model: Arc<str>,
    /// The working copy: trained on every minibatch, published when due.
    learner: Learner,
    stream: FeedbackStream,
    sink: Arc<dyn VersionSink>,
    stats: Arc<TrainingStats>,
    config: TrainingConfig,
    /// `None`: no snapshots (memory-only use, tests of the trainer alone).
    snapshots: Option<SnapshotPolicy>,
    /// The live version: the last this trainer published, or the first.
    live: Arc<ModelVersion>,
    /// Admin requests (see `TrainerCommand`).
    commands: mpsc::Receiver<TrainerCommand>,
    /// `None` when `[models.monitor] enabled = false`.
    monitor: Option<Monitor>,
    events: Arc<EventLog>,
    /// Feedback position the working copy includes.
    trained_position: u64,
    /// The learner as it was at the last publish (the live version's
    /// weights with their optimizer state): what a frozen candidate keeps
    /// and what snapshots write, so a candidate the gate holds never
    /// reaches the disk.
    published: Learner,
    /// A minibatch taken when `on_degrade = "pause"` stopped learning,
    /// learned on resume.
    held: Vec<Feedback>,
    /// Where every time-based decision reads the time.
    clock: SharedClock,
    cadence: Cadence,
    /// The durable feedback log and the positions to learn from it before
    /// taking new feedback (what was accepted after the snapshot the
    /// model started from).
    replay: Option<Replay>,
    replaying: bool,
    /// Synced before each snapshot, so a snapshot never records a
    /// position the log could lose.
    log: Option<Arc<dyn FeedbackLog>>,
    /// Queue position where this process's own feedback starts (after the
    /// replayed examples): `processed` counts from here.
    origin: u64,
}

/// Examples to learn again from the log at start-up: `from..to`.
pub struct Replay {
    pub log: Arc<dyn FeedbackLog>,
    pub from: u64,
    pub to: u64,
    /// Where the keys of replayed keyed requests go back.
    pub keys: Option<Arc<IdempotencyKeys>>,
}

/// Everything a trainer is built from.
pub struct TrainerParts {
    pub model: Arc<str>,
    /// The weights (and optimizer state) of `live`.
    pub learner: Learner,
    pub stream: FeedbackStream,
    pub sink: Arc<dyn VersionSink>,
    pub stats: Arc<TrainingStats>,
    pub config: TrainingConfig,
    pub snapshots: Option<SnapshotPolicy>,
    pub live: Arc<ModelVersion>,
    pub commands: mpsc::Receiver<TrainerCommand>,
    pub monitor: Option<Monitor>,
    pub events: Arc<EventLog>,
    pub clock: SharedClock,
    /// With a durable log: what to replay before new feedback.
    pub replay: Option<Replay>,
}

/// What woke the trainer while it waited for feedback.
enum Wake {
    Items,
    Flush,
    Command(TrainerCommand),
    Stop,
    Closed,
}

/// A trainer that keeps nothing on disk, with its queue's sending side and
/// its command channel: what in-process drivers (`eddy eval --monitor`,
/// benchmarks, tests) use.
pub type InMemory = (Trainer, FeedbackQueue, mpsc::Sender<TrainerCommand>);

impl Trainer {
    pub fn new(parts: TrainerParts) -> Self {
        let now = parts.clock.now();
        let mut snapshots = parts.snapshots;
        if let Some(policy) = &mut snapshots {
            policy.started(now, parts.live.feedback_position);
        }
        Self {
            model: parts.model,
            published: parts.learner.clone(),
            learner: parts.learner,
            stream: parts.stream,
            sink: parts.sink,
            stats: parts.stats,
            config: parts.config,
            snapshots,
            trained_position: 0,
            live: parts.live,
            commands: parts.commands,
            monitor: parts.monitor,
            events: parts.events,
            held: Vec::new(),
            cadence: Cadence::new(now),
            clock: parts.clock,
            origin: parts.replay.as_ref().map_or(0, |r| r.to),
            log: parts.replay.as_ref().map(|r| r.log.clone()),
            replaying: false,
            replay: parts.replay,
        }
    }

    /// A trainer for `m` that keeps nothing on disk (see `InMemory`); the
    /// monitor has no reference set. Time is whatever `clock` says.
    pub fn in_memory(
        m: &ModelConfig,
        clock: SharedClock,
    ) -> Result<InMemory, crate::config::Error> {
        let space = Arc::new(m.label_space()?);
        let learner = Learner::new(crate::learn::Params::new(space, m.hash_bits), m.optimizer);
        Ok(Self::in_memory_from(m, learner, clock))
    }

    /// As `in_memory`, starting from `learner` (which is also last-good).
    pub fn in_memory_from(m: &ModelConfig, learner: Learner, clock: SharedClock) -> InMemory {
        let store = Arc::new(super::store::ModelStore::new(learner.params().clone()));
        let live = store.live();
        let (queue, stream) = super::queue::feedback_channel(m.training.queue_capacity.get());
        let (commands_tx, commands) = mpsc::channel(8);
        let monitor = Monitor::fresh(m, live.version, &learner);
        let trainer = Self::new(TrainerParts {
            model: Arc::from(m.name.as_str()),
            learner,
            stream,
            sink: store,
            stats: Arc::default(),
            config: m.training,
            snapshots: None,
            live,
            commands,
            monitor,
            events: Arc::default(),
            clock,
            replay: None,
        });
        (trainer, queue, commands_tx)
    }

    pub fn model(&self) -> &Arc<str> {
        &self.model
    }

    /// The version this trainer published last (or started from).
    pub fn live(&self) -> &Arc<ModelVersion> {
        &self.live
    }

    pub fn stats(&self) -> &Arc<TrainingStats> {
        &self.stats
    }

    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// Examples taken while learning was paused, kept for the resume.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Feedback items taken from the queue so far.
    pub fn position(&self) -> u64 {
        self.stream.position()
    }

    /// Runs until `stop` is cancelled or every sender is gone, then trains
    /// what is still queued (for at most `grace`) and publishes it.
    pub fn run_blocking(mut self, rt: Handle, stop: CancellationToken, grace: Duration) {
        let size = self.config.minibatch_size.get();
        let max_wait = self.config.max_wait();
        let mut batch: Vec<Feedback> = Vec::with_capacity(size);
        self.refresh_report();
        if let Some(replay) = self.replay.take()
            && let Err(e) = self.replay(&replay)
        {
            // Starting without what the log holds would serve a model
            // that silently forgot acknowledged feedback: stop instead
            // (the supervisor shuts the server down).
            tracing::error!(model = %self.model, error = %e, "cannot replay the feedback log; stopping");
            return;
        }
        self.stats.recovering.store(false, Ordering::Release);
        loop {
            batch.clear();
            let paused = self.stats.paused.load(Ordering::Acquire);
            let stream = &mut self.stream;
            let commands = &mut self.commands;
            let unpublished = self.cadence.minibatches > 0;
            let wake = rt.block_on(async {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => Wake::Stop,
                    Some(cmd) = commands.recv() => Wake::Command(cmd),
                    n = stream.recv_many(&mut batch, size), if !paused => if n == 0 { Wake::Closed } else { Wake::Items },
                    _ = tokio::time::sleep(max_wait), if unpublished => Wake::Flush,
                }
            });
            match wake {
                Wake::Stop | Wake::Closed => break,
                // The flush timer fires only when the queue ran dry.
                Wake::Flush => self.publish_pending(true),
                Wake::Command(command) => self.command(command),
                Wake::Items => {
                    let stopped =
                        self.fill(&rt, &mut batch, size, Instant::now() + max_wait, &stop);
                    self.learn_minibatch(&mut batch);
                    if stopped {
                        break;
                    }
                }
            }
        }
        if self.stats.paused.load(Ordering::Acquire) {
            // Learning is paused, so what was queued meanwhile is not
            // trained now either.
            let held = std::mem::take(&mut self.held).len();
            self.discard_queued(
                "stopping while paused: queued feedback is not trained and is lost",
                held,
            );
        }
        self.drain(&rt, size, grace);
    }

    /// One minibatch, just taken from the queue: scored by the monitor
    /// (which may roll back, promote or close a window first), trained
    /// without blamed sources, remembered; published when due.
    fn learn_minibatch(&mut self, batch: &mut Vec<Feedback>) {
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let taken = batch.len() as u64;
        let first = self.stream.position().saturating_sub(taken);
        if let Some(monitor) = &mut self.monitor {
            let window_full = monitor.observe(batch, first, &self.live);
            if window_full {
                self.close_window();
            }
        }
        if self.stats.paused.load(Ordering::Acquire) {
            // `on_degrade = "pause"` just stopped learning: keep this
            // minibatch for the resume rather than learn it now.
            if let Some(monitor) = &mut self.monitor {
                monitor.forget_scored();
            }
            self.held.append(batch);
            self.stats.processed.store(
                (first + taken).saturating_sub(self.origin),
                Ordering::Release,
            );
            return;
        }
        if let Some(monitor) = &mut self.monitor {
            let excluded = monitor.retain_admitted(batch);
            self.stats
                .excluded
                .fetch_add(excluded as u64, Ordering::Relaxed);
        }
        let trained = self.train(batch);
        self.trained_position = first + taken;
        if let Some(monitor) = &mut self.monitor {
            if trained {
                monitor.remember(batch.drain(..));
            } else {
                monitor.forget_scored();
            }
        }
        self.stats.processed.store(
            self.trained_position.saturating_sub(self.origin),
            Ordering::Release,
        );
        self.stats
            .timings
            .step
            .observe(started.elapsed().as_secs_f64());
        if trained {
            self.cadence.minibatches += 1;
        }
        // While replaying, the log is the backlog: publishes coalesce.
        let idle = !self.replaying && self.stream.is_empty();
        let now = self.clock.now();
        if self.cadence.due(&self.config, now, idle) {
            // The gate's time budget matters under backlog only: with the
            // queue dry, what is trained is gated and published at once.
            self.publish_pending(idle);
        }
        if self.cadence.report_due(self.clock.now()) {
            self.refresh_report();
        }
    }

    /// Learns the examples the log holds after the snapshot this trainer
    /// started from, through the same path as live feedback (monitor,
    /// gate, publishing), in log order. They were acknowledged before a
    /// crash or a stop and are not in the snapshot's weights.
    fn replay(&mut self, replay: &Replay) -> anyhow::Result<()> {
        let size = self.config.minibatch_size.get();
        let started = Instant::now();
        let mut batch = Vec::with_capacity(size);
        self.replaying = true;
        for record in replay.log.read_from(replay.from)? {
            let (position, bytes) = record?;
            if position >= replay.to {
                break;
            }
            let (fb, key) = super::log_record::decode(&bytes).map_err(|e| {
                anyhow::anyhow!("feedback log record {position} cannot be read by this eddy: {e}")
            })?;
            if let (Some(key), Some(keys)) = (key, &replay.keys) {
                keys.restore(&key, position, std::time::SystemTime::now());
            }
            batch.push(fb);
            if batch.len() == size {
                self.stream.advance(size as u64);
                self.learn_minibatch(&mut batch);
                batch.clear();
            }
        }
        self.stream.advance(batch.len() as u64);
        self.learn_minibatch(&mut batch);
        self.replaying = false;
        self.publish_pending(true);
        let n = replay.to - replay.from;
        if n > 0 {
            tracing::info!(model = %self.model, examples = n, ms = started.elapsed().as_millis() as u64, "replayed the feedback log");
        }
        self.stats.replayed.store(n, Ordering::Relaxed);
        Ok(())
    }

    /// Takes up to `size` queued examples without waiting and learns them;
    /// returns how many. For deterministic drivers (benchmarks, tests) that
    /// feed the queue themselves.
    pub fn step(&mut self, size: usize) -> usize {
        let mut batch = Vec::with_capacity(size);
        let n = self.stream.try_recv_many(&mut batch, size);
        self.learn_minibatch(&mut batch);
        n
    }

    fn refresh_report(&self) {
        if let Some(m) = &self.monitor {
            self.stats.monitor.store(Arc::new(m.report()));
        }
    }

    /// Closes the queue and drops what is in it (plus `held` already
    /// taken), saying how much: accepted feedback is not durable yet.
    fn discard_queued(&mut self, why: &str, held: usize) {
        self.stream.close();
        let mut rest = Vec::new();
        let left = self.stream.try_recv_many(&mut rest, usize::MAX) + held;
        if left > 0 {
            tracing::warn!(model = %self.model, untrained = left, "{why}");
        }
    }

    /// Tops the minibatch up to `size`, waiting until `deadline` at most.
    /// Returns true if `stop` fired meanwhile.
    fn fill(
        &mut self,
        rt: &Handle,
        batch: &mut Vec<Feedback>,
        size: usize,
        deadline: Instant,
        stop: &CancellationToken,
    ) -> bool {
        while batch.len() < size {
            if self.stream.try_recv_many(batch, size - batch.len()) > 0 {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let stream = &mut self.stream;
            let want = size - batch.len();
            let stopped = rt.block_on(async {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => true,
                    _ = tokio::time::timeout(left, stream.recv_many(batch, want)) => false,
                }
            });
            if stopped {
                return true;
            }
            if self.stream.is_empty() && Instant::now() >= deadline {
                break;
            }
        }
        false
    }

    /// Trains what is queued at shutdown, bounded by `grace`, through the
    /// same monitor path. The queue is closed first, so a request arriving
    /// now is refused (503) rather than accepted and left behind;
    /// reservations already made still deliver.
    fn drain(&mut self, rt: &Handle, size: usize, grace: Duration) {
        self.stream.close();
        let deadline = Instant::now() + grace;
        let mut batch = Vec::with_capacity(size);
        let paused = self.stats.paused.load(Ordering::Acquire);
        loop {
            batch.clear();
            let stream = &mut self.stream;
            let left = deadline.saturating_duration_since(Instant::now());
            let done = rt.block_on(async {
                while batch.len() < size {
                    match tokio::time::timeout(left, stream.recv()).await {
                        Ok(Some(item)) => batch.push(item),
                        Ok(None) => return true,
                        Err(_) => return false,
                    }
                }
                false
            });
            if !paused {
                self.learn_minibatch(&mut batch);
            }
            if done || self.stats.paused.load(Ordering::Acquire) {
                break;
            }
            if Instant::now() >= deadline {
                self.discard_queued(
                    "shutdown grace ran out with feedback still queued; it is lost",
                    0,
                );
                break;
            }
        }
        if self.cadence.minibatches > 0 {
            self.publish_pending(true);
        }
        if self.cadence.minibatches > 0 {
            // The gate is holding a suspect candidate, or the version
            // record failed: nothing more to try at shutdown.
            tracing::warn!(model = %self.model, holding = self.monitor.as_ref().is_some_and(Monitor::holding), "trained work was not published at shutdown");
        }
        self.snapshot_last_good_if_due(true);
        if self.snapshots.is_some() {
            let _ = self.snapshot_live();
        }
        tracing::info!(model = %self.model, examples = self.stats.examples_trained.load(Ordering::Relaxed), "trainer stopped");
    }

    /// One minibatch on the working copy; returns whether it was learned.
    /// A panic (a bug, never bad input: input is validated before it is
    /// queued) is logged and counted, the rest of that minibatch is
    /// skipped, and training goes on.
    fn train(&mut self, batch: &[Feedback]) -> bool {
        if batch.is_empty() {
            return false;
        }
        let learner = &mut self.learner;
        let result = catch_unwind(AssertUnwindSafe(|| {
            for fb in batch {
                learner.learn_one(&fb.features, fb.target);
            }
        }));
        match result {
            Ok(()) => {
                self.stats
                    .examples_trained
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.stats
                    .minibatches_trained
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.stats.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(model = %self.model, examples = batch.len(), "training step panicked; minibatch discarded");
                false
            }
        }
    }

    /// Publishes the working copy; returns the new version number. On
    /// failure (the version number could not be reserved on disk) the live
    /// model stays as it was and the trained work is published next time.
    fn publish(&mut self, rolled_back_from: Option<u64>) -> Option<u64> {
        let started = Instant::now();
        let meta = PublishMeta {
            examples_trained: self.examples_trained(),
            feedback_position: self.trained_position,
            rolled_back_from,
        };
        match self.sink.publish(self.learner.params().clone(), meta) {
            Ok(version) => {
                let written = self.learner.params_mut().weights.take_touched().len();
                self.learner.params_mut().scaler.take_touched();
                self.stats.publishes.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .blocks_written_last_publish
                    .store(written as u64, Ordering::Relaxed);
                self.stats
                    .timings
                    .publish
                    .observe(started.elapsed().as_secs_f64());
                tracing::debug!(model = %self.model, version = version.version, blocks = written, "published");
                let v = version.version;
                self.live = version;
                // Cheap: blocks are shared until the working copy writes.
                self.published = self.learner.clone();
                Some(v)
            }
            Err(e) => {
                tracing::error!(model = %self.model, error = %e, "cannot reserve a version number; not published");
                None
            }
        }
    }

    fn examples_trained(&self) -> u64 {
        self.stats.examples_base + self.stats.examples_trained.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
