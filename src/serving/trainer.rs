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

use super::events::{Event, EventKind, EventLog};
use super::monitor::{
    Checkpoint, Detection, GateVerdict, Monitor, MonitorReport, Trigger, WindowOutcome,
};
use super::queue::{Feedback, FeedbackStream};
use super::store::{ModelVersion, PublishMeta, VersionSink};

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
    /// Whether learning is paused (by an operator or `on_degrade`).
    pub paused: AtomicBool,
    pub promotions: AtomicU64,
    /// Rollbacks by reason: a degraded window, a refused candidate, an
    /// operator.
    pub rollbacks_degraded: AtomicU64,
    pub rollbacks_gate: AtomicU64,
    pub rollbacks_operator: AtomicU64,
    /// Candidates the gate scored.
    pub gate_checks: AtomicU64,
    /// Publishes held back by a first gate failure.
    pub gate_holds: AtomicU64,
    /// Examples from blamed sources: scored, not trained.
    pub excluded: AtomicU64,
    /// Feedback items the trainer has taken off the queue and dealt with
    /// (trained, excluded, or held while paused), since start-up.
    pub processed: AtomicU64,
    /// The monitor's latest report (default: monitor disabled).
    pub monitor: ArcSwap<MonitorReport>,
    pub timings: Timings,
}

/// Latency histograms of the trainer's work, in seconds.
#[derive(Debug, Clone)]
pub struct Timings {
    /// Scoring and training one minibatch.
    pub step: Histogram,
    pub publish: Histogram,
    pub gate: Histogram,
    pub snapshot: Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        // 1 µs to about 4 s.
        let fast = || Histogram::new(exponential_buckets(0.000_001, 4.0, 12));
        Self {
            step: fast(),
            publish: fast(),
            gate: fast(),
            snapshot: fast(),
        }
    }
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
    /// The live version: the last this trainer published, or the first.
    pub live: Arc<ModelVersion>,
    /// Admin requests (see `TrainerCommand`).
    pub commands: mpsc::Receiver<TrainerCommand>,
    /// `None` when `[models.monitor] enabled = false`.
    pub monitor: Option<Monitor>,
    pub events: Arc<EventLog>,
    /// Feedback position the working copy includes.
    pub trained_position: u64,
    /// The learner as it was at the last publish (the live version's
    /// weights with their optimizer state): what a frozen candidate keeps.
    pub published: Learner,
    /// A minibatch taken when `on_degrade = "pause"` stopped learning,
    /// learned on resume.
    pub held: Vec<Feedback>,
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
    /// Publish last-good (`None`) or a retained snapshot's weights as a new
    /// version.
    Rollback {
        version: Option<u64>,
        reply: oneshot::Sender<Result<RolledBack, RollbackError>>,
    },
    /// Take a blamed source back into training; answers whether it was
    /// blamed.
    Readmit {
        source: String,
        reply: oneshot::Sender<bool>,
    },
}

/// An operator's rollback, done.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    /// The new live version.
    pub version: u64,
    /// The version whose weights it carries.
    pub restored: u64,
    pub rolled_back_from: u64,
    /// Examples learned since last-good that the model no longer includes.
    pub dropped: usize,
}

#[derive(Debug, Error)]
pub enum RollbackError {
    #[error("the monitor is disabled for this model, so there is no last-good version; name one")]
    NoLastGood,
    #[error("version {version} is not retained (snapshots on disk: {retained:?})")]
    NotRetained { version: u64, retained: Vec<u64> },
    #[error("{0}")]
    Unusable(String),
    #[error("{0}")]
    Failed(String),
}

/// Publishing rhythm: trained minibatches not yet published and when the
/// last publish and gate check were.
pub struct Cadence {
    minibatches: u32,
    last_publish: Instant,
    gate_ready_at: Instant,
    report_at: Instant,
}

impl Default for Cadence {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            minibatches: 0,
            last_publish: now,
            gate_ready_at: now,
            report_at: now,
        }
    }
}

impl Cadence {
    fn published(&mut self) {
        self.minibatches = 0;
        self.last_publish = Instant::now();
    }
}

/// How often the monitor's report is refreshed while examples flow.
const REPORT_EVERY: Duration = Duration::from_millis(100);

