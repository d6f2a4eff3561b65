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

/// Examples a source needs since last-good before it can be blamed.
pub const BLAME_MIN_EXAMPLES: u64 = 30;

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

/// One remembered example.
#[derive(Debug)]
struct Entry {
    fb: Feedback,
    position: u64,
    trusted: bool,
    /// Its outcome under last-good version `base_version` (rescored
    /// lazily, when it is next needed after last-good changed).
    base: Scored,
    base_version: u64,
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

/// A source blamed for a degradation.
#[derive(Debug, Clone)]
pub struct Blame {
    pub source: String,
    pub examples: u64,
    pub mean_loss: f64,
    pub reference_loss: f64,
    pub p_value: f64,
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

/// A first gate failure, waiting for fresh evidence.
#[derive(Debug, Clone, Copy)]
struct Suspicion {
    /// The evidence count (see `Monitor::evidence`) at the failure.
    at: u64,
    on_reference: bool,
    /// When it failed: with no fresh evidence after `gate_hold_ms` (a
    /// quiet stream, or a client waiting for its own feedback to show),
    /// the candidate is looked at again on what there is.
    since: std::time::Instant,
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

/// Rolling quality of one version (or one source) as users see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Quality {
    pub examples: u64,
    #[serde(flatten)]
    pub figures: Figures,
}

impl Quality {
    pub fn of(s: &Scores, task: TaskKind) -> Self {
        Self {
            examples: s.n,
            figures: s.figures(task),
        }
    }

    /// The figures by name, for metrics.
    pub fn figures(&self) -> Vec<(&'static str, f64)> {
        self.figures.named()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceReport {
    pub source: String,
    /// Labelled examples from it since start-up.
    pub examples: u64,
    /// Live quality on its last `window` examples.
    pub live: Quality,
    pub blamed: bool,
}

/// What the monitor shows operators (model info, metrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MonitorReport {
    pub enabled: bool,
    pub last_good_version: Option<u64>,
    /// Being scored for promotion.
    pub candidate_version: Option<u64>,
    /// Rolling quality over the last `window` trusted labelled examples
    /// (every example when no source is trusted): the live versions, and
    /// last-good on the same examples.
    pub live: Quality,
    pub baseline: Quality,
    pub sources: Vec<SourceReport>,
    pub blamed_sources: Vec<String>,
    /// Labelled examples left before another rollback may happen.
    pub cooldown_left: u64,
    /// Windows promotion has waited because last-good scores far below
    /// what earned it (the data changed; see `Monitor::settled`).
    pub unsettled_windows: u64,
}

/// Two consecutive blocks of scores: the last complete one and the one
/// filling. Reports show the complete one (the filling one at first).
#[derive(Debug, Clone, Copy, Default)]
struct Rolling {
    current: Scores,
    previous: Scores,
}

impl Rolling {
    /// Adds one; returns true when a block completed.
    fn add(&mut self, s: Scored, block: u64) -> bool {
        self.current.add_scored(s);
        if self.current.n >= block {
            self.previous = std::mem::take(&mut self.current);
            true
        } else {
            false
        }
    }

    fn shown(&self) -> &Scores {
        if self.previous.n > 0 {
            &self.previous
        } else {
            &self.current
        }
    }
}

#[derive(Debug, Default)]
struct SourceTable {
    index: HashMap<Arc<str>, usize>,
    rows: Vec<(Arc<str>, Rolling, u64)>,
    /// The last source looked up (examples of a batch share theirs).
    last: Option<(Option<Arc<str>>, usize)>,
}

impl SourceTable {
    fn add(&mut self, source: Option<&Arc<str>>, s: Scored, block: u64, max: usize) {
        let cached = self.last.as_ref().and_then(|(src, i)| {
            let same = match (src, source) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            same.then_some(*i)
        });
        let i = match cached {
            Some(i) => i,
            None => {
                let i = self.slot(source, max);
                self.last = Some((source.cloned(), i));
                i
            }
        };
        let row = &mut self.rows[i];
        row.1.add(s, block);
        row.2 += 1;
    }

