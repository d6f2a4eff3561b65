//! Test-then-train scoring: each minibatch scored by the live and last-good
//! versions before it is learned, blamed sources taken out, and the trained
//! examples remembered for the gate, blame and replay.

use super::*;

impl Monitor {
    /// Scores a minibatch (each example at its log position) with `live` and last-good
    /// before it is trained. Returns true when the window is full and
    /// `close_window` is due.
    pub fn observe(&mut self, batch: &[Feedback], live: &ModelVersion) -> bool {
        self.scored.clear();
        let live_is_base = self.carries_last_good(live.version);
        let block = self.config.window;
        for fb in batch {
            // Scored on acceptance when possible: the live version then,
            // and last-good if it has not changed since.
            let (now, now_version, base) = match fb.scored {
                Some(s) if s.base_version == self.last_good.version => {
                    (s.live, s.live_version, s.base)
                }
                Some(s) => (
                    s.live,
                    s.live_version,
                    self.last_good
                        .learner
                        .params()
                        .score(&fb.features, fb.target),
                ),
                None => {
                    let base = self
                        .last_good
                        .learner
                        .params()
                        .score(&fb.features, fb.target);
                    let now = if live_is_base {
                        base
                    } else {
                        live.params.score(&fb.features, fb.target)
                    };
                    (now, live.version, base)
                }
            };
            self.sources
                .add(fb.source.as_ref(), now, block, self.config.max_sources);
            let trusted = self.is_trusted(fb);
            if trusted {
                self.rolling_live.add(now, block);
                self.rolling_base.add(base, block);
                self.window.add(now, base);
                self.trusted_seen += 1;
                if let Some(c) = &mut self.candidate {
                    let prescored = fb
                        .scored
                        .and_then(|s| s.candidate)
                        .filter(|(v, _)| *v == c.checkpoint.version);
                    let cand = if c.checkpoint.version == now_version {
                        now
                    } else if let Some((_, scored)) = prescored {
                        scored
                    } else {
                        c.checkpoint.learner.params().score(&fb.features, fb.target)
                    };
                    c.window.add(cand, base);
                }
            }
            self.cooldown_left = self.cooldown_left.saturating_sub(1);
            self.seen += 1;
            self.scored.push((base, trusted, fb.position));
        }
        self.window.n >= self.config.window
    }

    /// Removes examples from blamed sources from `batch` (they are scored,
    /// never trained) and returns them.
    pub fn retain_admitted(&mut self, batch: &mut Vec<Feedback>) -> Vec<Feedback> {
        if self.blamed.is_empty() {
            return Vec::new();
        }
        let admitted: Vec<bool> = batch
            .iter()
            .map(|fb| {
                fb.source
                    .as_deref()
                    .is_none_or(|s| !self.blamed.contains(s))
            })
            .collect();
        let (kept, excluded): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .zip(admitted.iter())
            .partition(|(_, admitted)| **admitted);
        batch.extend(kept.into_iter().map(|(fb, _)| fb));
        let mut keep = admitted.iter();
        self.scored.retain(|_| keep.next().copied().unwrap_or(true));
        excluded.into_iter().map(|(fb, _)| fb).collect()
    }

    /// Forgets the scores of a minibatch that was not trained.
    pub fn forget_scored(&mut self) {
        self.scored.clear();
    }

    /// Keeps the (trained) minibatch for replay, blame and the gate.
    /// An example learned out of log order (one that waited for its
    /// source's share, or an operator released from quarantine) is not
    /// kept: the buffer is in log order, which replay and recovery rely
    /// on. A rollback cannot learn it again, and counts it as lost.
    pub fn remember(&mut self, batch: impl Iterator<Item = Feedback>) {
        let base_version = self.last_good.version;
        for (fb, (base, trusted, position)) in batch.zip(self.scored.drain(..)) {
            if self.buffer.back().is_some_and(|e| e.position >= position) {
                self.lost_since_last_good += 1;
                continue;
            }
            self.buffer.push_back(Entry {
                fb,
                base_version,
                position,
                trusted,
                base,
            });
        }
        self.evict();
    }

    /// Evicts the oldest examples beyond `replay_capacity` (at least the
    /// gate's sample) or `replay_max_bytes`, counting those since
    /// last-good as lost.
    pub(super) fn evict(&mut self) {
        let capacity = self.config.replay_capacity.max(self.gate_sample()).max(1);
        let gone = self.buffer.evict(capacity, self.config.replay_max_bytes);
        let since = self.last_good.position;
        self.lost_since_last_good += gone.iter().filter(|p| **p >= since).count() as u64;
    }
}
