//! `POST /v1/models/{model}/feedback`: labelled examples for the trainer.
//!
//! One example is `{"features": ..., "label": ...}` or
//! `{"prediction_id": "...", "label": ...}`; a batch is
//! `{"examples": [...], "source": "..."}`. The source of an example is its
//! own `source`, else the batch's, else the `X-Eddy-Source` header.
//!
//! A request is handled in three steps so that it is applied whole or not
//! at all: validate every example (features, label, shape); under the join
//! cache's lock check and claim every `prediction_id`; reserve queue room
//! for all examples and append them without that lock; only then commit
//! the claims (or, on failure, put them back). A single example that
//! fails answers its own status (404 unknown id, 409 already labelled or
//! being labelled by a concurrent request, 422 otherwise); a batch with any failure answers 422 `invalid_batch` with a
//! reason per failing example.
//!
//! With `?wait=published` the 202 waits (at most `timeout_ms`) until the
//! trainer's `Settled` mark passes the request's last log position: its
//! examples are in a published version or were kept out of it.
//!
//! All of that runs on a feedback thread (`serving::ingest`), not on the
//! runtime that answers predict. A request is admitted there before its
//! body is read; beyond `server.feedback_concurrency` admitted requests it
//! answers 429 `feedback_overloaded` (`Retry-After`) with its body
//! discarded unparsed, so nothing of it is applied.
//!
//! Who sent it is settled before that, from the headers (`http::sender`):
//! with `[[sources]]` configured a request needs a bearer token, and its
//! examples' source is the token's name; a `source` in the body (batch or
//! example) or an `X-Eddy-Source` header naming anyone else is refused
//! whole with 403 `source_mismatch` (naming the same source is fine).
//! Without `[[sources]]`, sources are self-declared. Each source's rate
//! limit (`serving::sources`, in examples) is charged last, once the
//! request has passed every check, the join and the queue reservation, so
//! a request refused for any of those costs no quota; a charge whose log
//! append then fails is given back. Over the limit: 429 `rate_limited`
//! with `Retry-After`; more examples from one source than its burst: 422
//! `exceeds_burst`. Nothing of either is applied.

use std::borrow::Cow;
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::HttpBody;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admission::BodyPermit;
use crate::learn::{FeatureVec, RawFeatures, RawLabel, Target};
use crate::persist::wal::Durable;
use crate::serving::idempotency::{Begin, KeyRecord, MAX_KEY_BYTES};
use crate::serving::ingest::{Admission, Gate, IngestError};
use crate::serving::queue::Prescored;
use crate::serving::sources::{Credential, RateRefusal, Shortfall};
use crate::serving::{Feedback, JoinError, ModelRuntime, PredictionRef};

use super::AppState;
use super::body::{JsonBody, parse};
use super::error::{ApiError, ItemError};
use super::model_name::ModelName;
use super::openapi::ErrorResponse;
use super::sender::{Sender, single};

/// Header of a request the client may retry: a retry answers the first
/// 202 without training the examples again.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Set on the answer to such a retry.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Header naming the sender when the body does not.
pub const SOURCE_HEADER: &str = "x-eddy-source";

/// One example (`features` or `prediction_id`, with `label`) or a batch
/// (`examples`, with an optional `source` for all of them).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest<'a> {
    #[serde(borrow, default)]
    examples: Option<Vec<ExampleIn<'a>>>,
    #[serde(borrow, default)]
    features: Option<RawFeatures<'a>>,
    #[serde(borrow, default)]
    prediction_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    label: Option<RawLabel<'a>>,
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
}

/// One example of a batch: `features` or the `prediction_id` of an earlier
/// prediction, and its `label`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleIn<'a> {
    #[serde(borrow, default)]
    features: Option<RawFeatures<'a>>,
    #[serde(borrow, default)]
    prediction_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    label: Option<RawLabel<'a>>,
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
}

/// An example that passed validation, before the join and the queue.
struct Checked<'a> {
    input: Input<'a>,
    target: Target,
    source: Option<Arc<str>>,
    /// How inline features broke the declared schema (quarantined).
    schema: Option<Arc<str>>,
}

enum Input<'a> {
    Inline(FeatureVec),
    Joined(&'a str),
}

