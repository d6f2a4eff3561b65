//! `DirLock`: one owner per model directory. `eddy serve` and `eddy train
//! --out` each hold it while they write a directory, so two processes never
//! number, write and prune snapshots in the same place at once.
//!
//! The lock is an exclusive advisory `flock(2)` on `dir/LOCK`, taken
//! without waiting: a second owner fails at once with `LockError::Held`,
//! naming the holder that the file records (its pid and what it is). The
//! kernel drops the lock when the holder's file is closed, including when
//! the process dies, so a crash never leaves a directory locked; the stale
//! pid and name left in the file are simply overwritten by the next owner.
//!
//! The lock is taken with `std::fs::File::try_lock`, not `fd-lock`: fd-lock's
//! guard borrows its `RwLock`, so a value that owns both would have to refer
//! to itself, while std ties the lock to the `File` alone and releases it
//! when the `File` closes. On Linux both are the same `flock` call.
//!
//! What the lock does not do: keep out readers (`eddy snapshot inspect`,
//! `eddy eval --snapshot` read without it, as snapshots are replaced only by
//! rename), or protect against processes that are not eddy.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The lock file's name inside the model directory.
pub const LOCK_FILE: &str = "LOCK";

/// Exclusive ownership of a model directory, released on drop.
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    /// The open `LOCK` file. The lock belongs to this open file
    /// description, so it lasts exactly as long as this value: dropping
    /// the `File` closes it and the kernel releases the lock.
    _file: File,
}

#[derive(Debug, Error)]
pub enum LockError {
    #[error(
        "model directory {dir} is in use by another eddy process ({}); stop it first or use another storage.dir",
        describe(*.pid, .holder)
    )]
    Held {
        dir: PathBuf,
        /// The holder's pid, when its `LOCK` file records one (it is empty
        /// for the moment between a holder's lock and its write).
        pid: Option<u32>,
        /// What the holder said it is, e.g. `eddy serve`.
        holder: String,
    },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl DirLock {
    /// Takes `dir` (created if missing) for this process, recording `what`
    /// (e.g. `eddy serve`) for anyone who finds it taken.
    pub fn acquire(dir: &Path, what: &str) -> Result<DirLock, LockError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LockError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOCK_FILE);
        // Not truncated on open: until the lock is ours, the contents are
        // the holder's pid and name, which a refusal reports.
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        // std's `File::try_lock` (an exclusive, non-blocking flock) rather
        // than fd-lock: its guard borrows the lock, so it cannot be held
        // for a value's lifetime without a self-referential struct.
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let (pid, holder) = read_holder(&mut file);
                return Err(LockError::Held {
                    dir: dir.to_owned(),
                    pid,
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
        }
        // Rewritten in place rather than by `write_atomic`: a rename would
        // put a new, unlocked inode at `LOCK` for the next process to lock.
        let record = format!("{}\n{what}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(record.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(io(&path))?;
        Ok(DirLock {
            dir: dir.to_owned(),
            _file: file,
        })
    }

    /// The directory this lock owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The pid and name a `LOCK` file records (first and second line). What
/// cannot be read is reported as unknown rather than failing: the refusal
/// matters more than the details.
fn read_holder(file: &mut File) -> (Option<u32>, String) {
    let mut text = String::new();
    if file
        .rewind()
        .and_then(|()| file.read_to_string(&mut text))
        .is_err()
    {
        text.clear();
    }
    let mut lines = text.lines();
    let pid = lines.next().and_then(|l| l.trim().parse().ok());
    let holder = lines.next().map(str::trim).unwrap_or_default().to_owned();
    (pid, holder)
}

fn describe(pid: Option<u32>, holder: &str) -> String {
    let pid = pid.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}"));
    if holder.is_empty() {
        pid
    } else {
        format!("{pid}, {holder}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("demo");
        let first = DirLock::acquire(&model, "eddy serve").unwrap();
        assert_eq!(first.dir(), model);
        // A second open file description conflicts even in this process:
        // flock locks belong to the open file, not to the process.
        let e = DirLock::acquire(&model, "eddy train --out").unwrap_err();
        let me = std::process::id();
        assert!(
            matches!(&e, LockError::Held { dir, pid, holder }
                if dir == &model && *pid == Some(me) && holder == "eddy serve"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "model directory {} is in use by another eddy process (pid {me}, eddy serve); \
                 stop it first or use another storage.dir",
                model.display()
            )
        );
        drop(first);
        let second = DirLock::acquire(&model, "eddy train --out").unwrap();
        let record = std::fs::read_to_string(model.join(LOCK_FILE)).unwrap();
        assert_eq!(record, format!("{me}\neddy train --out\n"));
        drop(second);
        assert!(model.join(LOCK_FILE).exists(), "the lock file stays");
    }

    #[test]
    fn a_holder_that_recorded_nothing_is_reported_as_unknown() {
        let e = LockError::Held {
            dir: PathBuf::from("/x/y"),
            pid: None,
            holder: String::new(),
        };
        assert!(e.to_string().contains("(pid unknown)"), "{e}");
    }

    #[test]
    fn an_unusable_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"").unwrap();
        let model = file.join("demo");
        let e = DirLock::acquire(&model, "eddy serve").unwrap_err();
        assert!(
            matches!(&e, LockError::Io { path, .. } if path == &model),
            "{e:?}"
        );
        assert!(e.to_string().contains(&model.display().to_string()), "{e}");
    }
}
