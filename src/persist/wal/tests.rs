//! Tests for the feedback log against real files in temp directories:
//! round trips across segment rolls, ordering of `then`, torn tails at every
//! offset, mid-log corruption and repair, newer formats, group commit,
//! trimming and archives, and a full disk (on a small tmpfs, when mounting
//! is permitted).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn options(fsync: Fsync, segment_bytes: u64) -> LogOptions {
    LogOptions {
        fsync,
        fsync_interval: Duration::from_millis(5),
        segment_bytes,
        repair: false,
        archive_dir: None,
    }
}

/// A distinct payload of varying length for record `i`.
fn payload(i: u64) -> Vec<u8> {
    let len = (i % 13) as usize + 1;
    (0..len)
        .map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8))
        .collect()
}

fn append(log: &LocalLog, records: &[Vec<u8>]) -> Result<Appended, LogError> {
    log.append(Append::new(&mut RecordBatch::of(records)), &mut |_| {})
}

fn read_all(log: &LocalLog, from: Position) -> Vec<(Position, Vec<u8>)> {
    log.read_from(from)
        .expect("read_from")
        .collect::<Result<Vec<_>, _>>()
        .expect("every record reads back")
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths
}

/// Appends records `start..start + n` one batch of up to three at a time.
fn fill(log: &LocalLog, start: Position, n: u64) -> Vec<(Position, Vec<u8>)> {
    let mut expected = Vec::new();
    let mut i = start;
    while i < start + n {
        let batch: Vec<Vec<u8>> = (i..(i + 1 + i % 3).min(start + n)).map(payload).collect();
        let appended = append(log, &batch).unwrap();
        assert_eq!(appended.first, i);
        for record in batch {
            expected.push((i, record));
            i += 1;
        }
        assert_eq!(appended.end, i);
    }
    expected
}

fn flip_bit(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x10;
    fs::write(path, bytes).unwrap();
}

#[test]
fn round_trip_across_rolls_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let (log, report) = LocalLog::open(&dir, options(Fsync::Never, 200), 100).unwrap();
    assert_eq!((report.first, report.next, report.segments), (100, 100, 1));
    assert!(report.torn_tail.is_none() && report.repaired.is_none());
    let mut expected = fill(&log, 100, 60);
    assert!(segment_paths(&dir).len() >= 4, "small segments roll");
    assert_eq!(
        segment_paths(&dir)[0].file_name().unwrap(),
        "00000000000000000100.wal"
    );
    assert_eq!(read_all(&log, 100), expected);
    assert_eq!(read_all(&log, 137), expected[37..]);
    assert!(read_all(&log, 160).is_empty());
    drop(log);

    // start_at only applies to a new log.
    let (log, report) = LocalLog::open(&dir, options(Fsync::Always, 200), 0).unwrap();
    assert_eq!((report.first, report.next), (100, 160));
    assert!(report.torn_tail.is_none());
    assert_eq!((log.first_position(), log.next_position()), (100, 160));
    expected.extend(fill(&log, 160, 10));
    assert_eq!(read_all(&log, 100), expected);
}

