//! `Trainer`: one per model, a task on the shared trainer pool. Drains the
//! feedback queue into minibatches (by size, or after `max_wait_ms`), hands
//! each to the model's `Monitor` (scored by the live and last-good versions
//! before it is learned), trains it on a private `Learner`, and publishes a
//! new version every `publish_every` minibatches through a `VersionSink`,
//! once the monitor's gate has passed the candidate.
//!
//! The trainer is a deterministic state machine (`steps`): everything that
//! changes its state is a `Step` (learn the next examples, publish, pause,
//! resume, roll back, readmit) taken at a clock reading, and each step it
//! takes is appended to the model's feedback log after the examples it
//! learns. Replaying the log's steps over the state a snapshot holds gives
//! the same weights, versions and monitor state, bit for bit (`replay`).
//! This file is the live driver: what to do next, and when.
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
//! Trainers are tasks on the trainer pool (`app`: a runtime of its own with
//! `server.trainer_threads` threads, never the request executor). A trainer
//! with nothing queued is parked on its queue and uses no thread. The
//! scheduling rule: a trainer with work takes one minibatch (with the
//! publish, gate and snapshot hand-off it makes due) and then yields to
//! the back of the pool's run queue, so every model with work gets a
//! minibatch per round and one busy model cannot starve the others. Each
//! keeps its own order, monitor, gate and log; only threads are shared.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{ModelConfig, OnDegrade, TrainingConfig};
use crate::learn::{FeatureNames, Learner};
use crate::persist::wal::{FeedbackLog, RecordBatch};
use crate::persist::{Snapshot, SnapshotFile, SnapshotMeta, SnapshotStore};

use super::clock::SharedClock;
use super::events::{Event, EventKind, EventLog};
use super::guard::Guard;
use super::monitor::{
    Checkpoint, Detection, GateVerdict, Monitor, MonitorReport, Trigger, WindowOutcome,
};
use super::queue::{Feedback, FeedbackQueue, FeedbackStream};
use super::store::{ModelVersion, PublishMeta, VersionSink};

mod cadence;
mod commands;
mod recovery;
mod replay;
mod snapshots;
mod stats;
mod steps;
mod writer;

