//! Everything eddy keeps on disk: snapshots of each model's learning state
//! (`snapshot`), the version high-water mark (`versions`) and the durable
//! feedback log (`wal`).

pub mod snapshot;
pub mod versions;
pub mod wal;

pub use snapshot::{Snapshot, SnapshotFile, SnapshotMeta, SnapshotStore};
pub use versions::VersionFloor;
