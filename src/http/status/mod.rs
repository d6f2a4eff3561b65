//! The admin listener's status page: `GET /` (HTML), `GET /status.js`
//! (its script) and `GET /admin/status` (its data: per model the version,
//! training state, queue, quality now and over time, quarantine and the
//! newest events). The page is self-contained (no CDN, no build step):
//! it draws its charts as SVG and refreshes itself every two seconds.
//!
//! All three are behind the admin token like every `/admin` route. A
//! browser cannot send a bearer token when it opens a page, so the admin
//! listener also takes the token as the password of HTTP Basic
//! authentication (any user name), and its 401 offers both schemes: the
//! browser asks once and sends the credentials with the page's fetches.
//!
//! The page writes whatever the server sends (model and source names,
//! event reasons) with `textContent`, never as HTML, and is served with a
//! Content-Security-Policy that allows only its own script and data.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::learn::{Family, Figures, TaskKind};
use crate::serving::ModelRuntime;
use crate::serving::events::Event;
use crate::serving::history::StatusPoint;
use crate::serving::trainer::epoch_ms;

use super::admin::AdminState;
use super::body::json_response;
use super::error::ApiError;

/// Events each model shows on the page, newest last.
const EVENTS_SHOWN: usize = 30;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");

/// Own script and same-origin fetches only; no frames, forms or plugins.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the page.
pub async fn page() -> Response {
    static_asset(PAGE, "text/html; charset=utf-8")
}

/// `GET /status.js`: the page's script.
pub async fn script() -> Response {
    static_asset(SCRIPT, "text/javascript; charset=utf-8")
}

fn static_asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Serialize)]
struct Status<'a> {
    generated_at_ms: u64,
    /// `admin.status_sample_ms`: the spacing of `history` points at most.
    sample_ms: u64,
    models: Vec<ModelStatus<'a>>,
}

#[derive(Serialize)]
struct ModelStatus<'a> {
    name: &'a str,
    task: TaskKind,
    family: Family,
    version: u64,
    /// `running` or `paused`.
    training: &'static str,
    queue_depth: usize,
    queue_capacity: usize,
    examples_trained: u64,
    last_good_version: Option<u64>,
    monitor_enabled: bool,
    live: Figures,
    baseline: Figures,
    /// Examples in quarantine now.
    quarantined: usize,
    /// Oldest first, recorded after `?since=`; a point only when
    /// something changed.
    history: Vec<StatusPoint>,
    /// The newest `EVENTS_SHOWN`, oldest first.
    events: Vec<Event>,
}

/// `?since=`: the `generated_at_ms` of the answer before, so that only
/// newer history points are sent (the page keeps the older ones).
#[derive(Deserialize)]
pub struct StatusQuery {
    #[serde(default)]
    since: u64,
}

/// `GET /admin/status`: what the page shows.
pub async fn status(
    State(state): State<AdminState>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    // Off the runtime's threads: with many models the answer is large,
    // and predict must not wait behind it.
    tokio::task::spawn_blocking(move || {
        let generated_at_ms = epoch_ms();
        let all = state.app.models();
        let models = all.iter().map(|m| model_status(m, query.since)).collect();
        json_response(&Status {
            generated_at_ms,
            sample_ms: state.status_sample_ms,
            models,
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("status: {e}")))?
}

fn model_status(m: &ModelRuntime, since_ms: u64) -> ModelStatus<'_> {
    let report = m.stats.monitor.load();
    ModelStatus {
        name: &m.name,
        task: m.config.task,
        family: m.config.family,
        version: m.store.live().version,
        training: m.stats.training_state(),
        queue_depth: m.queue.depth(),
        queue_capacity: m.queue.capacity(),
        examples_trained: m.stats.examples_trained_total(),
        last_good_version: report.last_good_version,
        monitor_enabled: report.enabled,
        live: report.live.figures,
        baseline: report.baseline.figures,
        quarantined: m.stats.guard.load().quarantined,
        history: m.history.points_since(since_ms),
        events: m.events.newest(EVENTS_SHOWN),
    }
}