#[test]
fn then_runs_in_log_order_under_concurrency() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = LocalLog::open(tmp.path(), options(Fsync::Never, 4096), 7).unwrap();
    let log = Arc::new(log);
    let order = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (log, order) = (Arc::clone(&log), Arc::clone(&order));
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let batch: Vec<Vec<u8>> =
                        (0..=(t + i) % 4).map(|k| payload(t * 1000 + k)).collect();
                    let n = batch.len() as u64;
                    log.append(Append::new(&mut RecordBatch::of(&batch)), &mut |first| {
                        order.lock().unwrap().push((first, n));
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let order = order.lock().unwrap();
    assert_eq!(order.len(), 400);
    let mut next = 7;
    for &(first, n) in order.iter() {
        assert_eq!(first, next, "then is called in position order");
        next += n;
    }
    assert_eq!(log.next_position(), next);
    assert_eq!(read_all(&log, 7).len() as u64, next - 7);
}

/// Writes five records with `Never` and returns the last segment with the
/// byte offsets where the last record starts and ends.
fn five_records(dir: &Path) -> (PathBuf, u64, u64, Vec<(Position, Vec<u8>)>) {
    let (log, _) = LocalLog::open(dir, options(Fsync::Never, 1 << 20), 10).unwrap();
    let expected = fill(&log, 10, 4);
    let path = segment_paths(dir).pop().unwrap();
    let before = fs::metadata(&path).unwrap().len();
    append(&log, &[b"the last record, torn at every byte".to_vec()]).unwrap();
    let after = fs::metadata(&path).unwrap().len();
    (path, before, after, expected)
}

#[test]
fn torn_tail_is_truncated_at_every_offset() {
    let probe = tempfile::tempdir().unwrap();
    let (_, start, end, _) = five_records(probe.path());
    for cut in start..end {
        let tmp = tempfile::tempdir().unwrap();
        let (path, _, _, expected) = five_records(tmp.path());
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (log, report) = LocalLog::open(tmp.path(), options(Fsync::Never, 1 << 20), 0).unwrap();
        if cut == start {
            assert!(report.torn_tail.is_none(), "a cut between records is clean");
        } else {
            let torn = report.torn_tail.expect("torn tail reported");
            assert_eq!(
                (torn.path, torn.offset, torn.bytes_dropped),
                (path.clone(), start, cut - start)
            );
            assert_eq!(log.stats().torn_tails_truncated.load(Ordering::Relaxed), 1);
        }
        assert_eq!(fs::metadata(&path).unwrap().len(), start);
        assert_eq!(read_all(&log, 10), expected);
        assert_eq!(append(&log, &[b"next".to_vec()]).unwrap().first, 14);
    }
}

#[test]
fn zero_tail_and_checksum_at_end_are_torn() {
    // Zero bytes past the last whole record (a file extended but never
    // written, as after a crash on some file systems).
    let tmp = tempfile::tempdir().unwrap();
    let (path, _, end, mut expected) = five_records(tmp.path());
    expected.push((14, b"the last record, torn at every byte".to_vec()));
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend([0u8; 100]);
    fs::write(&path, &bytes).unwrap();
    let (log, report) = LocalLog::open(tmp.path(), options(Fsync::Never, 1 << 20), 0).unwrap();
    let torn = report.torn_tail.unwrap();
    assert_eq!((torn.offset, torn.bytes_dropped), (end, 100));
    assert_eq!(read_all(&log, 10), expected);
    drop(log);

    // A bad checksum on a record that ends exactly at the end of the file.
    let tmp = tempfile::tempdir().unwrap();
    let (path, start, end, expected) = five_records(tmp.path());
    flip_bit(&path, end - 1);
    let (log, report) = LocalLog::open(tmp.path(), options(Fsync::Never, 1 << 20), 0).unwrap();
    assert_eq!(report.torn_tail.unwrap().offset, start);
    assert_eq!(read_all(&log, 10), expected);
}

/// A log of several segments (`Never`, small segments) holding 40 records.
fn segmented(dir: &Path) -> Vec<(Position, Vec<u8>)> {
    let (log, _) = LocalLog::open(dir, options(Fsync::Never, 160), 0).unwrap();
    let expected = fill(&log, 0, 40);
    assert!(segment_paths(dir).len() >= 4);
    expected
}

/// Byte offset and position of the `nth` record in a segment file.
fn record_offset(path: &Path, nth: usize) -> (u64, Position) {
    let bytes = fs::read(path).unwrap();
    let first = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
    let mut offset = 24usize;
    for _ in 0..nth {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 8 + len;
    }
    (offset as u64, first + nth as u64)
}

#[test]
fn mid_log_corruption_is_refused_then_repaired() {
    for in_last_segment in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let expected = segmented(tmp.path());
        let paths = segment_paths(tmp.path());
        // In the last segment, the first record (more follow it); otherwise
        // the last record of the second segment (the next segment follows).
        let (path, nth) = if in_last_segment {
            (paths.last().unwrap().clone(), 0)
        } else {
            let path = paths[1].clone();
            let n = (paths[2].file_name().unwrap().to_str().unwrap()[..20]
                .parse::<u64>()
                .unwrap()
                - record_offset(&path, 0).1) as usize;
            (path, n - 1)
        };
        let (offset, position) = record_offset(&path, nth);
        flip_bit(&path, offset + 8);

        let err = LocalLog::open(tmp.path(), options(Fsync::Never, 160), 0).unwrap_err();
        let LogError::Corrupt {
            path: at,
            offset: at_offset,
            ..
        } = &err
        else {
            panic!("expected corruption, got {err:?}");
        };
        assert_eq!((at, *at_offset), (&path, offset));
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&format!("byte {offset}")), "{message}");
        assert!(message.contains("--repair"), "{message}");

        let mut repair = options(Fsync::Never, 160);
        repair.repair = true;
        let (log, report) = LocalLog::open(tmp.path(), repair, 0).unwrap();
        let repaired = report.repaired.expect("repair reported");
        assert_eq!((repaired.path, repaired.offset), (path.clone(), offset));
        assert_eq!(
            repaired.segments_removed,
            paths.len() - 1 - paths.iter().position(|p| *p == path).unwrap()
        );
        assert_eq!(log.next_position(), position);
        assert_eq!(read_all(&log, 0), expected[..position as usize]);
        assert_eq!(
            append(&log, &[b"after repair".to_vec()]).unwrap().first,
            position
        );
    }
}

