//! `IngestPool`: where feedback requests are parsed, hashed, checked,
//! scored and appended to the log, away from the threads that answer
//! predict, and the admission limit in front of it.
//!
//! A feedback batch of 1,000 examples costs about a millisecond of CPU in
//! one piece; on the request runtime's few worker threads that piece delays
//! every predict queued behind it. Here such work runs on a small set of
//! dedicated threads (`server.feedback_threads`), at a lower OS priority
//! and off the CPU kept for the request threads on Linux
//! (`server.feedback_nice`, `server.request_cpus`: `serving::priority`), so
//! a predict finds a core when it arrives. At most
//! `server.feedback_concurrency` requests are admitted at once (running or
//! waiting for a thread); a request beyond that is refused before its body
//! is parsed, so an overload of feedback costs the runtime little more than
//! reading and discarding bytes.
//!
//! The pool knows nothing of HTTP: it runs closures and counts admissions.
//! `http::feedback` decides what a job is and how a refusal is answered.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use std::time::Instant;

use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Why a job gave no answer.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum IngestError {
    #[error("the feedback threads have stopped")]
    Stopped,
    #[error("a feedback job panicked")]
    Panicked,
    /// Not committed within `IngestOptions::start_within` of asking for
    /// admission (the feedback threads get no CPU: predict takes every
    /// core); nothing was applied.
    #[error("the feedback threads did not reach the request in time")]
    Late,
}

/// How the pool is sized (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct IngestOptions {
    /// Worker threads.
    pub threads: usize,
    /// Requests admitted at once, running or waiting for a thread.
    pub concurrency: usize,
    /// What the worker threads run at (`server.background_policy`,
    /// `server.feedback_nice`).
    pub priority: super::priority::Background,
    /// How long a request may wait for a place before it is refused.
    pub wait: Duration,
    /// How long after asking for admission a request's job may still
    /// commit (`Gate::commit`); past it the request is answered
    /// `IngestError::Late` and its job applies nothing.
    pub start_within: Duration,
}

/// The feedback threads and their admission limit. Cheap to share behind
/// the app state's `Arc`; the threads end once the pool is dropped and
/// their queue is empty.
#[derive(Debug)]
pub struct IngestPool {
    /// One permit per admitted request; a job holds its permit until it
    /// has run, so the count covers work the client no longer waits for.
    admission: Arc<Semaphore>,
    concurrency: u32,
    wait: Duration,
    /// Requests waiting for a place now.
    waiting: std::sync::atomic::AtomicUsize,
    start_within: Duration,
    /// Set by `close`: nothing more is admitted.
    closed: std::sync::atomic::AtomicBool,
    jobs: mpsc::Sender<Job>,
}

/// A request's place in the pool, taken before its body is read.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    /// When the request asked for it.
    asked: Instant,
}

/// Where a job and its request agree, once, whether the job applies
/// anything: the job `commit`s before its first change, the request
/// abandons it when `start_within` has passed. Whichever comes first wins,
/// so a request answered `Late` has changed nothing, and one whose job
/// committed waits for it.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<AtomicU8>);

const OPEN: u8 = 0;
const COMMITTED: u8 = 1;
const ABANDONED: u8 = 2;

impl Gate {
    /// The job's side, before it changes anything: false if its request
    /// was given up (the job must then return without applying).
    pub fn commit(&self) -> bool {
        self.settle(COMMITTED)
    }

    /// The request's side: true if the job will apply nothing.
    fn abandon(&self) -> bool {
        self.settle(ABANDONED)
    }

    /// Moves an open gate to `to`; true if it is (now or already) there.
    fn settle(&self, to: u8) -> bool {
        match self
            .0
            .compare_exchange(OPEN, to, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == to,
        }
    }

    fn is_abandoned(&self) -> bool {
        self.0.load(Ordering::Acquire) == ABANDONED
    }
}

type Job = Box<dyn FnOnce() + Send>;

