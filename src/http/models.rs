//! `GET /v1/models` and `GET /v1/models/{model}`: what each model is and
//! how far its training has come.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::learn::{Family, MlpConfig, OptimizerConfig, OptimizerKind, Params, TaskKind};
use crate::serving::ModelRuntime;
use crate::serving::guard::GuardReport;
use crate::serving::monitor::MonitorReport;

use super::AppState;
use super::body::json_response;
use super::error::ApiError;
use super::model_name::ModelName;
use super::openapi::ErrorResponse;

/// A model and how far its training has come.
#[derive(Serialize, ToSchema)]
pub struct ModelInfo<'a> {
    name: &'a str,
    task: TaskKind,
    classes: &'a [String],
    hash_bits: u8,
    /// `linear` or `mlp`; the network's settings with `mlp`.
    family: Family,
    #[serde(skip_serializing_if = "Option::is_none")]
    mlp: Option<MlpConfig>,
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
    /// Accepted feedback the trainer has dealt with (trained, excluded as
    /// from a blamed source, or held while paused) since start-up.
    feedback_processed: u64,
    pending_predictions: usize,
    created_at: String,
    /// When the live version was published.
    updated_at: String,
    optimizer: &'a OptimizerConfig,
    /// The rule(s) and rate(s) the live version was learned with: one for
    /// an explicit kind; `auto`'s candidates with their weight in the
    /// combination the live weights are; for the `mlp` family, the
    /// network's own step (`rms` at `mlp.learning_rate`).
    optimizer_state: OptimizerState,
    minibatch_size: usize,
    /// `running`, or `paused` (by an operator or `on_degrade = "pause"`).
    training: &'static str,
    /// Added at runtime (`PUT /admin/models/{model}`) rather than defined
    /// in the configuration file.
    added_at_runtime: bool,
    /// Set when the live version restores older weights.
    rolled_back_from: Option<u64>,
    /// The version the monitor trusts (null when the monitor is disabled).
    last_good_version: Option<u64>,
    /// Rolling quality of the live versions and of last-good on the same
    /// examples.
    quality: Quality,
    monitor: Monitor,
    /// The ingestion guard's decisions (`enabled: false` without one).
    guard: GuardReport,
}

#[derive(Serialize, ToSchema)]
struct OptimizerState {
    kind: OptimizerKind,
    candidates: Vec<CandidateShare>,
}

#[derive(Serialize, ToSchema)]
struct CandidateShare {
    rule: &'static str,
    learning_rate: f32,
    /// Share of the combination (1 for an explicit kind).
    weight: f32,
}

/// The live versions' rolling quality and last-good's on the same
/// examples.
#[derive(Serialize, ToSchema)]
#[schema(as = QualityPair)]
struct Quality {
    live: crate::serving::monitor::Quality,
    baseline: crate::serving::monitor::Quality,
}

#[derive(Serialize, ToSchema)]
#[schema(as = MonitorInfo)]
struct Monitor {
    #[serde(flatten)]
    report: MonitorReport,
    promotions: u64,
    rollbacks: Rollbacks,
    gate_checks: u64,
    gate_holds: u64,
    /// Examples from blamed sources: scored, not trained.
    excluded_examples: u64,
}

/// Rollbacks since start-up, by cause.
#[derive(Serialize, ToSchema)]
struct Rollbacks {
    degraded: u64,
    gate_refused: u64,
    operator: u64,
}

/// The models the server hosts: all of them, or a page.
#[derive(Serialize, ToSchema)]
pub struct ModelList<'a> {
    models: Vec<ModelInfo<'a>>,
    /// Paged (`limit`): the `after` of the next page, or null after the
    /// last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<Option<&'a str>>,
}

/// Most models one page holds.
pub const MAX_PAGE: usize = 1000;

/// `GET /v1/models` paged: `?limit=` (1 to 1000) models in name order,
/// those named after `?after=` (the `next` of the page before). Other
/// parameters are ignored.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 1000; without it every model is listed, in
    /// configuration order.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// With `limit`: list the models whose names sort after this one.
    after: Option<String>,
}

