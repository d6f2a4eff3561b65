//! One connection: the TLS handshake (if any), hyper's HTTP/1.1 server on
//! it, and the watchdog that enforces the header-read and idle timeouts.
//!
//! hyper's own `header_read_timeout` starts when a connection becomes
//! ready for its next request, so it cannot tell a keep-alive connection
//! resting between requests (`idle_timeout_ms`, 60 s by default) from a
//! client dripping its headers (`header_read_timeout_ms`, 10 s). The
//! watchdog does: `Activity` records three phases, moved by the byte
//! stream and by the service:
//!
//! - idle: no request under way and no byte of the next one since the
//!   last answer was ready; past `idle_timeout` the connection is closed.
//! - head: a new connection (its TLS handshake included), or the first
//!   byte of a request arrived and its head is not parsed yet; past
//!   `header_read_timeout` the connection is closed (counted as a
//!   `header_timeout` refusal).
//! - busy: hyper handed a request to the service; the body and handler
//!   deadlines are `Admission`'s.
//!
//! A closed connection gets no answer (nginx does the same for its
//! client_header_timeout): hyper has no request to answer yet.

use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use axum::http::HeaderValue;
use axum::http::header::CONNECTION;
use axum::response::Response;

use super::HttpService;
use super::lane::Keep;
use crate::config::ListenerLimits;
use crate::http::refusals::Refusals;
use crate::metrics::{ProtocolError, Refusal};

/// The most a request head may take in hyper's read buffer (its default
/// is about 400 KiB). Past it hyper answers 431; URIs over 64 KiB answer
/// 414. It bounds the memory an open connection can make eddy hold for a
/// head.
const MAX_HEAD_BYTES: usize = 96 << 10;

