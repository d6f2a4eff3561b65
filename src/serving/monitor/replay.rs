//! The replay buffer and recovery: recent examples kept with their
//! last-good scores (rescored lazily), and the way back to last-good with
//! the examples since replayed without blamed sources, or dropped.

use super::*;

/// One remembered example.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) fb: Feedback,
    pub(super) position: u64,
    pub(super) trusted: bool,
    /// Its outcome under last-good version `base_version` (rescored
    /// lazily, when it is next needed after last-good changed).
    pub(super) base: Scored,
    pub(super) base_version: u64,
}

/// What a recovery did besides restoring last-good.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub blamed: Vec<Blame>,
    /// Examples since last-good learned again.
    pub replayed: usize,
    /// Examples since last-good not learned again.
    pub dropped: usize,
    /// Examples since last-good that had already left the replay buffer.
    pub lost: u64,
}

impl Monitor {
    /// After a detection: blames sources, resets `learner` to last-good and
    /// replays (or drops) the examples since, as `on_degrade` says. Windows
    /// restart, the candidate is dropped and the cool-down begins.
    pub fn recover(&mut self, learner: &mut Learner) -> Recovery {
        let blamed = self.blame();
        for b in &blamed {
            self.blamed.insert(b.source.clone());
        }
        *learner = self.last_good.learner.clone();
        let start = self.since_last_good();
        let since = self.buffer.len() - start;
        let replay = self.config.on_degrade == OnDegrade::Replay && !blamed.is_empty();
        let mut recovery = Recovery {
            lost: std::mem::take(&mut self.lost_since_last_good),
            ..Recovery::default()
        };
        if replay {
            let blamed_set = &self.blamed;
            let mut i = 0usize;
            self.buffer.retain(|e| {
                // Entries before `start` are already in last-good.
                let keep = i < start
                    || e.fb
                        .source
                        .as_deref()
                        .is_none_or(|s| !blamed_set.contains(s));
                i += 1;
                keep
            });
            for e in self.buffer.range(start.min(self.buffer.len())..) {
                learner.learn_one(&e.fb.features, e.fb.target);
            }
            recovery.replayed = self.buffer.len().saturating_sub(start);
            recovery.dropped = since - recovery.replayed;
        } else {
            self.buffer.truncate(start);
            recovery.dropped = since;
        }
        self.restart();
        recovery.blamed = blamed;
        recovery
    }

    /// Windows and candidate start over, and the cool-down begins.
    pub(super) fn restart(&mut self) {
        self.window = self.paired();
        self.candidate = None;
        self.suspect = None;
        self.cooldown_left = self.config.cooldown_examples;
        self.share_baseline();
    }

    /// Index in `buffer` of the first entry since last-good.
    pub(super) fn since_last_good(&self) -> usize {
        self.buffer
            .partition_point(|e| e.position < self.last_good.position)
    }

    /// Rescores under the current last-good the entries `pick` selects
    /// (walking from the newest) whose scores are older.
    pub(super) fn freshen(&mut self, mut pick: impl FnMut(&Entry) -> Option<bool>) {
        let version = self.last_good.version;
        let base = self.last_good.learner.params();
        for e in self.buffer.iter_mut().rev() {
            match pick(e) {
                None => break,
                Some(false) => continue,
                Some(true) => {}
            }
            if e.base_version != version {
                e.base = base.score(&e.fb.features, e.fb.target);
                e.base_version = version;
            }
        }
    }

    /// The gate's sample: the newest `gate_examples` trusted entries.
    pub(super) fn freshen_gate_sample(&mut self) {
        let mut left = self.gate_sample();
        self.freshen(|e| {
            if left == 0 {
                None
            } else if e.trusted {
                left -= 1;
                Some(true)
            } else {
                Some(false)
            }
        });
    }

    /// Blame's sample: every entry since last-good.
    pub(super) fn freshen_since_last_good(&mut self) {
        let position = self.last_good.position;
        self.freshen(|e| (e.position >= position).then_some(true));
    }

    /// Back to last-good without replaying (an operator's rollback): the
    /// examples since are dropped from the model. Returns how many.
    pub fn restore_last_good(&mut self, learner: &mut Learner) -> usize {
        *learner = self.last_good.learner.clone();
        let start = self.since_last_good();
        let dropped = self.buffer.len() - start;
        self.buffer.truncate(start);
        self.lost_since_last_good = 0;
        self.restart();
        dropped
    }

    /// An operator rolled back to a retained version: it becomes last-good.
    pub fn adopt_last_good(&mut self, checkpoint: Checkpoint) {
        self.last_good = checkpoint;
        self.alias = None;
        self.lost_since_last_good = 0;
        self.last_good_changed();
        self.restart();
    }

    /// A live version now carries last-good's weights (a rollback).
    pub fn note_rollback_version(&mut self, version: u64) {
        self.alias = Some(version);
    }
}
