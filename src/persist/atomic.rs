//! The one way eddy writes a file: `write_atomic` (temp file in the same
//! directory, fsync, rename over the target, fsync of the directory), so a
//! crash part-way leaves either the old contents or the new, never a torn
//! file. Every file eddy keeps under its storage directory goes through
//! it; the `LOCK` file is the one exception (see `lock`), because the lock
//! lives on its inode. Reports the user names (`eddy eval --plot`) are
//! written where and how the user asked.
//!
//! `remove_stale_temps` clears the temp files a crash left behind. It only
//! knows names; calling it while another process may be writing into the
//! same directory (that is, without holding its `DirLock`) is the caller's
//! mistake, since it would delete that writer's temp file.

use std::io::Write;
use std::path::Path;

/// Prefix of every temp file `write_atomic` creates. The leading dot keeps
/// it out of `ls` and out of every name pattern eddy reads (`snapshot-*`).
pub const TEMP_PREFIX: &str = ".eddy-tmp-";

/// Writes `bytes` to `path` atomically and durably, creating the parent
/// directory if it is missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent(path);
    std::fs::create_dir_all(dir)?;
    // The temp file must be in the target's directory: a rename is atomic
    // only within one file system.
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)?.sync_all()
}

/// Deletes the temp files a crash left in `dir` (this module's, and the
/// names earlier eddy builds used) and returns how many. A missing `dir`
/// holds none. The caller must own `dir` (hold its `DirLock`).
pub fn remove_stale_temps(dir: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let is_stale = entry.file_name().to_str().is_some_and(is_temp_name);
        if !is_stale || !entry.file_type()?.is_file() {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            // Gone already: someone else cleaned up, which is what we wanted.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// `path`'s directory; a bare file name lives in the current directory.
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temp file name of this module or of an earlier eddy build:
/// `SnapshotStore` used `.snapshot-*.tmp`, and `VersionFloor` used
/// tempfile's default, `.tmp` plus six random alphanumerics. The last
/// pattern is kept that narrow so no file a user put there matches it.
fn is_temp_name(name: &str) -> bool {
    let legacy_default = name
        .strip_prefix(".tmp")
        .is_some_and(|rest| rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
    name.starts_with(TEMP_PREFIX)
        || (name.starts_with(".snapshot-") && name.ends_with(".tmp"))
        || legacy_default
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_creates_the_directory_and_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/deeper/file");
        write_atomic(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        write_atomic(&path, b"").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["file"], "no temp file left behind");
    }

    #[test]
    fn stale_temps_are_removed_and_real_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let stale = [".eddy-tmp-a1B2c3", ".snapshot-xyz.tmp", ".tmpAb12Z9"];
        let kept = [
            "snapshot-00000000000000000001.eddy",
            "versions",
            "LOCK",
            ".tmp",
            ".tmp-longer-name",
            "tmp123456",
            "notes.tmp",
        ];
        for name in stale.iter().chain(&kept) {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        // A directory with a temp-like name is not ours to delete.
        std::fs::create_dir(dir.path().join(".eddy-tmp-dir")).unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), stale.len());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut expected: Vec<&str> = kept.to_vec();
        expected.push(".eddy-tmp-dir");
        expected.sort();
        assert_eq!(left, expected);
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 0);
        assert_eq!(remove_stale_temps(&dir.path().join("missing")).unwrap(), 0);
    }
}
