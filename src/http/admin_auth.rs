//! Who may use the admin listener's protected routes (every `/admin`
//! route and the status page).
//!
//! - With `admin.token` set: `Authorization: Bearer <token>` (the scheme
//!   in any case, RFC 7235), compared in constant time. The status page's
//!   three GET routes also take the token as the password of HTTP Basic
//!   authentication (RFC 7617, any user name), because a browser opening a
//!   page cannot send a bearer token; their 401 offers both schemes, as two
//!   `WWW-Authenticate` values so that browsers ask. Basic is not taken on
//!   the routes that change anything: a browser sends cached Basic
//!   credentials with any request to the host, also one a hostile page
//!   makes (cross-site request forgery).
//! - Without a token (allowed on loopback only) the routes are open, but
//!   only to this machine: a request whose `Host` is not a loopback
//!   address or `localhost` (DNS rebinding: a hostile name resolving to
//!   127.0.0.1) is refused.
//! - Either way a browser request from another site (`Sec-Fetch-Site`
//!   other than `same-origin` or `none`, or an `Origin` that is not the
//!   listener's) is refused: 403 `cross_site`. curl, scrapers and API
//!   clients send neither header.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::admin::AdminState;
use super::error::ApiError;
use super::sender::{credentials, presented_token};

/// The routes a browser opens: the status page, its script and its data.
pub const PAGE_ROUTES: [&str; 3] = ["/", "/status.js", "/admin/status"];

pub async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let open = state.token.is_empty();
    if let Some(why) = foreign(request.headers(), open) {
        return ApiError::CrossSite(why).into_response();
    }
    if open {
        return next.run(request).await;
    }
    let headers = request.headers();
    let page = request.method() == Method::GET && PAGE_ROUTES.contains(&request.uri().path());
    let presented = presented_token(headers).map(Cow::Borrowed).or_else(|| {
        page.then(|| basic_password(headers))
            .flatten()
            .map(Cow::Owned)
    });
    let presented: &[u8] = presented.as_deref().unwrap_or(b"");
    if bool::from(presented.ct_eq(state.token.as_bytes())) {
        return next.run(request).await;
    }
    let mut response = ApiError::Unauthorized.into_response();
    if page {
        // Two values, not one list: browsers ask for Basic credentials
        // only when it is a challenge of its own.
        response.headers_mut().append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"eddy admin\", charset=\"UTF-8\""),
        );
    }
    response
}

/// Why a request comes from somewhere the admin listener does not serve:
/// another site, or (open listener) a name that is not this machine's.
fn foreign(headers: &HeaderMap, open: bool) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Some(format!(
            "a browser request from another site (Sec-Fetch-Site: {})",
            String::from_utf8_lossy(site.as_bytes())
        ));
    }
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = host.is_some_and(|h| {
            [b"http://".as_slice(), b"https://"]
                .iter()
                .any(|scheme| origin.as_bytes() == [scheme, h].concat().as_slice())
        });
        if !own {
            return Some(format!(
                "a browser request from another origin ({})",
                String::from_utf8_lossy(origin.as_bytes())
            ));
        }
    }
    match host {
        Some(h) if open && !is_loopback_host(h) => Some(format!(
            "the admin listener has no token, so it answers loopback names only, not Host {}",
            String::from_utf8_lossy(h)
        )),
        _ => None,
    }
}

/// `127.0.0.1:9090`, `[::1]:9090`, `localhost:9090` (any port or none).
fn is_loopback_host(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    if let Ok(addr) = host.parse::<SocketAddr>() {
        return addr.ip().is_loopback();
    }
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return ip.is_loopback();
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    name.eq_ignore_ascii_case("localhost")
}

/// The password of an `Authorization: Basic` header (RFC 7617).
fn basic_password(headers: &HeaderMap) -> Option<Vec<u8>> {
    use base64::Engine;
    let encoded = credentials(headers, b"basic")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn loopback_names_are_this_machines() {
        for host in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "[::1]:9090",
            "[::1]",
            "localhost",
            "LOCALHOST:1",
        ] {
            assert!(is_loopback_host(host.as_bytes()), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9090",
            "10.0.0.1:9090",
            "localhost.evil.example",
            "",
        ] {
            assert!(!is_loopback_host(host.as_bytes()), "{host}");
        }
    }

    #[test]
    fn browsers_from_elsewhere_are_foreign() {
        let own = [("host", "127.0.0.1:9090")];
        assert_eq!(foreign(&headers(&own), true), None);
        assert_eq!(
            foreign(
                &headers(&[
                    ("host", "127.0.0.1:9090"),
                    ("origin", "http://127.0.0.1:9090"),
                    ("sec-fetch-site", "same-origin")
                ]),
                true
            ),
            None
        );
        assert_eq!(
            foreign(
                &headers(&[("host", "127.0.0.1:9090"), ("sec-fetch-site", "none")]),
                true
            ),
            None
        );
        for bad in [
            headers(&[("host", "127.0.0.1:9090"), ("sec-fetch-site", "cross-site")]),
            headers(&[("host", "127.0.0.1:9090"), ("sec-fetch-site", "same-site")]),
            headers(&[
                ("host", "127.0.0.1:9090"),
                ("origin", "http://evil.example"),
            ]),
            headers(&[("host", "127.0.0.1:9090"), ("origin", "null")]),
            headers(&[("host", "rebound.evil.example:9090")]),
        ] {
            assert!(foreign(&bad, true).is_some(), "{bad:?}");
        }
        // With a token any name may reach the listener (a proxy, a Service).
        assert_eq!(
            foreign(&headers(&[("host", "eddy-admin.prod:9090")]), false),
            None
        );
    }

    #[test]
    fn a_basic_password_is_what_follows_the_first_colon() {
        // "ops:s3:cret"
        let h = headers(&[("authorization", "Basic b3BzOnMzOmNyZXQ=")]);
        assert_eq!(basic_password(&h).as_deref(), Some(b"s3:cret".as_slice()));
        assert_eq!(
            basic_password(&headers(&[("authorization", "Basic !!!")])),
            None
        );
        assert_eq!(
            basic_password(&headers(&[("authorization", "Bearer x")])),
            None
        );
    }
}
