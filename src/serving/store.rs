//! `ModelStore`: the live model version behind `ArcSwap`, plus a short ring
//! of recent versions.
//!
//! Readers (`live`) never lock: they load an `Arc` of an immutable
//! `ModelVersion`. Writers (`publish`, and rollback in a later issue) take
//! a short `std::sync::Mutex` so version numbers are handed out in order
//! and only ever increase. `VersionSink` is the narrow seam the trainer
//! publishes through, so versions can later go to replicas instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::learn::Params;
use crate::persist::VersionFloor;

/// Recent versions kept in memory.
const RECENT_VERSIONS: usize = 8;

/// One immutable, published model.
#[derive(Debug)]
pub struct ModelVersion {
    /// Increases by one per publish, starting at 1 for a fresh model.
    pub version: u64,
    pub params: Params,
    pub published_at: SystemTime,
    /// Examples learned into these weights since the model was created.
    pub examples_trained: u64,
    /// Feedback position included: the count of feedback items the trainer
    /// had taken from its queue when this version was cut.
    pub feedback_position: u64,
    /// Set when this version restores older weights: the live version it
    /// replaced (versions only go up, so a rollback is a new version).
    pub rolled_back_from: Option<u64>,
}

/// What a publisher says about a new version.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishMeta {
    pub examples_trained: u64,
    pub feedback_position: u64,
    pub rolled_back_from: Option<u64>,
}

/// Where new versions go.
pub trait VersionSink: Send + Sync {
    /// Makes `params` the live model and returns its version. Fails only if
    /// the version number could not be reserved durably; the live model is
    /// then unchanged.
    fn publish(&self, params: Params, meta: PublishMeta) -> std::io::Result<Arc<ModelVersion>>;

    /// Makes `params` the live model as `version`, a number this model
    /// published before for exactly these weights (replaying the feedback
    /// log re-publishes what a crash took from memory). It must be above
    /// the live version.
    fn publish_as(
        &self,
        params: Params,
        meta: PublishMeta,
        version: u64,
    ) -> std::io::Result<Arc<ModelVersion>>;
}

#[derive(Debug)]
pub struct ModelStore {
    /// The version predict reads; swapped atomically.
    live: ArcSwap<ModelVersion>,
    /// Serialises writers.
    writer: Mutex<Writer>,
}

#[derive(Debug)]
struct Writer {
    /// Recent versions, newest last.
    recent: VecDeque<Arc<ModelVersion>>,
    /// Durable record of used version numbers; `None` in memory-only use.
    floor: Option<VersionFloor>,
    /// Every number up to this may have been used by a process that
    /// crashed (for weights that may never be reproduced): new versions go
    /// above it. 0 after a clean stop.
    used_before: u64,
}

impl ModelStore {
    /// A memory-only store whose first live version is `params` as version 1.
    pub fn new(params: Params) -> Self {
        Self::with_first(params, 1, PublishMeta::default(), None)
    }

    /// A store backed by a version record whose first live version is
    /// `params` as `version` (the snapshot it was loaded from). New
    /// versions continue above every number an earlier process may have
    /// used: after a crash that is the record's reservation, so a number is
    /// never given to other weights than it had.
    pub fn open(
        params: Params,
        version: u64,
        meta: PublishMeta,
        mut floor: VersionFloor,
    ) -> std::io::Result<Self> {
        let used_before = floor.reserved();
        floor.reserve(version)?;
        let store = Self::with_first(params, version, meta, Some(floor));
        store.lock().used_before = used_before;
        Ok(store)
    }

    fn with_first(
        params: Params,
        version: u64,
        meta: PublishMeta,
        floor: Option<VersionFloor>,
    ) -> Self {
        let first = Arc::new(ModelVersion {
            version,
            params,
            published_at: SystemTime::now(),
            examples_trained: meta.examples_trained,
            feedback_position: meta.feedback_position,
            rolled_back_from: meta.rolled_back_from,
        });
        Self {
            live: ArcSwap::new(first.clone()),
            writer: Mutex::new(Writer {
                recent: VecDeque::from([first]),
                floor,
                used_before: 0,
            }),
        }
    }

    /// At a clean shutdown: records the last published version as the
    /// highest used, so the next start continues right after it.
    pub fn settle(&self) -> std::io::Result<()> {
        let mut w = self.lock();
        let last = w.recent.back().map_or(0, |v| v.version);
        match &mut w.floor {
            Some(floor) => floor.settle(last),
            None => Ok(()),
        }
    }

