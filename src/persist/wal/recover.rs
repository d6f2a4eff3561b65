//! Open-time recovery: scan every segment of a log directory in order,
//! validate every record, truncate a torn tail, and refuse (or, with
//! `repair`, cut off) mid-log corruption. The rules for telling the two
//! apart are documented in the parent module; reading records is
//! `segment`'s job.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::segment::{self, HeaderError, RecordError, SegmentReader};
use super::{LogError, LogOptions, LogStats, Position, Repaired, TornTail};

/// A segment the log keeps.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub(super) first: Position,
    pub(super) path: PathBuf,
}

/// What recovery leaves behind.
#[derive(Debug)]
pub(super) struct Recovered {
    /// Valid segments in order; empty when a fresh one must be created.
    pub(super) segments: Vec<Segment>,
    /// The next position: the end of the last valid segment, or where a
    /// fresh first segment starts.
    pub(super) next: Position,
    pub(super) torn_tail: Option<TornTail>,
    pub(super) repaired: Option<Repaired>,
}

/// A problem that makes a segment unusable from `offset` on.
struct Damage {
    offset: u64,
    reason: String,
    /// The header is unusable, so the whole file goes.
    whole_file: bool,
}

/// Scans `dir` (which must exist) and brings it to a consistent state.
pub(super) fn recover(
    dir: &Path,
    options: &LogOptions,
    start_at: Position,
    stats: &LogStats,
) -> Result<Recovered, LogError> {
    let removed = segment::remove_temp_files(dir)?;
    if removed > 0 {
        tracing::info!(dir = %dir.display(), removed, "removed stray log temp files");
    }
    let listed = segment::list_segments(dir)?;
    // A newer format must stop us before anything is truncated, even with
    // repair: it is not corruption, and this build cannot judge it.
    for (_, path) in &listed {
        if let Err(HeaderError::Newer(found)) = SegmentReader::open(path) {
            return Err(HeaderError::Newer(found).into_log_error(path));
        }
    }
    let sync = options.fsync != super::Fsync::Never;
    let mut recovered = Recovered {
        segments: Vec::with_capacity(listed.len()),
        next: start_at,
        torn_tail: None,
        repaired: None,
    };
    let mut buf = Vec::new();
    for (i, (name_first, path)) in listed.iter().enumerate() {
        let last = i + 1 == listed.len();
        let expected = recovered.segments.last().map(|_| recovered.next);
        let mut reader = match SegmentReader::open(path) {
            Ok(reader) => reader,
            Err(HeaderError::Incomplete) if last => {
                // Only a crash while creating a segment without fsync can
                // leave this; no record in it was ever readable.
                let bytes_dropped = file_len(path)?;
                fs::remove_file(path).map_err(|e| LogError::io(path, e))?;
                sync_dir_if(sync, dir)?;
                report_torn(stats, path, 0, bytes_dropped, &mut recovered);
                if expected.is_none() {
                    recovered.next = *name_first;
                }
                break;
            }
            Err(HeaderError::Io(e)) => return Err(LogError::io(path, e)),
            Err(e) => {
                cut_whole(
                    dir,
                    options,
                    &listed[i..],
                    *name_first,
                    e.reason(),
                    &mut recovered,
                )?;
                break;
            }
        };
        let damage = if reader.first() != *name_first {
            Some(format!(
                "header says the segment starts at position {}, but its file name says {name_first}",
                reader.first()
            ))
        } else {
            expected.filter(|e| e != name_first).map(|expected| {
                if *name_first > expected {
                    format!("gap: positions {expected}..{name_first} are missing")
                } else {
                    format!(
                        "overlap: segment starts at {name_first}, before the previous one ends at {expected}"
                    )
                }
            })
        };
        if let Some(reason) = damage {
            cut_whole(
                dir,
                options,
                &listed[i..],
                *name_first,
                reason,
                &mut recovered,
            )?;
            break;
        }
        let scanned = scan(&mut reader, &mut buf);
        recovered.segments.push(Segment {
            first: *name_first,
            path: path.clone(),
        });
        recovered.next = reader.next_position();
        match scanned {
            Ok(()) => {}
            Err(RecordError::Io(e)) => return Err(LogError::io(path, e)),
            Err(RecordError::Bad { offset, torn, .. }) if last && torn => {
                truncate(path, offset, sync)?;
                let bytes_dropped = reader.file_len() - offset;
                report_torn(stats, path, offset, bytes_dropped, &mut recovered);
            }
            Err(RecordError::Bad { offset, reason, .. }) => {
                let damage = Damage {
                    offset,
                    reason,
                    whole_file: false,
                };
                cut(
                    dir,
                    options,
                    &listed[i..],
                    *name_first,
                    damage,
                    &mut recovered,
                )?;
                break;
            }
        }
    }
    Ok(recovered)
}

