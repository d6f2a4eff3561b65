//! `PUT` and `DELETE /admin/models/{model}`: models added and removed at
//! runtime (`app::catalog`, which says what each step does and where a
//! deleted model's directory and acknowledged feedback go).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::admin::AdminState;
use super::body::parse;
use super::error::ApiError;
use super::model_name::ModelName;
use super::models::info;
use crate::app::catalog::ChangeError;

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Exists(_) => ApiError::ModelExists(e.to_string()),
            ChangeError::InConfig(_) => ApiError::ModelInConfig(e.to_string()),
            ChangeError::NotFound(name) => ApiError::ModelNotFound(name),
            ChangeError::Limit { .. } => ApiError::ModelLimit(e.to_string()),
            ChangeError::Busy(wait) => ApiError::TrainerBusy(wait),
            ChangeError::Invalid(message) => ApiError::InvalidConfig(message),
            ChangeError::Storage(message) => ApiError::SnapshotStorage(message),
            ChangeError::ShuttingDown => ApiError::ShuttingDown,
        }
    }
}

/// `PUT /admin/models/{model}`: the body is the model's `[[models]]`
/// table as JSON. 201 with the model's description.
pub async fn add(
    State(state): State<AdminState>,
    ModelName(model): ModelName,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let table: serde_json::Value = parse(&body)?;
    // Run to the end even if the request is dropped (timeout, client
    // gone): a change half made would leave the model served but not
    // kept, or kept but not served.
    let wait = state.trainer_timeout;
    let change =
        tokio::spawn(async move { state.catalog.add(&state.app, &model, table, wait).await });
    let runtime = change
        .await
        .map_err(|e| ApiError::Internal(format!("adding the model: {e}")))??;
    let body = serde_json::to_vec(&info(&runtime))
        .map_err(|e| ApiError::Internal(format!("model description: {e}")))?;
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// `DELETE /admin/models/{model}`: 200 with where the model's directory
/// went and what it had learned.
pub async fn delete(
    State(state): State<AdminState>,
    ModelName(model): ModelName,
) -> Result<Response, ApiError> {
    let wait = state.trainer_timeout;
    let change = tokio::spawn(async move { state.catalog.delete(&state.app, &model, wait).await });
    let deleted = change
        .await
        .map_err(|e| ApiError::Internal(format!("deleting the model: {e}")))??;
    Ok(axum::Json(deleted).into_response())
}
