//! Path extractors with rejections in the JSON error shape: `ModelName`
//! (the `{model}` segment; one that is not valid UTF-8 names no model:
//! 404) and `SourceName` (the `{source}` segment of admin routes).

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;

use super::error::ApiError;

pub struct ModelName(pub String);

pub struct SourceName(pub String);

/// The decoded value of the path parameter `name`, if it is valid UTF-8.
async fn param<S: Send + Sync>(parts: &mut Parts, state: &S, name: &str) -> Option<String> {
    let params = RawPathParams::from_request_parts(parts, state).await.ok()?;
    params
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

impl<S: Send + Sync> FromRequestParts<S> for ModelName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match param(parts, state, "model").await {
            Some(name) => Ok(ModelName(name)),
            None => Err(ApiError::ModelNotFound(
                String::from_utf8_lossy(parts.uri.path().as_bytes()).into_owned(),
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SourceName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match param(parts, state, "source").await {
            Some(name) => Ok(SourceName(name)),
            None => Err(ApiError::InvalidRequest(
                "the source in the path is not valid UTF-8".into(),
            )),
        }
    }
}