    /// The row of `source`, made if there is room (else `other`).
    fn slot(&mut self, source: Option<&Arc<str>>, max: usize) -> usize {
        let name = source.map_or(UNKNOWN_SOURCE, |s| s.as_ref());
        match self.index.get(name) {
            Some(&i) => i,
            None => {
                let key: Arc<str> = if self.rows.len() < max {
                    source.cloned().unwrap_or_else(|| UNKNOWN_SOURCE.into())
                } else {
                    OTHER_SOURCE.into()
                };
                match self.index.get(&key) {
                    Some(&i) => i,
                    None => {
                        self.rows.push((key.clone(), Rolling::default(), 0));
                        self.index.insert(key, self.rows.len() - 1);
                        self.rows.len() - 1
                    }
                }
            }
        }
    }
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
    /// last-good (up to `replay_capacity`) and the newest trusted ones the
    /// gate scores.
    buffer: VecDeque<Entry>,
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
            buffer: VecDeque::new(),
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

    /// Examples the gate scores candidates on.
    fn gate_sample(&self) -> usize {
        self.config.gate_examples.max(1) as usize
    }

    /// The gate's significance level for one look: alpha spent in
    /// proportion to the fresh trusted examples the look brings (at most
    /// `gate_examples`), out of a window's worth. Looks at every publish,
    /// however frequent, then spend about `alpha` per window together, as
    /// the window test does.
    fn gate_rule(&self, fresh: u64) -> DegradationRule {
        let fresh = fresh.clamp(1, self.config.gate_examples);
        let share = (fresh as f64 / self.config.window as f64).min(1.0);
        DegradationRule {
            alpha: self.rule.alpha * share,
            ..self.rule
        }
    }

    fn paired(&self) -> PairedWindow {
        PairedWindow::with_block(self.config.block_size)
    }

    fn carries_last_good(&self, version: u64) -> bool {
        version == self.last_good.version || self.alias == Some(version)
    }

    /// Scores a minibatch (queue positions `first..`) with `live` and last-good
    /// before it is trained. Returns true when the window is full and
    /// `close_window` is due.
    pub fn observe(&mut self, batch: &[Feedback], first: u64, live: &ModelVersion) -> bool {
        self.scored.clear();
        let live_is_base = self.carries_last_good(live.version);
        let block = self.config.window;
        for (i, fb) in batch.iter().enumerate() {
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
            self.scored.push((base, trusted, first + i as u64));
        }
        self.window.n >= self.config.window
    }

    /// Removes examples from blamed sources from `batch` (they are scored,
    /// never trained); returns how many.
    pub fn retain_admitted(&mut self, batch: &mut Vec<Feedback>) -> usize {
        if self.blamed.is_empty() {
            return 0;
        }
        let before = batch.len();
        let admitted: Vec<bool> = batch
            .iter()
            .map(|fb| {
                fb.source
                    .as_deref()
                    .is_none_or(|s| !self.blamed.contains(s))
            })
            .collect();
        let mut keep = admitted.iter();
        batch.retain(|_| keep.next().copied().unwrap_or(true));
        let mut keep = admitted.iter();
        self.scored.retain(|_| keep.next().copied().unwrap_or(true));
        before - batch.len()
    }

    /// Forgets the scores of a minibatch that was not trained.
    pub fn forget_scored(&mut self) {
        self.scored.clear();
    }

    /// Keeps the (trained) minibatch for replay, blame and the gate.
    pub fn remember(&mut self, batch: impl Iterator<Item = Feedback>) {
        let capacity = self.config.replay_capacity.max(self.gate_sample()).max(1);
        let base_version = self.last_good.version;
        for (fb, (base, trusted, position)) in batch.zip(self.scored.drain(..)) {
            self.buffer.push_back(Entry {
                fb,
                base_version,
                position,
                trusted,
                base,
            });
        }
        while self.buffer.len() > capacity {
            if let Some(old) = self.buffer.pop_front()
                && old.position >= self.last_good.position
            {
                self.lost_since_last_good += 1;
            }
        }
    }

