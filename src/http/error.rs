//! `ApiError`: every way a request can fail, the one table that maps each
//! to a status code and a stable machine-readable `code`, and the JSON body
//! `{"error": {"code", "message"}}` they all share (batch refusals add an
//! `items` list with per-example reasons).
//!
//! Server-side failures (500) are logged here, once, with their cause;
//! the client sees a generic message.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::learn::{FeatureError, LabelError};
use crate::serving::idempotency::KeyError;
use crate::serving::trainer::RollbackError;
use crate::serving::{JoinError, QueueError};

/// Seconds a client is told to wait after a 429 or 503 (a rate limit
/// says how long its own wait is).
const RETRY_AFTER_S: &str = "1";

/// A wait in whole seconds for `Retry-After`: rounded up, at least 1.
pub fn retry_after_s(wait: &std::time::Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
        .max(1)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("invalid features: {0}")]
    InvalidFeatures(#[from] FeatureError),
    #[error("invalid label: {0}")]
    InvalidLabel(#[from] LabelError),
    #[error("{} of the batch's examples are invalid; nothing was accepted", .0.len())]
    InvalidBatch(Vec<ItemError>),
    #[error("no model named `{0}`")]
    ModelNotFound(String),
    #[error("{0}")]
    Join(#[from] JoinError),
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("request body exceeds the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}; retry later")]
    QueueFull(QueueError),
    #[error("{0}")]
    BatchTooLarge(QueueError),
    #[error("a predict batch holds at most {0} instances (server.max_batch_instances); split it")]
    TooManyInstances(usize),
    #[error("request timed out")]
    Timeout,
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u64),
    #[error("the request body could not be read: {0}")]
    MalformedBody(String),
    #[error("server is at its concurrency limit; retry later")]
    Overloaded,
    #[error(
        "feedback intake is at its limit (server.feedback_concurrency); nothing was accepted, retry later"
    )]
    FeedbackOverloaded,
    #[error(
        "no feedback thread got through this request within half of server.request_timeout_ms (the feedback threads are busy or get too little CPU while predict takes every core, or the request is too large to check in that time); nothing was accepted, retry later"
    )]
    FeedbackStarved,
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("not ready")]
    NotReady,
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("refused: {0}")]
    CrossSite(String),
    #[error(
        "the request names source `{claimed}`, but its token is `{sender}`'s: a token's examples are its own; nothing was accepted"
    )]
    SourceMismatch { claimed: String, sender: String },
    #[error(
        "source `{source_name}` is over its rate limit ({rate} examples/s, burst {burst}); nothing was accepted, retry after {} s",
        retry_after_s(.retry_after)
    )]
    RateLimited {
        source_name: String,
        rate: f64,
        burst: u32,
        retry_after: std::time::Duration,
    },
    #[error(
        "the request holds more examples from source `{source_name}` than its burst of {burst}: it can never pass its rate limit ({rate} examples/s); send at most {burst} at once"
    )]
    ExceedsBurst {
        source_name: String,
        rate: f64,
        burst: u32,
    },
    #[error("{0}")]
    Rollback(#[from] RollbackError),
    #[error("{0}")]
    SnapshotDeferred(String),
    #[error("source `{0}` is not blamed")]
    SourceNotBlamed(String),
    #[error(
        "model `{0}` has no ingestion guard ([models.guard] enabled = false), so nothing is quarantined"
    )]
    GuardDisabled(String),
    #[error("{0}")]
    IdempotencyKey(#[from] crate::serving::idempotency::KeyError),
    #[error("feedback cannot be stored: {0}; nothing was accepted")]
    Storage(crate::persist::wal::LogError),
    #[error(
        "the examples were queued for training but could not be made durable: {0}; they may not survive a crash (a retry with the same Idempotency-Key is not trained twice)"
    )]
    NotDurable(crate::persist::wal::LogError),
    #[error(
        "the model's trainer did not answer within {} ms (nine tenths of admin.request_timeout_ms): it is busy (a long training step or snapshot) or stuck; the call was withdrawn unless the trainer had already begun it (check before retrying)",
        .0.as_millis()
    )]
    TrainerBusy(std::time::Duration),
    #[error("{0}")]
    SnapshotStorage(String),
    #[error("internal error")]
    Internal(String),
    /// `PUT /admin/models/{model}` for a name already served.
    #[error("{0}")]
    ModelExists(String),
    /// `PUT /admin/models/{model}` with `server.max_models` served.
    #[error("{0}")]
    ModelLimit(String),
    /// `DELETE /admin/models/{model}` of a model the configuration file
    /// defines.
    #[error("{0}")]
    ModelInConfig(String),
    /// A model table that the configuration's checks refuse (the message
    /// names the key), or a model that cannot be built from it.
    #[error("{0}")]
    InvalidConfig(String),
}