#[test]
fn gap_between_segments_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = segmented(tmp.path());
    let paths = segment_paths(tmp.path());
    fs::remove_file(&paths[2]).unwrap();
    let err = LocalLog::open(tmp.path(), options(Fsync::Never, 160), 0).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { path, reason, .. } if *path == paths[3] && reason.contains("gap")),
        "{err:?}"
    );
    let mut repair = options(Fsync::Never, 160);
    repair.repair = true;
    let (log, report) = LocalLog::open(tmp.path(), repair, 0).unwrap();
    assert!(report.repaired.is_some());
    let kept = read_all(&log, 0);
    assert_eq!(kept, expected[..kept.len()]);
    assert_eq!(segment_paths(tmp.path()), paths[..2]);
}

#[test]
fn newer_format_is_refused_even_with_repair() {
    let tmp = tempfile::tempdir().unwrap();
    segmented(tmp.path());
    let path = segment_paths(tmp.path())[1].clone();
    let mut bytes = fs::read(&path).unwrap();
    let newer = FORMAT_VERSION + 1;
    bytes[8..12].copy_from_slice(&newer.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    for repair in [false, true] {
        let mut opts = options(Fsync::Never, 160);
        opts.repair = repair;
        let err = LocalLog::open(tmp.path(), opts, 0).unwrap_err();
        assert!(
            matches!(&err, LogError::NewerFormat { path: p, found, supported: FORMAT_VERSION }
                if *p == path && *found == newer),
            "{err:?}"
        );
        assert!(err.to_string().contains("written by a newer eddy"), "{err}");
    }
    assert_eq!(fs::read(&path).unwrap(), bytes, "nothing was truncated");
    assert_eq!(
        segment_paths(tmp.path()).len(),
        4.max(segment_paths(tmp.path()).len())
    );
}

#[test]
fn bad_header_checksum_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    segmented(tmp.path());
    let path = segment_paths(tmp.path())[0].clone();
    flip_bit(&path, 14);
    let err = LocalLog::open(tmp.path(), options(Fsync::Never, 160), 0).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { offset: 0, .. }),
        "{err:?}"
    );
    let mut repair = options(Fsync::Never, 160);
    repair.repair = true;
    let (log, report) = LocalLog::open(tmp.path(), repair, 0).unwrap();
    assert!(report.repaired.is_some());
    assert_eq!((log.first_position(), log.next_position()), (0, 0));
}

#[test]
fn stray_temp_files_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("00000000000000000005.wal.tmp"), b"EDDY").unwrap();
    let (log, report) = LocalLog::open(tmp.path(), options(Fsync::Never, 160), 5).unwrap();
    assert_eq!(report.next, 5);
    assert!(!tmp.path().join("00000000000000000005.wal.tmp").exists());
    drop(log);
}

