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
use crate::persist::wal::LazyLog;
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
    held: Mutex<HashMap<Arc<str>, Held>>,
    /// One change at a time.
    changes: tokio::sync::Mutex<()>,
}

/// What a model owns on disk while it is served.
struct Held {
    /// Its directory, locked against a second owner (released when
    /// dropped).
    _lock: DirLock,
    /// Its feedback log, retired before the directory moves.
    log: Option<Arc<LazyLog>>,
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
    #[error("{served} models are served, server.max_models is {limit}: delete one first")]
    Limit { served: usize, limit: usize },
    #[error("another model is being added or deleted; retry")]
    Busy(std::time::Duration),
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
    /// Feedback examples acknowledged (202) since start-up, and how many
    /// the trainer took before it stopped (trained, or kept out by the
    /// guard); any difference is in the archived feedback log.
    pub feedback_accepted: u64,
    pub feedback_processed: u64,
    /// Acknowledged examples the shutdown grace did not cover: not
    /// trained, kept in the archived feedback log (0 normally).
    pub feedback_in_log: u64,
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
            held: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// Keeps what a model built at start-up owns on disk.
    pub fn hold(&self, name: Arc<str>, dir_lock: DirLock, log: Option<Arc<LazyLog>>) {
        lock(&self.held).insert(
            name,
            Held {
                _lock: dir_lock,
                log,
            },
        );
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

    /// This change's turn, or `Busy` after `wait`: a change that could
    /// not start before its caller gave up never happens later.
    async fn turn(
        &self,
        wait: std::time::Duration,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, ChangeError> {
        tokio::time::timeout(wait, self.changes.lock())
            .await
            .map_err(|_| ChangeError::Busy(wait))
    }

    /// Adds the model `name` from its `[[models]]` table (JSON). Callers
    /// run it to the end (a spawned task), whatever becomes of the
    /// request.
    pub async fn add(
        &self,
        state: &AppState,
        name: &str,
        table: serde_json::Value,
        wait: std::time::Duration,
    ) -> Result<Arc<ModelRuntime>, ChangeError> {
        let _change = self.turn(wait).await?;
        if self.pool.stopping() {
            return Err(ChangeError::ShuttingDown);
        }
        let served = state.models();
        // Served, or still holding its directory after a failed delete.
        if served.get(name).is_some() || lock(&self.held).contains_key(name) {
            return Err(ChangeError::Exists(name.to_owned()));
        }
        let limit = lock(&self.config).server.max_models.get();
        if served.len() >= limit {
            return Err(ChangeError::Limit {
                served: served.len(),
                limit,
            });
        }
        let invalid = |e: crate::config::Error| ChangeError::Invalid(e.to_string());
        let m = model_from_json(name, table).map_err(invalid)?;
        let before = lock(&self.config).clone();
        let next = before.adding(m.clone()).map_err(invalid)?;
        let clock = self.clock.clone();
        let (built, next) = tokio::task::spawn_blocking(move || {
            let built = model::build(&next, &m, &clock)
                .map_err(|e| ChangeError::Invalid(format!("{e:#}")))?;
            // Kept before it is served: a 201 survives a restart.
            keep(&next).map_err(ChangeError::Storage)?;
            Ok::<_, ChangeError>((built, next))
        })
        .await
        .map_err(|e| ChangeError::Storage(format!("adding the model failed: {e}")))??;
        let name: Arc<str> = built.runtime.name.clone();
        let Some(running) = self.pool.start(built.trainer) else {
            // Shutdown began meanwhile: not served, so not kept either.
            if let Err(e) = keep(&before) {
                tracing::error!(model = %name, error = %e, "cannot take the model back out");
            }
            return Err(ChangeError::ShuttingDown);
        };
        *lock(&self.config) = next;
        lock(&self.running).insert(name.clone(), running);
        self.hold(name.clone(), built.lock, built.log);
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
    /// Callers run it to the end (a spawned task), whatever becomes of
    /// the request.
    pub async fn delete(
        &self,
        state: &AppState,
        name: &str,
        wait: std::time::Duration,
    ) -> Result<Deleted, ChangeError> {
        let _change = self.turn(wait).await?;
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
        // Requests find it no more; those already holding it finish.
        state.registry.rcu(|current| {
            let mut next = (**current).clone();
            next.remove(name);
            next
        });
        // Trains what it acknowledged and writes its final snapshot; the
        // queue refuses new feedback from the start of this.
        let running = lock(&self.running).remove(name);
        if let Some(running) = running {
            running.stop().await;
        }
        let held = lock(&self.held).remove(name);
        let log = held.as_ref().and_then(|h| h.log.clone());
        // Its series and limits go only now: a refusal counted during the
        // drain would otherwise bring a series back.
        state.metrics.remove_model(name);
        state.sources.remove_model(name);
        let next = {
            let mut config = lock(&self.config).clone();
            config.models.retain(|m| m.name != name);
            config
        };
        let from = next.storage.model_dir(name);
        let stamp = format!("{name}.{}", epoch_ms());
        let to = next.storage.dir.join(ARCHIVE_DIR).join(&stamp);
        // Log segments archived by `storage.archive_dir`, and where they go.
        let segments = Some(&next.storage.archive_dir)
            .filter(|a| !a.as_os_str().is_empty())
            .map(|a| (a.join(name), a.join(ARCHIVE_DIR).join(&stamp)));
        // Each step says where things are if it fails.
        let moved = {
            let next = next.clone();
            let (from, to) = (from.clone(), to.clone());
            tokio::task::spawn_blocking(move || {
                if let Some(log) = log {
                    // An append still under way finishes first; a later
                    // one fails unacknowledged, so nothing is written
                    // outside the archive.
                    log.retire();
                }
                // The configuration first: a crash after it leaves the
                // directory where it was, but no model of that name.
                keep(&next).map_err(|e| {
                    format!("{e}; it is listed there still, so it comes back at the next start unless removed by hand")
                })?;
                let still = |e: String| format!("{e}; its directory is still {}", from.display());
                // The archived segments go first, so a model added later
                // under the name starts afresh.
                if let Some((segments, aside)) = segments.filter(|(s, _)| s.exists()) {
                    move_to(&segments, &aside, "move the archived log segments to").map_err(still)?;
                }
                move_to(&from, &to, "move the model's directory to").map_err(still)
            })
            .await
            .map_err(|e| ChangeError::Storage(format!("deleting the model failed: {e}")))?
        };
        // Not served any more, whatever the disk did.
        *lock(&self.config) = next;
        if let Err(e) = moved {
            // The directory stays locked: a model added under the name is
            // refused (409) rather than adopt it; the operator moves it.
            if let Some(held) = held {
                lock(&self.held).insert(Arc::from(name), held);
            }
            tracing::error!(model = %name, error = %e, "model deleted, but not archived");
            return Err(ChangeError::Storage(format!(
                "model {name} is no longer served, but {e}"
            )));
        }
        // The lock went with the directory; released now.
        drop(held);
        let accepted = runtime.queue.accepted();
        let processed = runtime
            .stats
            .processed
            .load(std::sync::atomic::Ordering::Acquire);
        let deleted = Deleted {
            model: name.to_owned(),
            archived_to: to.display().to_string(),
            version: runtime.store.live().version,
            examples_trained: runtime.stats.examples_trained_total(),
            feedback_accepted: accepted,
            feedback_processed: processed,
            feedback_in_log: accepted.saturating_sub(processed),
        };
        tracing::info!(model = %name, archived_to = %deleted.archived_to, "model deleted at runtime");
        Ok(deleted)
    }
}

/// Writes the models added at runtime to `.models.json`, atomically.
fn keep(config: &Config) -> Result<(), String> {
    let path = config.runtime_models_path();
    write_atomic(&path, &config.runtime_models_json())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Moves `from` to `to`, making `to`'s parent first.
fn move_to(from: &std::path::Path, to: &std::path::Path, what: &str) -> Result<(), String> {
    std::fs::create_dir_all(to.parent().unwrap_or(to))
        .and_then(|()| std::fs::rename(from, to))
        .map_err(|e| format!("cannot {what} {}: {e}", to.display()))
}
