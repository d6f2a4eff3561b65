//! `VersionFloor`: a per-model file recording the highest version number
//! that may have been published, so a version number is never reused, even
//! after a crash.
//!
//! Numbers are reserved in blocks: before publishing version `v` above the
//! reservation, the reservation is raised to `v + BLOCK` and made durable
//! (`atomic::write_atomic`: temp file, fsync, rename, fsync of the
//! directory). That is one small synchronous write per `BLOCK` publishes,
//! on the trainer's thread. After a crash the next process starts above
//! the reservation; after a clean shutdown the reservation is lowered to
//! the last version actually published, so versions continue without a
//! gap.

use std::path::{Path, PathBuf};

/// Versions reserved per durable write.
pub const BLOCK: u64 = 1000;
const FILE: &str = "versions";

#[derive(Debug)]
pub struct VersionFloor {
    path: PathBuf,
    /// Every version up to this may have been published.
    reserved: u64,
}

impl VersionFloor {
    /// Opens (or starts) the record in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(FILE);
        let reserved = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: not a version number: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(Self { path, reserved })
    }

    /// The highest version that may have been published before now.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Makes sure `version` is covered by a durable reservation.
    pub fn reserve(&mut self, version: u64) -> std::io::Result<()> {
        if version > self.reserved {
            self.store(version.saturating_add(BLOCK))?;
        }
        Ok(())
    }

    /// Lowers the reservation to `last` at a clean shutdown.
    pub fn settle(&mut self, last: u64) -> std::io::Result<()> {
        self.store(last)
    }

    fn store(&mut self, value: u64) -> std::io::Result<()> {
        super::write_atomic(&self.path, format!("{value}\n").as_bytes())?;
        self.reserved = value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_survive_reopening_and_settle_lowers_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = VersionFloor::open(dir.path()).unwrap();
        assert_eq!(f.reserved(), 0);
        f.reserve(1).unwrap();
        assert_eq!(f.reserved(), 1 + BLOCK);
        f.reserve(BLOCK).unwrap();
        assert_eq!(f.reserved(), 1 + BLOCK, "inside the block: no write");
        assert_eq!(
            VersionFloor::open(dir.path()).unwrap().reserved(),
            1 + BLOCK
        );
        f.settle(42).unwrap();
        assert_eq!(VersionFloor::open(dir.path()).unwrap().reserved(), 42);
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        assert!(VersionFloor::open(dir.path()).is_err());
    }
}
