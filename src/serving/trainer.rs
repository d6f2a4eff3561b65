//! `Trainer`: one per model, on its own blocking thread. Drains the
//! feedback queue into minibatches (by size, or after `max_wait_ms`), trains
//! them on a private `Learner`, and publishes a new version every
//! `publish_every` minibatches through a `VersionSink`.
//!
//! Publishing is cheap because weights are copy-on-write blocks: a publish
//! clones block pointers, and the next minibatch copies only the blocks it
//! writes. Under backlog publishes are also coalesced to at most one per
//! `min_publish_interval_ms`; when the queue runs dry anything trained is
//! published at once, so feedback shows in predictions within about
//! `max_wait_ms`.
//!
//! Waiting uses the tokio runtime's timers through `Handle::block_on`, but
//! the training itself runs on this thread, never on the request executor.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{ModelConfig, TrainingConfig};
use crate::learn::Learner;
use crate::persist::{Snapshot, SnapshotFile, SnapshotMeta, SnapshotStore};

use super::queue::{Feedback, FeedbackStream};
use super::store::{PublishMeta, VersionSink};

/// Counters the trainer publishes for status endpoints; monotonic.
#[derive(Debug, Default)]
pub struct TrainingStats {
    /// Examples already in the weights the trainer started from (a
    /// snapshot's count); fixed at start-up.
    pub examples_base: u64,
    pub examples_trained: AtomicU64,
    pub minibatches_trained: AtomicU64,
    pub publishes: AtomicU64,
    /// Training ticks that panicked (their minibatch was discarded).
    pub panics: AtomicU64,
    /// Blocks the last publish had written (a measure of its cost).
    pub blocks_written_last_publish: AtomicU64,
    pub snapshots_written: AtomicU64,
    pub snapshot_failures: AtomicU64,
    /// Damaged snapshot files passed over at start-up.
    pub snapshots_skipped: AtomicU64,
    /// Whether an operator has paused learning.
    pub paused: AtomicBool,
}

pub struct Trainer {
    pub model: Arc<str>,
    pub learner: Learner,
    pub stream: FeedbackStream,
    pub sink: Arc<dyn VersionSink>,
    pub stats: Arc<TrainingStats>,
    pub config: TrainingConfig,
    /// `None`: no snapshots (memory-only use, tests of the trainer alone).
    pub snapshots: Option<SnapshotPolicy>,
    /// The version the working copy equals when nothing is unpublished.
    pub live_version: u64,
    /// Admin requests (see `TrainerCommand`).
    pub commands: mpsc::Receiver<TrainerCommand>,
}

/// What woke the trainer while it waited for feedback.
enum Wake {
    Items,
    Flush,
    Command(TrainerCommand),
    Stop,
    Closed,
}

/// Requests to the trainer from the admin API; each carries its reply.
#[derive(Debug)]
pub enum TrainerCommand {
    /// Publish anything trained but unpublished, then write a snapshot.
    Snapshot(oneshot::Sender<Result<SnapshotFile, String>>),
    /// Stop taking feedback from the queue (it keeps accepting until full)
    /// after publishing what is trained; answers once paused.
    Pause(oneshot::Sender<()>),
    /// Take feedback again; answers once running.
    Resume(oneshot::Sender<()>),
}