/// The feedback route's query: `?wait=published` (optional
/// `timeout_ms`) answers once the examples are in a published version.
/// Other parameters (a client's cache buster or trace id) are ignored, as
/// they were before `wait` existed.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedbackQuery {
    /// `published`: answer once the examples are in a published version
    /// (or were kept out of it), with that `model_version`.
    #[param(pattern = "^published$")]
    wait: Option<String>,
    /// With `wait=published`: the longest wait, capped at nine tenths of
    /// server.request_timeout_ms (default 1000); past it the answer is
    /// `pending`.
    #[param(minimum = 0)]
    timeout_ms: Option<u64>,
}

/// How long to wait for the examples' version, if at all.
fn publish_wait(query: &FeedbackQuery, state: &AppState) -> Result<Option<Duration>, ApiError> {
    match query.wait.as_deref() {
        None if query.timeout_ms.is_some() => Err(ApiError::InvalidRequest(
            "timeout_ms goes with wait=published".into(),
        )),
        None => Ok(None),
        Some("published") => {
            let asked = Duration::from_millis(query.timeout_ms.unwrap_or(DEFAULT_PUBLISH_WAIT_MS));
            Ok(Some(asked.min(state.max_publish_wait)))
        }
        Some(other) => Err(ApiError::InvalidRequest(format!(
            "wait must be `published` (got `{other}`)"
        ))),
    }
}

/// `timeout_ms` of `wait=published` when none is given.
pub const DEFAULT_PUBLISH_WAIT_MS: u64 = 1000;

/// The 202 answer: how many examples were accepted and, with
/// `wait=published`, the version that holds them.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    accepted: usize,
    /// With `wait=published`: the published version holding the examples,
    /// or null when it did not come within the wait (`pending`).
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<Option<u64>>,
    /// With `wait=published`: true when the wait ran out.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pending: Option<bool>,
}

/// Accepts labelled examples: logged (durably, per `wal`), queued for the
/// trainer, answered 202.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/feedback",
    tag = "feedback",
    params(
        ("model" = String, Path, description = "The model's name"),
        FeedbackQuery,
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 128, description = "1 to 128 bytes: a retry with the same key and body is answered as the first, without training twice"),
        ("X-Eddy-Source" = Option<super::openapi::Source>, Header, nullable = false, description = "The sender, when the body names none (without `[[sources]]`)"),
    ),
    request_body(content = FeedbackRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: logged and queued", body = Accepted,
            headers(("Idempotent-Replayed" = String, description = "`true` on the answer to a retry"))),
        (status = 401, description = "`unauthorized`: the server has `[[sources]]` and the token is missing or wrong", body = ErrorResponse,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`source_mismatch`: the request names another source than its token's", body = ErrorResponse),
        (status = 404, description = "`model_not_found` or `unknown_prediction_id`", body = ErrorResponse),
        (status = 409, description = "`already_labelled`, `label_in_flight` or `idempotency_key_in_flight`", body = ErrorResponse),
        (status = 422, description = "`invalid_request`, `invalid_features`, `too_many_features`, `invalid_label`, `unknown_class`, `prediction_expired`, `invalid_batch`, `batch_too_large`, `exceeds_burst` or `idempotency_key_reused`", body = ErrorResponse),
        (status = 429, description = "`queue_full`, `feedback_overloaded` or `rate_limited`: nothing was accepted", body = ErrorResponse),
        (status = 503, description = "`shutting_down`, or `not_ready` for a keyed request while the log replays", body = ErrorResponse),
        (status = 507, description = "`insufficient_storage`: the log cannot store or sync the examples", body = ErrorResponse),
    ),
    security((), ("source_token" = [])),
)]
pub async fn feedback(
    State(state): State<AppState>,
    ModelName(model): ModelName,
    Sender(sender): Sender,
    query: Result<Query<FeedbackQuery>, QueryRejection>,
    permit: Option<Extension<BodyPermit>>,
    headers: HeaderMap,
    body: FeedbackBody,
) -> Result<Response, ApiError> {
    // `wait=published` waits until a deadline counted from here, so the
    // time parsing, the log append and its fsync take comes out of it and
    // the answer (`pending` at worst) beats the request timeout.
    let admitted = tokio::time::Instant::now();
    let runtime = state.model(&model)?;
    let wait = query
        .map_err(|e| ApiError::InvalidRequest(e.body_text()))
        .and_then(|Query(q)| publish_wait(&q, &state))
        .map(|w| w.map(|w| admitted + w));
    let wait = match wait {
        Ok(w) => w,
        Err(e) => {
            state
                .metrics
                .feedback_refused(&runtime.name, e.status_and_code().1);
            return Err(e);
        }
    };
    let ingested = match body {
        FeedbackBody::Refused => Err(ApiError::FeedbackOverloaded),
        // Parsing, hashing, scoring and the log append run on a feedback
        // thread, so they never hold up the runtime's threads (predict).
        FeedbackBody::Admitted(admission, JsonBody(body)) => {
            let (job_state, job_runtime) = (state.clone(), Arc::clone(&runtime));
            state
                .ingest
                .run(admission, move |gate| {
                    ingest(
                        &job_state,
                        &job_runtime,
                        sender.as_deref(),
                        &headers,
                        &body,
                        gate,
                    )
                })
                .await
                .unwrap_or_else(|e| match e {
                    IngestError::Late => Err(ApiError::FeedbackStarved),
                    e => Err(ApiError::Internal(e.to_string())),
                })
        }
    };
    // The body is parsed and gone: its share of the body budget goes back
    // before any wait for an fsync or a version.
    if let Some(Extension(permit)) = &permit {
        permit.release();
    }
    // With `fsync = "always"` the 202 waits for an fsync covering the
    // examples (shared with concurrent requests); a retry waits for the
    // same fsync, and is refused as the first attempt was if it failed.
    let result = match ingested {
        Ok(Ingested::Replayed(n, durable, end)) => {
            answer(&runtime, n, true, durable, wait.map(|w| (w, end))).await
        }
        Ok(Ingested::Accepted(n, durable, end)) => {
            answer(&runtime, n, false, durable, wait.map(|w| (w, Some(end)))).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        state
            .metrics
            .feedback_refused(&runtime.name, e.status_and_code().1);
    }
    result
}

/// The body of a feedback request, read only once the request is admitted
/// to the feedback threads (`server.feedback_concurrency`).
pub enum FeedbackBody {
    Admitted(Admission, JsonBody),
    /// Over the limit: the body was discarded unparsed.
    Refused,
}

impl FromRequest<AppState> for FeedbackBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        match state.ingest.admit().await {
            Some(admission) => Ok(FeedbackBody::Admitted(
                admission,
                JsonBody::from_request(req, state).await?,
            )),
            None if state.ingest.is_closed() => Err(ApiError::ShuttingDown),
            None => {
                discard(req, state.max_body_bytes).await;
                Ok(FeedbackBody::Refused)
            }
        }
    }
}

