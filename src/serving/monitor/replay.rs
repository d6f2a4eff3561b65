//! The replay buffer and recovery: recent examples kept with their
//! last-good scores (rescored lazily), and the way back to last-good with
//! the examples since replayed without blamed sources, or dropped.
//!
//! The buffer is bounded by `replay_capacity` examples and by
//! `replay_max_bytes`, oldest evicted first (over the byte budget, the
//! oldest untrusted example first). What an example costs is a
//! fixed formula of its feature count and source length (`entry_cost`),
//! never the allocator's answer or a vector's capacity, so the trainer
//! replaying its log evicts exactly what the live run evicted and the gate
//! and blame see the same examples.

use std::ops::Deref;

use crate::learn::features::allocation_cost;

use super::*;

/// What an entry costs beyond its features and source: the entry itself
/// in the buffer (at most this; checked by a test). A constant rather
/// than `size_of`, so a rebuilt binary replays a log the same way.
pub(super) const ENTRY_BYTES: usize = 320;

/// What a remembered example costs in the replay buffer.
pub(super) fn entry_cost(fb: &Feedback) -> usize {
    // An `Arc<str>` is one allocation of two counters and the text.
    let source = fb
        .source
        .as_ref()
        .map_or(0, |s| allocation_cost(16 + s.len()));
    ENTRY_BYTES + fb.features.heap_bytes() + source
}

/// The remembered examples, oldest first, with what they cost. Reads go
/// through `Deref`; every change goes through the methods here, which
/// keep `bytes` the sum of the entries' costs.
#[derive(Debug, Default)]
pub(super) struct ReplayBuffer {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// Entries from sources outside `trusted_sources`: evicted first when
    /// the byte budget is short, so wide untrusted traffic cannot push
    /// out the trusted examples the gate judges on.
    untrusted: usize,
    /// Examples evicted for `replay_capacity` and for `replay_max_bytes`
    /// since start-up (metrics).
    evicted_capacity: u64,
    evicted_bytes: u64,
}

/// What the replay buffer holds and has let go (metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayUsage {
    pub examples: u64,
    pub bytes: u64,
    pub evicted_capacity: u64,
    pub evicted_bytes: u64,
}

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

impl Deref for ReplayBuffer {
    type Target = VecDeque<Entry>;

    fn deref(&self) -> &Self::Target {
        &self.entries
    }
}

impl ReplayBuffer {
    pub(super) fn push_back(&mut self, e: Entry) {
        self.charge(&e);
        self.entries.push_back(e);
    }

    fn charge(&mut self, e: &Entry) {
        self.bytes += entry_cost(&e.fb);
        self.untrusted += usize::from(!e.trusted);
    }

    fn release(bytes: &mut usize, untrusted: &mut usize, e: &Entry) {
        *bytes -= entry_cost(&e.fb);
        *untrusted -= usize::from(!e.trusted);
    }

    /// Evicts entries until at most `capacity` examples of at most
    /// `max_bytes` remain; returns the evicted entries' positions. Over
    /// `capacity` the oldest go; over `max_bytes` the oldest untrusted
    /// entry goes first, then the oldest of all. Either rule depends only
    /// on the entries, so a replay evicts exactly what the live run did.
    pub(super) fn evict(&mut self, capacity: usize, max_bytes: usize) -> Vec<u64> {
        let mut gone = Vec::new();
        while self.entries.len() > capacity || (self.bytes > max_bytes && !self.is_empty()) {
            let over_capacity = self.entries.len() > capacity;
            let at = if over_capacity || self.untrusted == 0 {
                0
            } else {
                self.entries.iter().position(|e| !e.trusted).unwrap_or(0)
            };
            let Some(old) = self.entries.remove(at) else {
                break;
            };
            Self::release(&mut self.bytes, &mut self.untrusted, &old);
            if over_capacity {
                self.evicted_capacity += 1;
            } else {
                self.evicted_bytes += 1;
            }
            gone.push(old.position);
        }
        gone
    }

    pub(super) fn truncate(&mut self, len: usize) {
        for e in self.entries.range(len.min(self.entries.len())..) {
            Self::release(&mut self.bytes, &mut self.untrusted, e);
        }
        self.entries.truncate(len);
    }

    /// Drops the oldest `n` entries (no longer needed, not evicted).
    pub(super) fn drop_oldest(&mut self, n: usize) {
        for e in self.entries.drain(..n.min(self.entries.len())) {
            Self::release(&mut self.bytes, &mut self.untrusted, &e);
        }
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let (bytes, untrusted) = (&mut self.bytes, &mut self.untrusted);
        self.entries.retain(|e| {
            let k = keep(e);
            if !k {
                Self::release(bytes, untrusted, e);
            }
            k
        });
    }

    /// The entries, newest last, to rescore: only their scores may change.
    pub(super) fn scores_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut Entry> {
        self.entries.iter_mut()
    }

    pub(super) fn usage(&self) -> ReplayUsage {
        ReplayUsage {
            examples: self.entries.len() as u64,
            bytes: self.bytes as u64,
            evicted_capacity: self.evicted_capacity,
            evicted_bytes: self.evicted_bytes,
        }
    }
}

/// What a recovery did besides restoring last-good.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub blamed: Vec<Blame>,
    /// The blamed sources' examples since last-good, taken out of the
    /// model (for the guard's quarantine).
    pub blamed_examples: Vec<Feedback>,
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
            let taken = &mut recovery.blamed_examples;
            self.buffer.retain(|e| {
                // Entries before `start` are already in last-good.
                let keep = i < start
                    || e.fb
                        .source
                        .as_deref()
                        .is_none_or(|s| !blamed_set.contains(s));
                if !keep {
                    taken.push(e.fb.clone());
                }
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
        for e in self.buffer.scores_mut().rev() {
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
