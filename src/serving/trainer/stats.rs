//! `TrainingStats`: the counters and timings a trainer publishes for model
//! info and metrics; written by the trainer thread, read by requests.

use super::*;

/// Counters the trainer publishes for status endpoints; monotonic.
#[derive(Debug, Default)]
pub struct TrainingStats {
    /// Examples already in the weights the trainer started from (a
    /// snapshot's count); fixed at start-up.
    pub examples_base: u64,
    pub examples_trained: AtomicU64,
    pub minibatches_trained: AtomicU64,
    pub publishes: AtomicU64,
    /// Training ticks that panicked (their minibatch was discarded).
    pub panics: AtomicU64,
    /// Blocks the last publish had written (a measure of its cost): the
    /// linear weights', and a network's embedding blocks (16 rows each).
    pub blocks_written_last_publish: AtomicU64,
    pub snapshots_written: AtomicU64,
    pub snapshot_failures: AtomicU64,
    /// The newest snapshot on disk of this model's weights (written by this
    /// process, or the one it started from): its version and the examples
    /// it holds; what a failed final snapshot is measured against.
    pub saved_version: AtomicU64,
    pub saved_examples: AtomicU64,
    /// Damaged snapshot files passed over at start-up.
    pub snapshots_skipped: AtomicU64,
    /// Whether learning is paused (by an operator or `on_degrade`).
    pub paused: AtomicBool,
    pub promotions: AtomicU64,
    /// Rollbacks by reason: a degraded window, a refused candidate, an
    /// operator.
    pub rollbacks_degraded: AtomicU64,
    pub rollbacks_gate: AtomicU64,
    pub rollbacks_operator: AtomicU64,
    /// Candidates the gate scored.
    pub gate_checks: AtomicU64,
    /// Publishes held back by a first gate failure.
    pub gate_holds: AtomicU64,
    /// Examples from blamed sources: scored, not trained.
    pub excluded: AtomicU64,
    /// Feedback items the trainer has taken off the queue and dealt with
    /// (trained, excluded, or held while paused), since start-up.
    pub processed: AtomicU64,
    /// Trainer steps the feedback log could not take.
    pub journal_failures: AtomicU64,
    /// Examples learned again from the feedback log at start-up.
    pub replayed: AtomicU64,
    /// True until the feedback log has been replayed (`/readyz` waits).
    pub recovering: AtomicBool,
    /// The monitor's latest report (default: monitor disabled).
    pub monitor: ArcSwap<MonitorReport>,
    /// The guard's latest report (default: guard disabled).
    pub guard: ArcSwap<crate::serving::guard::GuardReport>,
    /// How far the trainer has dealt with feedback (`Settled`), for
    /// `POST .../feedback?wait=published`.
    pub settled: SettledWatch,
    pub timings: Timings,
}

impl TrainingStats {
    /// Examples applied since the model was created: the snapshot's count
    /// plus this run's.
    pub fn examples_trained_total(&self) -> u64 {
        self.examples_base + self.examples_trained.load(Ordering::Relaxed)
    }

    /// `paused` or `running`, as model info and the status page show it.
    pub fn training_state(&self) -> &'static str {
        if self.paused.load(Ordering::Acquire) {
            "paused"
        } else {
            "running"
        }
    }
}

/// Every example before `position` in the feedback log is in `version`
/// (the live version) or was kept out of it for good (quarantined,
/// excluded from a blamed source); an example waiting for its source's
/// share holds the position back until it is learned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    pub version: u64,
    pub position: u64,
}

/// The watch the trainer updates and waiting requests subscribe to.
#[derive(Debug)]
pub struct SettledWatch(tokio::sync::watch::Sender<Settled>);

impl Default for SettledWatch {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(Settled::default()))
    }
}

impl SettledWatch {
    /// Moves the mark forward (never back).
    pub fn advance(&self, settled: Settled) {
        self.0.send_if_modified(|now| {
            let moved = settled.position > now.position || settled.version > now.version;
            if moved {
                now.position = now.position.max(settled.position);
                now.version = now.version.max(settled.version);
            }
            moved
        });
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Settled> {
        self.0.subscribe()
    }
}

/// Latency histograms of the trainer's work, in seconds.
#[derive(Debug, Clone)]
pub struct Timings {
    /// Scoring and training one minibatch.
    pub step: Histogram,
    pub publish: Histogram,
    pub gate: Histogram,
    pub snapshot: Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        // 1 µs to about 4 s.
        let fast = || Histogram::new(exponential_buckets(0.000_001, 4.0, 12));
        Self {
            step: fast(),
            publish: fast(),
            gate: fast(),
            snapshot: fast(),
        }
    }
}
