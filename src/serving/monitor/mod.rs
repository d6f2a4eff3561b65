//! `Monitor`: the safety loop's judgement for one model. It runs on the
//! trainer's thread, between taking a minibatch off the queue and training
//! it, so every labelled example is scored by the live version *before* it
//! is learned (test-then-train), and by the last-good version on the same
//! example (shadow scoring). From those pairs it decides:
//!
//! - **Degradation** (`close_window`): at the end of each non-overlapping
//!   window of `window` trusted examples, live vs last-good with
//!   `learn::compare` (exact McNemar, or a paired t-test for regression).
//!   One look per window keeps the false-alarm rate at `alpha` per window.
//!   Under pure drift both versions get worse together, there is no
//!   discordance in the live model's disfavour, and nothing happens.
//! - **The gate** (`gate`): before a candidate is published, it is scored on
//!   the most recent `min_samples` trusted examples (and the reference set)
//!   against last-good's stored scores. Recent examples are the ones a
//!   drifting world makes the candidate better at and a poisoned candidate
//!   worse at. O(`min_samples`) per publish; the trainer bounds how often.
//! - **Promotion**: a candidate frozen at a window boundary is scored over
//!   the next full window and becomes last-good only if it was at least as
//!   good as last-good there (and not worse on the reference set).
//! - **Recovery** (`recover`): back to last-good, blame sources, then replay
//!   what was learned since without them, or drop it when none is to blame.
//!
//! **Blame rule.** Over the examples since last-good, a named, untrusted
//! source with at least `BLAME_MIN_EXAMPLES` examples is blamed when its
//! mean loss under last-good is more than `blame_factor` times that of the
//! reference group (the trusted sources when configured, else every other
//! example) and higher by a one-sided Welch t-test at `alpha`. Last-good
//! predates the damage, so a source whose labels disagree with it far more
//! than everyone else's is the one that moved the model. Blamed sources'
//! examples are scored but never trained on until an operator re-admits
//! the source.
//!
//! The monitor holds no locks and does no IO; it hands the trainer
//! decisions, and the trainer publishes, snapshots and records events.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use crate::config::{MonitorConfig, OnDegrade};
use crate::learn::{
    DegradationRule, FeatureVec, Figures, Learner, LossSample, PairedWindow, Params, Scored,
    Scores, Target, TaskKind, Verdict,
};

use super::queue::Feedback;
use super::store::ModelVersion;

mod blame;
mod gate;
mod observe;
mod replay;
mod report;
mod state;
mod window;

pub use blame::{BLAME_MIN_EXAMPLES, Blame};
use gate::Suspicion;
use replay::{Entry, ReplayBuffer};
pub use replay::{Recovery, ReplayUsage};
pub use report::{MonitorReport, Quality, SourceReport};
use report::{Rolling, SourceTable};
pub use state::{CheckpointMeta, EntryState, MonitorState};

/// The name examples without a source are tracked under.
pub const UNKNOWN_SOURCE: &str = "unknown";
/// Where sources beyond `max_sources` are folded.
pub const OTHER_SOURCE: &str = "other";

/// A labelled example of the reference set.
pub type Labelled = (FeatureVec, Target);

/// Last-good's weights for request threads, which score accepted
/// feedback against it (`queue::Prescored`). The monitor replaces it
/// whenever last-good changes.
#[derive(Debug)]
pub struct Baseline {
    pub version: u64,
    pub params: Params,
    /// The candidate being scored for promotion: its version and weights.
    pub candidate: Option<(u64, Params)>,
}

/// Where the monitor publishes `Baseline`; `None` while the monitor is off.
pub type BaselineHandle = Arc<arc_swap::ArcSwapOption<Baseline>>;

/// A version the monitor can return to: weights plus optimizer state.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub version: u64,
    pub learner: Learner,
    /// Feedback position it includes: examples at positions below it are
    /// in these weights.
    pub position: u64,
    pub examples_trained: u64,
}

#[derive(Debug)]
struct Candidate {
    checkpoint: Checkpoint,
    /// Candidate vs last-good on the trusted examples since it was frozen.
    window: PairedWindow,
}

/// What found the damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A window showed the live version worse than last-good.
    Degraded,
    /// The gate refused a candidate before it was published.
    GateRefused,
}

