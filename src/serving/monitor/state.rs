//! `MonitorState`: everything the monitor has learned about the stream, as
//! a snapshot keeps it, so that a restarted server judges the next example
//! exactly as the uninterrupted one would have. The weights of last-good
//! and of the candidate travel beside it (the snapshot's extra learners);
//! the remembered examples travel as log positions, read back from the
//! feedback log on restore (`refill`).

use serde::{Deserialize, Serialize};

use super::*;

/// A checkpoint without its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub version: u64,
    pub position: u64,
    pub examples_trained: u64,
}

impl CheckpointMeta {
    fn of(c: &Checkpoint) -> Self {
        Self {
            version: c.version,
            position: c.position,
            examples_trained: c.examples_trained,
        }
    }

    fn with(self, learner: Learner) -> Checkpoint {
        Checkpoint {
            version: self.version,
            learner,
            position: self.position,
            examples_trained: self.examples_trained,
        }
    }
}

/// One remembered example, by its log position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EntryState {
    pub position: u64,
    trusted: bool,
    base: Scored,
    base_version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorState {
    pub last_good: CheckpointMeta,
    alias: Option<u64>,
    pub candidate: Option<(CheckpointMeta, PairedWindow)>,
    window: PairedWindow,
    rolling_live: Rolling,
    rolling_base: Rolling,
    sources: Vec<(String, Rolling, u64)>,
    /// Oldest first.
    pub buffer: Vec<EntryState>,
    lost_since_last_good: u64,
    blamed: Vec<String>,
    cooldown_left: u64,
    seen: u64,
    trusted_seen: u64,
    last_look: u64,
    earned: Option<LossSample>,
    unsettled: u64,
    suspect: Option<Suspicion>,
}

impl Monitor {
    /// The state to snapshot, with last-good's and the candidate's learners.
    /// Only between minibatches (nothing observed but not yet remembered).
    pub fn state(&self) -> (MonitorState, Learner, Option<Learner>) {
        let state = MonitorState {
            last_good: CheckpointMeta::of(&self.last_good),
            alias: self.alias,
            candidate: self
                .candidate
                .as_ref()
                .map(|c| (CheckpointMeta::of(&c.checkpoint), c.window)),
            window: self.window,
            rolling_live: self.rolling_live,
            rolling_base: self.rolling_base,
            sources: self
                .sources
                .rows
                .iter()
                .map(|(name, rolling, n)| (name.to_string(), *rolling, *n))
                .collect(),
            buffer: self
                .buffer
                .iter()
                .map(|e| EntryState {
                    position: e.position,
                    trusted: e.trusted,
                    base: e.base,
                    base_version: e.base_version,
                })
                .collect(),
            lost_since_last_good: self.lost_since_last_good,
            blamed: self.blamed.iter().cloned().collect(),
            cooldown_left: self.cooldown_left,
            seen: self.seen,
            trusted_seen: self.trusted_seen,
            last_look: self.last_look,
            earned: self.earned,
            unsettled: self.unsettled,
            suspect: self.suspect,
        };
        let candidate = self
            .candidate
            .as_ref()
            .map(|c| c.checkpoint.learner.clone());
        (state, self.last_good.learner.clone(), candidate)
    }

    /// A monitor as `state` describes it; its remembered examples come back
    /// with `refill`. `candidate` is the candidate's learner when the state
    /// has one.
    pub fn restore(
        config: MonitorConfig,
        task: TaskKind,
        reference: Vec<Labelled>,
        state: MonitorState,
        last_good: Learner,
        candidate: Option<Learner>,
        baseline: BaselineHandle,
    ) -> Self {
        let mut m = Self::new(
            config,
            task,
            reference,
            state.last_good.with(last_good),
            baseline,
        );
        m.alias = state.alias;
        m.candidate = state
            .candidate
            .zip(candidate)
            .map(|((meta, window), learner)| Candidate {
                checkpoint: meta.with(learner),
                window,
            });
        m.window = state.window;
        m.rolling_live = state.rolling_live;
        m.rolling_base = state.rolling_base;
        for (name, rolling, n) in state.sources {
            let name: Arc<str> = name.into();
            m.sources.index.insert(name.clone(), m.sources.rows.len());
            m.sources.rows.push((name, rolling, n));
        }
        m.lost_since_last_good = state.lost_since_last_good;
        m.blamed = state.blamed.into_iter().collect();
        m.cooldown_left = state.cooldown_left;
        m.seen = state.seen;
        m.trusted_seen = state.trusted_seen;
        m.last_look = state.last_look;
        m.earned = state.earned;
        m.unsettled = state.unsettled;
        m.suspect = state.suspect;
        m.share_baseline();
        m
    }

    /// Puts back the remembered examples: each entry of the saved state
    /// with its example as the log holds it, oldest first.
    pub fn refill(&mut self, entries: impl IntoIterator<Item = (EntryState, Feedback)>) {
        for (e, fb) in entries {
            self.buffer.push_back(Entry {
                fb,
                position: e.position,
                trusted: e.trusted,
                base: e.base,
                base_version: e.base_version,
            });
        }
        // A no-op unless the budgets shrank since the state was saved.
        self.evict();
    }
}