    /// Judges the window that just filled and starts the next one.
    pub fn close_window(&mut self) -> WindowOutcome {
        let fresh = self.paired();
        let window = std::mem::replace(&mut self.window, fresh);
        if let Verdict::Degraded { p_value } = window.judge(&self.rule, self.task)
            && self.cooldown_left == 0
        {
            let mut figures = window.figures(self.task);
            figures.push(("p_value", p_value));
            return WindowOutcome::Degraded(Detection {
                trigger: Trigger::Degraded,
                reason: format!(
                    "live versions were worse than last-good v{} over a window of {} trusted examples (p = {p_value:.2e})",
                    self.last_good.version, window.n
                ),
                figures,
            });
        }
        let settled = self.settled(&window);
        let promote = settled
            && self.candidate.as_ref().is_some_and(|c| {
                c.window.n >= self.config.window
                    && c.window.live_at_least_as_good(self.task)
                    && !matches!(
                        c.window.judge(&self.rule, self.task),
                        Verdict::Degraded { .. }
                    )
                    && self.reference_ok(c.checkpoint.learner.params())
            });
        WindowOutcome::Judged { promote }
    }

    /// Whether the world still looks like the one last-good was chosen
    /// in. If last-good now scores significantly worse (by more than the
    /// tolerance) than over the window that earned its promotion, the data
    /// changed under both versions: a drift, or a broken upstream. A
    /// candidate adapted to it is not promoted yet, for up to
    /// `settle_windows` windows: a broken upstream usually ends within
    /// that, and its damage is then judged against a last-good that never
    /// learned it. A change that lasts longer is accepted as the new
    /// normal and promotion resumes.
    fn settled(&mut self, window: &PairedWindow) -> bool {
        let now = window.base_blocks_badness(self.task);
        let Some(earned) = self.earned else {
            return true;
        };
        let margin = match self.task {
            TaskKind::Regression => self.config.tolerance * earned.mean(),
            TaskKind::Binary | TaskKind::Multiclass => self.config.tolerance,
        };
        let changed = now.mean() > earned.mean() + margin
            && now.p_above_by(&earned, margin) < self.config.alpha;
        if !changed {
            self.unsettled = 0;
            return true;
        }
        self.unsettled += 1;
        if self.unsettled > self.config.settle_windows {
            self.earned = Some(now);
            self.unsettled = 0;
            return true;
        }
        false
    }

    /// Whether `candidate` is at least as good as last-good on the
    /// reference set (true without one).
    fn reference_ok(&self, candidate: &Params) -> bool {
        if self.reference.is_empty() {
            return true;
        }
        let w = self.reference_window(candidate);
        w.live_at_least_as_good(self.task)
    }

    fn reference_window(&self, candidate: &Params) -> PairedWindow {
        let mut w = self.paired();
        for ((x, y), base) in self.reference.iter().zip(&self.reference_base) {
            w.add(candidate.score(x, *y), *base);
        }
        w
    }

    /// Makes the candidate last-good (after `close_window` said so);
    /// returns the window that earned it.
    pub fn promote(&mut self) -> Option<Vec<(&'static str, f64)>> {
        let c = self.candidate.take()?;
        let figures = c.window.figures(self.task);
        self.earned = Some(c.window.live_blocks_badness(self.task));
        self.unsettled = 0;
        self.last_good = c.checkpoint;
        self.alias = None;
        self.lost_since_last_good = 0;
        self.last_good_changed();
        Some(figures)
    }

    /// Starts scoring `checkpoint` (a just-published version) for promotion.
    pub fn freeze_candidate(&mut self, checkpoint: Checkpoint) {
        let window = self.paired();
        let previous = self.candidate.as_ref().map(|c| c.checkpoint.version);
        self.candidate = (!self.carries_last_good(checkpoint.version))
            .then_some(Candidate { checkpoint, window });
        if self.candidate.as_ref().map(|c| c.checkpoint.version) != previous {
            self.share_baseline();
        }
    }

