//! The trainer as a deterministic state machine. Everything that changes a
//! trainer's state is a `Step`, taken at a clock reading: learn the next
//! examples as one minibatch, publish, pause, resume, roll back, readmit.
//! `take` applies a step live and appends its `StepRecord` to the feedback
//! log, after the examples it learns; `replay` applies logged records
//! again. Given the same state, the same records and the same examples, a
//! step does the same thing bit for bit: every input it depends on is in
//! the record (the clock reading, the versions it published) or in the
//! log (the examples with the scores they were given on acceptance).
//!
//! What is *not* a step stays outside the state: when to take one (queue
//! timing, the gate's time budget, publish coalescing) is the live
//! driver's choice, and the log records the choice it made; snapshots and
//! reports are side effects.

use serde::Deserialize;

use crate::persist::wal::Append;

use super::super::guard::{GuardState, Notice, Reason, Selector};
use super::super::log_record;
use super::super::monitor::{EntryState, MonitorState};
use super::*;

/// A decision of the trainer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// The `count` examples from position `first` (in log order, the
    /// ones the trainer had taken) as one minibatch.
    Learn {
        count: u32,
        first: u64,
    },
    /// Trained work gated and, if the gate passes it, published.
    Publish,
    Pause,
    /// Learning again, starting with the examples held while paused.
    Resume,
    /// An operator's rollback to last-good (`None`) or a retained version.
    Rollback {
        version: Option<u64>,
    },
    Readmit {
        source: String,
    },
    /// An operator's release of quarantined examples into training.
    Release {
        selector: Selector,
    },
    /// An operator's drop of quarantined examples.
    Drop {
        selector: Selector,
    },
    /// The guard's decisions during the step before (log position and
    /// reason of each example it quarantined): a record for readers of the
    /// log, checked against the guard's own decisions on replay.
    Quarantine {
        entries: Vec<(u64, Reason)>,
    },
}

/// A step as the log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    /// The trainer's clock when the step was taken, in microseconds.
    pub at_us: u64,
    /// The versions published during the step, in order (0: a publish
    /// that failed).
    pub versions: Vec<u64>,
}

/// What a snapshot keeps of a trainer besides the live weights, so that a
/// restart continues exactly (see `replay`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Position after the last example taken: later ones are replayed.
    pub next_example: u64,
    /// Position after the last step applied: later ones are replayed.
    pub applied: u64,
    /// Position the working copy includes.
    pub trained_position: u64,
    pub paused: bool,
    /// Positions of the examples held while paused.
    pub held: Vec<u64>,
    pub monitor: Option<MonitorState>,
}

/// What a snapshot of a quiet trainer keeps besides the live weights.
pub(super) struct Saved {
    pub state: TrainerState,
    pub guard: Option<GuardState>,
    /// Last-good's and the candidate's learners, by snapshot name.
    pub learners: Vec<(String, Learner)>,
}

/// The snapshot names of the extra learners a state refers to.
pub const LAST_GOOD: &str = "last_good";
pub const CANDIDATE: &str = "candidate";

/// What applying a step answers (for the admin request that asked).
pub(super) enum Applied {
    Nothing,
    RolledBack(Result<RolledBack, RollbackError>),
    Readmitted(bool),
    /// Examples released into training, or dropped.
    Released(usize),
    Dropped(usize),
}

/// Steps kept before they are logged together.
const UNLOGGED_STEPS: usize = 64;

/// Adds label sanity's evidence to an event's figures.
fn with_evidence(mut event: Event, evidence: &crate::learn::guard::Evidence) -> Event {
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(evidence) {
        for (k, v) in map {
            if k != "source" {
                event = event.figure(&k, v);
            }
        }
    }
    event
}

pub(super) fn micros(t: Duration) -> u64 {
    t.as_micros().min(u128::from(u64::MAX)) as u64
}

