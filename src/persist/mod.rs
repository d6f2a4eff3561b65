//! Everything eddy keeps on disk: snapshots of each model's learning state
//! (`snapshot`), the version high-water mark (`versions`), the durable
//! feedback log (`wal`), the one way a file is written (`atomic`), and the
//! lock that gives a model directory a single owner (`lock`).

pub mod atomic;
pub mod lock;
pub mod snapshot;
pub mod versions;
pub mod wal;

pub use atomic::write_atomic;
pub use lock::{DirLock, LockError};
pub use snapshot::{Snapshot, SnapshotFile, SnapshotMeta, SnapshotStore};
pub use versions::VersionFloor;
