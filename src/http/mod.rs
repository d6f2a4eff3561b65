//! The public HTTP API: router assembly, shared state and the middleware
//! stack (panic catching, tracing; around the router, `protect`: body
//! reading under limits, load shedding, a concurrency limit and a request
//! timeout, each failure turned into the JSON error shape). Connections
//! (accepting, TLS, connection timeouts and limits) are `listener`'s.
//!
//! Wire types (request and response structs) live in the handler modules
//! and are converted explicitly to domain types; nothing below `http`
//! knows about JSON envelopes.

pub mod admin;
pub mod admin_auth;
pub mod admission;
pub mod body;
pub mod error;
pub mod feedback;
pub mod health;
pub mod listener;
pub mod model_name;
pub mod models;
pub mod models_admin;
pub mod openapi;
pub mod predict;
pub mod quarantine;
pub mod refusals;
pub mod sender;
pub mod source;
pub mod status;

use std::any::Any;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::{ListenerLimits, ServerConfig};
use crate::metrics::{HttpLabels, Metrics, RouteLabel};
use crate::serving::ingest::IngestPool;
use crate::serving::sources::FeedbackSources;
use crate::serving::{ModelRuntime, Registry};

use admission::Admission;
use error::ApiError;
use refusals::Refusals;

/// What every request shares. Handlers get it through one `Arc`, so
/// extracting the state costs a single reference-count increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    /// The served models: replaced whole when one is added or deleted at
    /// runtime (`http::models_admin`), read without locks.
    pub registry: Arc<ArcSwap<Registry>>,
    /// Readiness latch: set by `app` once trainers run, cleared at shutdown.
    pub ready: AtomicBool,
    /// `server.max_body_bytes`, for the 413 message.
    pub max_body_bytes: usize,
    /// `server.max_batch_instances`: bounds one predict's work, its answer
    /// (held until the client reads it) and the ids it adds to the join
    /// cache.
    pub max_batch_instances: usize,
    pub metrics: Metrics,
    /// The feedback threads and their admission limit: feedback work runs
    /// there, not on the runtime threads that answer predict.
    pub ingest: IngestPool,
    /// Feedback credentials and per-source rate limits (their state is
    /// behind their own locks and atomics).
    pub sources: Arc<FeedbackSources>,
    /// The longest `feedback?wait=published` waits: nine tenths of
    /// `server.request_timeout_ms`, so the answer beats the timeout.
    pub max_publish_wait: std::time::Duration,
}

impl AppState {
    pub fn new(
        registry: Registry,
        max_body_bytes: usize,
        max_batch_instances: usize,
        ingest: IngestPool,
        sources: FeedbackSources,
        request_timeout: std::time::Duration,
    ) -> Self {
        let sources = Arc::new(sources);
        let registry = Arc::new(ArcSwap::from_pointee(registry));
        let mut metrics = Metrics::new(Arc::clone(&registry));
        metrics.register_sources(Arc::clone(&sources));
        Self(Arc::new(Shared {
            registry,
            ready: AtomicBool::new(false),
            max_body_bytes,
            max_batch_instances,
            metrics,
            ingest,
            sources,
            max_publish_wait: request_timeout.mul_f64(0.9),
        }))
    }

    pub fn model(&self, name: &str) -> Result<Arc<ModelRuntime>, ApiError> {
        self.0
            .registry
            .load()
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::ModelNotFound(name.to_owned()))
    }

    /// The served models now (a snapshot of the registry: models added or
    /// deleted after the call are not in it).
    pub fn models(&self) -> Arc<Registry> {
        self.0.registry.load_full()
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Route templates of the public API; also the `route` metric label.
/// `public_routes` serves exactly these (a test compares them with the
/// OpenAPI document it produces).
pub const ROUTES: [&str; 7] = [
    "/v1/models",
    "/v1/models/{model}",
    "/v1/models/{model}/predict",
    "/v1/models/{model}/feedback",
    "/healthz",
    "/readyz",
    "/openapi.json",
];

/// Every public route, registered together with its OpenAPI description.
fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(models::list))
        .routes(routes!(models::show))
        .routes(routes!(predict::predict))
        .routes(routes!(feedback::feedback))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(openapi::serve))
}

/// The public API's OpenAPI document (`GET /openapi.json`,
/// `eddy openapi`, `deploy/openapi.json`).
pub fn public_document() -> utoipa::openapi::OpenApi {
    openapi::complete(public_routes().into_openapi(), PUBLIC_PROBES)
}

/// The public routes, with the layers that work per route: panics become
/// 500s, bodies are limited. Load shedding, the concurrency limit and the
/// timeout are added around the whole router by `protect`.
pub fn public_router(state: AppState, server: &ServerConfig) -> Router {
    let limit = server.max_body_bytes.get();
    let (routes, _) = public_routes().split_for_parts();
    let router = routes
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state.clone())
        // One layer call: each `Router::layer` wraps every route in another
        // boxed service that is cloned per request.
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(state, track))
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(DefaultBodyLimit::max(limit)),
        );
    // Per-request spans cost a measurable share of a predict, so they are
    // added only when debug logging is on at start-up.
    if tracing::enabled!(tracing::Level::DEBUG) {
        router.layer(TraceLayer::new_for_http())
    } else {
        router
    }
}

/// The public listener's probes: answered without a concurrency slot.
pub const PUBLIC_PROBES: &[&str] = &[ROUTES[4], ROUTES[5], ROUTES[6]];

/// Whether `path` is a model's feedback route, whose requests keep their
/// own admission limit (`server.feedback_concurrency`, the feedback
/// threads) instead of a `max_concurrency` slot.
pub fn is_feedback(path: &str) -> bool {
    path.strip_prefix("/v1/models/")
        .and_then(|rest| rest.strip_suffix("/feedback"))
        .is_some_and(|model| !model.is_empty() && !model.contains('/'))
}

/// Wraps a listener's router in its protections (`Admission`): probes
/// pass straight through; other requests have their body read under a
/// deadline, a size limit and a memory budget, then take a concurrency
/// slot (load shedding beyond it) and run under a request timeout, every
/// refusal answered in JSON and counted. The limit must sit outside the
/// router: axum's router does not pass `poll_ready` backpressure on to
/// per-route layers, so a concurrency limit applied with `Router::layer`
/// limits nothing.
pub fn protect(
    router: Router,
    limits: &ListenerLimits,
    refusals: Refusals,
    probes: &'static [&'static str],
    own_limit: fn(&str) -> bool,
) -> Admission<
    impl Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static,
> {
    let counted = refusals.clone();
    let limited = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(move |err: tower::BoxError| {
            let refusals = counted.clone();
            async move { admission::limit_error(&refusals, err) }
        }))
        .load_shed()
        .concurrency_limit(limits.max_concurrency)
        .timeout(limits.request_timeout)
        .service(router.clone());
    let settings = admission::Settings::new(limits, probes, own_limit, refusals);
    Admission::new(router, limited, settings)
}

/// Counts every routed request and its latency, labelled by the matched
/// route template so the label set stays bounded.
async fn track(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    // Static labels: counting a request allocates nothing.
    let route = matched
        .and_then(|m| ROUTES.iter().find(|r| **r == m.as_str()))
        .copied()
        .unwrap_or("unmatched");
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "other",
    };
    let response = next.run(request).await;
    let metrics = &state.metrics;
    metrics
        .http_duration
        .get_or_create(&RouteLabel { route })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

fn panic_response(cause: Box<dyn Any + Send + 'static>) -> Response {
    let cause = cause
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| cause.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::Internal(format!("handler panicked: {cause}")).into_response()
}
