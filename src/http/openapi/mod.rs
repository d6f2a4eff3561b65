//! The OpenAPI 3.1 description of the public API, generated from the
//! handlers' `#[utoipa::path]` attributes and the wire types' `ToSchema`
//! derives. `public_router` registers the handlers through
//! `utoipa_axum::routes!`, so a route is served only together with its
//! description. The document is served at `GET /openapi.json`, printed by
//! `eddy openapi`, and committed as `deploy/openapi.json` (a test fails
//! when that file is stale).
//!
//! What no handler attribute can say is added here: the refusals every
//! request behind the listener's admission may get (`http::admission`:
//! 400, 408, 413, 503), and the schemas of the wire types whose JSON is
//! written by hand (features, labels, probabilities).

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi as Document, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

mod wire;

pub use wire::Source;

/// The document's fixed parts; paths come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "eddy",
        description = "An online-learning model server: predicts over REST and keeps learning from labelled feedback. This is the public listener; the admin listener (`/metrics`, `/admin/...`) is described in the README.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "models", description = "What each model is and how far its training has come"),
        (name = "predict", description = "Predictions from the live version"),
        (name = "feedback", description = "Labelled examples for the trainer"),
        (name = "probes", description = "Liveness, readiness and this document"),
    ),
    components(schemas(ErrorResponse, ErrorDetail, super::error::ItemError)),
    modifiers(&Credentials),
)]
pub struct ApiDoc;

/// The bearer token of a feedback source (`[[sources]]`).
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "source_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A feedback source's token, needed on feedback when the server has `[[sources]]`",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every error answer: `{"error": {"code", "message", "items"?}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `model_not_found`, `invalid_features`, `queue_full` (README, "Errors").
    code: String,
    /// For people; its wording may change.
    message: String,
    /// `invalid_batch` only: why each refused example was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    items: Option<Vec<super::error::ItemError>>,
}

/// Completes a document the router produced: the admission refusals on
/// every operation that is not a probe, and `Retry-After` on every 429
/// and 503.
pub fn complete(mut doc: Document, probes: &[&str]) -> Document {
    for (path, item) in doc.paths.paths.iter_mut() {
        let admitted = !probes.contains(&path.as_str());
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            if admitted {
                let has_body = op.request_body.is_some();
                for (status, why) in ADMISSION_REFUSALS {
                    // Only a body can be malformed; a GET's is ignored.
                    if status != "400" || has_body {
                        add_error(op, status, why);
                    }
                }
            }
            for (status, response) in op.responses.responses.iter_mut() {
                if let (RefOr::T(response), "429" | "503") = (response, status.as_str()) {
                    response.headers.insert(
                        "Retry-After".into(),
                        RefOr::T(
                            HeaderBuilder::new()
                                .schema(Some(u64::schema()))
                                .description(Some("Seconds to wait before retrying"))
                                .build(),
                        ),
                    );
                }
            }
        }
    }
    doc
}

/// What `http::admission` and the limits around the router answer before
/// a handler runs.
const ADMISSION_REFUSALS: [(&str, &str); 4] = [
    (
        "400",
        "`malformed_json` (not JSON) or `malformed_body` (a broken body)",
    ),
    (
        "408",
        "`body_timeout`: the body did not arrive within server.body_read_timeout_ms",
    ),
    (
        "413",
        "`payload_too_large`: the body is over server.max_body_bytes",
    ),
    (
        "503",
        "`overloaded` (concurrency limit or body memory budget) or `timeout` (server.request_timeout_ms)",
    ),
];

/// Adds an error answer to `op`, or appends `why` to the one it has.
fn add_error(op: &mut Operation, status: &str, why: &str) {
    match op.responses.responses.get_mut(status) {
        Some(RefOr::T(response)) => {
            if !response.description.contains(why) {
                response.description = format!("{}; {why}", response.description);
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            let response = ResponseBuilder::new()
                .description(why)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(wire::reference::<ErrorResponse>()))
                        .build(),
                )
                .build();
            op.responses
                .responses
                .insert(status.to_owned(), RefOr::T(response));
        }
    }
}

/// The document as served and committed: pretty JSON with a final newline.
pub fn to_json(doc: &Document) -> String {
    let mut json = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    json.push('\n');
    json
}

/// The document, rendered once: it depends on this build alone, not on
/// the configuration.
static RENDERED: LazyLock<Bytes> =
    LazyLock::new(|| Bytes::from(to_json(&super::public_document())));

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "probes",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object)),
)]
pub async fn serve() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::clone(&RENDERED),
    )
        .into_response()
}
