//! `LocalLog`: the feedback log as segment files in a local directory.
//! Owns appending (one order lock, one write per batch, cut-back on
//! failure), rolling to a new segment, trimming or archiving old segments,
//! and handing out readers. Fsync policy and group commit live in
//! `durability`, recovery at open in `recover`, the file format in
//! `segment`.

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::durability::{Durability, SegmentFile};
use super::read::Records as RecordIter;
use super::recover::{self, Segment};
use super::segment::{self, FORMAT_VERSION, HEADER_LEN, MAX_RECORD_BYTES};
use super::{
    Append, Appended, Durable, FeedbackLog, Fsync, LogError, LogOptions, LogStats, OpenReport,
    Position, Records,
};

/// Linux's "invalid cross-device link", from `rename` across file systems.
const EXDEV: i32 = 18;

/// A feedback log in one directory. Dropping it stops the sync thread after
/// a final sync (unless the policy is `Never`).
#[derive(Debug)]
pub struct LocalLog {
    inner: Arc<Inner>,
    /// The `eddy-wal-sync` thread, with `Always` and `Interval`.
    sync_thread: Option<JoinHandle<()>>,
}

/// What the log and its sync thread share.
#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    options: LogOptions,
    stats: LogStats,
    durability: Durability,
    /// The order lock: appends, rolls and trims of the segment list hold it.
    state: Mutex<State>,
    /// Copies of `State::next` and the first retained position, readable
    /// without the lock.
    next: AtomicU64,
    first: Arc<AtomicU64>,
    /// Serialises trims, so segments leave the directory oldest first and a
    /// crash never leaves a gap behind.
    trim: Mutex<()>,
}

/// Guarded by `Inner::state`.
#[derive(Debug)]
struct State {
    /// Retained segments in order; the last is the current one.
    segments: VecDeque<Segment>,
    /// The current segment, opened for appending.
    file: Arc<SegmentFile>,
    /// Length of the current segment: always the end of a whole record.
    len: u64,
    next: Position,
    /// With `Fsync::Never`, segments rolled away from without fsync, and
    /// whether the directory has unsynced entries; `sync()` catches up.
    unsynced: Vec<Arc<SegmentFile>>,
    dir_unsynced: bool,
}

