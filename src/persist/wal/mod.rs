//! The durable feedback log: a segmented, checksummed, append-only log of
//! opaque byte records, one log per model directory (`<model dir>/wal`).
//!
//! The HTTP handler appends each accepted feedback record before answering
//! 202, the trainer appends its own records to the same log, and start-up
//! replays the records after a snapshot's position. Payloads are opaque here:
//! encoding them, and storing idempotency keys inside them, is the caller's
//! job. Locking the model directory against a second process is also left
//! to the caller.
//!
//! # On disk
//!
//! A log is a directory of segment files, each named by the position of its
//! first record, zero-padded to 20 digits (`00000000000000000000.wal`), so
//! names sort in position order. Positions are contiguous across segments;
//! a gap is corruption. A segment is
//!
//! ```text
//! header: "EDDYWAL\0" | format u32 LE (= 2) | first position u64 LE | crc32 of the preceding 20 bytes u32 LE
//! record: payload length u32 LE | checksum u32 LE | payload
//! checksum, format 2: crc32 of (payload ++ position u64 LE)
//! checksum, format 1: crc32 of (position u64 LE ++ payload)   (still read)
//! ```
//!
//! Mixing the position into the checksum catches records spliced in from
//! another place or another log. Format 2 puts it after the payload so an
//! appender checksums its payloads before it takes the order lock and
//! only folds the position in under it. Each segment is read by the
//! format its header states; an open log whose current segment has an
//! older format goes on in a new segment of this build's format (an empty
//! one is replaced), so a segment never mixes formats. A payload is at
//! most [`MAX_RECORD_BYTES`].
//! New segments are written as a temp file (`*.wal.tmp`), fsynced, renamed
//! into place and the directory fsynced, so a segment file never has a
//! partial header; stray temp files are removed at open. A batch is never
//! split across segments; the log rolls to a new segment when the current
//! one would pass `segment_bytes`, after fsyncing the old one.
//!
//! # Failure semantics
//!
//! - **Torn tail** (a crash mid-write): in the last segment only, a bad record
//!   is a torn tail when nothing valid can follow it: fewer bytes remain than
//!   a record header, its length runs past the end of the file, its checksum
//!   fails and it ends exactly at the end of the file, or everything from it
//!   to the end is zero bytes. Open truncates the file there, warns and
//!   reports it in [`OpenReport::torn_tail`]. Nothing after it is guessed.
//! - **Mid-log corruption** (any other bad record, a bad segment header, a
//!   header that disagrees with its file name, a gap): open refuses with
//!   [`LogError::Corrupt`] naming the file and byte offset. With
//!   `LogOptions::repair` it truncates there, removes every later segment
//!   and reports it in [`OpenReport::repaired`].
//! - **Newer format**: a header whose format version is newer than this
//!   build gives [`LogError::NewerFormat`], never treated as corruption, even
//!   with `repair`.
//! - **Write errors** (disk full): the file is cut back to the last whole
//!   record and the error returned; the log stays usable. If the cut-back
//!   itself fails the log is poisoned.
//! - **Fsync errors** are never retried: the page cache cannot be trusted
//!   after a failed fsync (PostgreSQL's lesson), so the log is poisoned and
//!   every later `append`, `sync` and `durable` (for a record not yet known
//!   durable) fails with [`LogError::Poisoned`]. Restarting replays what
//!   really reached the disk.
//!
//! A new log's first segment starts at the `start_at` given to
//! `LocalLog::open` (so a log created next to an older snapshot continues
//! its positions); an existing log keeps its own.
//!
//! `LocalLog` (in `local`) is the file implementation; `segment` holds the
//! file format, scanning and recovery rules; `read_dir` reads any directory
//! of segments (an archive, say) without opening it for append.

mod batch;
mod durability;
mod lazy;
mod local;
mod memory;
mod read;
mod recover;
mod segment;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use batch::{FRAME_LEN, RecordBatch};
#[cfg(test)]
pub(crate) use durability::fail_fsyncs_under;
pub use lazy::LazyLog;
pub use local::LocalLog;
pub use memory::MemoryLog;
pub use read::read_dir;
pub use segment::{FORMAT_VERSION, MAX_RECORD_BYTES};

/// A record's position: its index in the log since the log began;
/// consecutive, never reused.
pub type Position = u64;

/// When appended records are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Before `durable` resolves; concurrent appenders share one fsync.
    Always,
    /// Every `fsync_interval`, if anything was written.
    Interval,
    /// Only on `sync()`; otherwise the operating system decides.
    Never,
}

/// How a log is opened and written.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub fsync: Fsync,
    /// The period of the sync thread with `Fsync::Interval`.
    pub fsync_interval: Duration,
    /// Roll to a new segment when an append would take the current one past
    /// this size.
    pub segment_bytes: u64,
    /// Truncate at mid-log corruption (and drop later segments) instead of
    /// refusing to open.
    pub repair: bool,
    /// Where `trim_before` moves whole segments; `None` deletes them.
    pub archive_dir: Option<PathBuf>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            fsync: Fsync::Always,
            fsync_interval: Duration::from_millis(100),
            segment_bytes: 64 << 20,
            repair: false,
            archive_dir: None,
        }
    }
}

/// What `append` did: the positions `first..end` now hold the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first: Position,
    /// Exclusive.
    pub end: Position,
}

/// One append: records written as consecutive positions, all or none.
#[derive(Debug)]
pub struct Append<'a> {
    /// The payloads, encoded by the caller into one buffer; the log fills
    /// in their frame slots as it writes them.
    pub records: &'a mut RecordBatch,
    /// An idempotency key a shared engine may enforce; the local file
    /// ignores it (the caller stores keys in its records).
    pub key: Option<&'a [u8]>,
    /// Fencing: append only if the log's next position is exactly this
    /// (else `LogError::Conflict`). `None`: unconditional.
    pub expect_next: Option<Position>,
}