impl Trainer {
    /// A trainer for `m` that keeps nothing on disk, with its queue's
    /// sending side and its command channel: for deterministic drivers
    /// (`step`) in tests and benchmarks. The monitor has no reference set.
    pub fn in_memory(
        m: &ModelConfig,
    ) -> Result<
        (
            Self,
            super::queue::FeedbackQueue,
            mpsc::Sender<TrainerCommand>,
        ),
        crate::config::Error,
    > {
        let space = Arc::new(m.label_space()?);
        let learner = Learner::new(crate::learn::Params::new(space, m.hash_bits), m.optimizer);
        Ok(Self::in_memory_from(m, learner))
    }

    /// As `in_memory`, starting from `learner` (which is also last-good).
    pub fn in_memory_from(
        m: &ModelConfig,
        learner: Learner,
    ) -> (
        Self,
        super::queue::FeedbackQueue,
        mpsc::Sender<TrainerCommand>,
    ) {
        let store = Arc::new(super::store::ModelStore::new(learner.params().clone()));
        let live = store.live();
        let (queue, stream) = super::queue::feedback_channel(m.training.queue_capacity.get());
        let (commands_tx, commands) = mpsc::channel(8);
        let monitor = m.monitor.enabled.then(|| {
            Monitor::new(
                m.monitor.clone(),
                m.task,
                Vec::new(),
                Checkpoint {
                    version: live.version,
                    learner: learner.clone(),
                    position: 0,
                    examples_trained: 0,
                },
                Default::default(),
            )
        });
        let trainer = Self {
            model: Arc::from(m.name.as_str()),
            published: learner.clone(),
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
            trained_position: 0,
            held: Vec::new(),
        };
        (trainer, queue, commands_tx)
    }

