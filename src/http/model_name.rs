//! `ModelName`: the `{model}` path segment, with a rejection in the JSON
//! error shape (a segment that is not valid UTF-8 names no model: 404).

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::ApiError;

pub struct ModelName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ModelName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(ModelName(name)),
            Err(_) => Err(ApiError::ModelNotFound(
                String::from_utf8_lossy(parts.uri.path().as_bytes()).into_owned(),
            )),
        }
    }
}
