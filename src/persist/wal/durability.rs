//! When appended records become durable: the fsync calls themselves, the
//! background sync thread (`eddy-wal-sync`) that does group commit, the
//! durable high-water mark published to `durable` waiters, and poisoning
//! after a failed fsync. Appending, and which file is current, belong to
//! `local`.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Durable, Fsync, LogError, LogStats, Position};

/// Logs under these directories fail every fsync from now on: the seam
/// for tests that reach a log only through the app that opened it.
#[cfg(test)]
static FAILING_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Makes every later fsync of a log under `dir` fail, as a dying disk
/// would (tests only; each test passes its own temp directory).
#[cfg(test)]
pub(crate) fn fail_fsyncs_under(dir: &std::path::Path) {
    FAILING_DIRS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(dir.to_owned());
}

/// A segment file with its path, shared between the appender, the sync
/// thread and `sync()` so fsync runs without holding the append lock.
#[derive(Debug)]
pub(super) struct SegmentFile {
    pub(super) path: PathBuf,
    pub(super) file: File,
}

/// What `durable` waiters watch.
#[derive(Debug, Clone, Copy)]
struct DurableMark {
    /// Every record before this position has been fsynced.
    synced: Position,
    poisoned: bool,
}

/// The sync thread's work: the current segment and how far it is written.
#[derive(Debug)]
struct Pending {
    /// Replaced by the appender when it rolls to a new segment; the old one
    /// was fsynced first.
    file: Arc<SegmentFile>,
    /// Every record before this position is written to `file` or an older,
    /// already fsynced segment.
    written: Position,
    shutdown: bool,
}

/// The fsync side of a log. Shared by the log and its sync thread.
#[derive(Debug)]
pub(super) struct Durability {
    mode: Fsync,
    interval: Duration,
    mark: watch::Sender<DurableMark>,
    /// Lock order: taken after the log's state lock, never before it.
    pending: Mutex<Pending>,
    /// Wakes the sync thread when something is written or at shutdown.
    wake: Condvar,
    #[cfg(test)]
    pub(super) fail_fsyncs: std::sync::atomic::AtomicBool,
}

impl Durability {
    /// Starts with everything before `synced` durable and `file` current.
    pub(super) fn new(
        mode: Fsync,
        interval: Duration,
        file: Arc<SegmentFile>,
        synced: Position,
    ) -> Self {
        let (mark, _) = watch::channel(DurableMark {
            synced,
            poisoned: false,
        });
        Durability {
            mode,
            interval,
            mark,
            pending: Mutex::new(Pending {
                file,
                written: synced,
                shutdown: false,
            }),
            wake: Condvar::new(),
            #[cfg(test)]
            fail_fsyncs: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether a sync thread should run for this policy.
    pub(super) fn needs_thread(&self) -> bool {
        self.mode != Fsync::Never
    }

    /// Tells the sync thread that everything before `written` is in `file`.
    pub(super) fn written(&self, file: &Arc<SegmentFile>, written: Position) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&pending.file, file) {
            pending.file = Arc::clone(file);
        }
        pending.written = written;
        drop(pending);
        if self.mode == Fsync::Always {
            self.wake.notify_one();
        }
    }

    /// The future behind `FeedbackLog::durable`.
    pub(super) fn wait(&self, end: Position, stats: &LogStats) -> Durable {
        if self.mode != Fsync::Always {
            // Nothing to wait for, but records whose fsync failed are not
            // durable, while records an earlier fsync covered stay so (a
            // retried request may ask long after its first answer).
            let lost = stats.poisoned.load(Ordering::Acquire) && self.mark.borrow().synced < end;
            return Box::pin(async move {
                if lost {
                    Err(LogError::Poisoned)
                } else {
                    Ok(())
                }
            });
        }
        let mut rx = self.mark.subscribe();
        Box::pin(async move {
            loop {
                let mark = *rx.borrow_and_update();
                if mark.synced >= end {
                    return Ok(());
                }
                if mark.poisoned {
                    return Err(LogError::Poisoned);
                }
                if rx.changed().await.is_err() {
                    // The log was dropped; its final sync has been published.
                    let mark = *rx.borrow();
                    return if mark.synced >= end {
                        Ok(())
                    } else if mark.poisoned {
                        Err(LogError::Poisoned)
                    } else {
                        Err(LogError::Closed)
                    };
                }
            }
        })
    }