/// Reads every record of a segment, stopping at the first bad one.
fn scan(reader: &mut SegmentReader, buf: &mut Vec<u8>) -> Result<(), RecordError> {
    while reader.next_record(buf)?.is_some() {}
    Ok(())
}

/// Mid-log corruption in `rest[0]`: refuse, or with `repair` truncate there
/// (removing the file if its header is bad) and remove every later segment.
fn cut(
    dir: &Path,
    options: &LogOptions,
    rest: &[(Position, PathBuf)],
    first: Position,
    damage: Damage,
    recovered: &mut Recovered,
) -> Result<(), LogError> {
    let path = &rest[0].1;
    if !options.repair {
        return Err(segment::corrupt(path, damage.offset, damage.reason));
    }
    let sync = options.fsync != super::Fsync::Never;
    if damage.whole_file {
        fs::remove_file(path).map_err(|e| LogError::io(path, e))?;
        if recovered.segments.is_empty() {
            recovered.next = first;
        }
    } else {
        truncate(path, damage.offset, sync)?;
    }
    // Later segments go newest first, so a crash part-way never leaves a
    // gap behind the kept ones.
    for (_, later) in rest[1..].iter().rev() {
        fs::remove_file(later).map_err(|e| LogError::io(later, e))?;
    }
    sync_dir_if(sync, dir)?;
    tracing::warn!(
        path = %path.display(),
        offset = damage.offset,
        reason = %damage.reason,
        segments_removed = rest.len() - 1,
        next = recovered.next,
        "repaired mid-log corruption by truncating the log; later records are gone"
    );
    recovered.repaired = Some(Repaired {
        path: path.clone(),
        offset: damage.offset,
        reason: damage.reason,
        segments_removed: rest.len() - 1,
    });
    Ok(())
}

fn report_torn(
    stats: &LogStats,
    path: &Path,
    offset: u64,
    bytes_dropped: u64,
    recovered: &mut Recovered,
) {
    stats.torn_tails_truncated.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        path = %path.display(),
        offset,
        bytes_dropped,
        "truncated a torn tail left by an interrupted write"
    );
    recovered.torn_tail = Some(TornTail {
        path: path.to_owned(),
        offset,
        bytes_dropped,
    });
}

fn truncate(path: &Path, len: u64, sync: bool) -> Result<(), LogError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| LogError::io(path, e))?;
    file.set_len(len).map_err(|e| LogError::io(path, e))?;
    if sync {
        file.sync_all().map_err(|e| LogError::io(path, e))?;
    }
    Ok(())
}

fn file_len(path: &Path) -> Result<u64, LogError> {
    Ok(fs::metadata(path).map_err(|e| LogError::io(path, e))?.len())
}

/// `cut` for damage that makes a whole segment unusable (its header, or
/// where it sits in the sequence).
fn cut_whole(
    dir: &Path,
    options: &LogOptions,
    from: &[(Position, PathBuf)],
    first: Position,
    reason: String,
    recovered: &mut Recovered,
) -> Result<(), LogError> {
    let damage = Damage {
        offset: 0,
        reason,
        whole_file: true,
    };
    cut(dir, options, from, first, damage, recovered)
}

fn sync_dir_if(sync: bool, dir: &Path) -> Result<(), LogError> {
    if sync {
        segment::sync_dir(dir).map_err(|e| LogError::io(dir, e))?;
    }
    Ok(())
}