/// An accepted connection's place under `max_connections`, counted in
/// the open-connection gauge from accept to close, wherever it is served.
pub(super) struct Place {
    _permit: OwnedSemaphorePermit,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Place {
    pub fn take(permit: OwnedSemaphorePermit, refusals: &Refusals) -> Self {
        let open = refusals.instruments().connections.clone();
        open.inc();
        Self {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// What every connection of a listener shares.
pub(super) struct Connection {
    pub limits: ListenerLimits,
    pub refusals: Refusals,
}

impl Connection {
    /// Serves one accepted connection to its end; `_place` is its place
    /// under `max_connections`, given back when it closes.
    /// `accepted` starts the head deadline of a plain-text connection;
    /// `keep` is what it stays open for (`lane::Keep`; a TLS connection
    /// stays open for every request).
    #[allow(clippy::too_many_arguments)]
    pub async fn serve<S>(
        self: Arc<Self>,
        stream: TcpStream,
        accepted: Instant,
        keep: Keep,
        tls: Option<TlsAcceptor>,
        service: S,
        shutdown: CancellationToken,
        _place: Place,
    ) where
        S: HttpService,
    {
        // Answers are written whole; waiting for more would add latency.
        let _ = stream.set_nodelay(true);
        match tls {
            None => self.http(stream, accepted, keep, service, &shutdown).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(stream));
                let stream = tokio::select! {
                    _ = shutdown.cancelled() => None,
                    done = handshake => match done {
                        Ok(Ok(stream)) => Some(stream),
                        Ok(Err(e)) => {
                            // A client gone before the handshake (a TCP
                            // health check) is not malformed.
                            let kind = match e.kind() {
                                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => ProtocolError::Malformed,
                                _ => ProtocolError::Incomplete,
                            };
                            self.refusals.protocol_error(kind, &format_args!("tls handshake: {e}"));
                            None
                        }
                        Err(_) => {
                            self.refusals.refuse(Refusal::HeaderTimeout);
                            None
                        }
                    },
                };
                if let Some(stream) = stream {
                    // The handshake had its own deadline; the head's
                    // starts now.
                    self.http(stream, Instant::now(), Keep::All, service, &shutdown)
                        .await;
                }
            }
        }
    }

    async fn http<IO, S>(
        &self,
        io: IO,
        accepted: Instant,
        keep: Keep,
        service: S,
        shutdown: &CancellationToken,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService,
    {
        let activity = Arc::new(Activity::new(accepted));
        let io = TokioIo::new(Watched {
            inner: io,
            activity: activity.clone(),
        });
        let service = TowerToHyperService::new(Tracked {
            inner: service,
            activity: activity.clone(),
            keep,
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .keep_alive(true)
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD_BYTES);
        let mut conn = pin!(builder.serve_connection(io, service));
        let mut watchdog =
            pin!(activity.expiry(self.limits.header_read_timeout, self.limits.idle_timeout));
        let mut draining = false;
        let result = loop {
            tokio::select! {
                result = conn.as_mut() => break result,
                expired = watchdog.as_mut() => {
                    match expired {
                        Phase::Idle => {
                            self.refusals.instruments().idle_closed.inc();
                        }
                        _ => self.refusals.refuse(Refusal::HeaderTimeout),
                    }
                    // Dropping the connection closes it.
                    return;
                }
                _ = shutdown.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        if let Err(e) = result {
            self.refusals.protocol_error(classify(&e), &e);
        }
    }
}

/// Sorts an error hyper ended a connection with.
fn classify(e: &hyper::Error) -> ProtocolError {
    if e.is_parse_too_large() {
        return ProtocolError::TooLarge;
    }
    if e.is_parse() {
        return ProtocolError::Malformed;
    }
    if e.is_incomplete_message() {
        return ProtocolError::Incomplete;
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            use io::ErrorKind as K;
            return match io.kind() {
                // hyper's body decoder: a malformed chunk.
                K::InvalidData | K::InvalidInput => ProtocolError::Malformed,
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    ProtocolError::Incomplete
                }
                _ => ProtocolError::Other,
            };
        }
        source = cause.source();
    }
    ProtocolError::Other
}

/// The phase a connection is in (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle = 0,
    Head = 1,
    Busy = 2,
}

/// A connection's phase and when it began, shared by the byte stream, the
/// service and the watchdog.
struct Activity {
    opened: Instant,
    /// `(ms since opened) << 2 | phase`.
    state: AtomicU64,
    changed: Notify,
}

impl Activity {
    /// A new connection is on the head deadline from the start (`opened`,
    /// when it was accepted), as nginx's `client_header_timeout`: one that
    /// sends nothing (or stops after its TLS handshake) is closed after
    /// `header_read_timeout_ms`, not the longer idle timeout.
    fn new(opened: Instant) -> Self {
        Self {
            opened,
            state: AtomicU64::new(Phase::Head as u64),
            changed: Notify::new(),
        }
    }

    fn load(&self) -> (Phase, u64) {
        let state = self.state.load(Ordering::Acquire);
        let phase = match state & 3 {
            0 => Phase::Idle,
            1 => Phase::Head,
            _ => Phase::Busy,
        };
        (phase, state >> 2)
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// A byte arrived: an idle connection starts a request head.
    fn bytes_arrived(&self) {
        let state = self.state.load(Ordering::Relaxed);
        if state & 3 == Phase::Idle as u64 {
            let head = self.now_ms() << 2 | Phase::Head as u64;
            if self
                .state
                .compare_exchange(state, head, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.changed.notify_one();
            }
        }
    }

    /// hyper handed a request to the service.
    fn busy(&self) {
        // The watchdog finds out when its deadline passes: no wake-up.
        self.state.store(Phase::Busy as u64, Ordering::Release);
    }

    /// The answer is ready: the connection rests until the next request.
    fn idle(&self) {
        let idle = self.now_ms() << 2 | Phase::Idle as u64;
        // No wake-up either: the watchdog, waiting out a busy phase, wakes
        // no later than this idle phase's deadline and reads it then.
        self.state.store(idle, Ordering::Release);
    }

    /// Resolves with the phase whose deadline passed. Only the start of a
    /// head wakes it early (its deadline may come before the idle one);
    /// otherwise it reads the phase when its timer fires, and a busy
    /// connection is looked at again after `idle` (never later than the
    /// idle phase that follows could end). One timer, reset in place.
    async fn expiry(&self, header: Duration, idle: Duration) -> Phase {
        let mut timer = pin!(tokio::time::sleep(idle));
        loop {
            let changed = self.changed.notified();
            let mut changed = pin!(changed);
            // Registered before the state is read, so no change is missed.
            changed.as_mut().enable();
            let (phase, since) = self.load();
            let deadline = match phase {
                Phase::Busy => Instant::now() + idle,
                Phase::Idle => self.opened + Duration::from_millis(since) + idle,
                Phase::Head => self.opened + Duration::from_millis(since) + header,
            };
            timer.as_mut().reset(deadline.into());
            tokio::select! {
                () = timer.as_mut() => {
                    if phase != Phase::Busy && self.load() == (phase, since) {
                        return phase;
                    }
                }
                () = changed => {}
            }
        }
    }
}

/// The connection's byte stream, reporting the first byte of each request.
struct Watched<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The service, marking the connection busy from a request's head to its
/// answer, and closing it after a request of the kind it does not keep.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    keep: Keep,
}

impl<S> tower::Service<axum::http::Request<Incoming>> for Tracked<S>
where
    S: tower::Service<axum::http::Request<Incoming>, Response = Response, Future: Unpin>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<Incoming>) -> Self::Future {
        self.activity.busy();
        let close = self
            .keep
            .closes_after(request.method(), request.uri().path());
        TrackedFuture {
            inner: self.inner.call(request),
            activity: self.activity.clone(),
            close,
        }
    }
}

struct TrackedFuture<F> {
    inner: F,
    activity: Arc<Activity>,
    close: bool,
}

impl<F, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut output = ready!(Pin::new(&mut self.inner).poll(cx));
        if self.close
            && let Ok(response) = &mut output
        {
            // hyper ends the connection once this answer is written.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        self.activity.idle();
        Poll::Ready(output)
    }
}
