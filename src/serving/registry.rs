//! `Registry`: model name -> `ModelRuntime`, the per-model bundle of
//! handles that request handlers use (store, feedback queue, join cache,
//! training counters). Built at start-up; a model added or deleted at
//! runtime makes a new `Registry` that replaces the old one atomically
//! (`ArcSwap` in the app's state), so requests read it without locks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::ModelConfig;
use crate::learn::{FeatureHasher, LabelSpace};

use super::events::EventLog;
use super::join::JoinCache;
use super::monitor::BaselineHandle;
use super::queue::FeedbackQueue;
use super::store::ModelStore;
use super::trainer::{TrainerCommand, TrainingStats};

/// Everything about one served model that requests touch.
#[derive(Debug)]
pub struct ModelRuntime {
    pub name: Arc<str>,
    pub config: ModelConfig,
    pub space: Arc<LabelSpace>,
    pub hasher: FeatureHasher,
    /// Read by predict without locks; written by the trainer.
    pub store: Arc<ModelStore>,
    /// Handlers offer feedback here; the trainer drains it.
    pub queue: FeedbackQueue,
    /// Predictions awaiting labels.
    pub joins: JoinCache,
    pub stats: Arc<TrainingStats>,
    pub created_at: SystemTime,
    /// Requests to this model's trainer (admin API).
    pub trainer: tokio::sync::mpsc::Sender<TrainerCommand>,
    /// What the safety loop did, newest last.
    pub events: Arc<EventLog>,
    /// Last-good's weights, for scoring feedback as it is accepted.
    pub baseline: BaselineHandle,
    /// `Idempotency-Key`s of acknowledged feedback requests.
    pub keys: Arc<super::idempotency::IdempotencyKeys>,
    /// The declared features (`[[models.guard.features]]`), checked on
    /// the raw features of predict and feedback; `None` without any, or
    /// with the guard disabled.
    pub schema: Option<crate::learn::guard::Schema>,
    /// Recent quality, version and queue depth (the admin status page).
    pub history: super::history::StatusHistory,
}

impl ModelRuntime {
    /// Its state now, as the status page's history records it.
    pub fn status_point(&self, at_ms: u64) -> super::history::StatusPoint {
        let report = self.stats.monitor.load();
        let figure = |f: &crate::learn::Figures| match self.config.task {
            crate::learn::TaskKind::Regression => f.mae,
            _ => f.accuracy,
        };
        super::history::StatusPoint {
            at_ms,
            version: self.store.live().version,
            live: figure(&report.live.figures).map(|v| v as f32),
            baseline: figure(&report.baseline.figures).map(|v| v as f32),
            examples: report.live.examples,
            queue_depth: self.queue.depth(),
        }
    }

    /// How `raw` breaks the declared schema, if there is one and it does.
    pub fn schema_violation(&self, raw: &crate::learn::RawFeatures<'_>) -> Option<Arc<str>> {
        let schema = self.schema.as_ref()?;
        schema.check(raw).err().map(|v| Arc::from(v.to_string()))
    }
}

#[derive(Debug, Default, Clone)]
pub struct Registry {
    models: HashMap<Arc<str>, Arc<ModelRuntime>>,
    /// Names in config order, for listings.
    order: Vec<Arc<str>>,
    /// Names in byte order, for pages (`page`): a cursor that stays valid
    /// whatever is added or removed.
    sorted: Vec<Arc<str>>,
}

impl Registry {
    pub fn insert(&mut self, runtime: ModelRuntime) {
        self.insert_shared(Arc::new(runtime));
    }

    /// Adds a model (last in configuration order).
    pub fn insert_shared(&mut self, runtime: Arc<ModelRuntime>) {
        let name = runtime.name.clone();
        self.order.push(name.clone());
        let at = self.sorted.partition_point(|n| **n < *name);
        self.sorted.insert(at, name.clone());
        self.models.insert(name, runtime);
    }

    /// Takes a model out; `None` if there is none by that name.
    pub fn remove(&mut self, name: &str) -> Option<Arc<ModelRuntime>> {
        let runtime = self.models.remove(name)?;
        self.order.retain(|n| **n != *name);
        self.sorted.retain(|n| **n != *name);
        Some(runtime)
    }

    /// Up to `limit` models in name order, those named after `after`
    /// (all when `None`); and whether more follow.
    pub fn page(&self, after: Option<&str>, limit: usize) -> (Vec<&Arc<ModelRuntime>>, bool) {
        let start = after.map_or(0, |a| self.sorted.partition_point(|n| **n <= *a));
        let rest = &self.sorted[start..];
        let models = rest
            .iter()
            .take(limit)
            .filter_map(|n| self.models.get(n))
            .collect();
        (models, rest.len() > limit)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ModelRuntime>> {
        self.models.get(name)
    }

    /// Models in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ModelRuntime>> {
        self.order.iter().filter_map(|n| self.models.get(n))
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}