/// Every model in configuration order, or a page of them in name order.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    params(ListQuery),
    responses(
        (status = 200, description = "The models", body = ModelList),
        (status = 422, description = "`invalid_request`: a bad `limit`, or `after` without `limit`", body = ErrorResponse),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    match query.limit {
        None if query.after.is_some() => {
            Err(ApiError::InvalidRequest("after goes with limit".into()))
        }
        None => {
            let all = state.models();
            let models = all.iter().map(|m| info(m)).collect();
            json_response(&ModelList { models, next: None })
        }
        Some(limit) if !(1..=MAX_PAGE).contains(&limit) => Err(ApiError::InvalidRequest(format!(
            "limit must be 1 to {MAX_PAGE}"
        ))),
        Some(limit) => {
            let models = state.models();
            let (page, more) = models.page(query.after.as_deref(), limit);
            let next = more.then(|| page.last().map(|m| &*m.name)).flatten();
            let models = page.into_iter().map(|m| info(m)).collect();
            json_response(&ModelList {
                models,
                next: Some(next),
            })
        }
    }
}

/// One model.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "models",
    params(("model" = String, Path, description = "The model's name")),
    responses(
        (status = 200, description = "The model", body = ModelInfo),
        (status = 404, description = "`model_not_found`", body = ErrorResponse),
    ),
)]
pub async fn show(
    State(state): State<AppState>,
    ModelName(model): ModelName,
) -> Result<Response, ApiError> {
    json_response(&info(&*state.model(&model)?))
}

pub(crate) fn info(m: &ModelRuntime) -> ModelInfo<'_> {
    let live = m.store.live();
    let report = MonitorReport::clone(&m.stats.monitor.load());
    // The network's own settings: a model restored from a snapshot keeps
    // the ones it was trained with.
    let net = live.params.net.as_ref().map(|n| n.config);
    ModelInfo {
        name: &m.name,
        task: m.config.task,
        classes: &m.config.classes,
        hash_bits: m.config.hash_bits,
        family: m.config.family,
        mlp: net,
        version: live.version,
        examples_trained: m.stats.examples_trained_total(),
        minibatches_trained: m.stats.minibatches_trained.load(Ordering::Relaxed),
        version_examples_trained: live.examples_trained,
        queue_depth: m.queue.depth(),
        queue_capacity: m.queue.capacity(),
        feedback_accepted: m.queue.accepted(),
        feedback_processed: m.stats.processed.load(Ordering::Acquire),
        pending_predictions: m.joins.len(),
        added_at_runtime: m.config.added_at_runtime,
        created_at: rfc3339(m.created_at),
        updated_at: rfc3339(live.published_at),
        optimizer: &m.config.optimizer,
        optimizer_state: match m.config.family {
            // The network takes its own constant normalised step; the
            // optimizer's table is not used.
            Family::Mlp => OptimizerState {
                kind: m.config.optimizer.kind,
                candidates: vec![CandidateShare {
                    rule: "rms",
                    learning_rate: net.unwrap_or(m.config.mlp).learning_rate as f32,
                    weight: 1.0,
                }],
            },
            Family::Linear => optimizer_state(&m.config.optimizer, &live.params),
        },
        minibatch_size: m.config.training.minibatch_size.get(),
        training: m.stats.training_state(),
        rolled_back_from: live.rolled_back_from,
        last_good_version: report.last_good_version,
        quality: Quality {
            live: report.live.clone(),
            baseline: report.baseline.clone(),
        },
        monitor: Monitor {
            report,
            promotions: count(&m.stats.promotions),
            rollbacks: Rollbacks {
                degraded: count(&m.stats.rollbacks_degraded),
                gate_refused: count(&m.stats.rollbacks_gate),
                operator: count(&m.stats.rollbacks_operator),
            },
            gate_checks: count(&m.stats.gate_checks),
            gate_holds: count(&m.stats.gate_holds),
            excluded_examples: count(&m.stats.excluded),
        },
        guard: GuardReport::clone(&m.stats.guard.load()),
    }
}

fn optimizer_state(config: &OptimizerConfig, live: &Params) -> OptimizerState {
    let candidates = match (&live.mixture, config.rule()) {
        (Some(mixture), _) => mixture
            .iter()
            .map(|c| CandidateShare {
                rule: c.rule.kind.name(),
                learning_rate: c.rule.learning_rate,
                weight: c.weight,
            })
            .collect(),
        (None, Some(rule)) => vec![CandidateShare {
            rule: rule.kind.name(),
            learning_rate: rule.learning_rate,
            weight: 1.0,
        }],
        // `auto` before its first version is published: the candidates
        // at equal weights.
        (None, None) => {
            let n = config.candidates().len() as f32;
            config
                .candidates()
                .iter()
                .map(|r| CandidateShare {
                    rule: r.kind.name(),
                    learning_rate: r.learning_rate,
                    weight: 1.0 / n,
                })
                .collect()
        }
    };
    OptimizerState {
        kind: config.kind,
        candidates,
    }
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