/// A detected degradation and the numbers behind it.
#[derive(Debug, Clone)]
pub struct Detection {
    pub trigger: Trigger,
    pub reason: String,
    pub figures: Vec<(&'static str, f64)>,
}
/// The gate's answer for a candidate.
#[derive(Debug)]
pub enum GateVerdict {
    Pass,
    /// Failed once: do not publish yet, look again on fresh examples.
    Hold,
    Refuse(Detection),
}

/// The verdict at a window boundary.
#[derive(Debug)]
pub enum WindowOutcome {
    Degraded(Detection),
    Judged { promote: bool },
}

pub struct Monitor {
    config: MonitorConfig,
    /// Shared with request threads (see `Baseline`).
    baseline: BaselineHandle,
    rule: DegradationRule,
    task: TaskKind,
    trusted: HashSet<String>,
    reference: Vec<Labelled>,
    /// Last-good's outcome on each reference example.
    reference_base: Vec<Scored>,
    last_good: Checkpoint,
    /// A live version known to carry exactly last-good's weights (a
    /// rollback that replayed nothing): scored once, not twice.
    alias: Option<u64>,
    candidate: Option<Candidate>,
    /// Live vs last-good on the trusted examples of the current window.
    window: PairedWindow,
    rolling_live: Rolling,
    rolling_base: Rolling,
    sources: SourceTable,
    /// Recent examples, oldest first, by position: every one since
    /// last-good (up to `replay_capacity` and `replay_max_bytes`) and the
    /// newest trusted ones the gate scores.
    buffer: ReplayBuffer,
    /// Examples since last-good evicted from `buffer`.
    lost_since_last_good: u64,
    blamed: BTreeSet<String>,
    cooldown_left: u64,
    /// Labelled examples observed so far.
    seen: u64,
    /// Trusted labelled examples observed so far.
    trusted_seen: u64,
    /// `trusted_seen` at the gate's last look.
    last_look: u64,
    /// Last-good's per-block badness over the window that earned its
    /// promotion (see `settled`).
    earned: Option<LossSample>,
    /// Consecutive windows in which last-good scored far below `earned`.
    unsettled: u64,
    /// `seen` when the gate first failed the current candidate.
    suspect: Option<Suspicion>,
    /// Scores of the minibatch being handled, between `observe` and
    /// `remember`: last-good's outcome, whether it is trusted, its position.
    scored: Vec<(Scored, bool, u64)>,
}

impl Monitor {
    pub fn new(
        config: MonitorConfig,
        task: TaskKind,
        reference: Vec<Labelled>,
        last_good: Checkpoint,
        baseline: BaselineHandle,
    ) -> Self {
        let mut m = Self {
            baseline,
            rule: config.rule(),
            trusted: config.trusted_sources.iter().cloned().collect(),
            task,
            reference,
            reference_base: Vec::new(),
            last_good,
            alias: None,
            candidate: None,
            window: PairedWindow::with_block(config.block_size),
            rolling_live: Rolling::default(),
            rolling_base: Rolling::default(),
            sources: SourceTable::default(),
            buffer: ReplayBuffer::default(),
            lost_since_last_good: 0,
            blamed: BTreeSet::new(),
            cooldown_left: 0,
            seen: 0,
            trusted_seen: 0,
            last_look: 0,
            earned: None,
            unsettled: 0,
            suspect: None,
            scored: Vec::new(),
            config,
        };
        m.rescore_reference();
        m.share_baseline();
        m
    }

    /// The monitor of `m` (unless it is disabled) for a model with no
    /// history: last-good is `learner` as `version`, no reference set, and
    /// a baseline handle of its own (in-process drivers and tests).
    pub fn fresh(m: &crate::config::ModelConfig, version: u64, learner: &Learner) -> Option<Self> {
        m.monitor.enabled.then(|| {
            Self::new(
                m.monitor.clone(),
                m.task,
                Vec::new(),
                Checkpoint {
                    version,
                    learner: learner.clone(),
                    position: 0,
                    examples_trained: 0,
                },
                Default::default(),
            )
        })
    }

    /// Hands request threads the current last-good weights.
    fn share_baseline(&self) {
        self.baseline.store(Some(Arc::new(Baseline {
            version: self.last_good.version,
            params: self.last_good.learner.params().clone(),
            candidate: self
                .candidate
                .as_ref()
                .map(|c| (c.checkpoint.version, c.checkpoint.learner.params().clone())),
        })));
    }

    pub fn last_good(&self) -> &Checkpoint {
        &self.last_good
    }

    pub fn on_degrade(&self) -> OnDegrade {
        self.config.on_degrade
    }

    /// The gate's share of trainer time, when the gate is on.
    pub fn gate_budget(&self) -> Option<f64> {
        self.config.gate.then_some(self.config.gate_budget)
    }

    pub fn promotion_snapshot_interval(&self) -> std::time::Duration {
        self.config.promotion_snapshot_interval()
    }

    fn is_trusted(&self, fb: &Feedback) -> bool {
        self.trusted.is_empty()
            || fb
                .source
                .as_deref()
                .is_some_and(|s| self.trusted.contains(s))
    }

    fn paired(&self) -> PairedWindow {
        PairedWindow::with_block(self.config.block_size)
    }

    fn carries_last_good(&self, version: u64) -> bool {
        version == self.last_good.version || self.alias == Some(version)
    }

    /// Takes a source back into training; false if it was not blamed.
    pub fn readmit(&mut self, source: &str) -> bool {
        self.blamed.remove(source)
    }

    pub fn is_blamed(&self, source: &str) -> bool {
        self.blamed.contains(source)
    }

    pub fn blamed(&self) -> impl Iterator<Item = &str> {
        self.blamed.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests;
