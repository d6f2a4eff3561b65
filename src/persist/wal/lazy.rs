//! `LazyLog`: a `LocalLog` that is opened when its first record is
//! appended. A model that never receives feedback has no log directory, no
//! segment file, no sync thread and no buffers; until then it behaves as
//! an empty log whose positions start where the model's snapshot left off.
//! Start-up opens a log that already holds segments at once (it has
//! records to replay); only an absent or empty one waits.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};

use super::{
    Append, Appended, Durable, FeedbackLog, LocalLog, LogError, LogOptions, LogStats, OpenReport,
    Position, Records,
};

#[derive(Debug)]
pub struct LazyLog {
    dir: PathBuf,
    options: LogOptions,
    start_at: Position,
    log: OnceLock<LocalLog>,
    /// Held while the log is being opened, so only one caller opens it.
    opening: Mutex<()>,
    /// What `stats` shows before the log is open (failed opens only).
    unopened: LogStats,
    /// Set by `retire` (the model was deleted): appends fail from then on.
    /// Appends hold it shared, so `retire` waits for those under way.
    retired: RwLock<bool>,
}

impl LazyLog {
    /// A log in `dir` whose first record will get `start_at`.
    pub fn new(dir: &Path, options: LogOptions, start_at: Position) -> Self {
        Self {
            dir: dir.to_owned(),
            options,
            start_at,
            log: OnceLock::new(),
            opening: Mutex::new(()),
            unopened: LogStats::default(),
            retired: RwLock::new(false),
        }
    }

    /// Refuses every later append (its model was deleted and its directory
    /// is about to move), after the appends under way have finished, so
    /// nothing is acknowledged into a directory that is no longer the
    /// model's.
    pub fn retire(&self) {
        *self.retired.write().unwrap_or_else(PoisonError::into_inner) = true;
    }

    /// Opens the log now (it holds records to replay).
    pub fn opened(self) -> Result<(Self, OpenReport), LogError> {
        let (log, report) = LocalLog::open(&self.dir, self.options.clone(), self.start_at)?;
        let _ = self.log.set(log);
        Ok((self, report))
    }

    /// Whether `dir` holds no log yet (missing, or without segments).
    pub fn absent(dir: &Path) -> bool {
        match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                !entries.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "wal")))
            }
            Err(_) => true,
        }
    }

    /// Whether the log has been opened (a record was appended, or it held
    /// some at start).
    pub fn is_open(&self) -> bool {
        self.log.get().is_some()
    }

    fn open(&self) -> Result<&LocalLog, LogError> {
        if let Some(log) = self.log.get() {
            return Ok(log);
        }
        let _opening = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(log) = self.log.get() {
            return Ok(log);
        }
        let (log, _) =
            LocalLog::open(&self.dir, self.options.clone(), self.start_at).inspect_err(|_| {
                // Counted as a failed write (a full disk, most often).
                self.unopened.write_failures.fetch_add(1, Ordering::Relaxed);
            })?;
        // The counter carries on where the failed opens left it.
        log.stats().write_failures.fetch_add(
            self.unopened.write_failures.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        tracing::debug!(dir = %self.dir.display(), "opened the feedback log at its first record");
        Ok(self.log.get_or_init(|| log))
    }
}

impl FeedbackLog for LazyLog {
    fn append(
        &self,
        batch: Append<'_>,
        then: &mut dyn FnMut(Position),
    ) -> Result<Appended, LogError> {
        let retired = self.retired.read().unwrap_or_else(PoisonError::into_inner);
        if *retired {
            return Err(LogError::Closed);
        }
        self.open()?.append(batch, then)
    }

    fn durable(&self, end: Position) -> Durable {
        match self.log.get() {
            Some(log) => log.durable(end),
            // Nothing was ever appended, so nothing is owed.
            None => Box::pin(async { Ok(()) }),
        }
    }

    fn sync(&self) -> Result<(), LogError> {
        self.log.get().map_or(Ok(()), LocalLog::sync)
    }

    fn read_from(&self, from: Position) -> Result<Records, LogError> {
        match self.log.get() {
            Some(log) => log.read_from(from),
            None if from < self.start_at => Err(LogError::Trimmed {
                requested: from,
                first: self.start_at,
            }),
            None => Ok(Box::new(std::iter::empty())),
        }
    }

    fn trim_before(&self, position: Position) -> Result<usize, LogError> {
        self.log
            .get()
            .map_or(Ok(0), |log| log.trim_before(position))
    }

    fn next_position(&self) -> Position {
        self.log
            .get()
            .map_or(self.start_at, LocalLog::next_position)
    }

    fn first_position(&self) -> Position {
        self.log
            .get()
            .map_or(self.start_at, LocalLog::first_position)
    }

    fn stats(&self) -> &LogStats {
        self.log.get().map_or(&self.unopened, LocalLog::stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::wal::RecordBatch;

    #[test]
    fn nothing_exists_until_the_first_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let log = LazyLog::new(&dir, LogOptions::default(), 7);
        assert!(LazyLog::absent(&dir));
        assert_eq!((log.next_position(), log.first_position()), (7, 7));
        assert_eq!(log.read_from(7).unwrap().count(), 0);
        assert!(matches!(log.read_from(6), Err(LogError::Trimmed { .. })));
        log.sync().unwrap();
        assert_eq!(log.trim_before(7).unwrap(), 0);
        assert!(!dir.exists() && !log.is_open());
        let mut batch = RecordBatch::default();
        batch.push_with(|buf| buf.extend_from_slice(b"one"));
        let mut at = None;
        let appended = log
            .append(Append::new(&mut batch), &mut |p| at = Some(p))
            .unwrap();
        assert_eq!((at, appended.first, appended.end), (Some(7), 7, 8));
        assert!(log.is_open() && !LazyLog::absent(&dir));
        let records: Vec<_> = log.read_from(7).unwrap().map(Result::unwrap).collect();
        assert_eq!(records, vec![(7, b"one".to_vec())]);
        // Retired (its model deleted): appends fail, nothing is written.
        log.retire();
        let mut batch = RecordBatch::default();
        batch.push_with(|buf| buf.extend_from_slice(b"two"));
        assert!(matches!(
            log.append(Append::new(&mut batch), &mut |_| {}),
            Err(LogError::Closed)
        ));
        assert_eq!(log.next_position(), 8);
        let retired = LazyLog::new(&tmp.path().join("never"), LogOptions::default(), 0);
        retired.retire();
        assert!(
            retired
                .append(Append::new(&mut batch), &mut |_| {})
                .is_err()
        );
        assert!(!tmp.path().join("never").exists(), "no directory made");
        // Reopened, the log is found (and opened at once).
        drop(log);
        let (again, _) = LazyLog::new(&dir, LogOptions::default(), 0)
            .opened()
            .unwrap();
        assert_eq!(again.next_position(), 8);
    }
}
