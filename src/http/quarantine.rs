//! The quarantine's admin routes (admin listener, bearer token):
//!
//! - `GET /admin/models/{model}/quarantine?reason=&source=&after=&limit=`:
//!   a page of quarantined examples, oldest first (`limit` at most
//!   `MAX_PAGE`, default 100; `next` is the `after` of the next page).
//! - `POST /admin/models/{model}/quarantine/release`: the examples a body
//!   selects (`{"ids": [...]}`, `{"reason": "..."}`, `{"source": "..."}`,
//!   any together, or `{"all": true}`) are learned now, past the checks.
//! - `POST /admin/models/{model}/quarantine/drop`: the same selection is
//!   dropped.
//!
//! Release and drop are trainer steps, logged like every other, and each
//! is an event. A model whose guard is disabled answers 409
//! `guard_disabled`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::learn::{LabelSpace, Target};
use crate::serving::guard::{Held, Reason, Selector};
use crate::serving::trainer::TrainerCommand;

use super::admin::{AdminState, ask};
use super::body::parse;
use super::error::ApiError;
use super::model_name::ModelName;

/// Most examples one page holds.
pub const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;
/// Most ids one release or drop may name.
pub const MAX_IDS: usize = 100_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    reason: Option<String>,
    source: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectBody {
    ids: Option<Vec<u64>>,
    reason: Option<String>,
    source: Option<String>,
    #[serde(default)]
    all: bool,
}

fn reason(text: Option<String>) -> Result<Option<Reason>, ApiError> {
    text.map(|r| {
        Reason::parse(&r).ok_or_else(|| {
            let known: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
            ApiError::InvalidRequest(format!("unknown reason `{r}`; one of {known:?}"))
        })
    })
    .transpose()
}

pub async fn list(
    State(state): State<AdminState>,
    ModelName(model): ModelName,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let runtime = state.app.model(&model)?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!(
            "limit must lie in 1..={MAX_PAGE}"
        )));
    }
    let selector = Selector {
        ids: None,
        reason: reason(query.reason)?,
        source: query.source,
    };
    let page = ask(&state, &runtime, |reply| TrainerCommand::ListQuarantine {
        selector,
        after: query.after,
        limit,
        reply,
    })
    .await?
    .ok_or_else(|| ApiError::GuardDisabled(model.clone()))?;
    let examples: Vec<Value> = page
        .examples
        .iter()
        .map(|h| example_json(h, &runtime.space))
        .collect();
    Ok(Json(json!({
        "model": runtime.name.as_ref(),
        "total": page.total,
        "examples": examples,
        "next": page.next,
    }))
    .into_response())
}

pub async fn release(
    state: State<AdminState>,
    model: ModelName,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    act(state, model, body, true).await
}

pub async fn drop(
    state: State<AdminState>,
    model: ModelName,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    act(state, model, body, false).await
}

async fn act(
    State(state): State<AdminState>,
    ModelName(model): ModelName,
    body: axum::body::Bytes,
    release: bool,
) -> Result<Response, ApiError> {
    let runtime = state.app.model(&model)?;
    let body: SelectBody = parse(&body)?;
    if body.ids.as_ref().is_some_and(|ids| ids.len() > MAX_IDS) {
        return Err(ApiError::InvalidRequest(format!(
            "at most {MAX_IDS} ids at once"
        )));
    }
    let selector = Selector {
        ids: body.ids,
        reason: reason(body.reason)?,
        source: body.source,
    }
    .normalized();
    if selector.is_narrowed() == body.all {
        return Err(ApiError::InvalidRequest(
            "select examples by ids, reason and/or source, or with \"all\": true alone".into(),
        ));
    }
    let n = if release {
        ask(&state, &runtime, |reply| TrainerCommand::Release {
            selector,
            reply,
        })
        .await?
    } else {
        ask(&state, &runtime, |reply| TrainerCommand::Drop {
            selector,
            reply,
        })
        .await?
    }
    .ok_or_else(|| ApiError::GuardDisabled(model.clone()))?;
    let key = if release { "released" } else { "dropped" };
    Ok(Json(json!({ "model": runtime.name.as_ref(), key: n })).into_response())
}

/// A quarantined example as the listing shows it. Features are hashed
/// rows (names are not kept past the request), with their raw values.
fn example_json(h: &Held, space: &LabelSpace) -> Value {
    let label = match h.fb.target {
        Target::Class(k) if k < space.n_classes() => json!(space.class_key(k)),
        Target::Class(k) => json!(k),
        Target::Value(v) => json!(v),
    };
    let features: Vec<Value> =
        h.fb.features
            .features
            .iter()
            .map(|f| json!({ "row": f.index, "value": f.value, "numeric": f.numeric }))
            .collect();
    json!({
        "id": h.fb.position,
        "reason": h.reason,
        "detail": h.detail,
        "source": h.fb.source.as_deref(),
        "received_at": humantime::format_rfc3339_millis(h.fb.received_at).to_string(),
        "label": label,
        "features": features,
    })
}