#[test]
fn fencing_and_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = LocalLog::open(tmp.path(), options(Fsync::Never, 1 << 20), 3).unwrap();
    let mut records = RecordBatch::of([b"a", b"b"]);
    let err = log
        .append(
            Append {
                records: &mut records,
                key: Some(b"key".as_slice()),
                expect_next: Some(4),
            },
            &mut |_| panic!("no write, no callback"),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Conflict {
                expected: 4,
                actual: 3
            }
        ),
        "{err:?}"
    );
    let fenced = Append {
        records: &mut records,
        key: Some(b"key".as_slice()),
        expect_next: Some(3),
    };
    assert_eq!(
        log.append(fenced, &mut |_| {}).unwrap(),
        Appended { first: 3, end: 5 }
    );
    let big = vec![vec![0u8; MAX_RECORD_BYTES as usize + 1]];
    let err = append(&log, &big).unwrap_err();
    assert!(matches!(err, LogError::TooLarge { .. }), "{err:?}");
    assert_eq!(log.next_position(), 5);
    assert_eq!(log.stats().records_appended.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn always_shares_fsyncs_between_concurrent_appenders() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = LocalLog::open(tmp.path(), options(Fsync::Always, 1 << 20), 0).unwrap();
    let log = Arc::new(log);
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                for i in 0..4 {
                    let appended = append(&log, &[payload(t * 100 + i)]).unwrap();
                    log.durable(appended.end).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let fsyncs = log.stats().fsyncs.load(Ordering::Relaxed);
    // Appenders arriving during an fsync share the next one.
    assert!(fsyncs < 64, "group commit: {fsyncs} fsyncs for 64 appends");
    assert_eq!(log.next_position(), 64);
    log.durable(64).await.unwrap();
    log.sync().unwrap();
}

#[tokio::test]
async fn failed_fsync_poisons_the_log_for_good() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = LocalLog::open(tmp.path(), options(Fsync::Always, 1 << 20), 0).unwrap();
    let synced = append(&log, &[b"durable".to_vec()]).unwrap().end;
    log.durable(synced).await.unwrap();

    log.fail_fsyncs();
    let log: Arc<dyn FeedbackLog> = Arc::new(log);
    let end = log
        .append(Append::new(&mut RecordBatch::of([b"lost?"])), &mut |_| {})
        .unwrap()
        .end;
    let err = log.durable(end).await.unwrap_err();
    assert!(matches!(err, LogError::Poisoned), "{err:?}");
    let stats = log.stats();
    assert!(stats.poisoned.load(Ordering::Relaxed));
    assert_eq!(stats.fsync_failures.load(Ordering::Relaxed), 1);

    // Never retried: writes and syncs refuse, waiters for unsynced records
    // fail, and what was already durable stays so.
    let err = log
        .append(Append::new(&mut RecordBatch::of([b"more"])), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, LogError::Poisoned), "{err:?}");
    assert!(matches!(log.sync(), Err(LogError::Poisoned)));
    assert!(matches!(log.durable(end).await, Err(LogError::Poisoned)));
    log.durable(synced).await.unwrap();
    assert_eq!(stats.fsync_failures.load(Ordering::Relaxed), 1);
    assert_eq!(log.next_position(), end);
    drop(log);

    // A restart replays what reached the disk.
    let (log, report) = LocalLog::open(tmp.path(), options(Fsync::Always, 1 << 20), 0).unwrap();
    assert!(report.next >= synced);
    assert!(!log.stats().poisoned.load(Ordering::Relaxed));
    append(&log, &[b"after restart".to_vec()]).unwrap();
}