impl LocalLog {
    /// Opens (creating if missing) the log in `dir`, recovering it as the
    /// module doc describes. A new log's first position is `start_at`; an
    /// existing log keeps its own positions.
    pub fn open(
        dir: &Path,
        options: LogOptions,
        start_at: Position,
    ) -> Result<(LocalLog, OpenReport), LogError> {
        fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let stats = LogStats::default();
        let recovered = recover::recover(dir, &options, start_at, &stats)?;
        let sync = options.fsync != Fsync::Never;
        let mut segments: VecDeque<Segment> = recovered.segments.into();
        let next = recovered.next;
        let current_format = match segments.back() {
            Some(current) => Some(
                segment::SegmentReader::open(&current.path)
                    .map_err(|e| e.into_log_error(&current.path))?
                    .format(),
            ),
            None => None,
        };
        if let (Some(current), Some(format)) = (segments.back(), current_format)
            && format < FORMAT_VERSION
        {
            // Written by an older release: this build's records go to a
            // segment of its own format. What the old one holds is made
            // durable first (it may sit only in the page cache); an empty
            // one is replaced.
            if sync {
                fs::File::open(&current.path)
                    .and_then(|f| f.sync_data())
                    .map_err(|e| LogError::io(&current.path, e))?;
            }
            if current.first == next {
                segments.pop_back();
            }
            tracing::info!(dir = %dir.display(), format, next, "the log's last segment has an older format; starting a new one");
        }
        let file = match segments.back() {
            Some(current) if current_format == Some(FORMAT_VERSION) => {
                let file = fs::OpenOptions::new()
                    .append(true)
                    .open(&current.path)
                    .map_err(|e| LogError::io(&current.path, e))?;
                SegmentFile {
                    path: current.path.clone(),
                    file,
                }
            }
            _ => {
                let (path, file) = segment::create_segment(dir, next, sync)?;
                if sync {
                    segment::sync_dir(dir).map_err(|e| LogError::io(dir, e))?;
                }
                segments.push_back(Segment {
                    first: next,
                    path: path.clone(),
                });
                SegmentFile { path, file }
            }
        };
        // What is on disk may still sit only in the page cache (a crash of
        // the process, not the machine); make it durable before claiming so.
        if sync {
            file.file
                .sync_data()
                .map_err(|e| LogError::io(&file.path, e))?;
        }
        let len = file
            .file
            .metadata()
            .map_err(|e| LogError::io(&file.path, e))?
            .len();
        let file = Arc::new(file);
        let first = segments.front().map_or(next, |s| s.first);
        let report = OpenReport {
            segments: segments.len(),
            first,
            next,
            torn_tail: recovered.torn_tail,
            repaired: recovered.repaired,
        };
        let durability = Durability::new(
            options.fsync,
            options.fsync_interval,
            Arc::clone(&file),
            next,
        );
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            options,
            stats,
            durability,
            state: Mutex::new(State {
                segments,
                file,
                len,
                next,
                unsynced: Vec::new(),
                dir_unsynced: false,
            }),
            next: AtomicU64::new(next),
            first: Arc::new(AtomicU64::new(first)),
            trim: Mutex::new(()),
        });
        let sync_thread = if inner.durability.needs_thread() {
            let shared = Arc::clone(&inner);
            // Not at a feedback thread's lower priority, which a log opened
            // on the first feedback would pass on: a starved fsync thread
            // would stretch `fsync_interval_ms`'s window.
            let handle = crate::serving::priority::at_normal_priority(move || {
                std::thread::Builder::new()
                    .name("eddy-wal-sync".into())
                    .spawn(move || shared.durability.run(&shared.stats))
            })
            .map_err(|e| LogError::io(dir, e))?;
            Some(handle)
        } else {
            None
        };
        tracing::debug!(
            dir = %dir.display(),
            first = report.first,
            next = report.next,
            segments = report.segments,
            "opened feedback log"
        );
        Ok((LocalLog { inner, sync_thread }, report))
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Makes every later fsync fail, as a dying disk would.
    #[cfg(test)]
    pub(super) fn fail_fsyncs(&self) {
        self.inner
            .durability
            .fail_fsyncs
            .store(true, Ordering::Release);
    }
}

