//! How the background threads (feedback and trainers) give the CPU to the
//! request threads that answer predict, and what the process asks of the
//! kernel's memory (transparent huge pages).
//!
//! On Linux a thread's scheduling policy and niceness are its own
//! (sched(7)), a thread may lower its own priority without privilege, and
//! threads it spawns inherit it. `server.background_policy` chooses:
//! - `nice` (the default): the normal policy at `server.feedback_nice` /
//!   `server.trainer_nice`: a share of the CPU by weight, never starved.
//! - `idle`: `SCHED_IDLE`, the lowest class: such a thread gets a core
//!   when no normal thread wants it. When the request threads take every
//!   core, training waits and feedback is refused (429). It gives way to
//!   every normal thread of the machine, not only eddy's: a CPU-bound
//!   neighbour (or a parallel test run) stalls learning for as long as it
//!   runs, so it is not the default.
//!
//! Neither keeps a request thread from waiting behind them on the EEVDF
//! scheduler (Linux 6.6 and later): a request thread that woke was not
//! always picked before a background thread on the same core (perf sched:
//! even a `SCHED_IDLE` one was picked while the woken request thread sat
//! runnable), and `benches/many_models.sh` measured waits of 1 to 4 ms (up
//! to a tick at 250 Hz) that way. What keeps predict clear is space: the
//! background threads keep off some CPUs (`server.request_cpus`, the
//! lowest-numbered of those the process may use), which are then always
//! free for the request threads; those still run anywhere.
//!
//! A thread cannot leave `SCHED_IDLE`, or lower its niceness, without
//! `CAP_SYS_NICE`. So what a background thread starts for the whole
//! process's sake (a feedback log's fsync thread, opened on the first
//! feedback; the snapshot threads, built at the first snapshot) is started
//! through `at_normal_priority`, on a thread that kept the normal policy.

use std::cell::Cell;
use std::sync::{OnceLock, mpsc};

use serde::{Deserialize, Serialize};

/// `server.background_policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackgroundPolicy {
    /// `SCHED_IDLE`: only when no normal thread wants the CPU.
    Idle,
    /// Normal scheduling at the configured niceness.
    #[default]
    Nice,
}

/// What one kind of background thread runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Background {
    pub policy: BackgroundPolicy,
    /// Niceness under `BackgroundPolicy::Nice` (0 leaves it unchanged).
    pub nice: i32,
    /// CPUs kept free of these threads (`server.request_cpus`): the
    /// lowest-numbered of the process's, when it may use more than this
    /// many; 0 keeps none.
    pub keep_free: usize,
}