    /// Fsyncs `file` and, when `upto` is given, publishes that everything
    /// before it is durable. A failure poisons the log and is never retried.
    pub(super) fn fsync(
        &self,
        file: &SegmentFile,
        upto: Option<Position>,
        stats: &LogStats,
    ) -> Result<(), LogError> {
        if stats.poisoned.load(Ordering::Acquire) {
            return Err(LogError::Poisoned);
        }
        let started = Instant::now();
        match self.sync_data(file) {
            Ok(()) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                stats.last_fsync_micros.store(micros, Ordering::Relaxed);
                if let Some(upto) = upto {
                    self.publish(upto);
                }
                Ok(())
            }
            Err(e) => {
                stats.fsync_failures.fetch_add(1, Ordering::Relaxed);
                self.poison(stats, "fsync failed", &file.path, &e);
                Err(LogError::io(&file.path, e))
            }
        }
    }

    #[cfg(not(test))]
    fn sync_data(&self, file: &SegmentFile) -> io::Result<()> {
        file.file.sync_data()
    }

    /// Tests make fsync fail on demand; a real failure (EIO from a dying
    /// disk) cannot be produced in a temp directory.
    #[cfg(test)]
    fn sync_data(&self, file: &SegmentFile) -> io::Result<()> {
        let failing = FAILING_DIRS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|dir| file.path.starts_with(dir));
        if failing || self.fail_fsyncs.load(Ordering::Acquire) {
            return Err(io::Error::other("injected fsync failure"));
        }
        file.file.sync_data()
    }

    /// Marks everything before `synced` durable (it only ever advances).
    pub(super) fn publish(&self, synced: Position) {
        self.mark.send_if_modified(|mark| {
            let advanced = synced > mark.synced;
            if advanced {
                mark.synced = synced;
            }
            advanced
        });
    }

    /// Refuses all further writes: after a failed fsync the page cache may
    /// have dropped the dirty pages and a retry could falsely succeed.
    pub(super) fn poison(
        &self,
        stats: &LogStats,
        what: &str,
        path: &std::path::Path,
        e: &io::Error,
    ) {
        stats.poisoned.store(true, Ordering::Release);
        tracing::error!(
            path = %path.display(),
            error = %e,
            cause = what,
            "the feedback log is poisoned and refuses writes until eddy restarts"
        );
        self.mark.send_modify(|mark| mark.poisoned = true);
        self.wake.notify_all();
    }

    /// Asks the sync thread to stop.
    pub(super) fn shutdown(&self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shutdown = true;
        self.wake.notify_all();
    }

    /// The sync thread's body: with `Always`, fsync as soon as anything is
    /// written past the synced position (appenders arriving during an fsync
    /// are covered by the next: group commit); with `Interval`, every
    /// interval if anything was written. Returns at shutdown or once the
    /// log is poisoned.
    pub(super) fn run(&self, stats: &LogStats) {
        let mut tick = Instant::now() + self.interval;
        loop {
            let (file, written) = {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if pending.shutdown || stats.poisoned.load(Ordering::Acquire) {
                        return;
                    }
                    let synced = self.mark.borrow().synced;
                    match self.mode {
                        Fsync::Always if pending.written > synced => break,
                        Fsync::Interval => {
                            let now = Instant::now();
                            if now >= tick {
                                tick = now + self.interval;
                                if pending.written > synced {
                                    break;
                                }
                            } else {
                                pending = self
                                    .wake
                                    .wait_timeout(pending, tick - now)
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .0;
                            }
                        }
                        _ => {
                            pending = self
                                .wake
                                .wait(pending)
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                    }
                }
                (Arc::clone(&pending.file), pending.written)
            };
            if self.fsync(&file, Some(written), stats).is_err() {
                return;
            }
        }
    }
}