impl<'a> Append<'a> {
    /// An unconditional append without a key.
    pub fn new(records: &'a mut RecordBatch) -> Self {
        Append {
            records,
            key: None,
            expect_next: None,
        }
    }
}

/// The future `FeedbackLog::durable` returns.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), LogError>> + Send + 'static>>;

/// The records a read yields, in position order.
pub type Records = Box<dyn Iterator<Item = Result<(Position, Vec<u8>), LogError>> + Send>;

/// A durable, ordered log of opaque records.
pub trait FeedbackLog: Send + Sync + std::fmt::Debug {
    /// Writes the records (one write syscall for the batch where possible)
    /// and, while still holding the log's order lock, calls
    /// `then(first_position)` so the caller can hand the records to the
    /// trainer in exactly log order. On a write error the file is cut back
    /// to the last whole record and the error returned; the log stays
    /// usable (e.g. disk full: later appends succeed once space returns).
    /// An empty batch writes nothing but still calls `then`.
    fn append(
        &self,
        batch: Append<'_>,
        then: &mut dyn FnMut(Position),
    ) -> Result<Appended, LogError>;

    /// Resolves once every record before `end` is durable under the fsync
    /// policy: with `Always`, after an fsync covering it (group commit:
    /// concurrent appenders share one fsync); with `Interval` and `Never`,
    /// at once. Fails if the log is poisoned before the records were known
    /// durable, or closed before they were.
    fn durable(&self, end: Position) -> Durable;

    /// Blocking: makes everything appended so far durable (before a
    /// snapshot, at shutdown), whatever the policy.
    fn sync(&self) -> Result<(), LogError>;

    /// Records from `from` (inclusive) to the end as of the call, in order.
    /// `from` below the first retained position is `LogError::Trimmed`.
    fn read_from(&self, from: Position) -> Result<Records, LogError>;

    /// Deletes (or archives) whole segments whose records all lie before
    /// `position`, never the current segment. Returns how many segments.
    fn trim_before(&self, position: Position) -> Result<usize, LogError>;

    /// The position the next appended record will get.
    fn next_position(&self) -> Position;

    /// The first position still retained (advances with `trim_before`).
    fn first_position(&self) -> Position;

    /// Counters for metrics.
    fn stats(&self) -> &LogStats;

    /// Whether appended payloads are kept (false: positions only, so
    /// callers need not encode them).
    fn keeps_records(&self) -> bool {
        true
    }
}

/// Counters for metrics, updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct LogStats {
    pub records_appended: AtomicU64,
    pub bytes_appended: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_failures: AtomicU64,
    pub write_failures: AtomicU64,
    pub torn_tails_truncated: AtomicU64,
    pub segments_trimmed: AtomicU64,
    /// How long the last fsync took, in microseconds.
    pub last_fsync_micros: AtomicU64,
    /// Set for good by a failed fsync (or a failed cut-back after a write
    /// error); the log refuses all further writes.
    pub poisoned: AtomicBool,
}

/// What open found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Segment files after recovery.
    pub segments: usize,
    /// The first retained position.
    pub first: Position,
    /// The position the next record will get.
    pub next: Position,
    /// A torn tail cut off the last segment.
    pub torn_tail: Option<TornTail>,
    /// Mid-log corruption cut off with `repair`.
    pub repaired: Option<Repaired>,
}

/// A crash's half-written tail, truncated at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    /// Byte offset of the first bad record (the new file length); 0 when
    /// the whole segment file was removed.
    pub offset: u64,
    pub bytes_dropped: u64,
}

/// Mid-log corruption truncated by `repair`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub path: PathBuf,
    /// Byte offset the file was truncated at; 0 when the file was removed.
    pub offset: u64,
    pub reason: String,
    /// Later segments removed.
    pub segments_removed: usize,
}

/// Everything the log can fail with.
#[derive(Debug, Error)]
pub enum LogError {
    #[error("log i/o failed on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no space left on the device holding {path}")]
    NoSpace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the log is poisoned by an earlier failed fsync (or failed cut-back of a write) and refuses writes until eddy restarts"
    )]
    Poisoned,
    #[error("the log was closed before the records were durable")]
    Closed,
    #[error(
        "log corrupt in {path} at byte {offset}: {reason}; run with --repair to truncate the log there (dropping everything after)"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "log segment {path} has format version {found}, but this build reads up to {supported}: it was written by a newer eddy"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("positions {expected}..{found} are missing before {path}")]
    Gap {
        path: PathBuf,
        expected: Position,
        found: Position,
    },
    #[error("position {requested} was trimmed from the log, which now starts at {first}")]
    Trimmed {
        requested: Position,
        first: Position,
    },
    #[error("log conflict: expected next position {expected}, but it is {actual}")]
    Conflict {
        expected: Position,
        actual: Position,
    },
    #[error("record of {len} bytes is larger than the log's limit of {max}")]
    TooLarge { len: u64, max: u64 },
}

impl LogError {
    /// True when the device (or the user's quota) is full: the write may
    /// succeed once space returns.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, LogError::NoSpace { .. })
    }

    /// Wraps an I/O error, telling a full device apart.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT)) {
            LogError::NoSpace { path, source }
        } else {
            LogError::Io { path, source }
        }
    }
}

/// Linux's "no space left on device".
const ENOSPC: i32 = 28;
/// Linux's "disk quota exceeded".
const EDQUOT: i32 = 122;
