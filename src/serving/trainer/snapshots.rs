//! When and what the trainer writes to disk: periodic and shutdown
//! snapshots of the published version, last-good snapshots after
//! promotions.

use crate::persist::snapshot::TrainerPart;

use std::sync::atomic::AtomicBool;

use super::super::idempotency::IdempotencyKeys;
use super::writer::{self, SnapshotWriter};
use super::*;

impl Trainer {
    /// Writes a snapshot of the live version: the weights as they were
    /// published, never the working copy, which may hold minibatches the
    /// gate has not passed (a held candidate must not reach the disk under
    /// the live version's number).
    ///
    /// A quiet trainer (everything trained is published) adds its state,
    /// so a restart continues it exactly. While the gate holds a candidate
    /// the snapshot waits, with a feedback log (which keeps what the
    /// candidate learned); without one the live weights are written alone.
    pub(super) fn snapshot_live(
        &mut self,
        wait: bool,
    ) -> Result<Option<SnapshotFile>, SnapshotError> {
        // The state records the last step applied: it must be in the log.
        self.log_steps();
        let state = self.state();
        if state.is_none() && self.journal.keeps_records() {
            return Err(SnapshotError::Holding);
        }
        let quality = self.quality();
        let mut snapshot = self
            .snapshot_of(
                self.published.clone(),
                self.live.version,
                self.live.examples_trained,
                self.live.feedback_position,
                false,
                quality,
            )
            .map_err(SnapshotError::Failed)?;
        if let Some(super::steps::Saved {
            state,
            guard,
            learners,
        }) = state
        {
            snapshot.meta.log_from = Some(Self::log_from_state(&state, guard.as_ref()));
            snapshot.trainer = Some(TrainerPart {
                state: postcard::to_stdvec(&state)
                    .map_err(|e| SnapshotError::Failed(e.to_string()))?,
                guard: guard
                    .map(|g| g.encode())
                    .transpose()
                    .map_err(SnapshotError::Failed)?,
                learners,
                candidates_resumed: true,
            });
        }
        self.write_snapshot(snapshot, wait)
    }

    /// Writes a snapshot of the live version when one is due (by time, by
    /// examples, or owed) and the trainer is quiet. Never while replaying.
    pub(super) fn snapshot_if_due(&mut self) {
        if self.replaying.is_some() || self.cadence.minibatches > 0 {
            return;
        }
        let position = self.live.feedback_position;
        let now = self.clock.now();
        let due = self.snapshots.as_ref().is_some_and(|p| {
            p.owed.load(Ordering::Acquire)
                || now.saturating_sub(p.last) >= p.interval
                || (p.every_examples > 0
                    && position.saturating_sub(p.last_position) >= p.every_examples)
        });
        self.snapshot_waiting = false;
        if due {
            // A failure is logged and counted by the writer; the next one
            // retries. A busy writer leaves it waiting for the next flush.
            if let Err(e) = self.snapshot_live(false) {
                self.snapshot_waiting = matches!(e, SnapshotError::Busy);
            }
        }
    }

    /// Writes the last-good snapshot if one is owed and the promotion
    /// interval has passed (or `force`).
    pub(super) fn snapshot_last_good_if_due(&mut self, force: bool) {
        let (Some(policy), Some(monitor)) = (&self.snapshots, &self.monitor) else {
            return;
        };
        if self.replaying.is_some() {
            return;
        }
        let due = policy.unsaved_last_good
            && (force
                || self.clock.now().saturating_sub(policy.last_good_at)
                    >= monitor.promotion_snapshot_interval());
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
        // Failures are counted and recorded by the writer; a busy writer
        // leaves it owed.
        if let Ok(snapshot) = snapshot
            && self.write_snapshot(snapshot, force).is_ok()
            && let Some(policy) = &mut self.snapshots
        {
            policy.last_good_at = self.clock.now();
            policy.unsaved_last_good = false;
        }
    }

    /// Live and baseline rolling quality, for snapshot metadata.
    pub(super) fn quality(&self) -> std::collections::BTreeMap<String, f64> {
        let report = self.stats.monitor.load();
        let mut q = std::collections::BTreeMap::new();
        for (side, quality) in [("live", &report.live), ("baseline", &report.baseline)] {
            for (name, value) in quality.figures() {
                q.insert(format!("{side}_{name}"), value);
            }
        }
        q
    }

    pub(super) fn snapshot_of(
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
                family: crate::persist::snapshot::family_of(&learner).0,
                mlp: crate::persist::snapshot::family_of(&learner).1,
                optimizer: *learner.optimizer(),
                version,
                examples_trained,
                feedback_position,
                optimizer_steps: learner.state().steps,
                created_at_ms: epoch_ms(),
                model_created_at_ms: policy.created_at_ms,
                quality,
                last_good,
                log_from: None,
                offline: false,
                feature_names: policy.feature_names.clone(),
            },
            learner,
            trainer: None,
        })
    }

    /// Hands a snapshot to the writer thread: a periodic one without
    /// waiting (still due if the writer is busy), one someone waits for
    /// (`wait`: shutdown, an operator) with its outcome.
    pub(super) fn write_snapshot(
        &mut self,
        snapshot: Snapshot,
        wait: bool,
    ) -> Result<Option<SnapshotFile>, SnapshotError> {
        let protect: Vec<u64> = self
            .monitor
            .as_ref()
            .map(|m| m.last_good().version)
            .into_iter()
            .collect();
        let needed = self
            .monitor
            .as_ref()
            .map(|m| m.last_good().position)
            .unwrap_or(u64::MAX)
            .min(self.live.feedback_position);
        let Some(policy) = &mut self.snapshots else {
            return Err(SnapshotError::Failed(
                "snapshots are not kept for this model".into(),
            ));
        };
        let Some(writer) = &policy.writer else {
            return Err(SnapshotError::Failed(
                "the snapshot writer did not start".into(),
            ));
        };
        let periodic = !snapshot.meta.last_good;
        let position = snapshot.meta.feedback_position;
        let job = writer::Job {
            snapshot,
            protect,
            needed,
            reply: None,
        };
        let result = if wait {
            writer.write(job).map(Some)
        } else if writer.offer(job) {
            Ok(None)
        } else {
            return Err(SnapshotError::Busy);
        };
        if periodic {
            policy.last = self.clock.now();
            policy.last_position = position;
        }
        result
    }
}

