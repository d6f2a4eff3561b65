//! `GET /healthz` (liveness: the process answers) and `GET /readyz`
//! (readiness: every model is loaded, its feedback log replayed and its
//! trainer running; false again once shutdown starts).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::openapi::ErrorResponse;

#[derive(Serialize, ToSchema)]
pub struct Live {
    /// Always `ok`.
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    status: &'static str,
    /// How many models are served.
    models: usize,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    responses((status = 200, description = "Alive", body = Live)),
)]
pub async fn live() -> Json<Live> {
    Json(Live { status: "ok" })
}

/// Readiness: every model loaded, its log replayed, its trainer running.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "`not_ready`: starting, replaying a log, or shutting down", body = ErrorResponse),
    ),
)]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let recovering = state
        .models()
        .iter()
        .any(|m| m.stats.recovering.load(Ordering::Acquire));
    if state.ready.load(Ordering::Acquire) && !recovering {
        Ok(Json(Ready {
            status: "ready",
            models: state.models().len(),
        }))
    } else {
        Err(ApiError::NotReady)
    }
}
