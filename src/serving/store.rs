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
}

/// What a publisher says about a new version.
#[derive(Debug, Clone, Copy)]
pub struct PublishMeta {
    pub examples_trained: u64,
    pub feedback_position: u64,
}

/// Where new versions go.
pub trait VersionSink: Send + Sync {
    /// Makes `params` the live model and returns its version.
    fn publish(&self, params: Params, meta: PublishMeta) -> Arc<ModelVersion>;
}

#[derive(Debug)]
pub struct ModelStore {
    /// The version predict reads; swapped atomically.
    live: ArcSwap<ModelVersion>,
    /// Serialises writers; holds the recent versions, newest last.
    writer: Mutex<VecDeque<Arc<ModelVersion>>>,
}

impl ModelStore {
    /// A store whose first live version is `params` as version 1.
    pub fn new(params: Params) -> Self {
        let first = Arc::new(ModelVersion {
            version: 1,
            params,
            published_at: SystemTime::now(),
            examples_trained: 0,
            feedback_position: 0,
        });
        Self {
            live: ArcSwap::new(first.clone()),
            writer: Mutex::new(VecDeque::from([first])),
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
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<ModelVersion>>> {
        // A panic while holding this lock leaves the ring intact (every
        // mutation is a single push or pop), so poisoning carries no meaning.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl VersionSink for ModelStore {
    fn publish(&self, params: Params, meta: PublishMeta) -> Arc<ModelVersion> {
        let mut recent = self.lock();
        let last = recent.back().map_or(0, |v| v.version);
        let next = Arc::new(ModelVersion {
            version: last + 1,
            params,
            published_at: SystemTime::now(),
            examples_trained: meta.examples_trained,
            feedback_position: meta.feedback_position,
        });
        self.live.store(next.clone());
        recent.push_back(next.clone());
        while recent.len() > RECENT_VERSIONS {
            recent.pop_front();
        }
        next
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
        };
        for want in 2..20 {
            assert_eq!(
                store.publish(Params::new(space.clone(), 8), meta).version,
                want
            );
        }
        assert_eq!(store.live().version, 19);
        assert_eq!(held.version, 1, "a reader's version never changes under it");
        let recent: Vec<u64> = store.recent().iter().map(|v| v.version).collect();
        assert_eq!(recent, (12..20).collect::<Vec<_>>());
    }
}
