//! `Admission`: the stage every request of a listener passes before the
//! router, built by `http::protect`.
//!
//! In order:
//!
//! 1. Probes (`/healthz`, `/readyz`, `/openapi.json` on the public listener, `/metrics` on
//!    the admin one) go straight to the router: no body, no concurrency
//!    slot, so an orchestrator's checks answer however busy the listener
//!    is.
//! 2. A declared `Content-Length` over `max_body_bytes` answers the JSON
//!    413 at once, without reading the body.
//! 3. The body is read in full, under `body_read_timeout_ms` (408
//!    `body_timeout`), `max_body_bytes` (413) and the listener's body
//!    budget (503 `overloaded`); a body hyper cannot decode (a malformed
//!    chunk) answers 400 `malformed_body`. Each of these closes the
//!    connection. No concurrency slot is held meanwhile, so clients that
//!    send their bodies slowly cannot starve the others of slots.
//! 4. Only then does the request take a `max_concurrency` slot (beyond it
//!    503 `overloaded`, shed at once) and run under `request_timeout_ms`
//!    (503 `timeout`).
//!
//! The body budget (`max_concurrency` × `max_body_bytes`, in KiB permits)
//! bounds the memory of bodies read but not yet answered to what it was
//! when bodies were read inside a slot, whatever `max_connections` is.
//! Every refusal is counted and logged through `Refusals`.
//!
//! What stays with others: HTTP parsing and protocol errors (hyper, in
//! `listener`), connection timeouts and limits (`listener`), and what a
//! handler does with the body (`body::JsonBody`).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{BoxError, Service, ServiceExt};

use super::error::ApiError;
use super::refusals::Refusals;
use crate::metrics::Refusal;

/// The body budget's permits a request holds while its bytes live. The
/// listener keeps them until the answer is ready; a handler done with the
/// body sooner (a feedback request about to wait for its version, with
/// `?wait=published`) hands them back with `release`, so waiting clients
/// cannot hold the budget that predicts' bodies need.
#[derive(Debug, Clone)]
pub struct BodyPermit(Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>);

impl BodyPermit {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(permit))))
    }

    /// Gives the permits back now.
    pub fn release(&self) {
        if let Ok(mut held) = self.0.lock() {
            held.take();
        }
    }
}

/// The body budget's unit: a permit is one KiB.
const PERMIT_BYTES: usize = 1024;

/// The listener-wide request stage (see the module doc); `L` is the
/// concurrency-limited stack around the router.
#[derive(Clone)]
pub struct Admission<L> {
    router: Router,
    limited: L,
    settings: Arc<Settings>,
}

/// What `Admission` needs besides the services.
pub struct Settings {
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    /// Paths that skip the body read and the concurrency limit.
    pub probes: &'static [&'static str],
    /// Paths whose handlers keep their own admission limit (feedback, with
    /// `server.feedback_concurrency`): they take no `max_concurrency` slot,
    /// so requests waiting for that limit cannot crowd out predicts; they
    /// still run under `request_timeout`.
    pub own_limit: fn(&str) -> bool,
    pub request_timeout: Duration,
    pub refusals: Refusals,
    /// Bodies read and not yet answered, in KiB.
    budget: Arc<Semaphore>,
}

impl Settings {
    pub fn new(
        limits: &crate::config::ListenerLimits,
        probes: &'static [&'static str],
        own_limit: fn(&str) -> bool,
        refusals: Refusals,
    ) -> Self {
        let (max_body_bytes, max_concurrency) = (limits.max_body_bytes, limits.max_concurrency);
        let permits = max_concurrency
            .saturating_mul(max_body_bytes.div_ceil(PERMIT_BYTES))
            .clamp(1, Semaphore::MAX_PERMITS);
        Self {
            max_body_bytes,
            body_read_timeout: limits.body_read_timeout,
            probes,
            own_limit,
            request_timeout: limits.request_timeout,
            refusals,
            budget: Arc::new(Semaphore::new(permits)),
        }
    }
}

