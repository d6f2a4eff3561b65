//! Window verdicts and promotion: each full window of trusted examples
//! judged live vs last-good, the candidate promoted when it held up, and
//! what changes when last-good does.

use super::*;

impl Monitor {
    /// Judges the window that just filled and starts the next one.
    pub fn close_window(&mut self) -> WindowOutcome {
        let fresh = self.paired();
        let window = std::mem::replace(&mut self.window, fresh);
        if let Verdict::Degraded { p_value } = window.judge_rollback(&self.rule, self.task)
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
    pub(super) fn settled(&mut self, window: &PairedWindow) -> bool {
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
    pub(super) fn reference_ok(&self, candidate: &Params) -> bool {
        if self.reference.is_empty() {
            return true;
        }
        let w = self.reference_window(candidate);
        w.live_at_least_as_good(self.task)
    }

    pub(super) fn reference_window(&self, candidate: &Params) -> PairedWindow {
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
    pub(super) fn last_good_changed(&mut self) {
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
        self.buffer.drop_oldest(oldest_needed);
        self.rescore_reference();
        self.share_baseline();
    }

    pub(super) fn rescore_reference(&mut self) {
        let base = self.last_good.learner.params();
        self.reference_base = self
            .reference
            .iter()
            .map(|(x, y)| base.score(x, *y))
            .collect();
    }
}
