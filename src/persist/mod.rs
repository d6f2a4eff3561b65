//! Everything eddy keeps on disk. Today: snapshots of each model's learning
//! state (`snapshot`) and the version high-water mark (`versions`).

pub mod snapshot;
pub mod versions;

pub use snapshot::{Snapshot, SnapshotFile, SnapshotMeta, SnapshotStore};
pub use versions::VersionFloor;