/// Reads a refused request's body and drops it, up to `limit` bytes:
/// answering with unread bytes on the socket would close the connection
/// with a reset, which can destroy the 429 before the client reads it.
/// Reading is cheap next to parsing. A client that waits for `100
/// Continue` has sent nothing yet and is answered at once. Behind the
/// listener's `Admission` the body is already in memory and this costs
/// nothing; it matters for the router served on its own (`public_router`).
async fn discard(req: Request, limit: usize) {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        return;
    }
    let mut body = req.into_body();
    let mut read = 0;
    while let Some(Ok(frame)) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
    {
        read += frame.data_ref().map_or(0, |d| d.len());
        if read > limit {
            return;
        }
    }
}

/// What a feedback job did with a request, with the fsync to wait for
/// before answering 202 when there is one.
enum Ingested {
    /// A retry of an accepted request: its first answer, and the log
    /// position after its examples when known.
    Replayed(usize, Option<Durable>, Option<u64>),
    /// Logged and queued, up to this log position (exclusive).
    Accepted(usize, Option<Durable>, u64),
}

/// The 202 for `n` examples once `durable` resolves; 507 `insufficient_storage`
/// (`NotDurable`) if their fsync failed. With `wait` (how long, and the log
/// position after the examples) it also waits for a published version
/// that holds them (or kept them out: quarantined, excluded): 202 with
/// `model_version`, or `pending` when that takes longer.
async fn answer(
    runtime: &ModelRuntime,
    n: usize,
    replayed: bool,
    durable: Option<Durable>,
    wait: Option<(tokio::time::Instant, Option<u64>)>,
) -> Result<Response, ApiError> {
    if let Some(durable) = durable {
        durable.await.map_err(ApiError::NotDurable)?;
    }
    let Some((deadline, end)) = wait else {
        return Ok(acknowledged(n, replayed, None));
    };
    let mut settled = runtime.stats.settled.subscribe();
    let version = match end {
        Some(end) => tokio::time::timeout_at(deadline, settled.wait_for(|s| s.position >= end))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|s| s.version),
        // A retry whose position was not kept (no feedback log): its
        // version cannot be told.
        None => None,
    };
    Ok(acknowledged(n, replayed, Some(version)))
}

