//! The admin listener (`admin.listen`, loopback by default):
//!
//! - `GET /metrics`: Prometheus exposition of every `eddy_` family; no token,
//!   as scrapers expect.
//! - `GET /admin/models/{model}/snapshots`: the model's snapshot files on
//!   disk, oldest first (version, path, bytes).
//! - `POST /admin/models/{model}/snapshot`: publish what is trained and
//!   write a snapshot now; answers the new file, or 507 when the disk
//!   refuses it (with the cause).
//! - `POST /admin/models/{model}/training/pause` and `.../resume`: stop and
//!   restart learning; feedback is still accepted (and queued) meanwhile.
//! - `POST /admin/models/{model}/rollback` with `{}` (to last-good) or
//!   `{"version": N}` (a retained snapshot): publishes those weights as a
//!   new version and answers it.
//! - `GET /admin/models/{model}/events`: what the safety loop did, newest
//!   last.
//! - `POST /admin/models/{model}/sources/{source}/readmit`: train a blamed
//!   source's feedback again.
//! - `/admin/models/{model}/quarantine` (list), `.../quarantine/release`,
//!   `.../quarantine/drop`: see `quarantine`.
//! - `GET /`, `GET /status.js`, `GET /admin/status`: the status page
//!   (`status`).
//!
//! Every route but `/metrics` is behind `admin_auth::authorize`: the
//! bearer token (`admin.token`; the status page's GETs also take it as a
//! Basic password), and no browser request from another site. When no
//! token is configured the routes are open to loopback names only, which
//! the config's validation allows only on a loopback listener.
//!
//! The routes that ask the model's trainer wait for it at most
//! nine tenths of `admin.request_timeout_ms`, then answer 503 `trainer_busy`.

use std::time::Duration;

use crate::serving::trainer::SnapshotError;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::metrics::to_prometheus_text;
use crate::persist::SnapshotStore;
use crate::serving::ModelRuntime;
use crate::serving::trainer::TrainerCommand;

use super::AppState;
use super::body::parse;
use super::error::ApiError;
use super::model_name::{ModelName, SourceName};

/// What the admin routes need besides the shared state.
#[derive(Clone)]
pub struct AdminState {
    pub app: AppState,
    /// Empty: no token configured.
    pub token: String,
    pub storage: crate::config::StorageConfig,
    /// How long a call waits for the trainer (nine tenths of
    /// `admin.request_timeout_ms`: `AdminConfig::trainer_wait`).
    pub trainer_timeout: Duration,
    /// `admin.status_sample_ms`, shown by the status page.
    pub status_sample_ms: u64,
    /// The served models' configuration, directories and trainers: adds
    /// and deletes at runtime.
    pub catalog: std::sync::Arc<crate::app::catalog::Catalog>,
}

/// The admin listener's probes: `/metrics` answers without a concurrency
/// slot, so a scrape is not starved by slow admin calls.
pub const ADMIN_PROBES: &[&str] = &["/metrics"];

pub fn admin_router(state: AdminState) -> Router {
    let admin = Router::new()
        .route(
            "/admin/models/{model}",
            axum::routing::put(super::models_admin::add).delete(super::models_admin::delete),
        )
        .route("/admin/models/{model}/snapshots", get(snapshots))
        .route("/admin/models/{model}/snapshot", post(snapshot_now))
        .route("/admin/models/{model}/training/pause", post(pause))
        .route("/admin/models/{model}/training/resume", post(resume))
        .route("/admin/models/{model}/rollback", post(rollback))
        .route("/admin/models/{model}/events", get(events))
        .route(
            "/admin/models/{model}/sources/{source}/readmit",
            post(readmit),
        )
        .route(
            "/admin/models/{model}/quarantine",
            get(super::quarantine::list),
        )
        .route(
            "/admin/models/{model}/quarantine/release",
            post(super::quarantine::release),
        )
        .route(
            "/admin/models/{model}/quarantine/drop",
            post(super::quarantine::drop),
        )
        .route("/", get(super::status::page))
        .route("/status.js", get(super::status::script))
        .route("/admin/status", get(super::status::status))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::admin_auth::authorize,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .merge(admin)
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// OpenMetrics when the scraper asks for it (Prometheus does), the classic
/// text format otherwise.
async fn metrics(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let text = state
        .app
        .metrics
        .encode()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    Ok(if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            to_prometheus_text(&text),
        )
            .into_response()
    })
}

