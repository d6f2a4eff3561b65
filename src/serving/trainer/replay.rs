//! Recovery at start-up: the log after a snapshot, learned again through
//! the same steps. A snapshot of a quiet trainer holds its state
//! (`TrainerState`: positions, pause, held examples, the monitor's
//! judgement); restoring it and applying the logged steps after
//! `applied`, each with the examples after `next_example` and the versions
//! it recorded, reproduces the uninterrupted run bit for bit. Examples
//! after the last logged step were accepted but not learned when the
//! process stopped: they become the backlog, learned before new feedback.
//!
//! A snapshot without a state (from `eddy train`, an older release, or a
//! last-good file found when newer snapshots are damaged) cannot continue
//! the logged steps: its examples after it are all learned afresh, and a
//! snapshot with a state is taken at the first quiet moment.

use std::sync::Arc;

use super::super::idempotency::IdempotencyKeys;
use super::super::log_record::{self, Record};
use super::super::monitor::EntryState;
use super::steps::Applied;
use super::*;

/// What to read back from the log before anything else.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Read the log from here (the oldest example the state refers to).
    pub from: u64,
    /// Examples from here on were not learned: replayed.
    pub next_example: u64,
    /// Steps from here on were not applied: replayed when `exact`.
    pub applied: u64,
    /// Position the restored weights include.
    pub trained_position: u64,
    /// Whether the state is the one the logged steps continue.
    pub exact: bool,
    /// Positions of the examples held while paused.
    pub held: Vec<u64>,
    /// Positions of the examples waiting for their source's share (the
    /// guard's), sorted.
    pub waiting: Vec<u64>,
    /// The monitor's remembered examples, by position, oldest first.
    pub buffer: Vec<EntryState>,
    /// The log's end when it was opened.
    pub to: u64,
    /// Where keys of replayed keyed requests go back.
    pub keys: Option<Arc<IdempotencyKeys>>,
}

/// The request whose examples are being read back.
#[derive(Default)]
struct Request {
    first: u64,
    /// Examples still to come.
    left: u32,
    key: Option<super::super::idempotency::KeyRecord>,
    examples: Vec<Feedback>,
}

impl Request {
    /// Forgets a request that ended before all its examples were written.
    fn drop_partial(&mut self, model: &str) {
        if self.left > 0 {
            tracing::warn!(
                model,
                position = self.first,
                written = self.examples.len(),
                missing = self.left,
                "the log holds a request a crash cut short; it was not acknowledged and is not learned"
            );
            self.examples.clear();
            self.key = None;
            self.left = 0;
        }
    }
}

