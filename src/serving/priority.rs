//! What the process asks of the kernel for the request threads' sake: the
//! background threads (feedback and trainers) at a lower priority, and no
//! transparent huge pages.
//!
//! On Linux niceness is a per-thread attribute (setpriority(2), NOTES), a
//! thread may raise its own without privilege, and threads it spawns
//! inherit it.

/// Raises the calling thread's niceness (`server.feedback_nice`,
/// `server.trainer_nice`) so the scheduler prefers the request runtime's
/// threads; 0 leaves it unchanged. Linux only; elsewhere logged and ignored.
#[cfg(target_os = "linux")]
pub(crate) fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::warn!(nice, error = %e, "cannot lower the feedback or trainer threads' priority");
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_priority(nice: i32) {
    if nice != 0 {
        tracing::debug!(nice, "thread niceness is applied on Linux only");
    }
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