impl Trainer {
    /// Takes `step` live at the clock's reading: applies it, then appends
    /// its record to the log. Examples of a `Learn` step come in `batch`.
    pub(super) fn take(&mut self, step: Step, batch: &mut Vec<Feedback>) -> Applied {
        let at = self.clock.now();
        self.step_versions.clear();
        let applied = self.apply(&step, at, batch);
        let record = StepRecord {
            step,
            at_us: micros(at),
            versions: std::mem::take(&mut self.step_versions),
        };
        // Whether steps are logged is decided once for the step and the
        // record of the guard's decisions that follows it: both or neither.
        let logged = self.steps_logged();
        if logged {
            self.record(record);
        }
        // What the guard decided during the step follows it in the log.
        let decided = self
            .guard
            .as_mut()
            .map(|g| g.take_decided())
            .unwrap_or_default();
        if logged && !decided.is_empty() {
            self.record(StepRecord {
                step: Step::Quarantine { entries: decided },
                at_us: micros(at),
                versions: Vec::new(),
            });
        }
        self.guard_notices();
        if self.unlogged.len() >= UNLOGGED_STEPS {
            self.log_steps();
        }
        applied
    }

    /// Whether steps are logged now: not while suspended after a failed
    /// append, until a snapshot with the state after the gap is written.
    fn steps_logged(&mut self) -> bool {
        let owed = self
            .snapshots
            .as_ref()
            .is_some_and(|p| p.owed.load(Ordering::Acquire));
        if self.steps_suspended && !owed {
            // A snapshot with the state after the gap was written.
            self.steps_suspended = false;
        }
        !self.steps_suspended
    }

    /// Queues `record` for the log (see `log_steps`).
    fn record(&mut self, record: StepRecord) {
        if self.journal.keeps_records() {
            self.unlogged
                .push_with(|buf| log_record::encode_step_into(buf, &record));
        } else {
            // Positions only: nothing is written.
            self.unlogged.push(&[]);
        }
    }

    /// Turns what the guard noticed into events.
    pub(super) fn guard_notices(&mut self) {
        let Some(guard) = &mut self.guard else {
            return;
        };
        for notice in guard.take_notices() {
            let event = match notice {
                Notice::Flagged {
                    evidence,
                    quarantined_waiting,
                } => {
                    let source = evidence.source.clone();
                    let mut event = Event::new(
                        EventKind::SourceFlagged,
                        self.live.version,
                        format!(
                            "label sanity flagged source {source:?}: the live model confidently contradicts {:.1}% of its recent labels against {:.1}% for the other sources; its examples are quarantined until its rate comes back",
                            100.0 * evidence.recent_rate,
                            100.0 * evidence.reference_rate
                        ),
                    )
                    .figure("source", source)
                    .figure("quarantined_waiting", quarantined_waiting);
                    event = with_evidence(event, &evidence);
                    event
                }
                Notice::Cleared { evidence } => {
                    let source = evidence.source.clone();
                    let event = Event::new(
                        EventKind::SourceCleared,
                        self.live.version,
                        format!(
                            "label sanity cleared source {source:?}: its contradiction rate ({:.1}%) is back near the other sources'; its examples are learned again",
                            100.0 * evidence.recent_rate
                        ),
                    )
                    .figure("source", source);
                    with_evidence(event, &evidence)
                }
                Notice::Evicted { count } => Event::new(
                    EventKind::QuarantineFull,
                    self.live.version,
                    format!(
                        "the quarantine is full (guard.quarantine.capacity or max_bytes): {count} of its oldest examples dropped so far (eddy_quarantine_dropped_total counts each)"
                    ),
                )
                .figure("evicted", count),
            };
            self.events.push(event);
        }
    }

    /// Appends the steps taken since the last call, in one write. Steps are
    /// logged in batches: before the trainer waits, before a snapshot
    /// records its state, and every `UNLOGGED_STEPS` (a crash loses only
    /// the newest decisions: their examples are learned again afresh, and
    /// the versions they published are never reused).
    pub(super) fn log_steps(&mut self) {
        if self.unlogged.is_empty() {
            return;
        }
        let appended = self
            .journal
            .append(Append::new(&mut self.unlogged), &mut |_| {});
        self.unlogged.clear();
        match appended {
            Ok(appended) => self.applied = appended.end,
            Err(e) => {
                // The state moved on without its record, so later steps
                // could not be replayed over an earlier snapshot: none is
                // logged until a snapshot with the state after the gap is
                // written (a crash meanwhile learns the examples after the
                // last logged step afresh).
                self.stats.journal_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(model = %self.model, error = %e, "cannot log a trainer step; steps are not logged until the next snapshot");
                self.steps_suspended = true;
                if let Some(policy) = &mut self.snapshots {
                    policy.owed.store(true, Ordering::Release);
                }
            }
        }
    }

