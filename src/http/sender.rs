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
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};

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
        let found =
            presented_token(&parts.headers).and_then(|token| state.sources.authenticate(token));
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
                    && state.models().get(model).is_some()
                {
                    state.sources.count_unauthorized(model);
                    state.metrics.feedback_refused(model, "unauthorized");
                }
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// The bearer token of a request's one `Authorization` header. A request
/// with several presents no token: which one would count is ambiguous, and
/// proxies and servers differ on it (RFC 9110 allows the field once).
pub fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    credentials(headers, b"bearer")
}

/// The credentials after `scheme` in a request's one `Authorization`
/// header (none when it has several, see `presented_token`).
pub fn credentials<'h>(headers: &'h HeaderMap, scheme: &[u8]) -> Option<&'h [u8]> {
    let value = single(headers, header::AUTHORIZATION.as_str()).ok()??;
    scheme_credentials(value.as_bytes(), scheme)
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    scheme_credentials(value, b"bearer")
}

/// What follows `scheme` in an `Authorization` value. The scheme is
/// case-insensitive (RFC 7235, section 2.1: `bearer`, `BEARER`), and one or
/// more spaces separate it from the credentials; anything else is none.
fn scheme_credentials<'v>(value: &'v [u8], scheme: &[u8]) -> Option<&'v [u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (named, rest) = value.split_at(space);
    if !named.eq_ignore_ascii_case(scheme) {
        return None;
    }
    let credentials = rest.trim_ascii();
    (!credentials.is_empty()).then_some(credentials)
}

/// The one value of header `name`, if present; two or more are refused:
/// which one counts is ambiguous, and a proxy and a server could each
/// read another.
pub fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h HeaderValue>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::InvalidRequest(format!(
            "the {name} header is given more than once"
        )));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, presented_token};
    use axum::http::{HeaderMap, HeaderValue, header};

    #[test]
    fn a_request_with_two_authorization_headers_presents_no_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        assert_eq!(presented_token(&headers), Some(&b"a"[..]));
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(presented_token(&headers), None);
    }

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