/// Everything a feedback request does before its answer, on a feedback
/// thread: the idempotency key, parsing, checks, the join, scoring, the
/// log append and the queue.
fn ingest(
    state: &AppState,
    runtime: &ModelRuntime,
    sender: Option<&Credential>,
    headers: &HeaderMap,
    body: &[u8],
    gate: &Gate,
) -> Result<Ingested, ApiError> {
    // Checked first, also for a retry: a request with a header that names
    // no valid source, or another source than its token's, is refused.
    let header_source = header_source(sender, headers)?;
    // The sender is part of what a retry must repeat: its credential when
    // it has one, else the source its header names.
    let who = match sender {
        Some(c) => Some(c.name.as_bytes()),
        None => headers.get(SOURCE_HEADER).map(HeaderValue::as_bytes),
    };
    // With credentials a key is the credential's own: another client
    // using the same key neither collides with it nor learns of it.
    let scoped = idempotency_key(headers)?.map(|k| match sender {
        Some(c) => [c.name.as_bytes(), b"\0", k].concat(),
        None => k.to_vec(),
    });
    let key = match scoped
        .as_deref()
        .map(|k| begin(runtime, k, body, who))
        .transpose()?
    {
        Some(Keyed::Acknowledged(n, end)) => {
            let durable = end.map(|end| runtime.queue.log().durable(end));
            return Ok(Ingested::Replayed(n, durable, end));
        }
        Some(Keyed::New(record)) => Some(record),
        None => None,
    };
    let accepted = accept(
        state,
        runtime,
        sender,
        body,
        header_source,
        key.as_ref(),
        gate,
    );
    if let Some(record) = &key {
        // Once appended and queued the examples are trained: a retry gets
        // this answer (also if the client goes before the fsync), once the
        // log says they are durable (`IdempotencyKeys`). A request refused
        // before that leaves its key free.
        if accepted.is_ok() {
            runtime.keys.finish(&record.key);
        } else {
            runtime.keys.abandon(&record.key);
        }
    }
    accepted.map(|(n, durable, end)| Ingested::Accepted(n, durable, end))
}

