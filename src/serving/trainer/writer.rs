//! `SnapshotWriter`: encodes and writes the snapshots a model's trainer
//! hands it, off the trainer's turn, so the trainer goes on training while
//! a large model is encoded and fsynced. The trainer hands over
//! copy-on-write clones (a few pointer copies); the writer syncs the
//! feedback log (a snapshot never records a position the log could lose),
//! writes the file atomically, saves the idempotency keys, and trims the
//! log.
//!
//! A model has no thread of its own for this: while it has jobs, one task
//! on the snapshot threads (`eddy-snapshots`: at most `WRITER_THREADS`,
//! shared by all models, started when needed and gone after a few idle
//! seconds) writes them, and ends when none is left. They are apart from
//! the trainer pool, so a trainer waiting for its snapshot never holds a
//! thread its snapshot needs. Jobs run in order, one at a time per
//! model. A periodic snapshot is offered without waiting and skipped
//! (still due) while another waits behind the one being written; a
//! shutdown or an operator's snapshot waits for its answer.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc as std_mpsc;
use std::sync::{Condvar, Mutex, PoisonError};

use super::super::idempotency::IdempotencyKeys;
use super::*;

/// One snapshot to write.
pub(super) struct Job {
    pub(super) snapshot: Snapshot,
    /// Versions pruning must keep (the current last-good).
    pub(super) protect: Vec<u64>,
    /// Log positions the trainer still needs whatever the files say
    /// (last-good's, the live version's).
    pub(super) needed: u64,
    pub(super) reply: Option<std_mpsc::Sender<Result<SnapshotFile, SnapshotError>>>,
}

/// What the writer shares with the trainer.
pub(super) struct WriterParts {
    pub(super) model: Arc<str>,
    pub(super) store: SnapshotStore,
    pub(super) journal: Arc<dyn FeedbackLog>,
    pub(super) keys: Option<Arc<IdempotencyKeys>>,
    pub(super) stats: Arc<TrainingStats>,
    pub(super) events: Arc<EventLog>,
    /// Cleared when a snapshot with the trainer's state is written.
    pub(super) owed: Arc<AtomicBool>,
}

/// Jobs waiting, and whether a task is writing them.
#[derive(Default)]
struct Jobs {
    waiting: VecDeque<Job>,
    running: bool,
}

struct Shared {
    parts: WriterParts,
    jobs: Mutex<Jobs>,
    /// Signalled when the writing task ends (nothing left).
    idle: Condvar,
}

pub(super) struct SnapshotWriter {
    shared: Arc<Shared>,
}

impl SnapshotWriter {
    pub(super) fn new(parts: WriterParts) -> Self {
        Self {
            shared: Arc::new(Shared {
                parts,
                jobs: Mutex::default(),
                idle: Condvar::new(),
            }),
        }
    }

    /// Offers a job without waiting; false if one is already waiting
    /// behind the one being written.
    pub(super) fn offer(&self, job: Job) -> bool {
        let jobs = self.shared.lock();
        if !jobs.waiting.is_empty() {
            return false;
        }
        self.hand_over(jobs, job);
        true
    }

    /// Writes `job` after those handed over before, and waits for the
    /// outcome.
    pub(super) fn write(&self, mut job: Job) -> Result<SnapshotFile, SnapshotError> {
        let (tx, rx) = std_mpsc::channel();
        job.reply = Some(tx);
        self.hand_over(self.shared.lock(), job);
        // On the trainer pool, the other trainers of this worker move on
        // while this one waits (`block_in_place`).
        off_the_pool(|| rx.recv()).unwrap_or_else(|_| {
            Err(SnapshotError::Failed(
                "the snapshot writer could not start".into(),
            ))
        })
    }