impl Trainer {
    /// Runs until `stop` is cancelled or every sender is gone, then trains
    /// what is still queued (for at most `grace`) and publishes it.
    pub fn run_blocking(mut self, rt: Handle, stop: CancellationToken, grace: Duration) {
        let size = self.config.minibatch_size.get();
        let max_wait = self.config.max_wait();
        let mut batch: Vec<Feedback> = Vec::with_capacity(size);
        let mut pending = Pending::new();
        loop {
            batch.clear();
            let paused = self.stats.paused.load(Ordering::Acquire);
            let stream = &mut self.stream;
            let commands = &mut self.commands;
            let wake = rt.block_on(async {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => Wake::Stop,
                    Some(cmd) = commands.recv() => Wake::Command(cmd),
                    n = stream.recv_many(&mut batch, size), if !paused => if n == 0 { Wake::Closed } else { Wake::Items },
                    _ = tokio::time::sleep(max_wait), if pending.minibatches > 0 => Wake::Flush,
                }
            });
            match wake {
                Wake::Stop | Wake::Closed => break,
                Wake::Flush => self.publish_pending(&mut pending),
                Wake::Command(TrainerCommand::Pause(reply)) => {
                    self.publish_pending(&mut pending);
                    self.set_paused(true);
                    // The requester may have gone away; nothing to do then.
                    let _ = reply.send(());
                }
                Wake::Command(TrainerCommand::Resume(reply)) => {
                    self.set_paused(false);
                    let _ = reply.send(());
                }
                Wake::Command(TrainerCommand::Snapshot(reply)) => {
                    self.publish_pending(&mut pending);
                    let _ = reply.send(self.snapshot(self.live_version));
                }
                Wake::Items => {
                    let stopped =
                        self.fill(&rt, &mut batch, size, Instant::now() + max_wait, &stop);
                    self.train(&batch);
                    pending.minibatches += 1;
                    let due = pending.minibatches >= self.config.publish_every.get()
                        && (self.stream.is_empty()
                            || pending.last_publish.elapsed()
                                >= self.config.min_publish_interval());
                    if due {
                        self.publish_pending(&mut pending);
                    }
                    if stopped {
                        break;
                    }
                }
            }
        }
        if self.stats.paused.load(Ordering::Acquire) {
            // An operator paused learning, so what was queued meanwhile is
            // not trained now either.
            self.discard_queued(
                "stopping while paused: queued feedback is not trained and is lost",
            );
        }
        self.drain(&rt, size, grace, pending.minibatches > 0);
    }

    fn set_paused(&mut self, paused: bool) {
        self.stats.paused.store(paused, Ordering::Release);
        tracing::info!(model = %self.model, paused, "training paused or resumed");
    }

    /// Publishes trained work, if any (snapshotting when one is due); the
    /// work stays pending if the publish fails, to be retried.
    fn publish_pending(&mut self, pending: &mut Pending) {
        if pending.minibatches > 0 && self.publish_and_maybe_snapshot(false) {
            *pending = Pending::new();
        }
    }

    /// Closes the queue and drops what is in it, saying how much: accepted
    /// feedback is not durable yet (no feedback log).
    fn discard_queued(&mut self, why: &str) {
        self.stream.close();
        let mut rest = Vec::new();
        let left = self.stream.try_recv_many(&mut rest, usize::MAX);
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

    /// Trains what is queued at shutdown, bounded by `grace`. The queue is
    /// closed first, so a request arriving now is refused (503) rather than
    /// accepted and left behind; reservations already made still deliver.
    fn drain(&mut self, rt: &Handle, size: usize, grace: Duration, mut unpublished: bool) {
        self.stream.close();
        let deadline = Instant::now() + grace;
        let mut batch = Vec::with_capacity(size);
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
            self.train(&batch);
            unpublished |= !batch.is_empty();
            if done {
                break;
            }
            if Instant::now() >= deadline {
                self.discard_queued(
                    "shutdown grace ran out with feedback still queued; it is lost",
                );
                break;
            }
        }
        if unpublished {
            self.publish_and_maybe_snapshot(true);
        } else if self.snapshots.is_some() {
            // Nothing new to publish: still leave a snapshot of the live state.
            let _ = self.snapshot(self.live_version);
        }
        tracing::info!(model = %self.model, examples = self.stats.examples_trained.load(Ordering::Relaxed), "trainer stopped");
    }

    /// One minibatch on the working copy. A panic (a bug, never bad input:
    /// input is validated before it is queued) is logged and counted, the
    /// rest of that minibatch is skipped, and training goes on.
    fn train(&mut self, batch: &[Feedback]) {
        if batch.is_empty() {
            return;
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
            }
            Err(_) => {
                self.stats.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(model = %self.model, examples = batch.len(), "training step panicked; minibatch discarded");
            }
        }
    }

    /// Publishes the working copy; returns the new version number. On
    /// failure (the version number could not be reserved on disk) the live
    /// model stays as it was and the trained work is published next time.
    fn publish(&mut self) -> Option<u64> {
        let meta = PublishMeta {
            examples_trained: self.examples_trained(),
            feedback_position: self.stream.position(),
        };
        match self.sink.publish(self.learner.params().clone(), meta) {
            Ok(version) => {
                let written = self.learner.params_mut().weights.take_touched().len();
                self.learner.params_mut().scaler.take_touched();
                self.stats.publishes.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .blocks_written_last_publish
                    .store(written as u64, Ordering::Relaxed);
                tracing::debug!(model = %self.model, version = version.version, blocks = written, "published");
                self.live_version = version.version;
                Some(version.version)
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

    /// Writes a snapshot of the working copy as `version` (just published).
    fn snapshot(&mut self, version: u64) -> Result<SnapshotFile, String> {
        let examples_trained = self.examples_trained();
        let Some(policy) = &mut self.snapshots else {
            return Err("snapshots are not kept for this model".into());
        };
        policy.last = Instant::now();
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                format_version: crate::persist::snapshot::FORMAT_VERSION,
                model: self.model.to_string(),
                task: policy.model.task,
                classes: policy.model.classes.clone(),
                hash_bits: policy.model.hash_bits,
                optimizer: *self.learner.optimizer(),
                version,
                examples_trained,
                feedback_position: self.stream.position(),
                optimizer_steps: self.learner.state().steps,
                created_at_ms: epoch_ms(),
                model_created_at_ms: policy.created_at_ms,
                quality: Default::default(),
            },
            learner: self.learner.clone(),
        };
        let started = Instant::now();
        match policy.store.write(&snapshot, &[]) {
            Ok(file) => {
                self.stats.snapshots_written.fetch_add(1, Ordering::Relaxed);
                tracing::info!(model = %self.model, version, bytes = file.bytes, ms = started.elapsed().as_millis() as u64, "snapshot written");
                Ok(file)
            }
            Err(e) => {
                self.stats.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(model = %self.model, version, error = %e, "snapshot failed");
                Err(e.to_string())
            }
        }
    }

    /// Publishes and, when a snapshot is due (or `force`), snapshots.
    /// Returns whether the publish succeeded.
    fn publish_and_maybe_snapshot(&mut self, force: bool) -> bool {
        let Some(version) = self.publish() else {
            return false;
        };
        let due = self
            .snapshots
            .as_ref()
            .is_some_and(|p| force || p.last.elapsed() >= p.interval);
        if due {
            // A failure is logged and counted inside; the next one retries.
            let _ = self.snapshot(version);
        }
        true
    }
}

/// Trained minibatches not yet published, and when the last publish was.
struct Pending {
    minibatches: u32,
    last_publish: Instant,
}

impl Pending {
    fn new() -> Self {
        Self {
            minibatches: 0,
            last_publish: Instant::now(),
        }
    }
}

/// When and where the trainer writes snapshots.
pub struct SnapshotPolicy {
    pub store: SnapshotStore,
    pub interval: Duration,
    /// The model's configuration (task, classes, hash_bits go in the meta).
    pub model: ModelConfig,
    pub created_at_ms: u64,
    /// When the last snapshot was written (or the trainer started).
    pub last: Instant,
}

pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
