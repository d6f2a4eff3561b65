//! The admin listener's status page: `GET /` (HTML), `GET /status.js`
//! (its script) and `GET /admin/status` (its data: per model the version,
//! training state, queue, quality now and over time, quarantine and the
//! newest events). The page is self-contained (no CDN, no build step):
//! it draws its charts as SVG and refreshes itself every two seconds.
//!
//! Built for many models: with at most `FULL_ROWS_UP_TO` the data holds
//! every model in full (history and events, `rows::FullRow`), and the
//! page shows a card per model; with more, it holds a page of compact
//! list rows (`rows::ListRow`, `?limit=&after=` in name order as
//! `GET /v1/models` pages), the page shows them as a table, and a model's
//! card (its detail view, `#model=NAME`) asks for that model alone
//! (`?model=NAME`).
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

mod rows;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::serving::ModelRuntime;
use crate::serving::trainer::epoch_ms;

use self::rows::{FullRow, ListRow};
use super::AppState;
use super::admin::AdminState;
use super::body::json_response;
use super::error::ApiError;
use super::models::MAX_PAGE;

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

/// The answer without `?model=` or `?limit=` holds full rows up to this
/// many models (as before pages existed), else the first page of list
/// rows: a naive poller never pulls megabytes.
const FULL_ROWS_UP_TO: usize = 20;

/// List rows in the answer without `?limit=`.
const OVERVIEW_PAGE: usize = 100;

/// Full rows: every model (at most `FULL_ROWS_UP_TO`) or the one named.
#[derive(Serialize)]
struct Status<'a> {
    generated_at_ms: u64,
    /// `admin.status_sample_ms`: the spacing of `history` points at most.
    sample_ms: u64,
    models: Vec<FullRow<'a>>,
}

/// A page of list rows in name order; `next` is what tells it from
/// `Status`.
#[derive(Serialize)]
struct StatusPage<'a> {
    generated_at_ms: u64,
    sample_ms: u64,
    /// Models the server hosts.
    total: usize,
    models: Vec<ListRow<'a>>,
    /// The `after` of the next page, or null after the last one.
    next: Option<&'a str>,
}

/// `GET /admin/status`'s parameters. Others are ignored.
#[derive(Deserialize)]
pub struct StatusQuery {
    /// The `generated_at_ms` of the answer before, so that only newer
    /// history points are sent (the page keeps the older ones).
    #[serde(default)]
    since: u64,
    /// Only this model, in full.
    model: Option<String>,
    /// A page of list rows, 1 to `MAX_PAGE`, in name order.
    limit: Option<usize>,
    /// With `limit`: the models named after this one.
    after: Option<String>,
}

/// What an answer holds, from the query.
enum View {
    /// Every model in full up to `FULL_ROWS_UP_TO`, else the first
    /// `OVERVIEW_PAGE` list rows.
    Overview {
        since: u64,
    },
    One {
        name: String,
        since: u64,
    },
    Page {
        after: Option<String>,
        limit: usize,
    },
}

impl View {
    fn of(query: StatusQuery) -> Result<Self, ApiError> {
        let StatusQuery {
            since,
            model,
            limit,
            after,
        } = query;
        match (model, limit) {
            (Some(_), _) if limit.is_some() || after.is_some() => Err(ApiError::InvalidRequest(
                "model goes without limit and after".into(),
            )),
            (Some(name), _) => Ok(View::One { name, since }),
            (None, None) if after.is_some() => {
                Err(ApiError::InvalidRequest("after goes with limit".into()))
            }
            (None, None) => Ok(View::Overview { since }),
            (None, Some(limit)) if !(1..=MAX_PAGE).contains(&limit) => Err(
                ApiError::InvalidRequest(format!("limit must be 1 to {MAX_PAGE}")),
            ),
            (None, Some(limit)) => Ok(View::Page { after, limit }),
        }
    }

    /// History points after this time are sent (list rows have none).
    fn since(&self) -> u64 {
        match self {
            View::Overview { since } | View::One { since, .. } => *since,
            View::Page { .. } => 0,
        }
    }
}

/// `GET /admin/status`: what the page shows. `?model=NAME`: that model
/// in full (404 when there is none); `?limit=N&after=NAME`: a page of
/// list rows; neither: every model in full, or with more than
/// `FULL_ROWS_UP_TO` the first `OVERVIEW_PAGE` list rows.
pub async fn status(
    State(state): State<AdminState>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let view = View::of(query)?;
    // Off the runtime's threads: with many models the answer is large,
    // and predict must not wait behind it.
    tokio::task::spawn_blocking(move || answer(&state, &view))
        .await
        .map_err(|e| ApiError::Internal(format!("status: {e}")))?
}

fn answer(state: &AdminState, view: &View) -> Result<Response, ApiError> {
    let generated_at_ms = epoch_ms();
    let sample_ms = state.status_sample_ms;
    match models(&state.app, view) {
        Picked::Full(models) => {
            if let (View::One { name, .. }, true) = (view, models.is_empty()) {
                return Err(ApiError::ModelNotFound(name.clone()));
            }
            let since = view.since();
            json_response(&Status {
                generated_at_ms,
                sample_ms,
                models: models.iter().map(|m| rows::full(m, since)).collect(),
            })
        }
        Picked::Page {
            models,
            more,
            total,
        } => json_response(&StatusPage {
            generated_at_ms,
            sample_ms,
            total,
            next: more.then(|| models.last().map(|m| &*m.name)).flatten(),
            models: models.iter().map(|m| rows::listed(m)).collect(),
        }),
    }
}

enum Picked {
    /// Every model in configuration order, or the one named (none when
    /// there is no such model).
    Full(Vec<Arc<ModelRuntime>>),
    /// Models in name order, whether more follow, and how many there are.
    Page {
        models: Vec<Arc<ModelRuntime>>,
        more: bool,
        total: usize,
    },
}

/// The models `view` shows, read from the registry at once: the only
/// place this module touches it.
fn models(app: &AppState, view: &View) -> Picked {
    let registry = app.models();
    let page = |after, limit| {
        let (models, more) = registry.page(after, limit);
        Picked::Page {
            models: models.into_iter().cloned().collect(),
            more,
            total: registry.len(),
        }
    };
    match view {
        View::Overview { .. } if registry.len() <= FULL_ROWS_UP_TO => {
            Picked::Full(registry.iter().cloned().collect())
        }
        View::Overview { .. } => page(None, OVERVIEW_PAGE),
        View::One { name, .. } => Picked::Full(registry.get(name).into_iter().cloned().collect()),
        View::Page { after, limit } => page(after.as_deref(), *limit),
    }
}