/// The 202 body; `replayed` marks the answer to a retried request.
/// With `published` (a `wait=published` request): `Some(version)` holding
/// the examples, or `None` when it did not come in time (`pending`).
fn acknowledged(accepted: usize, replayed: bool, published: Option<Option<u64>>) -> Response {
    let body = Accepted {
        accepted,
        model_version: published,
        pending: published.and_then(|v| v.is_none().then_some(true)),
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

/// The request's `Idempotency-Key`, if it has one (1 to 128 bytes).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&[u8]>, ApiError> {
    let Some(value) = single(headers, IDEMPOTENCY_HEADER)? else {
        return Ok(None);
    };
    let key = value.as_bytes();
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ApiError::InvalidRequest(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(Some(key))
}

enum Keyed {
    New(KeyRecord),
    /// Accepted before: its count, and where its records end in the log.
    Acknowledged(usize, Option<u64>),
}

/// Looks the key up: a retry of an acknowledged request is answered from
/// the table; a new one is marked in flight. While the model replays its
/// log, keys of requests acknowledged before the restart are still coming
/// back, so keyed feedback waits (503 `not_ready`, `Retry-After`).
fn begin(
    runtime: &ModelRuntime,
    key: &[u8],
    body: &[u8],
    source: Option<&[u8]>,
) -> Result<Keyed, ApiError> {
    if runtime.stats.recovering.load(Ordering::Acquire) {
        return Err(ApiError::NotReady);
    }
    // The request is its body and the sender the header names.
    let mut hasher = blake3::Hasher::new();
    hasher.update(source.unwrap_or_default());
    hasher.update(&[0]);
    hasher.update(body);
    let hash = *hasher.finalize().as_bytes();
    let now = SystemTime::now();
    Ok(match runtime.keys.begin(key, hash, now)? {
        Begin::Acknowledged { accepted, end } => Keyed::Acknowledged(accepted, end),
        Begin::New => Keyed::New(KeyRecord {
            key: key.to_vec(),
            body: hash,
            accepted: 0,
            at: now,
        }),
    })
}

/// The source the `X-Eddy-Source` header names, if it has one: a valid
/// name, and the token's own when there is a token.
fn header_source(
    sender: Option<&Credential>,
    headers: &HeaderMap,
) -> Result<Option<Arc<str>>, ApiError> {
    let Some(v) = single(headers, SOURCE_HEADER)? else {
        return Ok(None);
    };
    if let Some(sender) = sender {
        sender_only(sender, &String::from_utf8_lossy(v.as_bytes()))?;
    }
    // UTF-8, as a `source` in the body may be.
    let text = std::str::from_utf8(v.as_bytes())
        .map_err(|_| ApiError::InvalidRequest("X-Eddy-Source is not UTF-8".into()))?;
    source(text).map(Some)
}

/// Validates, logs and enqueues a request; returns how many examples it
/// holds and, when the log must be fsynced first, what to wait for.
fn accept(
    state: &AppState,
    runtime: &ModelRuntime,
    sender: Option<&Credential>,
    body: &[u8],
    header_source: Option<Arc<str>>,
    key: Option<&KeyRecord>,
    gate: &Gate,
) -> Result<(usize, Option<Durable>, u64), ApiError> {
    let request: FeedbackRequest = parse(body)?;
    if let Some(sender) = sender {
        let named = request
            .examples
            .iter()
            .flatten()
            .filter_map(|e| e.source.as_deref());
        for claimed in request.source.as_deref().into_iter().chain(named) {
            sender_only(sender, claimed)?;
        }
    }
    let batch_source = match (sender, &request.source) {
        (Some(sender), _) => Some(Arc::clone(&sender.name)),
        (None, Some(s)) => Some(source(s)?),
        (None, None) => header_source,
    };
    let accepted = match request.examples {
        Some(examples) => {
            if request.features.is_some()
                || request.prediction_id.is_some()
                || request.label.is_some()
            {
                return Err(ApiError::InvalidRequest(
                    "send either `examples` or one example's fields, not both".into(),
                ));
            }
            if examples.is_empty() {
                return Err(ApiError::InvalidRequest("examples is empty".into()));
            }
            let mut checked = Vec::with_capacity(examples.len());
            let mut errors = Vec::new();
            for (i, ex) in examples.iter().enumerate() {
                match check(runtime, ex, &batch_source) {
                    Ok(c) => checked.push((i, c)),
                    Err(e) => errors.push(e.item(i)),
                }
            }
            committed(gate)?;
            enqueue(state, runtime, sender, checked, errors, true, key)?
        }
        None => {
            let one = ExampleIn {
                features: request.features,
                prediction_id: request.prediction_id,
                label: request.label,
                source: None,
            };
            let checked = check(runtime, &one, &batch_source)?;
            committed(gate)?;
            enqueue(
                state,
                runtime,
                sender,
                vec![(0, checked)],
                Vec::new(),
                false,
                key,
            )?
        }
    };
    Ok(accepted)
}

/// Parsed and checked (most of a request's work): from here on it changes
/// things, unless its request was given up meanwhile (`Gate`).
fn committed(gate: &Gate) -> Result<(), ApiError> {
    if gate.commit() {
        Ok(())
    } else {
        Err(ApiError::FeedbackStarved)
    }
}

/// Refuses a source a credentialed request names that is not its own
/// (403 `source_mismatch`).
fn sender_only(sender: &Credential, claimed: &str) -> Result<(), ApiError> {
    if claimed == sender.name.as_ref() {
        return Ok(());
    }
    Err(ApiError::SourceMismatch {
        claimed: claimed.to_owned(),
        sender: sender.name.to_string(),
    })
}

/// A client-chosen source, checked (`http::source`).
fn source(s: &str) -> Result<Arc<str>, ApiError> {
    super::source::source_name(s)
}

/// Validates one example without touching the join cache or the queue.
fn check<'a>(
    runtime: &ModelRuntime,
    ex: &'a ExampleIn<'a>,
    default_source: &Option<Arc<str>>,
) -> Result<Checked<'a>, ApiError> {
    let label = ex
        .label
        .as_ref()
        .ok_or_else(|| ApiError::InvalidRequest("missing `label`".into()))?;
    let target = runtime.space.target(label)?;
    let mut schema = None;
    let input = match (&ex.features, &ex.prediction_id) {
        (Some(f), None) => {
            let x = runtime.hasher.hash(f)?;
            schema = runtime.schema_violation(f);
            Input::Inline(x)
        }
        (None, Some(id)) => Input::Joined(id.as_ref()),
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidRequest(
                "send either `features` or `prediction_id`, not both".into(),
            ));
        }
        (None, None) => {
            return Err(ApiError::InvalidRequest(
                "missing `features` or `prediction_id`".into(),
            ));
        }
    };
    let source = match &ex.source {
        Some(s) => Some(source(s)?),
        None => default_source.clone(),
    };
    Ok(Checked {
        input,
        target,
        source,
        schema,
    })
}