#[tokio::test]
async fn interval_and_never_resolve_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = LocalLog::open(tmp.path(), options(Fsync::Interval, 1 << 20), 0).unwrap();
    let end = append(&log, &[b"x".to_vec()]).unwrap().end;
    log.durable(end).await.unwrap();
    // The sync thread catches up within a few intervals.
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.stats().fsyncs.load(Ordering::Relaxed) < 1 {
        assert!(Instant::now() < deadline, "interval fsync never ran");
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(log);

    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = LocalLog::open(tmp.path(), options(Fsync::Never, 1 << 20), 0).unwrap();
    let end = append(&log, &[b"x".to_vec()]).unwrap().end;
    log.durable(end).await.unwrap();
    assert_eq!(log.stats().fsyncs.load(Ordering::Relaxed), 0);
    log.sync().unwrap();
    assert_eq!(log.stats().fsyncs.load(Ordering::Relaxed), 1);
}

#[test]
fn trim_archives_segments_for_read_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let archive = tmp.path().join("archive");
    let mut opts = options(Fsync::Never, 160);
    opts.archive_dir = Some(archive.clone());
    let (log, _) = LocalLog::open(&dir, opts.clone(), 0).unwrap();
    let expected = fill(&log, 0, 40);
    let before = segment_paths(&dir).len();
    assert_eq!(log.trim_before(0).unwrap(), 0);
    let trimmed = log.trim_before(20).unwrap();
    assert!(trimmed >= 1);
    assert_eq!(segment_paths(&dir).len(), before - trimmed);
    assert_eq!(segment_paths(&archive).len(), trimmed);
    let first = log.first_position();
    assert!(first > 0 && first <= 20, "first {first}");
    assert_eq!(
        log.stats().segments_trimmed.load(Ordering::Relaxed),
        trimmed as u64
    );

    let err = log.read_from(first - 1).err().expect("trimmed");
    assert!(
        matches!(err, LogError::Trimmed { requested, first: f } if requested == first - 1 && f == first)
    );
    assert_eq!(read_all(&log, first), expected[first as usize..]);
    let archived: Vec<_> = read_dir(&archive)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(archived, expected[..first as usize]);

    // Trimming never removes the current segment, and reopening agrees.
    log.trim_before(u64::MAX).unwrap();
    assert_eq!(segment_paths(&dir).len(), 1);
    let first = log.first_position();
    drop(log);
    let (log, report) = LocalLog::open(&dir, opts, 0).unwrap();
    assert_eq!((report.first, report.next), (first, 40));
    assert_eq!(read_all(&log, first), expected[first as usize..]);
}

#[test]
fn read_dir_reports_gaps_and_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = segmented(tmp.path());
    let paths = segment_paths(tmp.path());
    fs::remove_file(&paths[1]).unwrap();
    let items: Vec<_> = read_dir(tmp.path()).unwrap().collect();
    let gap = items
        .iter()
        .position(Result::is_err)
        .expect("a gap is reported");
    let err = items[gap].as_ref().unwrap_err();
    assert!(
        matches!(err, LogError::Gap { path, .. } if *path == paths[2]),
        "{err:?}"
    );
    assert!(err.to_string().contains("are missing"), "{err}");
    let records: Vec<_> = items.into_iter().filter_map(Result::ok).collect();
    let missing = expected.iter().filter(|r| !records.contains(r)).count();
    assert!(missing > 0 && records.iter().all(|r| expected.contains(r)));
    assert_eq!(records.last(), expected.last());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn truncation_leaves_an_exact_prefix(
        batches in prop::collection::vec(
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..5),
            1..20,
        ),
        segment_bytes in 64u64..400,
        cut in 0.0f64..1.0,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = LocalLog::open(tmp.path(), options(Fsync::Never, segment_bytes), 1).unwrap();
        let mut appended = Vec::new();
        for batch in &batches {
            let done = append(&log, batch).unwrap();
            appended.extend((done.first..done.end).zip(batch.iter().cloned()));
        }
        drop(log);
        let last = segment_paths(tmp.path()).pop().unwrap();
        let len = fs::metadata(&last).unwrap().len();
        let keep = (len as f64 * cut) as u64;
        fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(keep).unwrap();

        let (log, report) = LocalLog::open(tmp.path(), options(Fsync::Never, segment_bytes), 1).unwrap();
        let read = read_all(&log, log.first_position());
        prop_assert!(read.len() <= appended.len());
        prop_assert_eq!(&read[..], &appended[..read.len()]);
        prop_assert_eq!(log.next_position(), 1 + read.len() as u64);
        prop_assert!(report.repaired.is_none());
        let again = append(&log, &[b"again".to_vec()]).unwrap();
        prop_assert_eq!(again.first, 1 + read.len() as u64);
    }
}