async fn snapshots(
    State(state): State<AdminState>,
    ModelName(model): ModelName,
) -> Result<Response, ApiError> {
    let runtime = state.app.model(&model)?;
    let store = SnapshotStore::new(
        state.storage.model_dir(&runtime.name),
        state.storage.snapshot_keep.get(),
    );
    let files = store
        .list()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(axum::Json(json!({ "model": runtime.name.as_ref(), "snapshots": files })).into_response())
}

async fn snapshot_now(
    State(state): State<AdminState>,
    ModelName(model): ModelName,
) -> Result<Response, ApiError> {
    let runtime = state.app.model(&model)?;
    let file = ask(&state, &runtime, TrainerCommand::Snapshot)
        .await?
        .map_err(|e| match e {
            SnapshotError::Holding => ApiError::SnapshotDeferred(e.to_string()),
            // The disk refused it (full, read-only, gone): the client can
            // act on that, as on a 507 from the feedback log.
            SnapshotError::Storage(_) => ApiError::SnapshotStorage(e.to_string()),
            // `Busy` is for periodic snapshots; this one waits its turn.
            SnapshotError::Failed(_) | SnapshotError::Busy => ApiError::Internal(e.to_string()),
        })?;
    Ok(axum::Json(json!({ "model": runtime.name.as_ref(), "snapshot": file })).into_response())
}

/// Sends a command to the model's trainer and waits for its answer, for
/// `AdminConfig::trainer_wait` at most: a trainer busy with a long step (or
/// stuck) answers 503 `trainer_busy` rather than holding the call open.
/// A command given up on this way is dropped unanswered if the trainer
/// has not started it yet (it checks that its requester is still there).
/// A trainer that is gone means the server is shutting down.
pub(super) async fn ask<T>(
    state: &AdminState,
    runtime: &ModelRuntime,
    command: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> TrainerCommand,
) -> Result<T, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let exchange = async {
        runtime
            .trainer
            .send(command(reply))
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        answer.await.map_err(|_| ApiError::ShuttingDown)
    };
    tokio::time::timeout(state.trainer_timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            tracing::warn!(model = %runtime.name, waited_ms = state.trainer_timeout.as_millis() as u64, "an admin call timed out waiting for the trainer");
            Err(ApiError::TrainerBusy(state.trainer_timeout))
        })
}

async fn pause(state: State<AdminState>, model: ModelName) -> Result<Response, ApiError> {
    set_training(state, model, true).await
}

async fn resume(state: State<AdminState>, model: ModelName) -> Result<Response, ApiError> {
    set_training(state, model, false).await
}

async fn set_training(
    State(state): State<AdminState>,
    ModelName(model): ModelName,
    pause: bool,
) -> Result<Response, ApiError> {
    let runtime = state.app.model(&model)?;
    if pause {
        ask(&state, &runtime, TrainerCommand::Pause).await?;
    } else {
        ask(&state, &runtime, TrainerCommand::Resume).await?;
    }
    let training = if pause { "paused" } else { "running" };
    Ok(axum::Json(json!({ "model": runtime.name.as_ref(), "training": training })).into_response())
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// A retained snapshot's version; absent: last-good.
    version: Option<u64>,
}

async fn rollback(
    State(state): State<AdminState>,
    ModelName(model): ModelName,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let runtime = state.app.model(&model)?;
    let request: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        parse(&body)?
    };
    let done = ask(&state, &runtime, |reply| TrainerCommand::Rollback {
        version: request.version,
        reply,
    })
    .await??;
    Ok(axum::Json(json!({
        "model": runtime.name.as_ref(),
        "version": done.version,
        "restored": done.restored,
        "rolled_back_from": done.rolled_back_from,
        "dropped": done.dropped,
    }))
    .into_response())
}

async fn events(
    State(state): State<AdminState>,
    ModelName(model): ModelName,
) -> Result<Response, ApiError> {
    let runtime = state.app.model(&model)?;
    Ok(axum::Json(json!({
        "model": runtime.name.as_ref(),
        "events": runtime.events.all(),
    }))
    .into_response())
}

async fn readmit(
    State(state): State<AdminState>,
    ModelName(model): ModelName,
    SourceName(source): SourceName,
) -> Result<Response, ApiError> {
    let runtime = state.app.model(&model)?;
    let readmitted = ask(&state, &runtime, |reply| TrainerCommand::Readmit {
        source: source.clone(),
        reply,
    })
    .await?;
    if !readmitted {
        return Err(ApiError::SourceNotBlamed(source));
    }
    Ok(axum::Json(json!({
        "model": runtime.name.as_ref(),
        "source": source,
        "readmitted": true,
    }))
    .into_response())
}