/// Claims ids and checks queue room for all examples, then applies all of
/// them: appended to the feedback log (when kept) and queued for the
/// trainer in log order, and only then are the claims committed, so a
/// failed append leaves nothing changed. The join lock is held only to
/// claim and to commit: while the examples are scored and logged, a
/// concurrent label for a claimed id answers 409 `label_in_flight`.
/// `errors` are the batch's refusals so far: ids are still checked so the
/// answer lists every failing example, and nothing is applied.
fn enqueue(
    state: &AppState,
    runtime: &ModelRuntime,
    sender: Option<&Credential>,
    checked: Vec<(usize, Checked<'_>)>,
    mut errors: Vec<ItemError>,
    is_batch: bool,
    key: Option<&KeyRecord>,
) -> Result<(usize, Option<Durable>, u64), ApiError> {
    let any_joined = checked
        .iter()
        .any(|(_, c)| matches!(c.input, Input::Joined(_)));
    let mut joins = any_joined.then(|| runtime.joins.batch());
    let mut claims = vec![None; checked.len()];
    // Counted once the claims are settled, not while the batch may hold
    // the join lock predict takes.
    let mut missed = Vec::new();
    let mut refused = None;
    if let Some(joins) = joins.as_mut() {
        let mut seen = HashSet::new();
        for (pos, (i, c)) in checked.iter().enumerate() {
            if let Input::Joined(id) = c.input {
                // Once the batch is refused, ids are only checked (for the
                // answer's list), and what it claimed is given back, so a
                // concurrent batch naming the same ids is not refused too.
                // Hex ids are read in either case: the same id twice
                // (eddy issues them in lower case: no copy then).
                let folded = if id.bytes().any(|b| b.is_ascii_uppercase()) {
                    Cow::Owned(id.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(id)
                };
                let result = if !seen.insert(folded) {
                    Err(JoinError::Repeated)
                } else if errors.is_empty() {
                    joins.claim(id).map(Some)
                } else {
                    joins.check(id).map(|()| None)
                };
                match result {
                    Ok(claim) => claims[pos] = claim,
                    Err(e) => {
                        let e = ApiError::from(e);
                        missed.push(e.status_and_code().1);
                        if !is_batch {
                            refused = Some(e);
                            break;
                        }
                        if errors.is_empty() {
                            joins.release();
                        }
                        errors.push(e.item(*i));
                    }
                }
            }
        }
    }
    // On a refusal the batch is dropped: its claims go back unseen.
    if refused.is_some() || !errors.is_empty() {
        drop(joins.take());
    }
    for reason in missed {
        state.metrics.join_missed(&runtime.name, reason);
    }
    if let Some(e) = refused {
        return Err(e);
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.index);
        return Err(ApiError::InvalidBatch(errors));
    }
    // From here on the lock is free; `claimed` dropped uncommitted (a full
    // queue, a failed append) puts the predictions back.
    let claimed = joins.map(|joins| joins.unlock());
    let n = checked.len();
    let reservation = runtime.queue.reserve(n).map_err(|e| match e {
        // Closed with the model gone from the registry: it was deleted
        // meanwhile (at shutdown it is still there).
        crate::serving::QueueError::Closed
            if !state
                .models()
                .get(&runtime.name)
                .is_some_and(|m| std::ptr::eq(&**m, runtime)) =>
        {
            ApiError::ModelNotFound(runtime.name.to_string())
        }
        e => ApiError::from(e),
    })?;
    // Charged last, so a request refused by any check above costs no
    // quota; `charge` dropped before its commit (a failed append) gives
    // the examples back.
    let charge = state
        .sources
        .charge(&runtime.name, sender, &by_source(&checked))
        .map_err(rate_refused)?;
    let now = SystemTime::now();
    let instruments = state.metrics.model(&runtime.name);
    let mut items = Vec::with_capacity(n);
    for ((_, c), claim) in checked.into_iter().zip(&claims) {
        let (features, prediction, schema) = match (c.input, claim, claimed.as_ref()) {
            (Input::Inline(x), _, _) => (x, None, c.schema),
            (Input::Joined(_), Some(claim), Some(claimed)) => {
                let p = claimed
                    .get(*claim)
                    .ok_or_else(|| ApiError::Internal("claimed prediction vanished".into()))?;
                if let Some(i) = &instruments {
                    i.feedback_joined.inc();
                    let delay = now.duration_since(p.predicted_at).unwrap_or_default();
                    i.feedback_delay.observe(delay.as_secs_f64());
                }
                let at = PredictionRef {
                    version: p.version,
                    predicted_at: p.predicted_at,
                };
                (p.features.clone(), Some(at), p.schema.clone())
            }
            (Input::Joined(_), _, _) => {
                return Err(ApiError::Internal("unchecked prediction id".into()));
            }
        };
        items.push(Feedback {
            features,
            target: c.target,
            source: c.source,
            prediction,
            received_at: now,
            scored: None,
            position: 0,
            schema,
        });
    }
    prescore(runtime, &mut items);
    // The first record carries the request's key, with its count.
    let key = key.map(|k| KeyRecord {
        accepted: u32::try_from(n).unwrap_or(u32::MAX),
        ..k.clone()
    });
    // Appended, then queued in log order under the log's lock.
    let appended = reservation
        .append(items, key.as_ref())
        .map_err(|e| match e {
            // The model was deleted meanwhile: nothing was written.
            crate::persist::wal::LogError::Closed => {
                ApiError::ModelNotFound(runtime.name.to_string())
            }
            e => ApiError::Storage(e),
        })?;
    let log = runtime.queue.log();
    if let Some(key) = &key {
        let position = log.keeps_records().then_some(appended.first);
        runtime.keys.appended(&key.key, position, n);
    }
    let durable = log.keeps_records().then(|| log.durable(appended.end));
    charge.commit();
    if let Some(claimed) = claimed {
        claimed.commit();
    }
    if let Some(i) = &instruments {
        i.feedback_accepted.inc_by(n as u64);
    }
    Ok((n, durable, appended.end))
}

/// The request's sources with their example counts, in order of first
/// appearance (`None`: examples without a source).
fn by_source<'c>(checked: &'c [(usize, Checked<'_>)]) -> Vec<(Option<&'c str>, u32)> {
    let mut groups: Vec<(Option<&str>, u32)> = Vec::new();
    let mut index: rustc_hash::FxHashMap<Option<&str>, usize> = Default::default();
    for (_, c) in checked {
        let source = c.source.as_deref();
        let i = *index.entry(source).or_insert_with(|| {
            groups.push((source, 0));
            groups.len() - 1
        });
        groups[i].1 = groups[i].1.saturating_add(1);
    }
    groups
}

/// A rate limit's refusal as the client sees it.
fn rate_refused(r: RateRefusal) -> ApiError {
    let source_name = r.source.to_string();
    match r.shortfall {
        Shortfall::Wait(retry_after) => ApiError::RateLimited {
            source_name,
            rate: r.limit.rate,
            burst: r.limit.burst,
            retry_after,
        },
        Shortfall::ExceedsBurst { burst } => ApiError::ExceedsBurst {
            source_name,
            rate: r.limit.rate,
            burst,
        },
    }
}

/// Scores accepted examples against the live and last-good versions here,
/// on the request threads, so the monitor on the trainer's thread need not
/// (test-then-train: this is before the trainer sees them).
fn prescore(runtime: &ModelRuntime, items: &mut [Feedback]) {
    let baseline = runtime.baseline.load();
    let Some(base) = baseline.as_ref() else {
        return;
    };
    let live = runtime.store.guard();
    for item in items {
        let now = live.params.score(&item.features, item.target);
        let then = if live.version == base.version {
            now
        } else {
            base.params.score(&item.features, item.target)
        };
        let candidate = base.candidate.as_ref().map(|(v, params)| {
            let scored = if *v == live.version {
                now
            } else {
                params.score(&item.features, item.target)
            };
            (*v, scored)
        });
        item.scored = Some(Prescored {
            live_version: live.version,
            live: now,
            base_version: base.version,
            base: then,
            candidate,
        });
    }
}

#[cfg(test)]
mod tests;