/// What a trainer's final snapshot did not save because the disk refused
/// it: the process exits non-zero and says so (`App::run`).
#[derive(Debug, Clone)]
pub struct Unsaved {
    pub model: Arc<str>,
    /// The version the final snapshot was of.
    pub version: u64,
    /// Examples in that version's weights (counted since the model was
    /// created).
    pub examples_trained: u64,
    /// The newest snapshot on disk: its version and its examples.
    pub saved_version: u64,
    pub saved_examples: u64,
    /// The feedback log holds the examples since the snapshot on disk and
    /// was synced: the next start learns them again. False: they are lost
    /// (`storage.wal = false`, or the log failed too).
    pub in_log: bool,
    pub cause: String,
}

impl Unsaved {
    /// Examples trained since the newest snapshot on disk.
    pub fn examples_unsaved(&self) -> u64 {
        self.examples_trained.saturating_sub(self.saved_examples)
    }
}

impl std::fmt::Display for Unsaved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "model {}: the final snapshot of v{} was not written ({}); {} examples trained since the newest snapshot on disk (v{}) are not saved",
            self.model,
            self.version,
            self.cause,
            self.examples_unsaved(),
            self.saved_version
        )?;
        if self.in_log {
            write!(
                f,
                "; the feedback log holds them and the next start learns them again"
            )
        } else {
            write!(
                f,
                "; the feedback log does not hold them (storage.wal off, or the log failed too): they are lost"
            )
        }
    }
}

impl Trainer {
    /// What the final snapshot left unsaved, if it failed on disk. A
    /// snapshot the gate defers is no loss: the log keeps what the
    /// candidate learned.
    pub(super) fn unsaved(&self, failed: SnapshotError, synced: bool) -> Option<Unsaved> {
        if matches!(failed, SnapshotError::Holding) {
            return None;
        }
        Some(Unsaved {
            model: self.model.clone(),
            version: self.live.version,
            examples_trained: self.examples_trained(),
            saved_version: self.stats.saved_version.load(Ordering::Acquire),
            saved_examples: self.stats.saved_examples.load(Ordering::Acquire),
            in_log: synced && self.journal.keeps_records(),
            cause: failed.cause(),
        })
    }
}

/// When and where the trainer writes snapshots.
pub struct SnapshotPolicy {
    pub(super) store: SnapshotStore,
    pub(super) interval: Duration,
    /// The model's configuration (task, classes, hash_bits go in the meta).
    pub(super) model: ModelConfig,
    pub(super) created_at_ms: u64,
    /// Feature names known from the snapshot the model started from
    /// (written by `eddy train`); every snapshot carries them on.
    pub(super) feature_names: Arc<FeatureNames>,
    /// When the last periodic snapshot was written (or the trainer started),
    /// on the trainer's clock.
    pub(super) last: Duration,
    /// When the last last-good snapshot was written.
    pub(super) last_good_at: Duration,
    /// A promotion has not been snapshotted yet.
    pub(super) unsaved_last_good: bool,
    /// Also snapshot once the feedback position moved this far since the
    /// last periodic snapshot (0: by time only).
    pub(super) every_examples: u64,
    pub(super) last_position: u64,
    /// Saved beside each periodic snapshot, so keys outlive the log
    /// segments retention removes.
    pub(super) keys: Option<Arc<IdempotencyKeys>>,
    /// A snapshot with the trainer's state is owed at the next quiet
    /// moment (after a recovery that could not replay exactly, a rollback
    /// to a retained file, a step the log could not take).
    pub(super) owed: Arc<AtomicBool>,
    /// Encodes and writes snapshots on its own thread (started with the
    /// trainer).
    pub(super) writer: Option<SnapshotWriter>,
}

impl SnapshotPolicy {
    pub fn new(
        store: SnapshotStore,
        interval: Duration,
        model: ModelConfig,
        created_at_ms: u64,
        feature_names: Arc<FeatureNames>,
    ) -> Self {
        Self {
            store,
            interval,
            model,
            created_at_ms,
            feature_names,
            last: Duration::ZERO,
            last_good_at: Duration::ZERO,
            unsaved_last_good: false,
            every_examples: 0,
            last_position: 0,
            keys: None,
            owed: Arc::default(),
            writer: None,
        }
    }

    /// Whether a snapshot with the trainer's state is owed from the start.
    pub fn owing(self, owed: bool) -> Self {
        self.owed.store(owed, Ordering::Release);
        self
    }

    /// Saves `keys` with every periodic snapshot.
    pub fn saving_keys(mut self, keys: Arc<IdempotencyKeys>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Also snapshots after `n` examples (`storage.snapshot_every_examples`).
    pub fn every_examples(mut self, n: u64) -> Self {
        self.every_examples = n;
        self
    }

    /// Intervals count from the trainer's start, at `position`.
    pub(super) fn started(&mut self, now: Duration, position: u64) {
        self.last = now;
        self.last_good_at = now;
        self.last_position = position;
    }
}

pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
