//! Reading records back, in position order: from a live log
//! (`FeedbackLog::read_from`, up to the position that was next at the call)
//! and from any directory of segments (`read_dir`, e.g. an archive, for
//! offline retraining). Each segment is read with a buffered reader and
//! every record's checksum is checked.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::segment::{self, HeaderError, RecordError, SegmentReader};
use super::{LogError, Position};

/// Reads every segment in `dir`, in position order, without opening the log
/// for append. Positions missing between segments (an operator deleted some
/// from an archive) yield a `LogError::Gap` naming them, and reading goes on
/// with the next segment; so does a bad record, after its error. A torn
/// tail at the end of the last segment ends the records quietly, as open
/// would truncate it.
pub fn read_dir(
    dir: &Path,
) -> Result<impl Iterator<Item = Result<(Position, Vec<u8>), LogError>> + Send + use<>, LogError> {
    let segments = segment::list_segments(dir)?
        .into_iter()
        .map(|(_, path)| path)
        .collect();
    Ok(Records {
        segments,
        current: None,
        from: 0,
        end: None,
        expected: None,
        live: None,
        last_path: PathBuf::new(),
        done: false,
    })
}

/// The iterator behind `read_from` and `read_dir`.
pub(super) struct Records {
    /// Segments not opened yet, in order.
    segments: VecDeque<PathBuf>,
    current: Option<(PathBuf, SegmentReader)>,
    /// Records before this position are skipped.
    from: Position,
    /// Stop here (exclusive); `None` reads to the end of the last segment.
    end: Option<Position>,
    /// The position the next record should have; `None` after a gap or a
    /// bad segment in a directory read, where anything may come next.
    expected: Option<Position>,
    /// For a live log: its first retained position, to tell a segment
    /// trimmed while we read from corruption.
    live: Option<Arc<AtomicU64>>,
    /// The segment opened last, to name in errors.
    last_path: PathBuf,
    done: bool,
}

impl Records {
    /// Records `from..end` of a live log whose segments (those that may hold
    /// them) start with the one beginning at `first`.
    pub(super) fn live(
        segments: VecDeque<PathBuf>,
        first: Position,
        from: Position,
        end: Position,
        first_retained: Arc<AtomicU64>,
    ) -> Self {
        Records {
            segments,
            current: None,
            from,
            end: Some(end),
            expected: Some(first),
            live: Some(first_retained),
            last_path: PathBuf::new(),
            done: false,
        }
    }

    /// A live read ends at the first error; a directory read goes on with
    /// the next segment.
    fn fail(&mut self, e: LogError) -> LogError {
        if self.live.is_some() {
            self.done = true;
        } else {
            self.current = None;
            self.expected = None;
        }
        e
    }

    /// Opens the next segment. `None` when there is none.
    fn open_next(&mut self) -> Option<Result<(), LogError>> {
        let Some(path) = self.segments.pop_front() else {
            self.done = true;
            return match (self.end, self.expected) {
                (Some(end), Some(next)) if next < end => Some(Err(LogError::Corrupt {
                    path: self.last_path.clone(),
                    offset: 0,
                    reason: format!("the log ends at position {next}, before {end}"),
                })),
                _ => None,
            };
        };
        let last = self.segments.is_empty();
        self.last_path.clone_from(&path);
        let reader = match SegmentReader::open(&path) {
            Ok(reader) => reader,
            Err(HeaderError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(first) = &self.live {
                    self.done = true;
                    return Some(Err(LogError::Trimmed {
                        requested: self.expected.unwrap_or(self.from).max(self.from),
                        first: first.load(Ordering::Acquire),
                    }));
                }
                return Some(Err(self.fail(LogError::io(&path, e))));
            }
            Err(HeaderError::Incomplete) if last && self.live.is_none() => {
                tracing::warn!(path = %path.display(), "ignoring a segment without a header at the end of the log");
                self.done = true;
                return None;
            }
            Err(e) => return Some(Err(self.fail(e.into_log_error(&path)))),
        };
        let first = reader.first();
        let expected = self.expected.replace(first);
        self.current = Some((path.clone(), reader));
        match expected {
            Some(expected) if expected != first => {
                let e = LogError::Gap {
                    path,
                    expected,
                    found: first,
                };
                if self.live.is_some() {
                    self.done = true;
                }
                Some(Err(e))
            }
            _ => Some(Ok(())),
        }
    }
}

impl Iterator for Records {
    type Item = Result<(Position, Vec<u8>), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if let (Some(end), Some(next)) = (self.end, self.expected)
                && next >= end
            {
                self.done = true;
                return None;
            }
            let Some((path, reader)) = self.current.as_mut() else {
                match self.open_next()? {
                    Ok(()) => continue,
                    Err(e) => return Some(Err(e)),
                }
            };
            let mut payload = Vec::new();
            match reader.next_record(&mut payload) {
                Ok(Some(position)) => {
                    self.expected = Some(position + 1);
                    if position >= self.from {
                        return Some(Ok((position, payload)));
                    }
                }
                Ok(None) => self.current = None,
                Err(RecordError::Bad {
                    offset, torn: true, ..
                }) if self.live.is_none() && self.segments.is_empty() => {
                    tracing::warn!(path = %path.display(), offset, "ignoring a torn tail at the end of the log");
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    let e = e.into_log_error(path);
                    return Some(Err(self.fail(e)));
                }
            }
        }
    }
}