/// Unmounts the tmpfs on drop, even when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size` (e.g. "256k") on `at`, or says why not (mounting
/// needs root and a permissive container) and returns `None`.
fn mount_tmpfs(at: &Path, size: &str, test: &str) -> Option<Mounted> {
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={size}"))
        .arg("tmpfs")
        .arg(at)
        .output();
    match mounted {
        Ok(out) if out.status.success() => Some(Mounted(at.to_owned())),
        Ok(out) => {
            let why = String::from_utf8_lossy(&out.stderr);
            eprintln!("skipping {test}: mount failed: {}", why.trim());
            None
        }
        Err(e) => {
            eprintln!("skipping {test}: cannot run mount: {e}");
            None
        }
    }
}

#[test]
fn full_disk_cuts_back_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(_mount) = mount_tmpfs(tmp.path(), "256k", "full_disk_cuts_back_and_recovers") else {
        return;
    };
    let filler = tmp.path().join("filler");
    fs::write(&filler, vec![1u8; 64 << 10]).unwrap();
    let dir = tmp.path().join("wal");
    let (log, _) = LocalLog::open(&dir, options(Fsync::Always, 1 << 20), 0).unwrap();
    let mut expected = Vec::new();
    let err = loop {
        let record = vec![expected.len() as u8; 3000];
        match append(&log, std::slice::from_ref(&record)) {
            Ok(done) => expected.push((done.first, record)),
            Err(e) => break e,
        }
        assert!(expected.len() < 1000, "the tmpfs never filled up");
    };
    assert!(err.is_storage_full(), "{err:?}");
    assert!(!expected.is_empty());
    assert_eq!(log.stats().write_failures.load(Ordering::Relaxed), 1);
    assert!(!log.stats().poisoned.load(Ordering::Relaxed));
    let segment = segment_paths(&dir).pop().unwrap();
    let whole = 24 + expected.len() as u64 * (8 + 3000);
    assert_eq!(
        fs::metadata(&segment).unwrap().len(),
        whole,
        "cut back to whole records"
    );
    assert_eq!(read_all(&log, 0), expected);

    fs::remove_file(&filler).unwrap();
    let record = vec![0xAB; 3000];
    let done = append(&log, std::slice::from_ref(&record)).unwrap();
    assert_eq!(done.first, expected.len() as u64);
    expected.push((done.first, record));
    assert_eq!(read_all(&log, 0), expected);
    log.sync().unwrap();
    drop(log);
}

#[test]
fn trim_archives_across_file_systems() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    let Some(_mount) = mount_tmpfs(&archive, "1m", "trim_archives_across_file_systems") else {
        return;
    };
    let dir = tmp.path().join("wal");
    let mut opts = options(Fsync::Never, 160);
    opts.archive_dir = Some(archive.clone());
    let (log, _) = LocalLog::open(&dir, opts, 0).unwrap();
    let expected = fill(&log, 0, 40);
    // rename(2) fails with EXDEV here, so segments are copied and removed.
    let trimmed = log.trim_before(40).unwrap();
    assert_eq!(segment_paths(&archive).len(), trimmed);
    assert_eq!(segment_paths(&dir).len(), 1);
    let first = log.first_position() as usize;
    let archived: Vec<_> = read_dir(&archive)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(archived, expected[..first]);
    assert_eq!(read_all(&log, first as u64), expected[first..]);
    let leftovers = fs::read_dir(&archive).unwrap().count();
    assert_eq!(leftovers, trimmed, "no temp files left in the archive");
    drop(log);
}