    /// Last-good changed: forget what the gate and blame no longer need
    /// (what they need is rescored when they next look: `freshen`).
    fn last_good_changed(&mut self) {
        let mut trusted_left = self.gate_sample();
        let mut oldest_needed = self.buffer.len();
        for (i, e) in self.buffer.iter().enumerate().rev() {
            let since = e.position >= self.last_good.position;
            if !since && trusted_left == 0 {
                break;
            }
            if e.trusted {
                trusted_left = trusted_left.saturating_sub(1);
            }
            oldest_needed = i;
        }
        self.buffer.drain(..oldest_needed);
        self.rescore_reference();
        self.share_baseline();
    }

    fn rescore_reference(&mut self) {
        let base = self.last_good.learner.params();
        self.reference_base = self
            .reference
            .iter()
            .map(|(x, y)| base.score(x, *y))
            .collect();
    }

    /// Scores a candidate against last-good before it is published.
    ///
    /// Each look tests at a share of `alpha` (see `gate_rule`).
    /// A first failure only holds publishing (`Hold`: the live version
    /// stays, the candidate keeps training); the candidate is refused if it
    /// fails again once at least half of `gate_examples` new trusted
    /// examples have arrived (new labelled examples of any source, when it
    /// failed on the reference set), and passes as soon as it no longer fails. A
    /// learner's passing dips clear on fresh data; damage does not. While
    /// cooling down after a rollback the gate passes everything.
    pub fn gate(&mut self, candidate: &Params, live: Option<(u64, &Params)>) -> GateVerdict {
        if !self.config.gate || self.cooldown_left > 0 {
            return GateVerdict::Pass;
        }
        let confirm_after = (self.config.gate_examples / 2).max(1);
        if let Some(s) = self.suspect
            && self.evidence(s.on_reference) < s.at + confirm_after
            && s.since.elapsed() < self.config.gate_hold()
        {
            return GateVerdict::Hold;
        }
        self.freshen_gate_sample();
        let fresh = self.trusted_seen - self.last_look;
        self.last_look = self.trusted_seen;
        match self.gate_check(candidate, live, fresh) {
            None => {
                self.suspect = None;
                GateVerdict::Pass
            }
            Some((detection, _)) if self.suspect.is_some() => {
                self.suspect = None;
                GateVerdict::Refuse(detection)
            }
            Some((_, on_reference)) => {
                self.suspect = Some(Suspicion {
                    at: self.evidence(on_reference),
                    on_reference,
                    since: std::time::Instant::now(),
                });
                GateVerdict::Hold
            }
        }
    }

    /// How much fresh evidence has arrived: trusted examples for a failure
    /// on them, any labelled example (the candidate keeps learning) for a
    /// failure on the fixed reference set.
    fn evidence(&self, on_reference: bool) -> u64 {
        if on_reference {
            self.seen
        } else {
            self.trusted_seen
        }
    }

    /// Whether publishing is on hold after a first gate failure.
    pub fn holding(&self) -> bool {
        self.suspect.is_some()
    }

    fn gate_block(&self) -> u64 {
        (self.config.block_size * self.config.gate_examples / self.config.window).max(1)
    }

