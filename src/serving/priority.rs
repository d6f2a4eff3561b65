//! How the background threads (feedback and trainers) give the CPU to the
//! request threads that answer predict, and what the process asks of the
//! kernel's memory (transparent huge pages).
//!
//! On Linux a thread's scheduling policy and niceness are its own
//! (sched(7)), and a thread may lower its own priority without privilege.
//! `server.background_policy` chooses between:
//! - `nice` (the default): the threads keep the normal policy at
//!   `server.feedback_nice` / `server.trainer_nice`. They still run their
//!   time slice before a request thread that wakes gets the CPU, so under a
//!   full feedback load predict's p99 rises by a few slices.
//! - `idle`: `SCHED_IDLE`, which the kernel preempts as soon as a normal
//!   thread wants the CPU: predict waits on no background work, and when the
//!   request threads take every core, feedback is refused (429) and training
//!   waits until they do not.

use serde::{Deserialize, Serialize};

/// `server.background_policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackgroundPolicy {
    /// Normal scheduling at the configured niceness.
    #[default]
    Nice,
    /// `SCHED_IDLE`: only when no request thread wants the CPU.
    Idle,
}

/// What one kind of background thread runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Background {
    pub policy: BackgroundPolicy,
    /// Niceness under `BackgroundPolicy::Nice` (0 leaves it unchanged).
    pub nice: i32,
}

impl Background {
    /// Applies to the calling thread (Linux; elsewhere logged and ignored).
    /// Threads it spawns afterwards inherit it.
    pub fn apply(self) {
        match self.policy {
            BackgroundPolicy::Nice => lower_priority(self.nice),
            BackgroundPolicy::Idle => idle_policy(),
        }
    }
}

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

#[cfg(target_os = "linux")]
fn idle_policy() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        tracing::warn!(error = ?e, "cannot put the feedback or trainer threads at SCHED_IDLE");
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

/// Turns transparent huge pages off for this process (Linux), unless
/// `server.huge_pages`. With them, the first touch of fresh heap clears 2 MiB
/// at once on the thread that touched it; predict's allocations (the join
/// cache's held features) then stall a request thread for milliseconds (25
/// ms measured on a virtual machine). Without, the same memory is cleared 4
/// KiB at a time. Call before the heap grows: pages already huge stay so.
pub fn keep_huge_pages(on: bool) {
    #[cfg(target_os = "linux")]
    if !on && let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = on;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The scheduling policy of the calling thread, from /proc (field 41 of
    /// stat: 0 normal, 5 idle) and its niceness (field 19).
    fn policy_and_nice() -> (u32, i32) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // After the command name, which ends at the last ')'.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        // rest starts at field 3.
        (
            fields[41 - 3].parse().expect("policy"),
            fields[19 - 3].parse().expect("nice"),
        )
    }

    #[test]
    fn each_policy_lands_on_the_calling_thread_only() {
        let seen = std::thread::spawn(|| {
            Background {
                policy: BackgroundPolicy::Nice,
                nice: 7,
            }
            .apply();
            let niced = policy_and_nice();
            Background {
                policy: BackgroundPolicy::Idle,
                nice: 7,
            }
            .apply();
            let child = std::thread::spawn(policy_and_nice).join().expect("child");
            (niced, policy_and_nice(), child)
        })
        .join()
        .expect("thread");
        assert_eq!(seen.0, (0, 7), "nice: the normal policy at niceness 7");
        assert_eq!(seen.1.0, 5, "idle: SCHED_IDLE");
        assert_eq!(seen.2.0, 5, "a thread it spawns inherits it");
        assert_eq!(policy_and_nice().0, 0, "the test's own thread is untouched");
    }
}