impl<L> Admission<L> {
    pub fn new(router: Router, limited: L, settings: Settings) -> Self {
        Self {
            router,
            limited,
            settings: Arc::new(settings),
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<L, B> Service<Request<B>> for Admission<L>
where
    L: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    L::Future: Send,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness (the concurrency slot) is taken per request, after the
        // body is read, by `oneshot` on the limited stack.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> BoxFuture {
        if self.settings.probes.contains(&request.uri().path()) {
            return Box::pin(self.router.clone().oneshot(request));
        }
        let settings = self.settings.clone();
        let declared = request.body().size_hint().lower();
        if declared > settings.max_body_bytes as u64 {
            let response = refuse(
                &settings,
                Refusal::PayloadTooLarge,
                ApiError::PayloadTooLarge(settings.max_body_bytes),
            );
            return Box::pin(std::future::ready(Ok(response)));
        }
        let limited = self.limited.clone();
        let own = (settings.own_limit)(request.uri().path()).then(|| self.router.clone());
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            if body.is_end_stream() {
                return limited
                    .oneshot(Request::from_parts(parts, Body::empty()))
                    .await;
            }
            let read =
                tokio::time::timeout(settings.body_read_timeout, read_body(body, &settings)).await;
            let (bytes, permit) = match read {
                Ok(Ok(read)) => read,
                Ok(Err(Unread::Refused(refusal, error))) => {
                    return Ok(refuse(&settings, refusal, error));
                }
                Ok(Err(Unread::ClientGone)) => {
                    // Nobody reads this answer; nothing was refused.
                    return Ok(closing(ApiError::MalformedBody("it was cut short".into())));
                }
                Err(_) => {
                    let ms = settings.body_read_timeout.as_millis() as u64;
                    return Ok(refuse(
                        &settings,
                        Refusal::BodyTimeout,
                        ApiError::BodyTimeout(ms),
                    ));
                }
            };
            // The permit stays held until the answer is ready (the body's
            // bytes live that long), unless the handler releases it first.
            let held = BodyPermit::new(permit);
            let mut request = Request::from_parts(parts, Body::from(bytes));
            request.extensions_mut().insert(held.clone());
            match own {
                Some(router) => {
                    match tokio::time::timeout(settings.request_timeout, router.oneshot(request))
                        .await
                    {
                        Ok(answer) => answer,
                        Err(_) => {
                            settings.refusals.refuse(Refusal::Timeout);
                            Ok(ApiError::Timeout.into_response())
                        }
                    }
                }
                None => limited.oneshot(request).await,
            }
        })
    }
}

/// Reads the whole body within `max_body_bytes` and the budget. A body
/// that arrives in one frame is passed on without a copy.
async fn read_body<B>(
    mut body: B,
    settings: &Settings,
) -> Result<(Bytes, OwnedSemaphorePermit), Unread>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let max = settings.max_body_bytes;
    let too_large = || Unread::Refused(Refusal::PayloadTooLarge, ApiError::PayloadTooLarge(max));
    let over_budget = || Unread::Refused(Refusal::Overloaded, ApiError::Overloaded);
    // Charged for bytes received, not declared: a client that declares
    // `max_body_bytes` and sends nothing holds one permit, so idle
    // connections cannot drain the budget from the others.
    let mut held = 1;
    let mut permit = settings
        .budget
        .clone()
        .try_acquire_many_owned(1)
        .map_err(|_| over_budget())?;
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let e: BoxError = e.into();
            tracing::debug!(error = %e, "request body unreadable");
            if client_gone(e.as_ref()) {
                return Unread::ClientGone;
            }
            Unread::Refused(
                Refusal::MalformedBody,
                ApiError::MalformedBody("it is malformed (for example an invalid chunk)".into()),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing eddy reads
        };
        len += data.len();
        if len > max {
            return Err(too_large());
        }
        let needed = len.div_ceil(PERMIT_BYTES);
        if needed > held {
            let more = settings
                .budget
                .clone()
                .try_acquire_many_owned((needed - held) as u32)
                .map_err(|_| over_budget())?;
            permit.merge(more);
            held = needed;
        }
        match first.take() {
            None if rest.is_empty() => first = Some(data),
            None => rest.extend_from_slice(&data),
            Some(head) => {
                rest.reserve(head.len() + data.len());
                rest.extend_from_slice(&head);
                rest.extend_from_slice(&data);
            }
        }
    }
    let bytes = match first {
        Some(only) => only,
        None => Bytes::from(rest),
    };
    Ok((bytes, permit))
}

/// Why a body was not read whole.
enum Unread {
    Refused(Refusal, ApiError),
    /// The client closed or reset the connection mid-body.
    ClientGone,
}

/// Whether a body error means the client went away (not a malformed
/// body): hyper's incomplete message, or the connection reset or ended.
fn client_gone(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return matches!(
                io.kind(),
                K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
            );
        }
        cause = e.source();
    }
    false
}

/// The JSON answer to a refused request, counted; the connection closes
/// after it, since the rest of the body is left unread.
fn refuse(settings: &Settings, refusal: Refusal, error: ApiError) -> Response {
    settings.refusals.refuse(refusal);
    closing(error)
}

fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Turns the errors of the concurrency limit and the request timeout into
/// JSON answers, counted as refusals.
pub fn limit_error(refusals: &Refusals, err: BoxError) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        refusals.refuse(Refusal::Timeout);
        ApiError::Timeout
    } else if err.is::<tower::load_shed::error::Overloaded>() {
        refusals.refuse(Refusal::Overloaded);
        ApiError::Overloaded
    } else {
        ApiError::Internal(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ListenerLimits;
    use crate::metrics::Metrics;
    use axum::routing::{get, post};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn limits() -> ListenerLimits {
        ListenerLimits {
            max_body_bytes: 100,
            request_timeout: Duration::from_secs(5),
            max_concurrency: 1,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10,
        }
    }

    /// `/slow` waits until `release` is notified (or forever); `/echo`
    /// answers the body's length; `/healthz` is a probe.
    fn router(release: Arc<tokio::sync::Notify>, started: Arc<AtomicUsize>) -> Router {
        Router::new()
            .route(
                "/slow",
                get(move || async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    "done"
                }),
            )
            .route(
                "/echo",
                post(|body: Bytes| async move { body.len().to_string() }),
            )
            .route("/healthz", get(|| async { "ok" }))
    }

    async fn status_and_code(response: Response) -> (u16, String) {
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        (
            status,
            json["error"]["code"].as_str().unwrap_or("").to_owned(),
        )
    }

    fn get_request(path: &str) -> Request {
        Request::get(path).body(Body::empty()).expect("request")
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_listener_sheds_and_times_out_but_probes_answer() {
        let metrics = Metrics::new(Default::default());
        let refusals = Refusals::new(metrics.listeners.instruments("public"));
        let release = Arc::new(tokio::sync::Notify::new());
        let started = Arc::new(AtomicUsize::new(0));
        let service = crate::http::protect(
            router(release.clone(), started.clone()),
            &limits(),
            refusals.clone(),
            &["/healthz"],
            |_| false,
        );
        // The first request takes the only slot and waits.
        let holder = tokio::spawn(service.clone().oneshot(get_request("/slow")));
        while started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Another is shed at once; the probe passes.
        let shed = service
            .clone()
            .oneshot(get_request("/slow"))
            .await
            .expect("infallible");
        assert_eq!(status_and_code(shed).await, (503, "overloaded".into()));
        let probe = service
            .clone()
            .oneshot(get_request("/healthz"))
            .await
            .expect("infallible");
        assert_eq!(probe.status().as_u16(), 200);
        // The holder runs past the request timeout (paused time advances
        // by itself once every task waits).
        let held = holder.await.expect("joins").expect("infallible");
        assert_eq!(status_and_code(held).await, (503, "timeout".into()));
        assert_eq!(refusals.instruments().refusals(Refusal::Overloaded), 1);
        assert_eq!(refusals.instruments().refusals(Refusal::Timeout), 1);
    }

    #[tokio::test]
    async fn bodies_are_read_within_the_limit_before_the_handler() {
        let metrics = Metrics::new(Default::default());
        let refusals = Refusals::new(metrics.listeners.instruments("public"));
        let release = Arc::new(tokio::sync::Notify::new());
        let service = crate::http::protect(
            router(release, Arc::default()),
            &limits(),
            refusals.clone(),
            &["/healthz"],
            |_| false,
        );
        let post = |body: Body| Request::post("/echo").body(body).expect("request");
        // Whole, in several frames: passed on complete.
        let frames = frames_body(vec![Bytes::from_static(b"abc"), Bytes::from_static(b"de")]);
        let ok = service
            .clone()
            .oneshot(post(frames))
            .await
            .expect("infallible");
        assert_eq!(ok.status().as_u16(), 200);
        let text = ok.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&text[..], b"5");
        // Declared too large, and too large once read.
        let big = service
            .clone()
            .oneshot(post(Body::from(vec![b'a'; 101])))
            .await
            .expect("infallible");
        assert_eq!(big.headers()[header::CONNECTION], "close");
        assert_eq!(
            status_and_code(big).await,
            (413, "payload_too_large".into())
        );
        let grown = frames_body(vec![
            Bytes::from(vec![b'a'; 60]),
            Bytes::from(vec![b'a'; 60]),
        ]);
        let grown = service
            .clone()
            .oneshot(post(grown))
            .await
            .expect("infallible");
        assert_eq!(
            status_and_code(grown).await,
            (413, "payload_too_large".into())
        );
        assert_eq!(refusals.instruments().refusals(Refusal::PayloadTooLarge), 2);
        // Every permit of the body budget came back.
        let settings = &service.settings;
        assert_eq!(
            settings.budget.available_permits(),
            100usize.div_ceil(PERMIT_BYTES)
        );
    }

    /// A body of unknown length made of `frames`.
    fn frames_body(frames: Vec<Bytes>) -> Body {
        Body::new(Frames(frames.into()))
    }

    struct Frames(std::collections::VecDeque<Bytes>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }
}