impl Trainer {
    pub(super) fn recover_from_log(&mut self, r: Recovery) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut buffer = r.buffer.iter().copied().peekable();
        let mut entries = Vec::new();
        let mut refilled = false;
        let mut gone = 0usize;
        let (mut steps, mut examples) = (0u64, 0u64);
        let mut request = Request::default();
        let first = self.journal.first_position();
        if first > r.next_example {
            anyhow::bail!(
                "the feedback log starts at position {first}: examples {}..{first}, which the snapshot does not hold, are gone",
                r.next_example
            );
        }
        // Examples the monitor remembered may be gone (a repaired log):
        // it starts without them.
        for record in self.journal.read_from(r.from.max(first))? {
            let (position, bytes) = record?;
            if position >= r.to {
                break;
            }
            let record = log_record::decode(&bytes, position).map_err(|e| {
                anyhow::anyhow!("feedback log record {position} cannot be read by this eddy: {e}")
            })?;
            match record {
                Record::Feedback(fb, batch) if position >= r.next_example => {
                    // A request's examples are contiguous in the log, the
                    // first saying how many: one a crash cut short (a new
                    // request or a step follows before it is whole) was
                    // never acknowledged, and none of it is learned.
                    let starts = batch.is_some() || request.left == 0;
                    if starts {
                        request.drop_partial(&self.model);
                        request.left = batch.as_ref().map_or(1, |b| b.count);
                        request.key = batch.and_then(|b| b.key);
                        request.first = position;
                    }
                    request.examples.push(*fb);
                    request.left = request.left.saturating_sub(1);
                    if request.left == 0 {
                        if let (Some(key), Some(keys)) = (request.key.take(), &r.keys) {
                            keys.restore(&key, request.first, std::time::SystemTime::now());
                        }
                        examples += request.examples.len() as u64;
                        self.backlog.extend(request.examples.drain(..));
                    }
                }
                Record::Feedback(fb, batch) => {
                    // Every key the log holds comes back (the saved table
                    // may be older than the snapshot).
                    if let (Some(key), Some(keys)) = (batch.and_then(|b| b.key), &r.keys) {
                        keys.restore(&key, position, std::time::SystemTime::now());
                    }
                    // Remembered examples the log lost are passed over.
                    while buffer.next_if(|e| e.position < position).is_some() {
                        gone += 1;
                    }
                    if let Some(e) = buffer.next_if(|e| e.position == position) {
                        entries.push((e, *fb));
                    } else if r.held.binary_search(&position).is_ok() {
                        self.held.push(*fb);
                    } else if r.waiting.binary_search(&position).is_ok() {
                        match &mut self.guard {
                            Some(guard) if r.exact => guard.restore_waiting(*fb),
                            // Another guard, or none: learned afresh.
                            _ => self.backlog.push_back(*fb),
                        }
                    }
                }
                Record::Step(step) => {
                    request.drop_partial(&self.model);
                    if !r.exact || position < r.applied {
                        continue;
                    }
                    if !refilled {
                        self.refill(&mut entries, gone + buffer.by_ref().count());
                        refilled = true;
                    }
                    self.replay_step(step, position)?;
                    steps += 1;
                }
            }
        }
        request.drop_partial(&self.model);
        if !refilled {
            self.refill(&mut entries, gone + buffer.count());
        }
        if !r.exact {
            // The log's steps belong to a state this process does not
            // have; its own begin after them.
            self.applied = r.to;
        }
        if !r.exact
            && let Some(policy) = &mut self.snapshots
        {
            policy.owed.store(true, Ordering::Release);
        }
        self.stats.replayed.store(examples, Ordering::Relaxed);
        if examples > 0 || steps > 0 {
            tracing::info!(
                model = %self.model,
                examples,
                steps,
                exact = r.exact,
                ms = started.elapsed().as_millis() as u64,
                "replayed the feedback log"
            );
        }
        self.refresh_report();
        Ok(())
    }

    /// Gives the monitor back the examples it remembered that the log
    /// still holds (`gone` it does not).
    fn refill(&mut self, entries: &mut Vec<(EntryState, Feedback)>, gone: usize) {
        if gone > 0 {
            tracing::warn!(model = %self.model, examples = gone, "the feedback log no longer holds examples the monitor remembered (a repaired log); it goes on without them");
        }
        if let Some(monitor) = &mut self.monitor {
            monitor.refill(entries.drain(..));
        }
    }

    /// Applies a logged step again, as it was taken.
    fn replay_step(&mut self, record: StepRecord, position: u64) -> anyhow::Result<()> {
        let mut batch = match record.step {
            Step::Learn { count, first } => {
                let count = count as usize;
                // Examples the logged run never took (a request a crash
                // cut short) come before the ones this step learned.
                while self.backlog.front().is_some_and(|fb| fb.position < first) {
                    self.backlog.pop_front();
                }
                if self.backlog.front().is_some_and(|fb| fb.position != first) {
                    anyhow::bail!(
                        "the step at log position {position} learned examples from {first}; the log holds {} there",
                        self.backlog.front().map_or(0, |fb| fb.position)
                    );
                }
                if self.backlog.len() < count {
                    anyhow::bail!(
                        "the step at log position {position} learned {count} examples; the log holds {} before it",
                        self.backlog.len()
                    );
                }
                self.backlog.drain(..count).collect()
            }
            _ => Vec::new(),
        };
        if !matches!(record.step, Step::Quarantine { .. })
            && let Some(guard) = &mut self.guard
        {
            // Decisions of a step whose `Quarantine` record a torn tail
            // took away: the live run goes on without that record.
            guard.take_decided();
        }
        self.replaying = Some(record.versions.into());
        let at = Duration::from_micros(record.at_us);
        let _: Applied = self.apply(&record.step, at, &mut batch);
        let left = self.replaying.take().unwrap_or_default();
        if let Some(e) = self.replay_failed.take() {
            anyhow::bail!("replaying the step at log position {position}: {e}");
        }
        if !left.is_empty() {
            anyhow::bail!(
                "replaying the step at log position {position} published fewer versions than it logged ({} left): the replay diverged",
                left.len()
            );
        }
        self.applied = position + 1;
        Ok(())
    }
}