    /// Queues `job` and starts the writing task unless one runs. The task
    /// is started outside the lock: one dropped unstarted takes it, giving
    /// its jobs back as failures (an offered snapshot stays due).
    fn hand_over(&self, mut jobs: std::sync::MutexGuard<'_, Jobs>, job: Job) {
        jobs.waiting.push_back(job);
        if jobs.running {
            return;
        }
        jobs.running = true;
        drop(jobs);
        let task = Task {
            shared: Arc::clone(&self.shared),
            done: false,
        };
        let work = move || task.run();
        match writer_threads() {
            // Through the runtime's own worker: a blocking thread is
            // started by the thread that asks for it, and the trainer's
            // lower priority would pass on.
            Some(rt) => drop(rt.spawn(async move {
                let _ = tokio::task::spawn_blocking(work).await;
            })),
            None => {
                let spawned = crate::serving::priority::at_normal_priority(move || {
                    std::thread::Builder::new()
                        .name("eddy-snapshots".into())
                        .spawn(work)
                        .map(drop)
                });
                if let Err(e) = spawned {
                    tracing::error!(model = %self.shared.parts.model, error = %e, "cannot start a snapshot writer thread");
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writing task. Dropped without having run (its runtime shut down
/// first), it gives the jobs back as failures instead of leaving their
/// waiters blocked.
struct Task {
    shared: Arc<Shared>,
    done: bool,
}

impl Task {
    /// Writes jobs in order until none is left.
    fn run(mut self) {
        loop {
            let job = {
                let mut jobs = self.shared.lock();
                match jobs.waiting.pop_front() {
                    Some(job) => job,
                    None => {
                        jobs.running = false;
                        self.done = true;
                        self.shared.idle.notify_all();
                        return;
                    }
                }
            };
            let result = self
                .shared
                .parts
                .write(job.snapshot, &job.protect, job.needed);
            if let Some(reply) = job.reply {
                let _ = reply.send(result);
            }
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut jobs = self.shared.lock();
        // Their reply senders go with them: waiters get an error.
        jobs.waiting.clear();
        jobs.running = false;
        self.shared.idle.notify_all();
    }
}

/// Snapshot writes at once, over all models.
const WRITER_THREADS: usize = 4;

/// The snapshot threads: a runtime of blocking threads only (one idle
/// worker besides), built at the first snapshot; `None` if it cannot be.
fn writer_threads() -> Option<&'static tokio::runtime::Runtime> {
    static WRITERS: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    WRITERS
        .get_or_init(|| {
            // Built (its worker started) at the normal priority, whichever
            // thread snapshots first.
            crate::serving::priority::at_normal_priority(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .max_blocking_threads(WRITER_THREADS)
                    .thread_keep_alive(Duration::from_secs(5))
                    .thread_name("eddy-snapshots")
                    .build()
                    .inspect_err(|e| tracing::error!(error = %e, "cannot start the snapshot threads; a thread per write instead"))
                    .ok()
            })
        })
        .as_ref()
}

/// Runs `f`, which blocks, without holding up the other tasks of a
/// trainer-pool worker (`block_in_place` on a multi-threaded runtime;
/// plainly elsewhere).
pub(super) fn off_the_pool<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Drop for SnapshotWriter {
    /// Writes what was handed over, then stops.
    fn drop(&mut self) {
        let jobs = self.shared.lock();
        if jobs.running {
            drop(jobs);
            off_the_pool(|| self.wait_idle());
        }
    }
}

impl SnapshotWriter {
    fn wait_idle(&self) {
        let mut jobs = self.shared.lock();
        while jobs.running {
            jobs = self
                .shared
                .idle
                .wait(jobs)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl WriterParts {
    fn write(
        &self,
        snapshot: Snapshot,
        protect: &[u64],
        needed: u64,
    ) -> Result<SnapshotFile, SnapshotError> {
        use crate::persist::snapshot::Error as FileError;
        let version = snapshot.meta.version;
        let started = Instant::now();
        // The log first (a snapshot never records a position the log could
        // lose), then the keys (every key with a position is durable now;
        // saved before the snapshot, so a crash between the two leaves keys
        // at least as new as the snapshot), then the snapshot. Failures of
        // the disk are `Storage` (507 to an operator), the rest `Failed`.
        let written = self
            .journal
            .sync()
            .map_err(|e| SnapshotError::Storage(format!("cannot sync the feedback log: {e}")))
            .and_then(|()| match &self.keys {
                Some(keys) => keys.save(self.store.dir()).map_err(|e| {
                    SnapshotError::Storage(format!(
                        "cannot save the idempotency keys in {}: {e}",
                        self.store.dir().display()
                    ))
                }),
                None => Ok(()),
            })
            .and_then(|()| {
                self.store.write(&snapshot, protect).map_err(|e| match e {
                    FileError::Io { .. } => SnapshotError::Storage(e.to_string()),
                    e => SnapshotError::Failed(e.to_string()),
                })
            });
        match written {
            Ok(file) => {
                self.stats.snapshots_written.fetch_add(1, Ordering::Relaxed);
                let examples = snapshot.meta.examples_trained;
                if examples >= self.stats.saved_examples.load(Ordering::Acquire) {
                    self.stats.saved_examples.store(examples, Ordering::Release);
                    self.stats.saved_version.store(version, Ordering::Release);
                }
                if snapshot.trainer.is_some() {
                    self.owed.store(false, Ordering::Release);
                }
                self.trim_log(needed);
                self.stats
                    .timings
                    .snapshot
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(model = %self.model, version, last_good = snapshot.meta.last_good, bytes = file.bytes, ms = started.elapsed().as_millis() as u64, "snapshot written");
                Ok(file)
            }
            Err(e) => {
                self.stats.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(model = %self.model, version, error = %e, "snapshot failed");
                self.events.push(Event::new(
                    EventKind::SnapshotFailed,
                    version,
                    format!("snapshot of v{version} failed: {}", e.cause()),
                ));
                Err(e)
            }
        }
    }

    /// Drops (or archives) the log segments no snapshot on disk, nor the
    /// trainer (`needed`), still needs: an online learner need not keep
    /// data it has learned. A snapshot whose position cannot be read
    /// (damaged) never loads, so it holds nothing back.
    fn trim_log(&self, needed: u64) {
        if !self.journal.keeps_records() {
            return;
        }
        let Ok(files) = self.store.list() else {
            return;
        };
        let needed = files
            .iter()
            .filter_map(|f| SnapshotStore::position_of(&f.path))
            .fold(needed, u64::min);
        match self.journal.trim_before(needed) {
            Ok(0) => {}
            Ok(segments) => {
                tracing::info!(model = %self.model, segments, before = needed, "feedback log segments no longer needed were removed");
            }
            Err(e) => {
                tracing::warn!(model = %self.model, error = %e, "cannot trim the feedback log")
            }
        }
    }
}