#[test]
fn trim_without_archive_deletes_and_reads_stop_at_the_call() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = LocalLog::open(tmp.path(), options(Fsync::Never, 160), 0).unwrap();
    let mut expected = fill(&log, 0, 30);
    // A reader sees the log as of its call, whatever is appended meanwhile.
    let reader = log.read_from(0).unwrap();
    let later = fill(&log, 30, 10);
    assert_eq!(reader.collect::<Result<Vec<_>, _>>().unwrap(), expected);
    expected.extend(later);
    let before = segment_paths(tmp.path()).len();
    let trimmed = log.trim_before(25).unwrap();
    assert!(trimmed >= 1);
    assert_eq!(segment_paths(tmp.path()).len(), before - trimmed);
    let first = log.first_position();
    assert!(first <= 25);
    assert_eq!(read_all(&log, 25), expected[25..]);
}

/// A flipped bit that makes a record's length run past the end of the
/// file is not a torn tail when whole records follow it: start-up refuses
/// (nothing acknowledged is cut away), and repair keeps what came before.
#[test]
fn a_damaged_length_in_the_middle_is_not_taken_for_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = {
        let (log, _) = LocalLog::open(tmp.path(), options(Fsync::Never, 1 << 20), 0).unwrap();
        fill(&log, 0, 100)
    };
    let path = segment_paths(tmp.path()).pop().unwrap();
    let (offset, _) = record_offset(&path, 10);
    // The length's highest byte: now far past the end of the file.
    flip_bit(&path, offset + 3);
    let err = LocalLog::open(tmp.path(), options(Fsync::Never, 1 << 20), 0).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err:?}");
    let mut repair = options(Fsync::Never, 1 << 20);
    repair.repair = true;
    let (log, report) = LocalLog::open(tmp.path(), repair, 0).unwrap();
    assert!(report.torn_tail.is_none());
    assert_eq!(read_all(&log, 0), expected[..10]);
}

/// A power loss can leave the last pages of a write as zeros after an
/// intact header: nothing valid follows, so it is a torn tail, cut at the
/// first damaged record.
#[test]
fn zeros_over_the_last_records_are_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = {
        let (log, _) = LocalLog::open(tmp.path(), options(Fsync::Never, 1 << 20), 0).unwrap();
        fill(&log, 0, 40)
    };
    let path = segment_paths(tmp.path()).pop().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let len = bytes.len();
    bytes[len - 100..].fill(0);
    fs::write(&path, &bytes).unwrap();
    let (log, report) = LocalLog::open(tmp.path(), options(Fsync::Never, 1 << 20), 0).unwrap();
    assert!(report.torn_tail.is_some());
    let kept = read_all(&log, 0);
    assert!(!kept.is_empty() && kept.len() < expected.len());
    assert_eq!(kept, expected[..kept.len()]);
}

/// A log written by the previous release (format 1, position first in the
/// checksum) still opens and reads; this build goes on in a new segment of
/// its own format, and both read back, across a reopen too.
#[test]
fn a_format_1_log_reads_and_continues_in_a_new_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let old: Vec<Vec<u8>> = (5..9).map(payload).collect();
    let old_slices: Vec<&[u8]> = old.iter().map(Vec::as_slice).collect();
    segment::write_segment(
        &tmp.path().join(segment::segment_name(5)),
        1,
        5,
        &old_slices,
    );
    let (log, report) = LocalLog::open(tmp.path(), options(Fsync::Always, 1 << 20), 0).unwrap();
    assert_eq!((report.first, report.next, report.torn_tail), (5, 9, None));
    append(&log, &[payload(9), payload(10)]).unwrap();
    let expected: Vec<_> = (5..11).map(|i| (i, payload(i))).collect();
    assert_eq!(read_all(&log, 5), expected);
    drop(log);
    let paths = segment_paths(tmp.path());
    assert_eq!(
        paths.len(),
        2,
        "the new records went to a segment of their own"
    );
    let formats: Vec<u32> = paths
        .iter()
        .map(|p| segment::SegmentReader::open(p).unwrap().format())
        .collect();
    assert_eq!(formats, [1, FORMAT_VERSION]);
    let (log, report) = LocalLog::open(tmp.path(), options(Fsync::Always, 1 << 20), 0).unwrap();
    assert_eq!(report.next, 11);
    assert_eq!(read_all(&log, 5), expected);
    drop(log);
    let dir: Vec<_> = read_dir(tmp.path()).unwrap().map(Result::unwrap).collect();
    assert_eq!(dir, expected);
}

