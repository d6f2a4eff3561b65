//! The public HTTP API: router assembly, shared state and the middleware
//! stack (panic catching, tracing, load shedding, a concurrency limit and a
//! request timeout, each failure turned into the JSON error shape).
//!
//! Wire types (request and response structs) live in the handler modules
//! and are converted explicitly to domain types; nothing below `http`
//! knows about JSON envelopes.

pub mod admin;
pub mod body;
pub mod error;
pub mod feedback;
pub mod health;
pub mod model_name;
pub mod models;
pub mod predict;
pub mod source;

use std::any::Any;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::config::ServerConfig;
use crate::metrics::{HttpLabels, Metrics, RouteLabel};
use crate::serving::ingest::IngestPool;
use crate::serving::{ModelRuntime, Registry};

use error::ApiError;

/// What every request shares. Handlers get it through one `Arc`, so
/// extracting the state costs a single reference-count increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    /// Immutable after start-up.
    pub registry: Registry,
    /// Readiness latch: set by `app` once trainers run, cleared at shutdown.
    pub ready: AtomicBool,
    /// `server.max_body_bytes`, for the 413 message.
    pub max_body_bytes: usize,
    pub metrics: Metrics,
    /// The feedback threads and their admission limit: feedback work runs
    /// there, not on the runtime threads that answer predict.
    pub ingest: IngestPool,
}

impl AppState {
    pub fn new(registry: Registry, max_body_bytes: usize, ingest: IngestPool) -> Self {
        let metrics = Metrics::new(registry.iter().cloned().collect());
        Self(Arc::new(Shared {
            registry,
            ready: AtomicBool::new(false),
            max_body_bytes,
            metrics,
            ingest,
        }))
    }

    pub fn model(&self, name: &str) -> Result<&Arc<ModelRuntime>, ApiError> {
        self.0
            .registry
            .get(name)
            .ok_or_else(|| ApiError::ModelNotFound(name.to_owned()))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Route templates of the public API; also the `route` metric label.
const ROUTES: [&str; 6] = [
    "/v1/models",
    "/v1/models/{model}",
    "/v1/models/{model}/predict",
    "/v1/models/{model}/feedback",
    "/healthz",
    "/readyz",
];

/// The public routes, with the layers that work per route: panics become
/// 500s, bodies are limited. Load shedding, the concurrency limit and the
/// timeout are added around the whole router by `protect`.
pub fn public_router(state: AppState, server: &ServerConfig) -> Router {
    let limit = server.max_body_bytes.get();
    let router = Router::new()
        .route(ROUTES[0], get(models::list))
        .route(ROUTES[1], get(models::show))
        .route(ROUTES[2], post(predict::predict))
        .route(ROUTES[3], post(feedback::feedback))
        .route(ROUTES[4], get(health::live))
        .route(ROUTES[5], get(health::ready))
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

/// Wraps the router in the listener-wide protections: a request timeout, a
/// concurrency limit and load shedding beyond it, their errors turned into
/// JSON. They must sit outside the router: axum's router does not pass
/// `poll_ready` backpressure on to per-route layers, so a concurrency limit
/// applied with `Router::layer` limits nothing.
pub fn protect(
    router: Router,
    server: &ServerConfig,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(HandleErrorLayer::new(middleware_error))
        .load_shed()
        .concurrency_limit(server.max_concurrency.get())
        .timeout(server.request_timeout())
        .service(router)
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

async fn middleware_error(err: tower::BoxError) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::Timeout
    } else if err.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Overloaded
    } else {
        ApiError::Internal(err.to_string())
    }
}

fn panic_response(cause: Box<dyn Any + Send + 'static>) -> Response {
    let cause = cause
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| cause.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::Internal(format!("handler panicked: {cause}")).into_response()
}
