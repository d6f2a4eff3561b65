//! `Catalog`: the models this process serves, as configured, and their
//! changes at runtime (`PUT` / `DELETE /admin/models/{model}`).
//!
//! It owns what the request path does not need: the effective
//! configuration (the file's models and those added at runtime), each
//! model's directory lock and running trainer, and the trainer pool. One
//! change runs at a time. The registry requests read is replaced whole on
//! each change (`ArcSwap`), so predict never waits on one.
//!
//! Adding builds the model exactly as start-up does (`model::build`: its
//! directory is taken, its newest snapshot restored if the directory holds
//! one), writes the configuration kept in `<storage.dir>/.models.json`
//! atomically, starts its trainer, and only then publishes it: it answers
//! predict as soon as the caller hears 201.
//!
//! Deleting takes the model out of the registry first (its routes answer
//! 404 from then on; a request already holding it finishes, and feedback
//! not yet enqueued is refused), then stops its trainer the way shutdown
//! does: what was acknowledged is trained (bounded by
//! `server.shutdown_grace_ms`) and a final snapshot written; anything the
//! grace did not cover stays in the model's feedback log. The directory,
//! log included, is then moved to `<storage.dir>/.deleted/<name>.<ms>`,
//! where an operator can restore it: move it back as `<storage.dir>/<name>`
//! and add the model again with the same table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use crate::config::{ARCHIVE_DIR, Config, model_from_json};
use crate::http::AppState;
use crate::persist::DirLock;
use crate::persist::atomic::write_atomic;
use crate::serving::pool::{Running, TrainerPool};
use crate::serving::trainer::epoch_ms;
use crate::serving::{ModelRuntime, SharedClock, Trainer};

use super::model;

pub struct Catalog {
    /// The effective configuration: the file's models, then those added
    /// at runtime.
    config: Mutex<Config>,
    clock: SharedClock,
    pool: TrainerPool,
    running: Mutex<HashMap<Arc<str>, Running>>,
    locks: Mutex<HashMap<Arc<str>, DirLock>>,
    /// One change at a time.
    changes: tokio::sync::Mutex<()>,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("model {0} exists")]
    Exists(String),
    #[error("model {0} is defined in the configuration file; remove it there and restart")]
    InConfig(String),
    #[error("model {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Storage(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// What `DELETE` answers: where the model went and what it had learned.