/// An empty format 1 segment (an old release's fresh log) is replaced by
/// one of this build's format at the same position.
#[test]
fn an_empty_format_1_segment_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(segment::segment_name(3));
    segment::write_segment(&path, 1, 3, &[]);
    let (log, _) = LocalLog::open(tmp.path(), options(Fsync::Always, 1 << 20), 0).unwrap();
    append(&log, &[payload(3)]).unwrap();
    drop(log);
    assert_eq!(segment_paths(tmp.path()), std::slice::from_ref(&path));
    assert_eq!(
        segment::SegmentReader::open(&path).unwrap().format(),
        FORMAT_VERSION
    );
    let dir: Vec<_> = read_dir(tmp.path()).unwrap().map(Result::unwrap).collect();
    assert_eq!(dir, [(3, payload(3))]);
}

/// Format 1 checksums still catch damage: a flipped payload byte in the
/// middle of an old log is corruption, never a valid record.
#[test]
fn a_format_1_checksum_still_catches_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(segment::segment_name(0));
    let old: Vec<Vec<u8>> = (0..3).map(payload).collect();
    let old_slices: Vec<&[u8]> = old.iter().map(Vec::as_slice).collect();
    segment::write_segment(&path, 1, 0, &old_slices);
    let mut bytes = fs::read(&path).unwrap();
    // The first record's first payload byte.
    let at = segment::HEADER_LEN as usize + segment::RECORD_HEADER_LEN as usize;
    bytes[at] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    let err = LocalLog::open(tmp.path(), options(Fsync::Never, 1 << 20), 0).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { offset, .. } if *offset == segment::HEADER_LEN),
        "{err:?}"
    );
}

/// The checksum of a format 2 record is crc32(payload ++ position),
/// computed in two halves around the order lock; a payload moved to
/// another position, or changed in any bit, fails it.
#[test]
fn format_2_frames_checksum_payload_then_position() {
    let payload = payload(7);
    let mut frame = [0u8; FRAME_LEN];
    segment::seal_frame(&mut frame, &payload, &crc32fast::Hasher::new());
    segment::finish_frame(&mut frame, 41);
    let mut whole = payload.clone();
    whole.extend_from_slice(&41u64.to_le_bytes());
    assert_eq!(frame[..4], (payload.len() as u32).to_le_bytes());
    assert_eq!(frame[4..], crc32fast::hash(&whole).to_le_bytes());
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    assert_eq!(segment::record_crc(FORMAT_VERSION, 41, &payload), crc);
    for position in [0, 1, 255, 1 << 40, u64::MAX] {
        segment::seal_frame(&mut frame, &payload, &crc32fast::Hasher::new());
        segment::finish_frame(&mut frame, position);
        let mut whole = payload.clone();
        whole.extend_from_slice(&position.to_le_bytes());
        assert_eq!(frame[4..], crc32fast::hash(&whole).to_le_bytes());
    }
    assert_ne!(segment::record_crc(FORMAT_VERSION, 42, &payload), crc);
    for bit in 0..payload.len() * 8 {
        let mut flipped = payload.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert_ne!(segment::record_crc(FORMAT_VERSION, 41, &flipped), crc);
    }
}

/// With `interval`, `durable` resolves at once, but after a failed fsync
/// it tells records an earlier fsync covered (still durable) from those it
/// did not (a retried request asks again long after its first answer).
#[tokio::test]
async fn interval_durable_after_a_failed_fsync_knows_what_was_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = LocalLog::open(tmp.path(), options(Fsync::Interval, 1 << 20), 0).unwrap();
    let synced = append(&log, &[b"synced".to_vec()]).unwrap().end;
    log.sync().unwrap();
    log.fail_fsyncs();
    let end = append(&log, &[b"lost?".to_vec()]).unwrap().end;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.stats().poisoned.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "the interval fsync never ran");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(matches!(log.durable(end).await, Err(LogError::Poisoned)));
    log.durable(synced).await.unwrap();
}