use cadence::Cadence;
pub use commands::{QuarantinePage, RollbackError, RolledBack, SnapshotError, TrainerCommand};
pub use replay::Recovery;
pub use snapshots::{SnapshotPolicy, Unsaved, epoch_ms};
pub use stats::{Settled, Timings, TrainingStats};
pub use steps::{CANDIDATE, LAST_GOOD, Step, StepRecord, TrainerState};

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
    /// `None` when `[models.guard] enabled = false`.
    guard: Option<Guard>,
    events: Arc<EventLog>,
    /// Log position the working copy includes (after its last example).
    trained_position: u64,
    /// The learner as it was at the last publish (the live version's
    /// weights with their optimizer state): what a frozen candidate keeps
    /// and what snapshots write, so a candidate the gate holds never
    /// reaches the disk.
    published: Learner,
    /// Examples taken while learning was paused, learned on resume.
    held: Vec<Feedback>,
    /// Where every time-based decision reads the time.
    clock: SharedClock,
    cadence: Cadence,
    /// The model's feedback log, where each step taken is appended.
    journal: Arc<dyn FeedbackLog>,
    /// Position after the last example taken.
    next_example: u64,
    /// Position after the last step record applied.
    applied: u64,
    /// Examples from the log not learned yet (the tail a restart found
    /// after the last logged step): learned before new feedback.
    backlog: VecDeque<Feedback>,
    /// While a logged step is applied again: the versions it published.
    replaying: Option<VecDeque<u64>>,
    /// Versions published during the step being taken (0: a failed one).
    step_versions: Vec<u64>,
    /// What to replay from the log before anything else.
    recovery: Option<Recovery>,
    /// A replayed step could not be applied as it was logged.
    replay_failed: Option<String>,
    /// A step could not be logged: none is until a snapshot is written.
    steps_suspended: bool,
    /// A snapshot was due while the writer was busy: retried at the next
    /// flush.
    snapshot_waiting: bool,
    /// Steps taken and not yet appended to the log (see `log_steps`).
    unlogged: RecordBatch,
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
    pub guard: Option<Guard>,
    pub events: Arc<EventLog>,
    pub clock: SharedClock,
    /// The model's feedback log (the queue's).
    pub journal: Arc<dyn FeedbackLog>,
    /// The log to replay and the state it continues (see `Recovery`);
    /// `None` starts from `live` with nothing to replay.
    pub recovery: Option<Recovery>,
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
        let position = parts.live.feedback_position;
        // What is on disk so far: the weights the trainer starts from.
        parts
            .stats
            .saved_version
            .store(parts.live.version, Ordering::Release);
        parts
            .stats
            .saved_examples
            .store(parts.live.examples_trained, Ordering::Release);
        let mut snapshots = parts.snapshots;
        if let Some(policy) = &mut snapshots {
            policy.started(now, position);
            policy.writer = Some(writer::SnapshotWriter::new(writer::WriterParts {
                model: parts.model.clone(),
                store: policy.store.clone(),
                journal: parts.journal.clone(),
                keys: policy.keys.clone(),
                stats: parts.stats.clone(),
                events: parts.events.clone(),
                owed: policy.owed.clone(),
            }));
        }
        let (next_example, applied, trained_position) = parts
            .recovery
            .as_ref()
            .map_or((position, 0, position), |r| {
                (r.next_example, r.applied, r.trained_position)
            });
        Self {
            model: parts.model,
            published: parts.learner.clone(),
            learner: parts.learner,
            stream: parts.stream,
            sink: parts.sink,
            stats: parts.stats,
            config: parts.config,
            snapshots,
            trained_position,
            live: parts.live,
            commands: parts.commands,
            monitor: parts.monitor,
            guard: parts.guard,
            events: parts.events,
            held: Vec::new(),
            cadence: Cadence::new(now),
            clock: parts.clock,
            journal: parts.journal,
            next_example,
            applied,
            backlog: VecDeque::new(),
            replaying: None,
            step_versions: Vec::new(),
            recovery: parts.recovery,
            replay_failed: None,
            steps_suspended: false,
            snapshot_waiting: false,
            unlogged: RecordBatch::new(),
        }
    }

    /// A trainer for `m` that keeps nothing on disk (see `InMemory`); the
    /// monitor has no reference set. Time is whatever `clock` says.
    pub fn in_memory(
        m: &ModelConfig,
        clock: SharedClock,
    ) -> Result<InMemory, crate::config::Error> {
        let space = Arc::new(m.label_space()?);
        let learner = Learner::new(m.fresh_params(space), m.optimizer);
        Ok(Self::in_memory_from(m, learner, clock))
    }

    /// As `in_memory`, starting from `learner` (which is also last-good).
    pub fn in_memory_from(m: &ModelConfig, learner: Learner, clock: SharedClock) -> InMemory {
        let store = Arc::new(super::store::ModelStore::new(learner.params().clone()));
        let live = store.live();
        let (queue, stream) = super::queue::memory_channel(m.training.queue_capacity.get());
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
            guard: m.guard.enabled.then(|| Guard::new(&m.guard)),
            events: Arc::default(),
            clock,
            journal: queue.log().clone(),
            recovery: None,
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

    /// The ingestion guard, when the model has one.
    pub fn guard(&self) -> Option<&Guard> {
        self.guard.as_ref()
    }

    /// Examples taken while learning was paused, kept for the resume.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Writes a snapshot of the live version now: on the writer thread
    /// (`wait = false`: the trainer goes on at once; `Ok(None)` once handed
    /// over), or waiting for it to be encoded and written (as shutdown
    /// does). For benchmarks and drivers; the server snapshots by itself.
    pub fn snapshot(&mut self, wait: bool) -> Result<Option<SnapshotFile>, String> {
        self.snapshot_live(wait).map_err(|e| e.to_string())
    }

    /// Feedback items taken from the queue so far.
    pub fn position(&self) -> u64 {
        self.stream.taken()
    }

    /// Runs until `stop` is cancelled or every sender is gone, then trains
    /// what is still queued (for at most `grace`), publishes it and writes
    /// a final snapshot. Returns what that snapshot did not save when the
    /// disk refused it (`None`: saved, or nothing to save).
    pub async fn run(mut self, stop: CancellationToken, grace: Duration) -> Option<Unsaved> {
        let size = self.config.minibatch_size.get();
        let max_wait = self.config.max_wait();
        let mut batch: Vec<Feedback> = Vec::with_capacity(size);
        self.refresh_report();
        // Replaying a long log is long: the pool's other trainers move on
        // meanwhile.
        if let Some(recovery) = self.recovery.take()
            && let Err(e) = writer::off_the_pool(|| self.recover_from_log(recovery))
        {
            // Starting without what the log holds would serve a model
            // that silently forgot acknowledged feedback: stop instead
            // (the supervisor shuts the server down).
            tracing::error!(model = %self.model, error = %e, "cannot replay the feedback log; stopping");
            return None;
        }
        self.snapshot_if_due();
        self.recovered();
        loop {
            batch.clear();
            let paused = self.stats.paused.load(Ordering::Acquire);
            if !paused && !self.backlog.is_empty() {
                // The log's unlearned tail comes before new feedback.
                if stop.is_cancelled() {
                    break;
                }
                if let Ok(command) = self.commands.try_recv() {
                    self.command(command);
                    continue;
                }
                let n = size.min(self.backlog.len());
                batch.extend(self.backlog.drain(..n));
                self.learn(&mut batch);
                self.recovered();
                // The pool's turn goes to the next trainer with work.
                tokio::task::yield_now().await;
                continue;
            }
            if self.stream.is_empty() {
                // About to wait: what was decided goes to the log now.
                self.log_steps();
            }
            let stream = &mut self.stream;
            let commands = &mut self.commands;
            // A flush publishes what is trained, refreshes an owed report
            // and retries a snapshot
            // the busy writer could not take.
            let unpublished =
                self.cadence.minibatches > 0 || self.snapshot_waiting || self.cadence.report_owed;
            let wake = tokio::select! {
                biased;
                _ = stop.cancelled() => Wake::Stop,
                Some(cmd) = commands.recv() => Wake::Command(cmd),
                n = stream.recv_many(&mut batch, size), if !paused => if n == 0 { Wake::Closed } else { Wake::Items },
                _ = tokio::time::sleep(max_wait), if unpublished => Wake::Flush,
            };
            match wake {
                Wake::Stop | Wake::Closed => break,
                // The flush timer fires only when the queue ran dry.
                Wake::Flush => {
                    self.publish_live(true);
                    self.snapshot_if_due();
                    if std::mem::take(&mut self.cadence.report_owed) {
                        self.refresh_report();
                    }
                }
                Wake::Command(command) => self.command(command),
                Wake::Items => {
                    let stopped = self
                        .fill(&mut batch, size, Instant::now() + max_wait, &stop)
                        .await;
                    self.learn(&mut batch);
                    if stopped {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
        if self.stats.paused.load(Ordering::Acquire) && !self.journal.keeps_records() {
            // Learning is paused, so what was queued meanwhile is not
            // trained now either, and without a log it is gone.
            let held = self.held.len() + self.backlog.len();
            self.discard_queued(
                "stopping while paused: queued feedback is not trained and, with storage.wal off, is lost",
                held,
            );
        }
        self.drain(size, grace).await
    }

    /// Ready once what the log held is learned again (or learning is
    /// paused, so it waits for the resume).
    fn recovered(&self) {
        self.stream.set_backlog(self.backlog.len());
        if self.backlog.is_empty() || self.stats.paused.load(Ordering::Acquire) {
            self.stats.recovering.store(false, Ordering::Release);
        }
    }

    /// Learns a minibatch just taken (from the queue or the backlog) as a
    /// logged step, then publishes and snapshots when due.
    fn learn(&mut self, batch: &mut Vec<Feedback>) {
        if batch.is_empty() {
            return;
        }
        let first = batch[0].position;
        self.take(
            Step::Learn {
                count: batch.len() as u32,
                first,
            },
            batch,
        );
        self.stats
            .processed
            .store(self.stream.taken(), Ordering::Release);
        let idle = self.backlog.is_empty() && self.stream.is_empty();
        let now = self.clock.now();
        if self.cadence.due(&self.config, now, idle) {
            // The gate's time budget matters under backlog only: with the
            // queue dry, what is trained is gated and published at once.
            self.publish_live(idle);
        }
        self.snapshot_if_due();
        if self.cadence.report_due(self.clock.now()) {
            self.refresh_report();
        }
        self.settle();
    }

    /// With nothing trained and unpublished, everything taken so far is in
    /// the live version or kept out of it: says so to waiting requests.
    fn settle(&self) {
        if self.cadence.minibatches == 0 {
            self.stats.settled.advance(stats::Settled {
                version: self.live.version,
                position: self.settled_position(),
            });
        }
    }

    /// Where the examples in the live version or kept out of it end: the
    /// trained position, or the oldest example still waiting for its
    /// source's share (not in any version yet, and not kept out for good).
    fn settled_position(&self) -> u64 {
        let waiting = self.guard.as_ref().and_then(|g| g.oldest_waiting());
        waiting.map_or(self.trained_position, |w| w.min(self.trained_position))
    }

    /// Takes up to `size` queued examples without waiting and learns them;
    /// returns how many. For deterministic drivers (benchmarks, tests) that
    /// feed the queue themselves.
    pub fn step(&mut self, size: usize) -> usize {
        let mut batch = Vec::with_capacity(size);
        let n = self.stream.try_recv_many(&mut batch, size);
        self.learn(&mut batch);
        n
    }

    fn refresh_report(&self) {
        if let Some(m) = &self.monitor {
            self.stats.monitor.store(Arc::new(m.report()));
        }
        if let Some(g) = &self.guard {
            self.stats.guard.store(Arc::new(g.report()));
        }
    }

    /// Closes the queue and drops what is in it (plus `held` already
    /// taken), saying how much.
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
    async fn fill(
        &mut self,
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
            let stopped = tokio::select! {
                biased;
                _ = stop.cancelled() => true,
                _ = tokio::time::timeout(left, stream.recv_many(batch, want)) => false,
            };
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
    /// same steps. The queue is closed first, so a request arriving now is
    /// refused (503) rather than accepted and left behind; reservations
    /// already made still deliver. With a feedback log, what is left when
    /// the grace runs out (or while paused) is in the log and learned
    /// after the restart. Returns what the final snapshot did not save.
    async fn drain(&mut self, size: usize, grace: Duration) -> Option<Unsaved> {
        self.stream.close();
        let deadline = Instant::now() + grace;
        let mut batch = Vec::with_capacity(size);
        let paused = self.stats.paused.load(Ordering::Acquire);
        while !paused && !self.backlog.is_empty() && Instant::now() < deadline {
            let n = size.min(self.backlog.len());
            batch.clear();
            batch.extend(self.backlog.drain(..n));
            self.learn(&mut batch);
            tokio::task::yield_now().await;
        }
        loop {
            if paused {
                break;
            }
            batch.clear();
            let stream = &mut self.stream;
            let left = deadline.saturating_duration_since(Instant::now());
            let done = async {
                while batch.len() < size {
                    match tokio::time::timeout(left, stream.recv()).await {
                        Ok(Some(item)) => batch.push(item),
                        Ok(None) => return true,
                        Err(_) => return false,
                    }
                }
                false
            }
            .await;
            self.learn(&mut batch);
            tokio::task::yield_now().await;
            if done || self.stats.paused.load(Ordering::Acquire) {
                break;
            }
            if Instant::now() >= deadline {
                let why = if self.journal.keeps_records() {
                    "shutdown grace ran out with feedback still queued; it is in the feedback log and is learned after the restart"
                } else {
                    "shutdown grace ran out with feedback still queued; with storage.wal off it is lost"
                };
                self.discard_queued(why, 0);
                break;
            }
        }
        self.publish_live(true);
        if self.cadence.minibatches > 0 {
            // The gate is holding a suspect candidate, or the version
            // record failed: nothing more to try at shutdown. The log
            // keeps what the candidate learned.
            tracing::warn!(model = %self.model, holding = self.monitor.as_ref().is_some_and(Monitor::holding), "trained work was not published at shutdown");
        }
        self.snapshot_last_good_if_due(true);
        let last = if self.snapshots.is_some() {
            self.snapshot_live(true).err()
        } else {
            None
        };
        self.log_steps();
        let synced = match self.journal.sync() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(model = %self.model, error = %e, "cannot sync the feedback log at shutdown");
                false
            }
        };
        tracing::info!(model = %self.model, examples = self.stats.examples_trained.load(Ordering::Relaxed), "trainer stopped");
        let unsaved = self.unsaved(last?, synced)?;
        tracing::error!(
            model = %unsaved.model,
            version = unsaved.version,
            saved_version = unsaved.saved_version,
            examples_unsaved = unsaved.examples_unsaved(),
            in_log = unsaved.in_log,
            cause = %unsaved.cause,
            "the final snapshot was not written; the examples trained since the newest snapshot on disk are not saved (in_log: the feedback log holds them for the next start)"
        );
        Some(unsaved)
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
    /// While a logged step is replayed, the version gets the number the
    /// log recorded for it (and fails where it failed).
    fn publish(&mut self, rolled_back_from: Option<u64>) -> Option<u64> {
        let started = Instant::now();
        let meta = PublishMeta {
            examples_trained: self.examples_trained(),
            feedback_position: self.trained_position,
            rolled_back_from,
        };
        let params = self.learner.params().clone();
        let result = match &mut self.replaying {
            None => self.sink.publish(params, meta),
            Some(versions) => match versions.pop_front() {
                Some(v) if v > 0 => self.sink.publish_as(params, meta, v).inspect_err(|e| {
                    self.replay_failed
                        .get_or_insert_with(|| format!("cannot publish v{v} again: {e}"));
                }),
                _ => Err(std::io::Error::other(
                    "this publish failed when it was logged",
                )),
            },
        };
        match result {
            Ok(version) => {
                let params = self.learner.params_mut();
                let mut written = params.weights.take_touched().len();
                params.scaler.take_touched();
                // A network's embedding rows are copied on write too.
                if let Some(net) = params.net.as_mut() {
                    written += net.embedding.take_touched().len();
                }
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
                self.stats.settled.advance(stats::Settled {
                    version: v,
                    position: self.settled_position(),
                });
                if self.replaying.is_none() {
                    self.step_versions.push(v);
                }
                Some(v)
            }
            Err(e) => {
                if self.replaying.is_none() {
                    self.step_versions.push(0);
                    tracing::error!(model = %self.model, error = %e, "cannot reserve a version number; not published");
                }
                None
            }
        }
    }

    fn examples_trained(&self) -> u64 {
        self.stats.examples_trained_total()
    }
}

#[cfg(test)]
mod tests;