/// Why one example of a batch was refused.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ItemError {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    /// The single table of status codes and error codes.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::MalformedJson(_) => (S::BAD_REQUEST, "malformed_json"),
            ApiError::InvalidRequest(_) => (S::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::InvalidFeatures(FeatureError::TooMany { .. }) => {
                (S::UNPROCESSABLE_ENTITY, "too_many_features")
            }
            ApiError::InvalidFeatures(_) => (S::UNPROCESSABLE_ENTITY, "invalid_features"),
            ApiError::InvalidLabel(LabelError::UnknownClass(..)) => {
                (S::UNPROCESSABLE_ENTITY, "unknown_class")
            }
            ApiError::InvalidLabel(LabelError::WrongType(_) | LabelError::OutOfRange(_)) => {
                (S::UNPROCESSABLE_ENTITY, "invalid_label")
            }
            ApiError::InvalidBatch(_) => (S::UNPROCESSABLE_ENTITY, "invalid_batch"),
            ApiError::ModelNotFound(_) => (S::NOT_FOUND, "model_not_found"),
            ApiError::Join(JoinError::Unknown) => (S::NOT_FOUND, "unknown_prediction_id"),
            // Evicted for join.max_bytes: answered as an unknown id is (the
            // message says why), as one evicted for join.capacity is.
            ApiError::Join(JoinError::Evicted) => (S::NOT_FOUND, "unknown_prediction_id"),
            ApiError::Join(JoinError::Expired) => (S::UNPROCESSABLE_ENTITY, "prediction_expired"),
            ApiError::Join(JoinError::AlreadyLabelled) => (S::CONFLICT, "already_labelled"),
            ApiError::Join(JoinError::InFlight) => (S::CONFLICT, "label_in_flight"),
            ApiError::Join(JoinError::Repeated) => {
                (S::UNPROCESSABLE_ENTITY, "duplicate_prediction_id")
            }
            ApiError::RouteNotFound => (S::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::PayloadTooLarge(_) => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::QueueFull(_) => (S::TOO_MANY_REQUESTS, "queue_full"),
            ApiError::BatchTooLarge(_) | ApiError::TooManyInstances(_) => {
                (S::UNPROCESSABLE_ENTITY, "batch_too_large")
            }
            ApiError::Timeout => (S::SERVICE_UNAVAILABLE, "timeout"),
            ApiError::BodyTimeout(_) => (S::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::MalformedBody(_) => (S::BAD_REQUEST, "malformed_body"),
            ApiError::Overloaded => (S::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::FeedbackOverloaded | ApiError::FeedbackStarved => {
                (S::TOO_MANY_REQUESTS, "feedback_overloaded")
            }
            ApiError::ShuttingDown => (S::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::NotReady => (S::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::Unauthorized => (S::UNAUTHORIZED, "unauthorized"),
            ApiError::CrossSite(_) => (S::FORBIDDEN, "cross_site"),
            ApiError::SourceMismatch { .. } => (S::FORBIDDEN, "source_mismatch"),
            ApiError::RateLimited { .. } => (S::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::ExceedsBurst { .. } => (S::UNPROCESSABLE_ENTITY, "exceeds_burst"),
            ApiError::Rollback(RollbackError::NoLastGood) => (S::CONFLICT, "no_last_good"),
            ApiError::Rollback(RollbackError::NotRetained { .. }) => {
                (S::NOT_FOUND, "version_not_retained")
            }
            ApiError::Rollback(RollbackError::Unusable(_)) => (S::CONFLICT, "snapshot_unusable"),
            ApiError::Rollback(RollbackError::Failed(_)) => {
                (S::INTERNAL_SERVER_ERROR, "rollback_failed")
            }
            ApiError::SourceNotBlamed(_) => (S::NOT_FOUND, "source_not_blamed"),
            ApiError::GuardDisabled(_) => (S::CONFLICT, "guard_disabled"),
            ApiError::SnapshotDeferred(_) => (S::CONFLICT, "gate_holding"),
            ApiError::Storage(_) | ApiError::NotDurable(_) => {
                (S::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            ApiError::ModelExists(_) => (S::CONFLICT, "model_exists"),
            ApiError::ModelInConfig(_) => (S::CONFLICT, "model_in_config"),
            ApiError::ModelLimit(_) => (S::CONFLICT, "model_limit"),
            ApiError::InvalidConfig(_) => (S::UNPROCESSABLE_ENTITY, "invalid_config"),
            ApiError::IdempotencyKey(KeyError::InFlight) => {
                (S::CONFLICT, "idempotency_key_in_flight")
            }
            ApiError::IdempotencyKey(KeyError::Reused) => {
                (S::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ApiError::TrainerBusy(_) => (S::SERVICE_UNAVAILABLE, "trainer_busy"),
            ApiError::SnapshotStorage(_) => (S::INSUFFICIENT_STORAGE, "insufficient_storage"),
            ApiError::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The code of an error reported for one item of a batch.
    pub fn item(self, index: usize) -> ItemError {
        let (_, code) = self.status_and_code();
        ItemError {
            index,
            code,
            message: self.to_string(),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Full(_) => ApiError::QueueFull(e),
            QueueError::TooLarge { .. } => ApiError::BatchTooLarge(e),
            QueueError::Closed => ApiError::ShuttingDown,
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    items: Option<&'a [ItemError]>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "request failed");
        }
        let items = match &self {
            ApiError::InvalidBatch(items) => Some(items.as_slice()),
            _ => None,
        };
        let body = Body {
            error: ErrorBody {
                code,
                message: self.to_string(),
                items,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let ApiError::RateLimited { retry_after, .. } = &self {
            headers.insert(header::RETRY_AFTER, retry_after_s(retry_after).into());
        } else if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 7235: a 401 names the scheme it wants.
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::retry_after_s;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        for (wait, want) in [
            (Duration::ZERO, 1),
            (Duration::from_millis(1), 1),
            (Duration::from_secs(1), 1),
            (Duration::from_millis(1001), 2),
            (Duration::from_secs(10), 10),
            (Duration::from_nanos(10_000_000_001), 11),
        ] {
            assert_eq!(retry_after_s(&wait), want, "{wait:?}");
        }
    }
}
