//! `MemoryLog`: a `FeedbackLog` that keeps nothing (`storage.wal = false`,
//! and in-process drivers). It still hands out positions in append order
//! and calls `then` under its order lock, so feedback reaches the trainer
//! by the same path as with a file; nothing survives the process.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::{Append, Appended, Durable, FeedbackLog, LogError, LogStats, Position, Records};

#[derive(Debug, Default)]
pub struct MemoryLog {
    next: Mutex<Position>,
    stats: LogStats,
}

impl MemoryLog {
    /// A log whose first record gets `start_at`.
    pub fn starting_at(start_at: Position) -> Self {
        Self {
            next: Mutex::new(start_at),
            stats: LogStats::default(),
        }
    }

    fn next(&self) -> std::sync::MutexGuard<'_, Position> {
        // A plain counter: a panic elsewhere cannot leave it inconsistent.
        self.next.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FeedbackLog for MemoryLog {
    fn append(
        &self,
        batch: Append<'_>,
        then: &mut dyn FnMut(Position),
    ) -> Result<Appended, LogError> {
        let mut next = self.next();
        let first = *next;
        if let Some(expected) = batch.expect_next
            && expected != first
        {
            return Err(LogError::Conflict {
                expected,
                actual: first,
            });
        }
        *next += batch.records.len() as u64;
        self.stats
            .records_appended
            .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        then(first);
        Ok(Appended { first, end: *next })
    }

    fn durable(&self, _end: Position) -> Durable {
        Box::pin(async { Ok(()) })
    }

    fn sync(&self) -> Result<(), LogError> {
        Ok(())
    }

    fn read_from(&self, from: Position) -> Result<Records, LogError> {
        let first = *self.next();
        if from < first {
            return Err(LogError::Trimmed {
                requested: from,
                first,
            });
        }
        Ok(Box::new(std::iter::empty()))
    }

    fn trim_before(&self, _position: Position) -> Result<usize, LogError> {
        Ok(0)
    }

    fn next_position(&self) -> Position {
        *self.next()
    }

    fn first_position(&self) -> Position {
        *self.next()
    }

    fn stats(&self) -> &LogStats {
        &self.stats
    }

    fn keeps_records(&self) -> bool {
        false
    }
}