impl IngestPool {
    /// Starts `options.threads` named worker threads.
    pub fn start(options: IngestOptions) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        options.priority.prepare();
        for i in 0..options.threads.max(1) {
            let rx = Arc::clone(&rx);
            let priority = options.priority;
            std::thread::Builder::new()
                .name(format!("eddy-feedback-{i}"))
                .spawn(move || {
                    priority.apply();
                    work(&rx);
                })?;
        }
        let concurrency = u32::try_from(options.concurrency.max(1)).unwrap_or(u32::MAX);
        Ok(Self {
            admission: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency,
            wait: options.wait,
            start_within: options.start_within,
            waiting: Default::default(),
            closed: Default::default(),
            jobs: tx,
        })
    }

    /// A place for one request, or `None` when `concurrency` requests are
    /// already admitted. Never waits.
    pub fn try_admit(&self) -> Option<Admission> {
        self.try_admit_asked(Instant::now())
    }

    fn try_admit_asked(&self, asked: Instant) -> Option<Admission> {
        if self.is_closed() {
            return None;
        }
        Arc::clone(&self.admission)
            .try_acquire_owned()
            .ok()
            .map(|permit| Admission {
                _permit: permit,
                asked,
            })
    }

    /// A place for one request, waiting up to the configured wait for one
    /// to free; `None` after that. Waiters are admitted in arrival order (tokio's
    /// semaphore is fair). A waiting request costs no CPU (its body,
    /// read by the listener within its budget, is not parsed), and a client that ignores `Retry-After` is
    /// slowed to one refusal per `wait` per connection.
    pub async fn admit(&self) -> Option<Admission> {
        let (wait, asked) = (self.wait, Instant::now());
        if let Some(admission) = self.try_admit_asked(asked) {
            return Some(admission);
        }
        if wait.is_zero() {
            return None;
        }
        if self.is_closed() {
            return None;
        }
        let acquire = Arc::clone(&self.admission).acquire_owned();
        let _waiting = Waiting::new(&self.waiting);
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => Some(Admission {
                _permit: permit,
                asked,
            }),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Runs `job` on a feedback thread and returns its result. The
    /// admission is released when the job has run, whether or not the
    /// caller still waits for it (a request that timed out or whose client
    /// left still has its job finished: it may already be in the log). A
    /// job that has not committed (`Gate::commit`) within `start_within`
    /// of the request asking for admission is given up: the request gets
    /// `IngestError::Late` at once, a clear refusal rather than a request
    /// timeout with an unknown outcome, and the job applies nothing when
    /// it runs (or is skipped).
    pub async fn run<T, F>(&self, admission: Admission, job: F) -> Result<T, IngestError>
    where
        T: Send + 'static,
        F: FnOnce(&Gate) -> T + Send + 'static,
    {
        let (tx, mut rx) = oneshot::channel();
        let gate = Gate::default();
        let deadline = admission.asked + self.start_within;
        let job_gate = gate.clone();
        let job: Job = Box::new(move || {
            if job_gate.is_abandoned() {
                drop(admission);
                let _ = tx.send(Err(IngestError::Late));
                return;
            }
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| job(&job_gate)));
            drop(admission);
            match result {
                Ok(value) => {
                    let _ = tx.send(Ok(value));
                }
                Err(_) => {
                    tracing::error!("feedback job panicked");
                    let _ = tx.send(Err(IngestError::Panicked));
                }
            }
        });
        if self.jobs.send(job).is_err() {
            return Err(IngestError::Stopped);
        }
        match tokio::time::timeout_at(deadline.into(), &mut rx).await {
            Ok(result) => result.unwrap_or(Err(IngestError::Stopped)),
            Err(_) if gate.abandon() => Err(IngestError::Late),
            // Committed: its outcome is coming.
            Err(_) => rx.await.unwrap_or(Err(IngestError::Stopped)),
        }
    }

    /// Waits until no request is admitted (every job has run), for at most
    /// `timeout`; false if work was still running then. Shutdown calls it
    /// between the listener and the trainers, so nothing is queued after
    /// the trainers' last drain.
    pub async fn idle(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.admission.acquire_many(self.concurrency))
            .await
            .is_ok_and(|permits| permits.is_ok())
    }

    /// Admits nothing from now on (shutdown, before `idle`): a request a
    /// connection still brings in after the listeners' grace would
    /// otherwise be acknowledged after the trainers' final drain.
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the pool admits no more work (shutting down).
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Requests waiting for a place now (over `feedback_concurrency`).
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests admitted now (running or waiting for a thread).
    pub fn in_flight(&self) -> usize {
        self.concurrency as usize - self.admission.available_permits()
    }
}

fn work(rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job, never while
        // one runs, so the other threads take the jobs that follow.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(mpsc::RecvError) => return,
        }
    }
}

