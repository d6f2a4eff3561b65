//! The publish gate: a candidate scored on the newest trusted examples (and
//! the reference set) before it is published; a first failure holds, a
//! confirmed one refuses.

use super::*;

/// A first gate failure, waiting for fresh evidence.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(super) struct Suspicion {
    /// The evidence count (see `Monitor::evidence`) at the failure.
    pub(super) at: u64,
    pub(super) on_reference: bool,
    /// When it failed: with no fresh evidence after `gate_hold_ms` (a
    /// quiet stream, or a client waiting for its own feedback to show),
    /// the candidate is looked at again on what there is.
    pub(super) since: std::time::Duration,
}

impl Monitor {
    /// Examples the gate scores candidates on.
    pub(super) fn gate_sample(&self) -> usize {
        self.config.gate_examples.max(1) as usize
    }

    /// The gate's significance level for one look: alpha spent in
    /// proportion to the fresh trusted examples the look brings (at most
    /// `gate_examples`), out of a window's worth. Looks at every publish,
    /// however frequent, then spend about `alpha` per window together, as
    /// the window test does.
    pub(super) fn gate_rule(&self, fresh: u64) -> DegradationRule {
        let fresh = fresh.clamp(1, self.config.gate_examples);
        let share = (fresh as f64 / self.config.window as f64).min(1.0);
        DegradationRule {
            alpha: self.rule.alpha * share,
            ..self.rule
        }
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
    pub fn gate(
        &mut self,
        candidate: &Params,
        live: Option<(u64, &Params)>,
        now: std::time::Duration,
    ) -> GateVerdict {
        if !self.config.gate || self.cooldown_left > 0 {
            return GateVerdict::Pass;
        }
        let confirm_after = (self.config.gate_examples / 2).max(1);
        if let Some(s) = self.suspect
            && self.evidence(s.on_reference) < s.at + confirm_after
            && now.saturating_sub(s.since) < self.config.gate_hold()
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
                    since: now,
                });
                GateVerdict::Hold
            }
        }
    }

    /// How much fresh evidence has arrived: trusted examples for a failure
    /// on them, any labelled example (the candidate keeps learning) for a
    /// failure on the fixed reference set.
    pub(super) fn evidence(&self, on_reference: bool) -> u64 {
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

    pub(super) fn gate_block(&self) -> u64 {
        (self.config.block_size * self.config.gate_examples / self.config.window).max(1)
    }

    /// One gate test: `Some` when the candidate is worse, with whether it
    /// was on the reference set.
    pub(super) fn gate_check(
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
}
