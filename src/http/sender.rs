//! `Sender`: who sent a feedback request, decided from its headers alone,
//! before the request is admitted to the feedback threads and before its
//! body is parsed, so an unauthenticated flood costs neither a feedback
//! slot nor parsing.
//!
//! With `[[sources]]` configured, a request must carry `Authorization:
//! Bearer <token>` with one of their tokens (matched in constant time,
//! `serving::sources`); otherwise it is answered 401 `unauthorized` with
//! `WWW-Authenticate: Bearer` and counted in
//! `eddy_feedback_unauthorized_total`. Without `[[sources]]` every request
//! passes and its sources are whatever it declares.

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::header;
use axum::http::request::Parts;

use crate::serving::sources::Credential;

use super::AppState;
use super::error::ApiError;

/// The credential a feedback request presented; `None` when sources are
/// self-declared (no `[[sources]]`).
pub struct Sender(pub Option<Arc<Credential>>);

impl FromRequestParts<AppState> for Sender {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !state.sources.requires_token() {
            return Ok(Sender(None));
        }
        let found = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()))
            .and_then(|token| state.sources.authenticate(token));
        match found {
            Some(credential) => Ok(Sender(Some(credential))),
            None => {
                // Counted under the model only when it is configured: the
                // path is the client's.
                let params = RawPathParams::from_request_parts(parts, state).await;
                if let Some((_, model)) = params
                    .as_ref()
                    .ok()
                    .and_then(|p| p.iter().find(|(k, _)| *k == "model"))
                    && state.registry.get(model).is_some()
                {
                    state.sources.count_unauthorized(model);
                    state.metrics.feedback_refused(model, "unauthorized");
                }
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 7235, section 2.1: `bearer`, `BEARER`), and one or
/// more spaces separate it from the token; anything else is no token.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("Bearer    abc", Some("abc")),
            ("Bearer abc def", Some("abc def")),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
            ("Basic abc", None),
            ("abc", None),
            ("", None),
        ];
        for (value, want) in cases {
            assert_eq!(
                bearer_token(value.as_bytes()),
                want.map(str::as_bytes),
                "{value:?}"
            );
        }
    }
}