    /// The live version. Cheap and lock-free; hold it only as long as needed.
    #[inline]
    pub fn live(&self) -> Arc<ModelVersion> {
        self.live.load_full()
    }

    /// A lock-free guard for one short synchronous read (the predict path).
    #[inline]
    pub fn guard(&self) -> arc_swap::Guard<Arc<ModelVersion>> {
        self.live.load()
    }

    /// Versions still held in memory, oldest first.
    pub fn recent(&self) -> Vec<Arc<ModelVersion>> {
        self.lock().recent.iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A panic while holding this lock leaves the ring intact (every
        // mutation is a single push or pop), so poisoning carries no meaning.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ModelStore {
    fn install(
        &self,
        w: &mut Writer,
        version: u64,
        params: Params,
        meta: PublishMeta,
    ) -> std::io::Result<Arc<ModelVersion>> {
        if let Some(floor) = &mut w.floor {
            floor.reserve(version)?;
        }
        let next = Arc::new(ModelVersion {
            version,
            params,
            published_at: SystemTime::now(),
            examples_trained: meta.examples_trained,
            feedback_position: meta.feedback_position,
            rolled_back_from: meta.rolled_back_from,
        });
        self.live.store(next.clone());
        w.recent.push_back(next.clone());
        while w.recent.len() > RECENT_VERSIONS {
            w.recent.pop_front();
        }
        Ok(next)
    }
}

impl VersionSink for ModelStore {
    fn publish(&self, params: Params, meta: PublishMeta) -> std::io::Result<Arc<ModelVersion>> {
        let mut w = self.lock();
        let last = w.recent.back().map_or(0, |v| v.version);
        let version = last.max(w.used_before) + 1;
        self.install(&mut w, version, params, meta)
    }

    fn publish_as(
        &self,
        params: Params,
        meta: PublishMeta,
        version: u64,
    ) -> std::io::Result<Arc<ModelVersion>> {
        let mut w = self.lock();
        let last = w.recent.back().map_or(0, |v| v.version);
        if version <= last {
            return Err(std::io::Error::other(format!(
                "version {version} is not above the live version {last}"
            )));
        }
        self.install(&mut w, version, params, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{LabelSpace, TaskKind};

    #[test]
    fn versions_increase_by_one_and_readers_keep_theirs() {
        let space = Arc::new(LabelSpace::new(TaskKind::Binary, vec![]).unwrap());
        let store = ModelStore::new(Params::new(space.clone(), 8));
        let held = store.live();
        assert_eq!(held.version, 1);
        let meta = PublishMeta {
            examples_trained: 5,
            feedback_position: 5,
            rolled_back_from: None,
        };
        for want in 2..20 {
            assert_eq!(
                store
                    .publish(Params::new(space.clone(), 8), meta)
                    .unwrap()
                    .version,
                want
            );
        }
        assert_eq!(store.live().version, 19);
        assert_eq!(held.version, 1, "a reader's version never changes under it");
        let recent: Vec<u64> = store.recent().iter().map(|v| v.version).collect();
        assert_eq!(recent, (12..20).collect::<Vec<_>>());
    }

    #[test]
    fn numbers_used_before_a_crash_are_never_reused() {
        let space = Arc::new(LabelSpace::new(TaskKind::Binary, vec![]).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let meta = PublishMeta::default();
        let open = |version| {
            ModelStore::open(
                Params::new(space.clone(), 8),
                version,
                meta,
                VersionFloor::open(dir.path()).unwrap(),
            )
            .unwrap()
        };
        let store = open(1);
        for _ in 0..5 {
            store.publish(Params::new(space.clone(), 8), meta).unwrap();
        }
        assert_eq!(store.live().version, 6);
        drop(store); // a crash: no settle
        let after_crash = open(3);
        assert_eq!(after_crash.live().version, 3, "the snapshot's own number");
        after_crash
            .publish_as(Params::new(space.clone(), 8), meta, 4)
            .expect("a replayed version keeps its number");
        after_crash
            .publish(Params::new(space.clone(), 8), meta)
            .unwrap();
        assert!(
            after_crash.live().version > 6,
            "new versions go above every number used before the crash: {}",
            after_crash.live().version
        );
        assert!(
            after_crash
                .publish_as(Params::new(space.clone(), 8), meta, 5)
                .is_err(),
            "never down"
        );
        let last = after_crash.live().version;
        after_crash.settle().unwrap();
        assert_eq!(
            open(last).live().version,
            last,
            "a clean restart continues at the same number"
        );
    }
}