impl Inner {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic in an append's `then` callback happens after the state is
        // updated, so the state is consistent even if the lock is poisoned.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_poisoned(&self) -> Result<(), LogError> {
        if self.stats.poisoned.load(Ordering::Acquire) {
            Err(LogError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Starts a new segment at `state.next`, fsyncing the old one first
    /// (unless `Never`).
    fn roll(&self, state: &mut State) -> Result<(), LogError> {
        let sync = self.options.fsync != Fsync::Never;
        if sync {
            self.durability
                .fsync(&state.file, Some(state.next), &self.stats)?;
        }
        let (path, file) = segment::create_segment(&self.dir, state.next, sync)?;
        if sync {
            if let Err(e) = segment::sync_dir(&self.dir) {
                // The new file may vanish in a crash while records written
                // to it are reported durable: treat it as a failed fsync.
                self.stats.fsync_failures.fetch_add(1, Ordering::Relaxed);
                self.durability.poison(
                    &self.stats,
                    "fsync of the log directory failed",
                    &self.dir,
                    &e,
                );
                return Err(LogError::io(&self.dir, e));
            }
        } else {
            state.unsynced.push(Arc::clone(&state.file));
            state.dir_unsynced = true;
        }
        tracing::debug!(path = %path.display(), first = state.next, "started a new log segment");
        state.segments.push_back(Segment {
            first: state.next,
            path: path.clone(),
        });
        state.file = Arc::new(SegmentFile { path, file });
        state.len = HEADER_LEN;
        self.durability.written(&state.file, state.next);
        Ok(())
    }

    /// Moves a trimmed segment into the archive, copying when it is on
    /// another file system.
    fn archive(&self, from: &Path, archive: &Path) -> Result<(), LogError> {
        let name = from.file_name().unwrap_or_default();
        let to = archive.join(name);
        match fs::rename(from, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(EXDEV) => {
                let tmp = archive.join(format!("{}.tmp", name.to_string_lossy()));
                let copied = (|| {
                    fs::copy(from, &tmp)?;
                    fs::File::open(&tmp)?.sync_all()?;
                    fs::rename(&tmp, &to)?;
                    segment::sync_dir(archive)
                })();
                if let Err(e) = copied {
                    let _ = fs::remove_file(&tmp);
                    return Err(LogError::io(&to, e));
                }
                fs::remove_file(from).map_err(|e| LogError::io(from, e))
            }
            Err(e) => Err(LogError::io(&to, e)),
        }
    }
}

impl FeedbackLog for LocalLog {
    fn append(
        &self,
        batch: Append<'_>,
        then: &mut dyn FnMut(Position),
    ) -> Result<Appended, LogError> {
        let inner = &*self.inner;
        inner.check_poisoned()?;
        let records = batch.records;
        // Checked and checksummed before the lock, in one pass; only the
        // positions are folded in under it.
        let crc = crc32fast::Hasher::new();
        records.try_for_each_frame(|_, frame, payload| {
            if payload.len() as u64 > MAX_RECORD_BYTES {
                return Err(LogError::TooLarge {
                    len: payload.len() as u64,
                    max: MAX_RECORD_BYTES,
                });
            }
            segment::seal_frame(frame, payload, &crc);
            Ok(())
        })?;
        let mut state = inner.lock_state();
        inner.check_poisoned()?;
        let first = state.next;
        if let Some(expected) = batch.expect_next
            && expected != first
        {
            return Err(LogError::Conflict {
                expected,
                actual: first,
            });
        }
        if records.is_empty() {
            then(first);
            return Ok(Appended { first, end: first });
        }
        let bytes = records.bytes().len() as u64;
        // A batch is never split; one bigger than a segment gets its own.
        if state.len > HEADER_LEN && state.len + bytes > inner.options.segment_bytes {
            inner.roll(&mut state)?;
        }
        records.for_each_frame(|i, frame, _| segment::finish_frame(frame, first + i as u64));
        if let Err(e) = (&state.file.file).write_all(records.bytes()) {
            inner.stats.write_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(path = %state.file.path.display(), error = %e, "log write failed; cutting the segment back to its last whole record");
            if let Err(cut) = state.file.file.set_len(state.len) {
                inner.durability.poison(
                    &inner.stats,
                    "cutting back a failed log write failed",
                    &state.file.path,
                    &cut,
                );
            }
            return Err(LogError::io(&state.file.path, e));
        }
        let end = first + records.len() as u64;
        state.len += bytes;
        state.next = end;
        inner.next.store(end, Ordering::Release);
        inner
            .stats
            .records_appended
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        inner
            .stats
            .bytes_appended
            .fetch_add(bytes, Ordering::Relaxed);
        inner.durability.written(&state.file, end);
        then(first);
        Ok(Appended { first, end })
    }

    fn durable(&self, end: Position) -> Durable {
        self.inner.durability.wait(end, &self.inner.stats)
    }

    fn sync(&self) -> Result<(), LogError> {
        let inner = &*self.inner;
        inner.check_poisoned()?;
        let (older, file, next, dir_unsynced) = {
            let mut state = inner.lock_state();
            let older = std::mem::take(&mut state.unsynced);
            let dir_unsynced = std::mem::take(&mut state.dir_unsynced);
            (older, Arc::clone(&state.file), state.next, dir_unsynced)
        };
        for segment in &older {
            inner.durability.fsync(segment, None, &inner.stats)?;
        }
        if dir_unsynced && let Err(e) = segment::sync_dir(&inner.dir) {
            inner.stats.fsync_failures.fetch_add(1, Ordering::Relaxed);
            inner.durability.poison(
                &inner.stats,
                "fsync of the log directory failed",
                &inner.dir,
                &e,
            );
            return Err(LogError::io(&inner.dir, e));
        }
        inner.durability.fsync(&file, Some(next), &inner.stats)
    }

    fn read_from(&self, from: Position) -> Result<Records, LogError> {
        let inner = &*self.inner;
        let state = inner.lock_state();
        let first = state.segments.front().map_or(state.next, |s| s.first);
        if from < first {
            return Err(LogError::Trimmed {
                requested: from,
                first,
            });
        }
        let end = state.next;
        // Skip the segments that end at or before `from`.
        let skip = state
            .segments
            .iter()
            .skip(1)
            .take_while(|s| s.first <= from)
            .count();
        let start = state.segments[skip].first;
        let paths = state
            .segments
            .iter()
            .skip(skip)
            .map(|s| s.path.clone())
            .collect();
        drop(state);
        Ok(Box::new(RecordIter::live(
            paths,
            start,
            from,
            end,
            Arc::clone(&inner.first),
        )))
    }

    fn trim_before(&self, position: Position) -> Result<usize, LogError> {
        let inner = &*self.inner;
        let _trim = inner.trim.lock().unwrap_or_else(PoisonError::into_inner);
        let victims: Vec<Segment> = {
            let mut state = inner.lock_state();
            let mut victims = Vec::new();
            // A segment's records all lie before the next segment's first.
            while state.segments.len() > 1 && state.segments[1].first <= position {
                victims.extend(state.segments.pop_front());
            }
            if let Some(front) = state.segments.front() {
                inner.first.store(front.first, Ordering::Release);
            }
            victims
        };
        if victims.is_empty() {
            return Ok(0);
        }
        // Oldest first: stopping part-way leaves the remaining segments
        // contiguous.
        if let Some(archive) = &inner.options.archive_dir {
            fs::create_dir_all(archive).map_err(|e| LogError::io(archive, e))?;
            for victim in &victims {
                inner.archive(&victim.path, archive)?;
            }
            segment::sync_dir(archive).map_err(|e| LogError::io(archive, e))?;
        } else {
            for victim in &victims {
                fs::remove_file(&victim.path).map_err(|e| LogError::io(&victim.path, e))?;
            }
        }
        segment::sync_dir(&inner.dir).map_err(|e| LogError::io(&inner.dir, e))?;
        inner
            .stats
            .segments_trimmed
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        tracing::info!(
            dir = %inner.dir.display(),
            segments = victims.len(),
            first = inner.first.load(Ordering::Acquire),
            archived = inner.options.archive_dir.is_some(),
            "trimmed the feedback log"
        );
        Ok(victims.len())
    }

    fn next_position(&self) -> Position {
        self.inner.next.load(Ordering::Acquire)
    }

    fn first_position(&self) -> Position {
        self.inner.first.load(Ordering::Acquire)
    }

    fn stats(&self) -> &LogStats {
        &self.inner.stats
    }
}

impl Drop for LocalLog {
    fn drop(&mut self) {
        let Some(handle) = self.sync_thread.take() else {
            return;
        };
        self.inner.durability.shutdown();
        if handle.join().is_err() {
            tracing::error!(dir = %self.inner.dir.display(), "the log's sync thread panicked");
        }
        if self.inner.stats.poisoned.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.sync() {
            tracing::error!(dir = %self.inner.dir.display(), error = %e, "final sync of the feedback log failed");
        }
    }
}
