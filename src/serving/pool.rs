//! `TrainerPool`: the threads every model's trainer shares, and the
//! supervision of each trainer task.
//!
//! The pool is a tokio runtime of its own (`server.trainer_threads` worker
//! threads, named `eddy-trainer`), apart from the request runtime, so
//! training never takes predict's threads. Each trainer is a task on it
//! (see `serving::trainer` for the scheduling rule); its snapshot writes
//! run on the snapshot threads (`trainer::writer`). Models added at runtime start their trainer here too.
//!
//! Supervision: a trainer ends only when asked (its stop token: all at
//! shutdown, one when its model is deleted). One that ends otherwise, or
//! panics, fails the whole server, since serving without learning would be
//! a silent lie: the app's shutdown token is cancelled and `eddy serve`
//! exits non-zero.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::trainer::{Trainer, Unsaved};

pub struct TrainerPool {
    /// `None` once shut down (dropped without waiting: the trainers have
    /// ended by then, or the process is exiting).
    runtime: Option<Runtime>,
    tracker: TaskTracker,
    /// Cancelled at shutdown; each trainer's token is a child of it.
    stop: CancellationToken,
    grace: Duration,
    outcomes: Arc<Outcomes>,
    /// Held while a trainer starts and while `stop_all` stops them, so a
    /// trainer starting then is either stopped and waited for, or not
    /// started.
    starting: Mutex<()>,
}

/// How the trainers ended, for the shutdown's report.
#[derive(Default)]
struct Outcomes {
    failed: AtomicBool,
    unsaved: Mutex<Vec<Unsaved>>,
    /// Models whose trainer has ended.
    ended: Mutex<Vec<Arc<str>>>,
    /// The app's shutdown, cancelled when a trainer dies.
    shutdown: CancellationToken,
}

/// One running trainer, as its model's deletion sees it.
#[derive(Debug, Clone)]
pub struct Running {
    stop: CancellationToken,
    ended: watch::Receiver<bool>,
}

impl Running {
    /// Asks the trainer to train what its model accepted, snapshot and
    /// stop; returns once it has.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = self.ended.wait_for(|ended| *ended).await;
    }
}

impl TrainerPool {
    /// `threads` workers at `priority` (`server.background_policy`,
    /// `server.trainer_nice`);
    /// `grace` bounds each trainer's draining at stop; `shutdown` is
    /// cancelled if a trainer dies.
    pub fn new(
        threads: usize,
        priority: super::priority::Background,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> std::io::Result<Self> {
        let threads = threads.max(1);
        priority.prepare();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            // Only for trainers waiting in `block_in_place` (a snapshot
            // someone waits for, a replay): another thread takes over
            // their turn meanwhile.
            .max_blocking_threads(threads + 8)
            .thread_name("eddy-trainer")
            .on_thread_start(move || priority.apply())
            .enable_time()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            grace,
            outcomes: Arc::new(Outcomes {
                shutdown,
                ..Outcomes::default()
            }),
            starting: Mutex::new(()),
        })
    }

    /// Starts `trainer` on the pool and supervises it (from the caller's
    /// runtime, which must be running). `None` once the pool is stopping.
    pub fn start(&self, trainer: Trainer) -> Option<Running> {
        let runtime = self.runtime.as_ref()?;
        let _starting = lock(&self.starting);
        if self.stop.is_cancelled() {
            return None;
        }
        let model = trainer.model().clone();
        let stop = self.stop.child_token();
        let span = tracing::info_span!("trainer", model = %model);
        let task = runtime.spawn(trainer.run(stop.clone(), self.grace).instrument(span));
        let (ended_tx, ended) = watch::channel(false);
        let running = Running {
            stop: stop.clone(),
            ended,
        };
        let outcomes = Arc::clone(&self.outcomes);
        self.tracker.spawn(async move {
            let result = task.await;
            lock(&outcomes.ended).push(model.clone());
            if !stop.is_cancelled() || result.is_err() {
                tracing::error!(%model, error = ?result.as_ref().err(), "trainer ended unexpectedly; shutting down");
                outcomes.failed.store(true, Ordering::SeqCst);
                outcomes.shutdown.cancel();
            }
            if let Ok(Some(lost)) = result {
                lock(&outcomes.unsaved).push(lost);
            }
            let _ = ended_tx.send(true);
        });
        Some(running)
    }

    /// Asks every trainer to train what is queued, snapshot and stop, and
    /// waits for them for at most `limit`; false if some had not ended.
    pub async fn stop_all(&self, limit: Duration) -> bool {
        {
            let _starting = lock(&self.starting);
            self.stop.cancel();
            self.tracker.close();
        }
        tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Whether the pool is stopping (shutdown began).
    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Whether a trainer ended without being asked to.
    pub fn failed(&self) -> bool {
        self.outcomes.failed.load(Ordering::SeqCst)
    }

    /// What final snapshots did not save.
    pub fn take_unsaved(&self) -> Vec<Unsaved> {
        std::mem::take(&mut *lock(&self.outcomes.unsaved))
    }

    /// Models whose trainer has ended.
    pub fn ended(&self) -> Vec<Arc<str>> {
        lock(&self.outcomes.ended).clone()
    }
}

impl Drop for TrainerPool {
    fn drop(&mut self) {
        // Never blocks: dropping a runtime inside another would panic, and
        // by now the trainers have ended (or the process is exiting).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
