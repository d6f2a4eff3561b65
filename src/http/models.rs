//! `GET /v1/models` and `GET /v1/models/{model}`: what each model is and
//! how far its training has come.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use crate::learn::{OptimizerConfig, TaskKind};
use crate::serving::ModelRuntime;

use super::AppState;
use super::body::json_response;
use super::error::ApiError;
use super::model_name::ModelName;

#[derive(Serialize)]
pub struct ModelInfo<'a> {
    name: &'a str,
    task: TaskKind,
    classes: &'a [String],
    hash_bits: u8,
    /// The live version.
    version: u64,
    /// Examples the trainer has applied since the model was created.
    examples_trained: u64,
    minibatches_trained: u64,
    /// Examples learned into the live version.
    version_examples_trained: u64,
    queue_depth: usize,
    queue_capacity: usize,
    feedback_accepted: u64,
    pending_predictions: usize,
    created_at: String,
    /// When the live version was published.
    updated_at: String,
    optimizer: &'a OptimizerConfig,
    minibatch_size: usize,
    /// `running`, or `paused` by an operator.
    training: &'static str,
}

#[derive(Serialize)]
pub struct ModelList<'a> {
    models: Vec<ModelInfo<'a>>,
}

pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let models = state.registry.iter().map(|m| info(m)).collect();
    json_response(&ModelList { models })
}

pub async fn show(
    State(state): State<AppState>,
    ModelName(model): ModelName,
) -> Result<Response, ApiError> {
    json_response(&info(state.model(&model)?))
}

fn info(m: &ModelRuntime) -> ModelInfo<'_> {
    let live = m.store.live();
    ModelInfo {
        name: &m.name,
        task: m.config.task,
        classes: &m.config.classes,
        hash_bits: m.config.hash_bits,
        version: live.version,
        examples_trained: m.stats.examples_base + m.stats.examples_trained.load(Ordering::Relaxed),
        minibatches_trained: m.stats.minibatches_trained.load(Ordering::Relaxed),
        version_examples_trained: live.examples_trained,
        queue_depth: m.queue.depth(),
        queue_capacity: m.queue.capacity(),
        feedback_accepted: m.queue.accepted(),
        pending_predictions: m.joins.len(),
        created_at: rfc3339(m.created_at),
        updated_at: rfc3339(live.published_at),
        optimizer: &m.config.optimizer,
        minibatch_size: m.config.training.minibatch_size.get(),
        training: if m.stats.paused.load(Ordering::Acquire) {
            "paused"
        } else {
            "running"
        },
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
