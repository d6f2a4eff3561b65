//! `GET /healthz` (liveness: the process answers) and `GET /readyz`
//! (readiness: every model is loaded, its feedback log replayed and its
//! trainer running; false again once shutdown starts).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let recovering = state
        .registry
        .iter()
        .any(|m| m.stats.recovering.load(Ordering::Acquire));
    if state.ready.load(Ordering::Acquire) && !recovering {
        Ok(Json(
            json!({ "status": "ready", "models": state.registry.len() }),
        ))
    } else {
        Err(ApiError::NotReady)
    }
}