    /// Runs until `stop` is cancelled or every sender is gone, then trains
    /// what is still queued (for at most `grace`) and publishes it.
    pub fn run_blocking(mut self, rt: Handle, stop: CancellationToken, grace: Duration) {
        let size = self.config.minibatch_size.get();
        let max_wait = self.config.max_wait();
        let mut batch: Vec<Feedback> = Vec::with_capacity(size);
        let mut cadence = Cadence::default();
        self.refresh_report();
        loop {
            batch.clear();
            let paused = self.stats.paused.load(Ordering::Acquire);
            let stream = &mut self.stream;
            let commands = &mut self.commands;
            let unpublished = cadence.minibatches > 0;
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
                Wake::Flush => self.publish_pending(&mut cadence, true),
                Wake::Command(command) => self.command(command, &mut cadence),
                Wake::Items => {
                    let stopped =
                        self.fill(&rt, &mut batch, size, Instant::now() + max_wait, &stop);
                    self.learn_minibatch(&mut batch, &mut cadence);
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
        self.drain(&rt, size, grace, &mut cadence);
    }

    fn command(&mut self, command: TrainerCommand, cadence: &mut Cadence) {
        // A requester that has gone away needs no answer.
        match command {
            TrainerCommand::Pause(reply) => {
                self.publish_pending(cadence, true);
                if !self.stats.paused.load(Ordering::Acquire) {
                    self.set_paused(true, "an operator paused learning");
                }
                let _ = reply.send(());
            }
            TrainerCommand::Resume(reply) => {
                if self.stats.paused.load(Ordering::Acquire) {
                    self.set_paused(false, "an operator resumed learning");
                }
                let mut held = std::mem::take(&mut self.held);
                if !held.is_empty() {
                    self.learn_minibatch(&mut held, cadence);
                }
                let _ = reply.send(());
            }
            TrainerCommand::Snapshot(reply) => {
                self.publish_pending(cadence, true);
                let _ = reply.send(self.snapshot_live());
            }
            TrainerCommand::Rollback { version, reply } => {
                let _ = reply.send(self.rollback(version, cadence));
            }
            TrainerCommand::Readmit { source, reply } => {
                let readmitted = self.monitor.as_mut().is_some_and(|m| m.readmit(&source));
                if readmitted {
                    self.events.push(Event::new(
                        EventKind::SourceReadmitted,
                        self.live.version,
                        format!("an operator readmitted source `{source}`; its feedback is trained again"),
                    ));
                    self.refresh_report();
                }
                let _ = reply.send(readmitted);
            }
        }
    }

    fn set_paused(&mut self, paused: bool, why: &str) {
        self.stats.paused.store(paused, Ordering::Release);
        let kind = if paused {
            EventKind::Paused
        } else {
            EventKind::Resumed
        };
        self.events
            .push(Event::new(kind, self.live.version, why.to_owned()));
    }

    /// One minibatch, just taken from the queue: scored by the monitor
    /// (which may roll back, promote or close a window first), trained
    /// without blamed sources, remembered; published when due.
    pub fn learn_minibatch(&mut self, batch: &mut Vec<Feedback>, cadence: &mut Cadence) {
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let taken = batch.len() as u64;
        let first = self.stream.position().saturating_sub(taken);
        if let Some(monitor) = &mut self.monitor {
            let window_full = monitor.observe(batch, first, &self.live);
            if window_full {
                self.close_window(cadence);
            }
        }
        if self.stats.paused.load(Ordering::Acquire) {
            // `on_degrade = "pause"` just stopped learning: keep this
            // minibatch for the resume rather than learn it now.
            if let Some(monitor) = &mut self.monitor {
                monitor.forget_scored();
            }
            self.held.append(batch);
            self.stats.processed.store(first + taken, Ordering::Release);
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
        self.stats
            .processed
            .store(self.trained_position, Ordering::Release);
        self.stats
            .timings
            .step
            .observe(started.elapsed().as_secs_f64());
        if trained {
            cadence.minibatches += 1;
        }
        let idle = self.stream.is_empty();
        let due = cadence.minibatches >= self.config.publish_every.get()
            && (idle || cadence.last_publish.elapsed() >= self.config.min_publish_interval());
        if due {
            // The gate's time budget matters under backlog only: with the
            // queue dry, what is trained is gated and published at once.
            self.publish_pending(cadence, idle);
        }
        if cadence.report_at.elapsed() >= REPORT_EVERY {
            cadence.report_at = Instant::now();
            self.refresh_report();
        }
    }

    /// Takes up to `size` queued examples without waiting and learns them;
    /// returns how many. For deterministic drivers (benchmarks, tests) that
    /// feed the queue themselves.
    pub fn step(&mut self, size: usize, cadence: &mut Cadence) -> usize {
        let mut batch = Vec::with_capacity(size);
        let n = self.stream.try_recv_many(&mut batch, size);
        self.learn_minibatch(&mut batch, cadence);
        n
    }

    /// The monitor's window filled: roll back, or promote and freeze the
    /// next candidate (the live version).
    fn close_window(&mut self, cadence: &mut Cadence) {
        let Some(monitor) = &mut self.monitor else {
            return;
        };
        match monitor.close_window() {
            WindowOutcome::Degraded(detection) => self.recover(detection, cadence),
            WindowOutcome::Judged { promote } => {
                if promote {
                    self.promote();
                }
                if let Some(monitor) = &mut self.monitor {
                    monitor.freeze_candidate(Checkpoint {
                        version: self.live.version,
                        learner: self.published.clone(),
                        position: self.live.feedback_position,
                        examples_trained: self.live.examples_trained,
                    });
                }
            }
        }
        self.refresh_report();
    }

    fn promote(&mut self) {
        let Some(monitor) = &mut self.monitor else {
            return;
        };
        let previous = monitor.last_good().version;
        let Some(figures) = monitor.promote() else {
            return;
        };
        let version = monitor.last_good().version;
        self.stats.promotions.fetch_add(1, Ordering::Relaxed);
        let mut event = Event::new(
            EventKind::Promotion,
            version,
            format!(
                "v{version} scored at least as well as last-good v{previous} over a full window and is now last-good"
            ),
        );
        for (name, value) in figures {
            event = event.figure(name, value);
        }
        self.events
            .push(event.figure("previous_last_good", previous));
        if let Some(policy) = &mut self.snapshots {
            policy.unsaved_last_good = true;
        }
        self.snapshot_last_good_if_due(false);
    }

    /// After a detection: back to last-good, blame, replay or drop, publish
    /// the result as a rollback version, then `on_degrade`.
    fn recover(&mut self, detection: Detection, cadence: &mut Cadence) {
        let Some(monitor) = &mut self.monitor else {
            return;
        };
        let from = self.live.version;
        let recovery = monitor.recover(&mut self.learner);
        let last_good = monitor.last_good().version;
        let mode = monitor.on_degrade();
        for b in &recovery.blamed {
            self.events.push(
                Event::new(
                    EventKind::SourceBlamed,
                    from,
                    format!(
                        "source `{}`: mean loss {:.3} under last-good v{last_good} against {:.3} for the reference sources, over {} examples (p = {:.2e}); excluded from training until an operator readmits it",
                        b.source, b.mean_loss, b.reference_loss, b.examples, b.p_value
                    ),
                )
                .figure("source", b.source.clone())
                .figure("examples", b.examples)
                .figure("mean_loss", b.mean_loss)
                .figure("reference_loss", b.reference_loss)
                .figure("p_value", b.p_value),
            );
        }
        cadence.published();
        let published = self.publish(Some(from));
        match published {
            Some(v) if recovery.replayed == 0 => {
                if let Some(m) = &mut self.monitor {
                    m.note_rollback_version(v);
                }
            }
            Some(_) => {}
            // Retried at the next flush.
            None => cadence.minibatches = 1,
        }
        let (kind, counter) = match detection.trigger {
            Trigger::Degraded => (EventKind::Rollback, &self.stats.rollbacks_degraded),
            Trigger::GateRefused => (EventKind::GateRefused, &self.stats.rollbacks_gate),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut what = if !recovery.blamed.is_empty() && mode == OnDegrade::Replay {
            let names: Vec<&str> = recovery.blamed.iter().map(|b| b.source.as_str()).collect();
            format!(
                "replayed the {} examples learned since without blamed source(s) {names:?} ({} of theirs dropped)",
                recovery.replayed, recovery.dropped
            )
        } else if mode == OnDegrade::Replay {
            format!(
                "no source could be blamed, so the {} examples learned since were dropped, not replayed",
                recovery.dropped
            )
        } else {
            format!(
                "the {} examples learned since were dropped (on_degrade = {mode:?})",
                recovery.dropped
            )
        };
        if recovery.lost > 0 {
            what.push_str(&format!(
                "; {} earlier examples since last-good had left the replay buffer (replay_capacity) and are gone",
                recovery.lost
            ));
        }
        let now = published.unwrap_or(from);
        let mut event = Event::new(
            kind,
            now,
            format!(
                "{}; restored last-good v{last_good} as v{now} (rolled back from v{from}); {what}",
                detection.reason
            ),
        )
        .figure("rolled_back_from", from)
        .figure("last_good", last_good)
        .figure("replayed", recovery.replayed)
        .figure("dropped", recovery.dropped)
        .figure("lost", recovery.lost);
        for (name, value) in &detection.figures {
            event = event.figure(name, *value);
        }
        self.events.push(event);
        if mode == OnDegrade::Pause {
            self.set_paused(
                true,
                "on_degrade = \"pause\": learning stopped after a rollback until an operator resumes it",
            );
        }
        self.refresh_report();
    }

    /// An operator's rollback to last-good or to a retained snapshot.
    fn rollback(
        &mut self,
        version: Option<u64>,
        cadence: &mut Cadence,
    ) -> Result<RolledBack, RollbackError> {
        let from = self.live.version;
        let last_good = self.monitor.as_ref().map(|m| m.last_good().version);
        let (restored, dropped) = match (version, &mut self.monitor) {
            (None, None) => return Err(RollbackError::NoLastGood),
            (None, Some(m)) => (
                m.last_good().version,
                m.restore_last_good(&mut self.learner),
            ),
            (Some(v), Some(m)) if Some(v) == last_good => {
                (v, m.restore_last_good(&mut self.learner))
            }
            (Some(v), _) => {
                let (learner, examples_trained) = self.load_retained(v)?;
                self.learner = learner;
                if let Some(m) = &mut self.monitor {
                    m.adopt_last_good(Checkpoint {
                        version: v,
                        learner: self.learner.clone(),
                        position: self.trained_position,
                        examples_trained,
                    });
                }
                (v, 0)
            }
        };
        cadence.published();
        let Some(new) = self.publish(Some(from)) else {
            cadence.minibatches = 1;
            return Err(RollbackError::Failed(
                "cannot reserve a version number; the rollback is published at the next attempt"
                    .into(),
            ));
        };
        if let Some(m) = &mut self.monitor {
            m.note_rollback_version(new);
        }
        self.stats
            .rollbacks_operator
            .fetch_add(1, Ordering::Relaxed);
        self.events.push(
            Event::new(
                EventKind::Rollback,
                new,
                format!("an operator rolled back to v{restored} (published as v{new}, rolled back from v{from}); {dropped} examples learned since were dropped"),
            )
            .figure("rolled_back_from", from)
            .figure("restored", restored)
            .figure("dropped", dropped),
        );
        self.refresh_report();
        Ok(RolledBack {
            version: new,
            restored,
            rolled_back_from: from,
            dropped,
        })
    }

    /// Loads a retained snapshot of `version` for a rollback.
    fn load_retained(&self, version: u64) -> Result<(Learner, u64), RollbackError> {
        let Some(policy) = &self.snapshots else {
            return Err(RollbackError::NotRetained {
                version,
                retained: Vec::new(),
            });
        };
        let failed = |e: crate::persist::snapshot::Error| RollbackError::Failed(e.to_string());
        let Some(file) = policy.store.find(version).map_err(failed)? else {
            let retained = policy
                .store
                .list()
                .map_err(failed)?
                .into_iter()
                .map(|f| f.version)
                .collect();
            return Err(RollbackError::NotRetained { version, retained });
        };
        let snapshot =
            SnapshotStore::load(&file.path).map_err(|e| RollbackError::Unusable(e.to_string()))?;
        snapshot
            .check_compatible(&policy.model, &file.path)
            .map_err(|e| RollbackError::Unusable(e.to_string()))?;
        let examples = snapshot.meta.examples_trained;
        Ok((snapshot.adopt(*self.learner.optimizer()), examples))
    }

    fn refresh_report(&self) {
        if let Some(m) = &self.monitor {
            self.stats.monitor.store(Arc::new(m.report()));
        }
    }

    /// Publishes trained work, if any, once the gate passes it (snapshotting
    /// when one is due). Under backlog the gate runs at most `gate_budget`
    /// of the time: a publish due sooner waits unless `force` (the queue is
    /// dry, or an operator asked). A failed publish stays pending, to be
    /// retried.
    fn publish_pending(&mut self, cadence: &mut Cadence, force: bool) {
        if cadence.minibatches == 0 {
            return;
        }
        if let Some(monitor) = &mut self.monitor
            && let Some(budget) = monitor.gate_budget()
        {
            let now = Instant::now();
            if !force && now < cadence.gate_ready_at {
                return;
            }
            // The live version passed the gate; it is the other yardstick
            // (unless it carries last-good's weights anyway).
            let live = (self.live.version != monitor.last_good().version)
                .then(|| (self.live.version, self.published.params()));
            let verdict = monitor.gate(self.learner.params(), live);
            let spent = now.elapsed();
            self.stats.gate_checks.fetch_add(1, Ordering::Relaxed);
            self.stats.timings.gate.observe(spent.as_secs_f64());
            cadence.gate_ready_at = Instant::now() + spent.mul_f64(1.0 / budget - 1.0);
            match verdict {
                GateVerdict::Pass => {}
                GateVerdict::Hold => {
                    self.stats.gate_holds.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                GateVerdict::Refuse(detection) => {
                    self.recover(detection, cadence);
                    return;
                }
            }
        }
        if self.publish_and_maybe_snapshot(false) {
            cadence.published();
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
    fn drain(&mut self, rt: &Handle, size: usize, grace: Duration, cadence: &mut Cadence) {
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
                self.learn_minibatch(&mut batch, cadence);
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
        if cadence.minibatches > 0 {
            self.publish_pending(cadence, true);
        }
        if cadence.minibatches > 0 {
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
                if self.monitor.is_some() {
                    // Cheap: blocks are shared until the working copy writes.
                    self.published = self.learner.clone();
                }
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

    /// Writes a snapshot of the working copy as the live version (call
    /// right after a publish, when the two are the same).
    fn snapshot_live(&mut self) -> Result<SnapshotFile, String> {
        let quality = self.quality();
        let snapshot = self.snapshot_of(
            self.learner.clone(),
            self.live.version,
            self.examples_trained(),
            self.trained_position,
            false,
            quality,
        )?;
        self.write_snapshot(snapshot)
    }

    /// Writes the last-good snapshot if one is owed and the promotion
    /// interval has passed (or `force`).
    fn snapshot_last_good_if_due(&mut self, force: bool) {
        let (Some(policy), Some(monitor)) = (&self.snapshots, &self.monitor) else {
            return;
        };
        let due = policy.unsaved_last_good
            && (force || policy.last_good_at.elapsed() >= monitor.promotion_snapshot_interval());
        if !due {
            return;
        }
        let lg = monitor.last_good();
        let quality = self.quality();
        let snapshot = self.snapshot_of(
            lg.learner.clone(),
            lg.version,
            lg.examples_trained,
            lg.position,
            true,
            quality,
        );
        if let Some(policy) = &mut self.snapshots {
            policy.last_good_at = Instant::now();
            policy.unsaved_last_good = false;
        }
        if let Ok(snapshot) = snapshot {
            // Failures are counted and recorded inside.
            let _ = self.write_snapshot(snapshot);
        }
    }

    /// Live and baseline rolling quality, for snapshot metadata.
    fn quality(&self) -> std::collections::BTreeMap<String, f64> {
        let report = self.stats.monitor.load();
        let mut q = std::collections::BTreeMap::new();
        for (side, quality) in [("live", &report.live), ("baseline", &report.baseline)] {
            for (name, value) in quality.figures() {
                q.insert(format!("{side}_{name}"), value);
            }
        }
        q
    }

    fn snapshot_of(
        &self,
        learner: Learner,
        version: u64,
        examples_trained: u64,
        feedback_position: u64,
        last_good: bool,
        quality: std::collections::BTreeMap<String, f64>,
    ) -> Result<Snapshot, String> {
        let Some(policy) = &self.snapshots else {
            return Err("snapshots are not kept for this model".into());
        };
        Ok(Snapshot {
            meta: SnapshotMeta {
                format_version: crate::persist::snapshot::FORMAT_VERSION,
                model: self.model.to_string(),
                task: policy.model.task,
                classes: policy.model.classes.clone(),
                hash_bits: policy.model.hash_bits,
                optimizer: *learner.optimizer(),
                version,
                examples_trained,
                feedback_position,
                optimizer_steps: learner.state().steps,
                created_at_ms: epoch_ms(),
                model_created_at_ms: policy.created_at_ms,
                quality,
                last_good,
                feature_names: policy.feature_names.clone(),
            },
            learner,
        })
    }

    fn write_snapshot(&mut self, snapshot: Snapshot) -> Result<SnapshotFile, String> {
        let protect: Vec<u64> = self
            .monitor
            .as_ref()
            .map(|m| m.last_good().version)
            .into_iter()
            .collect();
        let Some(policy) = &mut self.snapshots else {
            return Err("snapshots are not kept for this model".into());
        };
        if !snapshot.meta.last_good {
            policy.last = Instant::now();
        }
        let version = snapshot.meta.version;
        let started = Instant::now();
        match policy.store.write(&snapshot, &protect) {
            Ok(file) => {
                self.stats.snapshots_written.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .timings
                    .snapshot
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(model = %self.model, version, last_good = snapshot.meta.last_good, bytes = file.bytes, ms = started.elapsed().as_millis() as u64, "snapshot written");
                Ok(file)
            }
            Err(e) => {
                self.stats.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(model = %self.model, version, error = %e, "snapshot failed");
                self.events.push(Event::new(
                    EventKind::SnapshotFailed,
                    version,
                    format!("snapshot of v{version} failed: {e}"),
                ));
                Err(e.to_string())
            }
        }
    }

    /// Publishes and, when a snapshot is due (or `force`), snapshots.
    /// Returns whether the publish succeeded.
    fn publish_and_maybe_snapshot(&mut self, force: bool) -> bool {
        if self.publish(None).is_none() {
            return false;
        }
        let due = self
            .snapshots
            .as_ref()
            .is_some_and(|p| force || p.last.elapsed() >= p.interval);
        if due {
            // A failure is logged and counted inside; the next one retries.
            let _ = self.snapshot_live();
        }
        self.snapshot_last_good_if_due(false);
        true
    }
}

/// When and where the trainer writes snapshots.
pub struct SnapshotPolicy {
    pub store: SnapshotStore,
    pub interval: Duration,
    /// The model's configuration (task, classes, hash_bits go in the meta).
    pub model: ModelConfig,
    pub created_at_ms: u64,
    /// Feature names known from the snapshot the model started from
    /// (written by `eddy train`); every snapshot carries them on.
    pub feature_names: Arc<FeatureNames>,
    /// When the last periodic snapshot was written (or the trainer started).
    pub last: Instant,
    /// When the last last-good snapshot was written.
    pub last_good_at: Instant,
    /// A promotion has not been snapshotted yet.
    pub unsaved_last_good: bool,
}

pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