    /// Applies one step at `at`. The only place a trainer's state changes.
    pub(super) fn apply(
        &mut self,
        step: &Step,
        at: Duration,
        batch: &mut Vec<Feedback>,
    ) -> Applied {
        match step {
            Step::Learn { .. } => self.apply_learn(batch, at, true),
            Step::Publish => self.apply_publish(at),
            Step::Pause => {
                if !self.stats.paused.load(Ordering::Acquire) {
                    self.set_paused(true, "an operator paused learning");
                }
            }
            Step::Resume => {
                if self.stats.paused.load(Ordering::Acquire) {
                    self.set_paused(false, "an operator resumed learning");
                }
                let mut held = std::mem::take(&mut self.held);
                self.apply_learn(&mut held, at, false);
            }
            Step::Rollback { version } => {
                return Applied::RolledBack(self.rollback(*version, at));
            }
            Step::Readmit { source } => return Applied::Readmitted(self.readmit(source)),
            Step::Release { selector } => {
                let Some(guard) = &mut self.guard else {
                    return Applied::Released(0);
                };
                let mut released = guard.release(selector);
                let n = released.len();
                if n > 0 {
                    self.events.push(
                        Event::new(
                            EventKind::QuarantineReleased,
                            self.live.version,
                            format!(
                                "an operator released {n} quarantined example(s) into training"
                            ),
                        )
                        .figure("released", n)
                        .figure(
                            "selector",
                            serde_json::to_value(selector).unwrap_or_default(),
                        ),
                    );
                }
                // Learned now, past the checks (the operator vouched for
                // them), scored by the monitor like any other.
                if self.stats.paused.load(Ordering::Acquire) {
                    self.held.append(&mut released);
                } else {
                    self.apply_learn(&mut released, at, false);
                }
                return Applied::Released(n);
            }
            Step::Drop { selector } => {
                let Some(guard) = &mut self.guard else {
                    return Applied::Dropped(0);
                };
                let n = guard.drop_held(selector);
                if n > 0 {
                    self.events.push(
                        Event::new(
                            EventKind::QuarantineDropped,
                            self.live.version,
                            format!("an operator dropped {n} quarantined example(s)"),
                        )
                        .figure("dropped", n)
                        .figure(
                            "selector",
                            serde_json::to_value(selector).unwrap_or_default(),
                        ),
                    );
                }
                return Applied::Dropped(n);
            }
            Step::Quarantine { entries } => {
                // Live, this is the record of what the step before
                // decided; on replay the guard decided again, and must
                // have decided the same.
                if self.replaying.is_some() {
                    let decided = self
                        .guard
                        .as_mut()
                        .map(|g| g.take_decided())
                        .unwrap_or_default();
                    if &decided != entries {
                        self.replay_failed = Some(format!(
                            "the guard quarantined {} example(s) where the log recorded {}",
                            decided.len(),
                            entries.len()
                        ));
                    }
                }
            }
        }
        Applied::Nothing
    }

