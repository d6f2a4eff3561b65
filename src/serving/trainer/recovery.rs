//! Acting on the monitor's verdicts: closing a window (promote, freeze the
//! next candidate), recovering after damage (rollback version, blame,
//! replay or drop, `on_degrade`).

use super::*;

impl Trainer {
    /// The monitor's window filled: roll back, or promote and freeze the
    /// next candidate (the live version).
    pub(super) fn close_window(&mut self, at: Duration) {
        let Some(monitor) = &mut self.monitor else {
            return;
        };
        match monitor.close_window() {
            WindowOutcome::Degraded(detection) => self.recover(detection, at),
            WindowOutcome::Judged { promote } => {
                if promote {
                    self.promote();
                }
                if let Some(monitor) = &mut self.monitor {
                    monitor.freeze_candidate(Checkpoint {
                        version: self.live.version,
                        learner: self.published.clone(),
                        position: self.live.feedback_position,
                        examples_trained: self.live.examples_trained,
                    });
                }
            }
        }
        self.refresh_report();
    }

    pub(super) fn promote(&mut self) {
        let Some(monitor) = &mut self.monitor else {
            return;
        };
        let previous = monitor.last_good().version;
        let Some(figures) = monitor.promote() else {
            return;
        };
        let version = monitor.last_good().version;
        self.stats.promotions.fetch_add(1, Ordering::Relaxed);
        let mut event = Event::new(
            EventKind::Promotion,
            version,
            format!(
                "v{version} scored at least as well as last-good v{previous} over a full window and is now last-good"
            ),
        );
        for (name, value) in figures {
            event = event.figure(name, value);
        }
        self.events
            .push(event.figure("previous_last_good", previous));
        if let Some(policy) = &mut self.snapshots {
            policy.unsaved_last_good = true;
        }
        self.snapshot_last_good_if_due(false);
    }

    /// After a detection: back to last-good, blame, replay or drop, publish
    /// the result as a rollback version, then `on_degrade`.
    pub(super) fn recover(&mut self, detection: Detection, at: Duration) {
        let Some(monitor) = &mut self.monitor else {
            return;
        };
        let from = self.live.version;
        let mut recovery = monitor.recover(&mut self.learner);
        let last_good = monitor.last_good().version;
        let mode = monitor.on_degrade();
        if let Some(guard) = &mut self.guard {
            let at_us = super::steps::micros(at);
            for fb in recovery.blamed_examples.drain(..) {
                let detail = format!(
                    "learned before its source {:?} was blamed for a rollback; taken out of the model (readmit the source, then release these)",
                    fb.source.as_deref().unwrap_or_default()
                );
                guard.hold(fb, super::super::guard::Reason::Blamed, detail, at_us);
            }
        }
        for b in &recovery.blamed {
            self.events.push(
                Event::new(
                    EventKind::SourceBlamed,
                    from,
                    format!(
                        "source `{}`: mean loss {:.3} under last-good v{last_good} against {:.3} for the reference sources, over {} examples (p = {:.2e}); excluded from training until an operator readmits it",
                        b.source, b.mean_loss, b.reference_loss, b.examples, b.p_value
                    ),
                )
                .figure("source", b.source.clone())
                .figure("examples", b.examples)
                .figure("mean_loss", b.mean_loss)
                .figure("reference_loss", b.reference_loss)
                .figure("p_value", b.p_value),
            );
        }
        self.cadence.published(at);
        let published = self.publish(Some(from));
        match published {
            Some(v) if recovery.replayed == 0 => {
                if let Some(m) = &mut self.monitor {
                    m.note_rollback_version(v);
                }
            }
            Some(_) => {}
            // Retried at the next flush.
            None => self.cadence.minibatches = 1,
        }
        let (kind, counter) = match detection.trigger {
            Trigger::Degraded => (EventKind::Rollback, &self.stats.rollbacks_degraded),
            Trigger::GateRefused => (EventKind::GateRefused, &self.stats.rollbacks_gate),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut what = if !recovery.blamed.is_empty() && mode == OnDegrade::Replay {
            let names: Vec<&str> = recovery.blamed.iter().map(|b| b.source.as_str()).collect();
            format!(
                "replayed the {} examples learned since without blamed source(s) {names:?} ({} of theirs dropped)",
                recovery.replayed, recovery.dropped
            )
        } else if mode == OnDegrade::Replay {
            format!(
                "no source could be blamed, so the {} examples learned since were dropped, not replayed",
                recovery.dropped
            )
        } else {
            format!(
                "the {} examples learned since were dropped (on_degrade = {mode:?})",
                recovery.dropped
            )
        };
        if recovery.lost > 0 {
            what.push_str(&format!(
                "; {} earlier examples since last-good had left the replay buffer (replay_capacity, replay_max_bytes) and are gone",
                recovery.lost
            ));
        }
        let now = published.unwrap_or(from);
        let mut event = Event::new(
            kind,
            now,
            format!(
                "{}; restored last-good v{last_good} as v{now} (rolled back from v{from}); {what}",
                detection.reason
            ),
        )
        .figure("rolled_back_from", from)
        .figure("last_good", last_good)
        .figure("replayed", recovery.replayed)
        .figure("dropped", recovery.dropped)
        .figure("lost", recovery.lost);
        for (name, value) in &detection.figures {
            event = event.figure(name, *value);
        }
        self.events.push(event);
        if mode == OnDegrade::Pause {
            self.set_paused(
                true,
                "on_degrade = \"pause\": learning stopped after a rollback until an operator resumes it",
            );
        }
        self.refresh_report();
    }
}