thread_local! {
    /// Whether this is a background thread (`Background::apply`): one
    /// whose priority or CPUs may have been narrowed, which the threads it
    /// spawns would inherit.
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

impl Background {
    /// Starts the thread that `at_normal_priority` uses; call it on a thread
    /// at the normal priority before `apply`ing this to others.
    pub fn prepare(self) {
        if !LOWERED.get() {
            start_spawner();
            remember_cpus();
        }
    }

    /// Applies to the calling thread (Linux; elsewhere logged and ignored).
    /// Threads it spawns afterwards inherit it; `at_normal_priority` starts
    /// them on the spawner instead, whether or not anything here took
    /// effect (a niceness of 0 still narrows the CPUs).
    pub fn apply(self) {
        LOWERED.set(true);
        match self.policy {
            BackgroundPolicy::Nice => lower_priority(self.nice),
            BackgroundPolicy::Idle => idle_policy(),
        }
        keep_cpus_free(self.keep_free);
    }
}

/// The CPUs the process may use, as the first `prepare` saw them (before
/// any thread was restricted).
#[cfg(target_os = "linux")]
static CPUS: OnceLock<Option<rustix::thread::CpuSet>> = OnceLock::new();

#[cfg(target_os = "linux")]
fn remember_cpus() {
    CPUS.get_or_init(|| {
        rustix::thread::sched_getaffinity(None)
            .inspect_err(|e| tracing::warn!(error = %e, "cannot read the CPUs the process may use"))
            .ok()
    });
}

#[cfg(not(target_os = "linux"))]
fn remember_cpus() {}

/// Keeps the calling thread off the lowest-numbered `n` of the process's
/// CPUs, if it has more than `n`.
#[cfg(target_os = "linux")]
fn keep_cpus_free(n: usize) {
    use rustix::thread::CpuSet;
    let Some(all) = CPUS.get().copied().flatten() else {
        return;
    };
    if n == 0 || all.count() as usize <= n {
        return;
    }
    let mut left = all;
    for cpu in (0..CpuSet::MAX_CPU).filter(|&c| all.is_set(c)).take(n) {
        left.unset(cpu);
    }
    if let Err(e) = rustix::thread::sched_setaffinity(None, &left) {
        tracing::warn!(
            error = %e,
            "cannot keep the feedback or trainer threads off the request threads' CPUs"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn keep_cpus_free(n: usize) {
    if n != 0 {
        tracing::debug!("server.request_cpus is applied on Linux only");
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The thread that runs `at_normal_priority`'s work, started by the first
/// `Background::prepare`; `None` inside if it could not be.
static SPAWNER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();

fn start_spawner() {
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("eddy-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .inspect_err(|e| tracing::warn!(error = %e, "cannot start the spawner thread"))
            .ok()
            .map(|_| tx)
    });
}

/// Runs `f` at the normal priority: on the calling thread unless it gave up
/// priority, else on the spawner thread (waiting for it). Threads and
/// runtimes `f` starts then run at the normal priority too. A panic in `f`
/// reaches the caller.
pub(crate) fn at_normal_priority<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    if !LOWERED.get() {
        return f();
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    // Without a spawner (it could not start), here, at this thread's
    // priority.
    let unsent = match SPAWNER.get().and_then(Option::as_ref) {
        Some(spawner) => spawner.send(job).err().map(|mpsc::SendError(job)| job),
        None => Some(job),
    };
    if let Some(job) = unsent {
        tracing::warn!("no spawner thread: starting a thread at a background thread's priority");
        job();
    }
    match rx.recv() {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // The job always answers before its sender drops.
        Err(mpsc::RecvError) => std::panic::resume_unwind(Box::new("spawner job lost")),
    }
}

/// Raises the calling thread's niceness (`server.feedback_nice`,
/// `server.trainer_nice`) so the scheduler prefers the request runtime's
/// threads; 0 leaves it unchanged.
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::warn!(nice, error = %e, "cannot lower the feedback or trainer threads' priority");
    }
}

/// Puts the calling thread at `SCHED_IDLE` (Linux).
#[cfg(target_os = "linux")]
fn idle_policy() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` for the call's duration, and
    // pid 0 names the calling thread (sched_setscheduler(2)).
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot put the feedback or trainer threads at SCHED_IDLE");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(nice: i32) {
    if nice != 0 {
        tracing::debug!(nice, "thread niceness is applied on Linux only");
    }
}

#[cfg(not(target_os = "linux"))]
fn idle_policy() {
    tracing::debug!("server.background_policy = \"idle\" is applied on Linux only");
}

/// Turns transparent huge pages off for this process (Linux), unless `on`
/// (`server.huge_pages`). With them, the first touch of fresh heap clears
/// 2 MiB at once on the thread that touched it; predict's allocations (the
/// join cache's held features) then stall a request thread for
/// milliseconds (22 to 27 ms measured on a virtual machine). Without, the
/// same memory is cleared 4 KiB at a time. The flag is the whole process's
/// (prctl(2), inherited across fork and exec); call it before the heap
/// grows. `on` clears the flag instead, which a parent (or
/// `MIMALLOC_ALLOW_THP=0`) may have set: the process then gets the
/// system's setting.
pub fn keep_huge_pages(on: bool) {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(!on) {
        tracing::warn!(error = %e, on, "cannot set transparent huge pages for the process");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = on;
}