    /// One minibatch: scored by the monitor (which may roll back, promote
    /// or close a window first), trained without blamed sources, remembered.
    fn apply_learn(&mut self, batch: &mut Vec<Feedback>, at: Duration, screen: bool) {
        let Some(last) = batch.last() else {
            return;
        };
        let started = Instant::now();
        self.next_example = self.next_example.max(last.position + 1);
        if screen && let Some(guard) = &mut self.guard {
            let monitor = &self.monitor;
            let blamed = |s: &str| monitor.as_ref().is_some_and(|m| m.is_blamed(s));
            guard.screen(batch, &self.live, micros(at), &blamed);
            if batch.is_empty() {
                // Everything was quarantined or waits for its share.
                self.trained_position = self.trained_position.max(self.next_example);
                return;
            }
        }
        if let Some(monitor) = &mut self.monitor {
            let window_full = monitor.observe(batch, &self.live);
            if window_full {
                self.close_window(at);
            }
        }
        if self.stats.paused.load(Ordering::Acquire) {
            // `on_degrade = "pause"` just stopped learning: keep this
            // minibatch for the resume rather than learn it now.
            if let Some(monitor) = &mut self.monitor {
                monitor.forget_scored();
            }
            self.held.append(batch);
            return;
        }
        if let Some(monitor) = &mut self.monitor {
            let excluded = monitor.retain_admitted(batch);
            self.stats
                .excluded
                .fetch_add(excluded.len() as u64, Ordering::Relaxed);
            if let Some(guard) = &mut self.guard {
                for fb in excluded {
                    let detail = format!(
                        "its source {:?} is blamed for a rollback (readmit it, then release these)",
                        fb.source.as_deref().unwrap_or_default()
                    );
                    guard.hold(fb, Reason::Blamed, detail, micros(at));
                }
            }
        }
        let trained = self.train(batch);
        self.trained_position = self.trained_position.max(self.next_example);
        if let Some(monitor) = &mut self.monitor {
            if trained {
                monitor.remember(batch.drain(..));
            } else {
                monitor.forget_scored();
            }
        }
        self.stats
            .timings
            .step
            .observe(started.elapsed().as_secs_f64());
        if trained {
            self.cadence.minibatches += 1;
        }
    }

    /// Gates trained work and publishes it if the gate passes it.
    fn apply_publish(&mut self, at: Duration) {
        if self.cadence.minibatches == 0 {
            return;
        }
        if let Some(monitor) = &mut self.monitor
            && monitor.gate_budget().is_some()
        {
            // The live version passed the gate; it is the other yardstick
            // (unless it carries last-good's weights anyway).
            let live = (self.live.version != monitor.last_good().version)
                .then(|| (self.live.version, self.published.params()));
            let started = Instant::now();
            let verdict = monitor.gate(self.learner.params(), live, at);
            self.stats.gate_checks.fetch_add(1, Ordering::Relaxed);
            self.stats
                .timings
                .gate
                .observe(started.elapsed().as_secs_f64());
            match verdict {
                GateVerdict::Pass => {}
                GateVerdict::Hold => {
                    self.stats.gate_holds.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                GateVerdict::Refuse(detection) => {
                    self.recover(detection, at);
                    return;
                }
            }
        }
        if self.publish(None).is_some() {
            self.cadence.published(at);
            self.snapshot_last_good_if_due(false);
        }
    }

    /// The state a snapshot keeps (with last-good's and the candidate's
    /// learners), or `None` unless the trainer is quiet: everything it
    /// trained is published, so the live weights are the working copy.
    pub(super) fn state(&self) -> Option<Saved> {
        if self.cadence.minibatches > 0 {
            return None;
        }
        let mut learners = Vec::new();
        let monitor = self.monitor.as_ref().map(|m| {
            let (state, last_good, candidate) = m.state();
            learners.push((LAST_GOOD.to_owned(), last_good));
            if let Some(c) = candidate {
                learners.push((CANDIDATE.to_owned(), c));
            }
            state
        });
        let state = TrainerState {
            next_example: self.next_example,
            applied: self.applied,
            trained_position: self.trained_position,
            paused: self.stats.paused.load(Ordering::Acquire),
            held: self.held.iter().map(|fb| fb.position).collect(),
            monitor,
        };
        Some(Saved {
            state,
            guard: self.guard.as_ref().map(|g| g.state()),
            learners,
        })
    }

    /// The earliest log position a snapshot of `state` needs to restore.
    pub fn log_from_state(state: &TrainerState, guard: Option<&GuardState>) -> u64 {
        let buffer = state
            .monitor
            .as_ref()
            .and_then(|m| m.buffer.first().map(|e: &EntryState| e.position));
        let waiting = guard.and_then(|g| g.waiting.iter().copied().min());
        state
            .held
            .iter()
            .copied()
            .chain(buffer)
            .chain(waiting)
            .fold(state.next_example, u64::min)
    }
}