    /// One gate test: `Some` when the candidate is worse, with whether it
    /// was on the reference set.
    fn gate_check(
        &self,
        candidate: &Params,
        live: Option<(u64, &Params)>,
        fresh: u64,
    ) -> Option<(Detection, bool)> {
        let rule = self.gate_rule(fresh);
        // The live version is a second yardstick for classification only:
        // a regression candidate one step from the live one routinely
        // differs from it in squared error by more than a small relative
        // tolerance, consistently across the sample, without being damaged.
        let live = live.filter(|_| self.task != TaskKind::Regression);
        let block = self.gate_block();
        let mut vs_base = PairedWindow::with_block(block);
        let mut vs_live = PairedWindow::with_block(block);
        for e in self
            .buffer
            .iter()
            .rev()
            .filter(|e| e.trusted)
            .take(self.gate_sample())
        {
            let c = candidate.score(&e.fb.features, e.fb.target);
            vs_base.add(c, e.base);
            if let Some((_, live)) = live {
                vs_live.add(c, live.score(&e.fb.features, e.fb.target));
            }
        }
        let refuse = |w: &PairedWindow, than: String, on: &str| {
            let Verdict::Degraded { p_value } = w.judge(&rule, self.task) else {
                return None;
            };
            let mut figures = w.figures(self.task);
            figures.push(("p_value", p_value));
            Some(Detection {
                trigger: Trigger::GateRefused,
                reason: format!(
                    "candidate was worse than {than} on {on} ({} examples, p = {p_value:.2e})",
                    w.n
                ),
                figures,
            })
        };
        let recent = "the most recent trusted examples";
        let on_recent = refuse(
            &vs_base,
            format!("last-good v{}", self.last_good.version),
            recent,
        )
        .or_else(|| {
            let (version, _) = live?;
            refuse(&vs_live, format!("the live v{version}"), recent)
        });
        if let Some(d) = on_recent {
            return Some((d, false));
        }
        if self.reference.is_empty() {
            return None;
        }
        refuse(
            &self.reference_window(candidate),
            format!("last-good v{}", self.last_good.version),
            "the reference set",
        )
        .map(|d| (d, true))
    }

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
    fn restart(&mut self) {
        self.window = self.paired();
        self.candidate = None;
        self.suspect = None;
        self.cooldown_left = self.config.cooldown_examples;
        self.share_baseline();
    }

    /// Index in `buffer` of the first entry since last-good.
    fn since_last_good(&self) -> usize {
        self.buffer
            .partition_point(|e| e.position < self.last_good.position)
    }