/// Counts a request as waiting for a place while it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize, concurrency: usize) -> IngestPool {
        waiting(threads, concurrency, Duration::ZERO)
    }

    fn waiting(threads: usize, concurrency: usize, wait: Duration) -> IngestPool {
        IngestPool::start(IngestOptions {
            threads,
            concurrency,
            priority: crate::serving::priority::Background {
                policy: crate::serving::priority::BackgroundPolicy::Nice,
                nice: 0,
                keep_free: 0,
            },
            wait,
            start_within: Duration::from_secs(30),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn admission_is_bounded_and_released_after_the_job() {
        let pool = pool(1, 2);
        let a = pool.try_admit().unwrap();
        let b = pool.try_admit().unwrap();
        assert!(pool.try_admit().is_none(), "a third request is refused");
        assert_eq!(pool.in_flight(), 2);
        drop(b);
        assert_eq!(pool.run(a, |_| 41 + 1).await, Ok(42));
        assert_eq!(pool.in_flight(), 0, "the job released its admission");
        assert!(pool.idle(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn admit_waits_for_a_place_to_free() {
        let pool = pool(1, 1);
        let _held = pool.try_admit().unwrap();
        assert!(pool.admit().await.is_none(), "no wait: refused at once");

        let pool = waiting(1, 1, Duration::from_millis(1));
        let _held = pool.try_admit().unwrap();
        assert!(pool.admit().await.is_none(), "refused after the wait");

        let pool = waiting(1, 1, Duration::from_secs(30));
        let held = pool.try_admit().unwrap();
        let (admitted, ()) = tokio::join!(pool.admit(), async {
            tokio::task::yield_now().await;
            drop(held);
        });
        assert!(admitted.is_some(), "admitted once the holder left");
    }

    #[tokio::test]
    async fn a_panicking_job_is_reported_and_the_thread_lives_on() {
        let pool = pool(1, 1);
        let a = pool.try_admit().unwrap();
        let r: Result<(), _> = pool.run(a, |_| panic!("boom")).await;
        assert_eq!(r, Err(IngestError::Panicked));
        let a = pool.try_admit().expect("released after the panic");
        assert_eq!(pool.run(a, |_| "still here").await, Ok("still here"));
    }

    /// The only thread is busy past `start_within`: the queued request is
    /// answered `Late` at its deadline, and its job, run later, applies
    /// nothing; a job that committed in time is waited for past it.
    #[tokio::test]
    async fn a_job_not_committed_in_time_is_given_up() {
        let mut pool = pool(1, 3);
        pool.start_within = Duration::from_millis(20);
        let (a, b) = (pool.try_admit().unwrap(), pool.try_admit().unwrap());
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let applied = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&applied);
        let busy = pool.run(a, move |gate| gate.commit() && blocked.recv().is_ok());
        let late = pool.run(b, move |gate| {
            if gate.commit() {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let (first, second) = tokio::join!(busy, async {
            let late = late.await;
            // Answered while the thread is still busy.
            release.send(()).unwrap();
            late
        });
        assert_eq!(first, Ok(true), "committed in time, waited for");
        assert_eq!(second, Err(IngestError::Late));
        assert!(pool.idle(Duration::from_secs(5)).await, "both jobs done");
        assert!(
            !applied.load(std::sync::atomic::Ordering::SeqCst),
            "the given-up job applied nothing"
        );
    }

    #[tokio::test]
    async fn jobs_run_on_the_feedback_threads() {
        let pool = pool(2, 4);
        let a = pool.try_admit().unwrap();
        let name = pool
            .run(a, |_| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("eddy-feedback-"));
    }

    #[tokio::test]
    async fn a_closed_pool_admits_nothing_and_still_waits_for_its_work() {
        let pool = pool(1, 2);
        let held = pool.try_admit().unwrap();
        pool.close();
        assert!(pool.is_closed());
        assert!(pool.try_admit().is_none());
        assert!(pool.admit().await.is_none());
        assert!(!pool.idle(Duration::from_millis(1)).await);
        drop(held);
        assert!(pool.idle(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn idle_waits_for_admitted_work() {
        let pool = pool(1, 2);
        let held = pool.try_admit().unwrap();
        assert!(!pool.idle(Duration::from_millis(1)).await);
        drop(held);
        assert!(pool.idle(Duration::from_secs(5)).await);
    }
}
