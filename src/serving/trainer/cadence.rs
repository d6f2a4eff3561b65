//! The publishing rhythm: when trained work is gated and published, with
//! the gate held to its share of trainer time and publishes coalesced
//! under backlog. Every reading comes from the trainer's clock.

use super::steps::Step;
use super::*;

/// Trained minibatches not yet published, and when the last publish, the
/// next allowed gate check and the next report refresh are.
#[derive(Debug)]
pub(super) struct Cadence {
    pub(super) minibatches: u32,
    last_publish: Duration,
    gate_ready_at: Duration,
    report_at: Duration,
    /// Examples were learned since the report was last refreshed; the
    /// trainer refreshes it once the queue runs dry, so what an idle model
    /// shows is never stale.
    pub(super) report_owed: bool,
}

impl Cadence {
    pub(super) fn new(now: Duration) -> Self {
        Self {
            minibatches: 0,
            last_publish: now,
            gate_ready_at: now,
            report_at: now,
            report_owed: false,
        }
    }

    pub(super) fn published(&mut self, now: Duration) {
        self.minibatches = 0;
        self.last_publish = now;
    }

    /// Whether `publish_every` minibatches wait and, under backlog (not
    /// `idle`), `min_publish_interval` has passed since the last publish.
    pub(super) fn due(&self, config: &TrainingConfig, now: Duration, idle: bool) -> bool {
        self.minibatches >= config.publish_every.get()
            && (idle || now.saturating_sub(self.last_publish) >= config.min_publish_interval())
    }

    /// True (and the next refresh scheduled) when the report is due;
    /// otherwise the report is owed.
    pub(super) fn report_due(&mut self, now: Duration) -> bool {
        let due = now.saturating_sub(self.report_at) >= REPORT_EVERY;
        if due {
            self.report_at = now;
        }
        self.report_owed = !due;
        due
    }
}

/// How often the monitor's report is refreshed while examples flow.
const REPORT_EVERY: Duration = Duration::from_millis(100);

impl Trainer {
    /// Publishes trained work, if any, as a logged `Publish` step (gated;
    /// snapshotting when one is due). Under backlog the gate runs at most
    /// `gate_budget` of the time: a publish due sooner waits unless `force`
    /// (the queue is dry, or an operator asked). A failed publish stays
    /// pending, to be retried.
    pub(super) fn publish_live(&mut self, force: bool) {
        if self.cadence.minibatches == 0 {
            return;
        }
        let budget = self.monitor.as_ref().and_then(Monitor::gate_budget);
        let now = self.clock.now();
        if budget.is_some() && !force && now < self.cadence.gate_ready_at {
            return;
        }
        self.take(Step::Publish, &mut Vec::new());
        if let Some(budget) = budget {
            // The gate may use `budget` of the time: after spending `spent`
            // it waits `spent * (1 / budget - 1)` before the next look.
            let after = self.clock.now();
            let spent = after.saturating_sub(now);
            self.cadence.gate_ready_at = after + spent.mul_f64(1.0 / budget - 1.0);
        }
        self.snapshot_if_due();
    }
}