#[derive(Debug, Serialize)]
pub struct Deleted {
    pub model: String,
    /// The model's directory now (snapshots, feedback log, version
    /// record), for an operator to restore.
    pub archived_to: String,
    pub version: u64,
    pub examples_trained: u64,
    /// Feedback examples acknowledged (202) over the model's life in
    /// this process, and how many the trainer took before it stopped
    /// (trained, or kept out by the guard); any difference is in the
    /// archived feedback log.
    pub feedback_accepted: u64,
    pub feedback_processed: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Catalog {
    pub fn new(config: Config, clock: SharedClock, pool: TrainerPool) -> Self {
        Self {
            config: Mutex::new(config),
            clock,
            pool,
            running: Mutex::default(),
            locks: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// Keeps a model's directory lock (start-up).
    pub fn hold(&self, name: Arc<str>, dir_lock: DirLock) {
        lock(&self.locks).insert(name, dir_lock);
    }

    /// Starts a model's trainer on the pool.
    pub fn start(&self, trainer: Trainer) {
        let name = trainer.model().clone();
        if let Some(running) = self.pool.start(trainer) {
            lock(&self.running).insert(name, running);
        }
    }

    pub fn pool(&self) -> &TrainerPool {
        &self.pool
    }

    /// Adds the model `name` from its `[[models]]` table (JSON).
    pub async fn add(
        &self,
        state: &AppState,
        name: &str,
        table: serde_json::Value,
    ) -> Result<Arc<ModelRuntime>, ChangeError> {
        let _change = self.changes.lock().await;
        if self.pool.stopping() {
            return Err(ChangeError::ShuttingDown);
        }
        if state.models().get(name).is_some() {
            return Err(ChangeError::Exists(name.to_owned()));
        }
        let invalid = |e: crate::config::Error| ChangeError::Invalid(e.to_string());
        let m = model_from_json(name, table).map_err(invalid)?;
        let next = lock(&self.config).adding(m.clone()).map_err(invalid)?;
        let clock = self.clock.clone();
        let built = tokio::task::spawn_blocking(move || {
            let built = model::build(&next, &m, &clock)
                .map_err(|e| ChangeError::Invalid(format!("{e:#}")))?;
            // Kept before it is served: a 201 survives a restart.
            write_atomic(&next.runtime_models_path(), &next.runtime_models_json()).map_err(
                |e| {
                    ChangeError::Storage(format!(
                        "cannot write {}: {e}",
                        next.runtime_models_path().display()
                    ))
                },
            )?;
            Ok::<_, ChangeError>((built, next))
        })
        .await
        .map_err(|e| ChangeError::Storage(format!("adding the model failed: {e}")))??;
        let (built, next) = built;
        let name: Arc<str> = built.runtime.name.clone();
        let Some(running) = self.pool.start(built.trainer) else {
            return Err(ChangeError::ShuttingDown);
        };
        *lock(&self.config) = next;
        lock(&self.running).insert(name.clone(), running);
        lock(&self.locks).insert(name.clone(), built.lock);
        let runtime = Arc::new(built.runtime);
        state.metrics.add_model(&name);
        state.sources.add_model(&runtime.config);
        state.registry.rcu(|current| {
            let mut next = (**current).clone();
            next.insert_shared(Arc::clone(&runtime));
            next
        });
        tracing::info!(model = %name, "model added at runtime");
        Ok(runtime)
    }

    /// Deletes the model `name` (added at runtime) as the module doc says.
    pub async fn delete(&self, state: &AppState, name: &str) -> Result<Deleted, ChangeError> {
        let _change = self.changes.lock().await;
        let runtime = state
            .models()
            .get(name)
            .cloned()
            .ok_or_else(|| ChangeError::NotFound(name.to_owned()))?;
        if !runtime.config.added_at_runtime {
            return Err(ChangeError::InConfig(name.to_owned()));
        }
        if self.pool.stopping() {
            return Err(ChangeError::ShuttingDown);
        }
        state.registry.rcu(|current| {
            let mut next = (**current).clone();
            next.remove(name);
            next
        });
        state.metrics.remove_model(name);
        state.sources.remove_model(name);
        let running = lock(&self.running).remove(name);
        if let Some(running) = running {
            running.stop().await;
        }
        let next = {
            let mut config = lock(&self.config).clone();
            config.models.retain(|m| m.name != name);
            config
        };
        let dir_lock = lock(&self.locks).remove(name);
        let from = next.storage.model_dir(name);
        let to = next
            .storage
            .dir
            .join(ARCHIVE_DIR)
            .join(format!("{name}.{}", epoch_ms()));
        let (kept, to) = {
            let next = next.clone();
            tokio::task::spawn_blocking(move || {
                let moved = std::fs::create_dir_all(to.parent().unwrap_or(&to))
                    .and_then(|()| std::fs::rename(&from, &to));
                // The lock goes with the directory; released once moved.
                drop(dir_lock);
                let kept = write_atomic(&next.runtime_models_path(), &next.runtime_models_json());
                (moved.and(kept), to)
            })
            .await
            .map_err(|e| ChangeError::Storage(format!("deleting the model failed: {e}")))?
        };
        *lock(&self.config) = next;
        let stats = &runtime.stats;
        let deleted = Deleted {
            model: name.to_owned(),
            archived_to: to.display().to_string(),
            version: runtime.store.live().version,
            examples_trained: stats.examples_trained_total(),
            feedback_accepted: runtime.queue.accepted(),
            feedback_processed: stats.processed.load(std::sync::atomic::Ordering::Acquire),
        };
        if let Err(e) = kept {
            // Served no more either way; the operator must finish by hand.
            tracing::error!(model = %name, error = %e, "model deleted, but its directory or the runtime models file could not be updated");
            return Err(ChangeError::Storage(format!(
                "model {name} is no longer served, but its directory could not be archived or {} updated: {e}",
                crate::config::RUNTIME_MODELS_FILE
            )));
        }
        tracing::info!(model = %name, archived_to = %deleted.archived_to, "model deleted at runtime");
        Ok(deleted)
    }
}
