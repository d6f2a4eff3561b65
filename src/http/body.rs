//! `JsonBody`: the request-body extractor every JSON route uses. It
//! enforces the body limit with an `ApiError` and leaves
//! parsing to `parse`, which borrows from the body so feature names are not
//! copied. The content type is not checked: the body must be JSON
//! whatever the header says (so `curl -d` works), and a body that is not
//! JSON answers 400 `malformed_json`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;

/// The raw body of a JSON request, within the configured size limit.
pub struct JsonBody(pub Bytes);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(JsonBody(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge(state.max_body_bytes))
            }
            Err(rejection) => Err(ApiError::InvalidRequest(format!(
                "could not read the request body: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// Parses a JSON object, telling syntax errors (400) from shape errors
/// (422). Every request body is an object: serde would also read a struct
/// from an array of its fields in order, which no client means.
pub fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first.is_some_and(|b| *b != b'{') {
        return match parsed::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => Err(ApiError::InvalidRequest(
                "the request body must be a JSON object".into(),
            )),
            Err(e) => Err(e),
        };
    }
    parsed(bytes)
}

fn parsed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::InvalidRequest(e.to_string()),
        // JSON has no NaN or infinity; a literal beyond f64's range is the
        // only way to send one, and it is refused as a value, not as syntax.
        _ if e.to_string().starts_with("number out of range") => {
            ApiError::InvalidRequest(format!("a number is not finite (out of range): {e}"))
        }
        _ => ApiError::MalformedJson(e.to_string()),
    })
}

/// A JSON response serialized into a buffer sized for a typical answer,
/// so small responses are written without regrowing it.
pub fn json_response<T: serde::Serialize>(value: &T) -> Result<axum::response::Response, ApiError> {
    let mut buf = Vec::with_capacity(256);
    serde_json::to_writer(&mut buf, value).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        buf,
    )
        .into_response())
}