    /// Rescores under the current last-good the entries `pick` selects
    /// (walking from the newest) whose scores are older.
    fn freshen(&mut self, mut pick: impl FnMut(&Entry) -> Option<bool>) {
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
    fn freshen_gate_sample(&mut self) {
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
    fn freshen_since_last_good(&mut self) {
        let position = self.last_good.position;
        self.freshen(|e| (e.position >= position).then_some(true));
    }

    /// The sources to blame for damage since last-good (see the module doc).
    fn blame(&mut self) -> Vec<Blame> {
        self.freshen_since_last_good();
        let start = self.since_last_good();
        let mut groups: HashMap<&str, LossSample> = HashMap::new();
        let mut trusted = LossSample::default();
        let mut all = LossSample::default();
        for e in self.buffer.range(start..) {
            let loss = e.base.loss();
            all.add(loss);
            if e.trusted && !self.trusted.is_empty() {
                trusted.add(loss);
            } else if let Some(s) = e.fb.source.as_deref() {
                groups.entry(s).or_default().add(loss);
            }
        }
        let min = BLAME_MIN_EXAMPLES.min(self.config.min_samples.max(2));
        let mut out: Vec<Blame> = groups
            .into_iter()
            .filter(|(_, g)| g.n >= min)
            .filter_map(|(source, g)| {
                let reference = if self.trusted.is_empty() {
                    all.without(&g)
                } else {
                    trusted
                };
                if reference.n < min {
                    return None;
                }
                let p_value = g.p_above(&reference);
                let far = g.mean() > self.config.blame_factor * reference.mean();
                (far && p_value < self.config.alpha).then(|| Blame {
                    source: source.to_owned(),
                    examples: g.n,
                    mean_loss: g.mean(),
                    reference_loss: reference.mean(),
                    p_value,
                })
            })
            .collect();
        out.sort_by(|a, b| a.source.cmp(&b.source));
        out
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

    /// Takes a source back into training; false if it was not blamed.
    pub fn readmit(&mut self, source: &str) -> bool {
        self.blamed.remove(source)
    }

    pub fn blamed(&self) -> impl Iterator<Item = &str> {
        self.blamed.iter().map(String::as_str)
    }

    pub fn report(&self) -> MonitorReport {
        MonitorReport {
            enabled: true,
            last_good_version: Some(self.last_good.version),
            candidate_version: self.candidate.as_ref().map(|c| c.checkpoint.version),
            live: Quality::of(self.rolling_live.shown(), self.task),
            baseline: Quality::of(self.rolling_base.shown(), self.task),
            sources: self
                .sources
                .rows
                .iter()
                .map(|(name, rolling, examples)| SourceReport {
                    source: name.to_string(),
                    examples: *examples,
                    live: Quality::of(rolling.shown(), self.task),
                    blamed: self.blamed.contains(name.as_ref()),
                })
                .collect(),
            blamed_sources: self.blamed.iter().cloned().collect(),
            cooldown_left: self.cooldown_left,
            unsettled_windows: self.unsettled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{FeatureHasher, LabelSpace, OptimizerConfig, RawFeatures};
    use std::time::SystemTime;

    fn x(v: f64) -> FeatureVec {
        let text = format!(r#"{{"x": {v}}}"#);
        let raw: RawFeatures = serde_json::from_str(&text).unwrap();
        FeatureHasher::new(8).hash(&raw).unwrap()
    }

    fn fb(v: f64, label: usize, source: &str) -> Feedback {
        Feedback::labelled(x(v), Target::Class(label), Some(source.into()))
    }

    /// A learner that knows `label = x > 0`.
    fn trained() -> Learner {
        let space = Arc::new(LabelSpace::new(TaskKind::Binary, vec![]).unwrap());
        let mut l = Learner::new(Params::new(space, 8), OptimizerConfig::default());
        for i in 0..2000 {
            let v = ((i * 37) % 200) as f64 / 100.0 - 1.0;
            l.learn_one(&x(v), Target::Class(usize::from(v > 0.0)));
        }
        l
    }

    fn monitor(trusted: &[&str]) -> (Monitor, Learner) {
        let config = MonitorConfig {
            window: 200,
            min_samples: 100,
            block_size: 10,
            gate_examples: 100,
            trusted_sources: trusted.iter().map(|s| s.to_string()).collect(),
            ..MonitorConfig::default()
        };
        let learner = trained();
        let checkpoint = Checkpoint {
            version: 1,
            learner: learner.clone(),
            position: 0,
            examples_trained: 2000,
        };
        let m = Monitor::new(
            config,
            TaskKind::Binary,
            Vec::new(),
            checkpoint,
            Default::default(),
        );
        (m, learner)
    }

    /// Feeds `batch` through observe/remember as the trainer would.
    fn feed(m: &mut Monitor, batch: Vec<Feedback>, first: u64, live: &ModelVersion) {
        m.observe(&batch, first, live);
        m.remember(batch.into_iter());
    }

    fn version(n: u64, learner: &Learner) -> ModelVersion {
        ModelVersion {
            version: n,
            params: learner.params().clone(),
            published_at: SystemTime::now(),
            examples_trained: 0,
            feedback_position: 0,
            rolled_back_from: None,
        }
    }

    fn rows(n: usize, offset: usize) -> impl Iterator<Item = (f64, usize)> {
        (0..n).map(move |i| {
            let v = (((i + offset) * 53) % 200) as f64 / 100.0 - 0.995;
            (v, usize::from(v > 0.0))
        })
    }

    #[test]
    fn the_source_whose_labels_last_good_disputes_is_blamed_never_a_trusted_one() {
        let (mut m, mut learner) = monitor(&["trusted"]);
        let live = version(1, &learner);
        let mut batch = Vec::new();
        for (v, y) in rows(300, 0) {
            batch.push(fb(v, y, "trusted"));
            batch.push(fb(v, 1 - y, "attacker"));
            batch.push(fb(v, y, "honest"));
        }
        feed(&mut m, batch, 0, &live);
        let recovery = m.recover(&mut learner);
        let blamed: Vec<&str> = recovery.blamed.iter().map(|b| b.source.as_str()).collect();
        assert_eq!(blamed, ["attacker"]);
        assert!(recovery.blamed[0].mean_loss > 2.0 * recovery.blamed[0].reference_loss);
        assert_eq!(
            (recovery.replayed, recovery.dropped),
            (600, 300),
            "trusted and honest replayed, the attacker's dropped"
        );
        let mut next = vec![fb(0.5, 0, "attacker"), fb(0.5, 1, "honest")];
        m.observe(&next, 900, &live);
        assert_eq!(
            m.retain_admitted(&mut next),
            1,
            "blamed examples are not trained"
        );
        assert!(m.readmit("attacker"));
        assert!(!m.readmit("attacker"));
    }

    #[test]
    fn with_one_source_nothing_is_blamed_and_the_damage_is_dropped() {
        let (mut m, mut learner) = monitor(&[]);
        let live = version(1, &learner);
        let batch = rows(300, 0)
            .map(|(v, y)| fb(v, 1 - y, "upstream"))
            .collect();
        feed(&mut m, batch, 0, &live);
        let recovery = m.recover(&mut learner);
        assert!(recovery.blamed.is_empty());
        assert_eq!((recovery.replayed, recovery.dropped), (0, 300));
        assert_eq!(
            learner.params().predict(&x(0.5)),
            trained().params().predict(&x(0.5)),
            "back to last-good exactly"
        );
    }

    #[test]
    fn a_reference_set_gates_candidates_when_no_trusted_traffic_arrives() {
        let config = MonitorConfig {
            window: 200,
            min_samples: 100,
            block_size: 10,
            gate_examples: 100,
            trusted_sources: vec!["nobody".into()],
            ..MonitorConfig::default()
        };
        let learner = trained();
        let reference: Vec<Labelled> = rows(200, 3)
            .map(|(v, y)| (x(v), Target::Class(y)))
            .collect();
        let checkpoint = Checkpoint {
            version: 1,
            learner: learner.clone(),
            position: 0,
            examples_trained: 2000,
        };
        let mut m = Monitor::new(
            config,
            TaskKind::Binary,
            reference,
            checkpoint,
            Default::default(),
        );
        let live = version(1, &learner);
        let mut damaged = learner.clone();
        for (v, y) in rows(400, 7) {
            damaged.learn_one(&x(v), Target::Class(1 - y));
        }
        assert!(matches!(m.gate(learner.params(), None), GateVerdict::Pass));
        assert!(matches!(m.gate(damaged.params(), None), GateVerdict::Hold));
        // Untrusted traffic is not compared, but it is fresh evidence time.
        feed(
            &mut m,
            rows(60, 0).map(|(v, y)| fb(v, y, "other")).collect(),
            0,
            &live,
        );
        let GateVerdict::Refuse(d) = m.gate(damaged.params(), None) else {
            panic!("refused on the reference set")
        };
        assert!(d.reason.contains("the reference set"), "{}", d.reason);
    }

    #[test]
    fn the_gate_holds_then_refuses_a_damaged_candidate_and_passes_a_sound_one() {
        let (mut m, learner) = monitor(&[]);
        let live = version(1, &learner);
        feed(
            &mut m,
            rows(100, 0).map(|(v, y)| fb(v, y, "s")).collect(),
            0,
            &live,
        );
        assert!(matches!(m.gate(learner.params(), None), GateVerdict::Pass));
        let mut damaged = learner.clone();
        for (v, y) in rows(400, 7) {
            damaged.learn_one(&x(v), Target::Class(1 - y));
        }
        assert!(matches!(m.gate(damaged.params(), None), GateVerdict::Hold));
        assert!(m.holding());
        assert!(
            matches!(m.gate(damaged.params(), None), GateVerdict::Hold),
            "no new evidence yet: still holding"
        );
        feed(
            &mut m,
            rows(60, 100).map(|(v, y)| fb(v, y, "s")).collect(),
            100,
            &live,
        );
        let GateVerdict::Refuse(d) = m.gate(damaged.params(), None) else {
            panic!("confirmed on fresh examples")
        };
        assert_eq!(d.trigger, Trigger::GateRefused);
        assert!(d.reason.contains("worse than last-good v1"), "{}", d.reason);
        assert!(!m.holding());
        assert!(matches!(m.gate(learner.params(), None), GateVerdict::Pass));
    }
}
