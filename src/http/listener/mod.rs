//! `Listener`: eddy's own accept loop for one listener (public or admin),
//! serving each connection with hyper's HTTP/1.1 connection builder.
//!
//! It owns what happens below a request: the connection limit
//! (`max_connections`: a connection beyond it is closed at once and
//! counted), TLS (`tls`, certificates re-read when their files change),
//! the header-read and idle timeouts (`connection`), protocol errors (hyper
//! answers 400, 414 or 431 and closes; each is counted by kind), and
//! graceful shutdown: when the token is cancelled it stops accepting,
//! closes idle connections and lets requests in flight finish; `serve`
//! returns once every connection has ended (`App::run` bounds the wait by
//! `server.shutdown_grace_ms`).
//!
//! All HTTP parsing is hyper's; the only bytes read here are the first
//! request line of a new plain-text connection, peeked without consuming
//! them, to steer a feedback connection to its own threads (`lane`). Requests go
//! to the service `http::protect` built (`Admission`), which owns body
//! reading, concurrency and request timeouts.

mod connection;
pub mod lane;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::Response;
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::refusals::Refusals;
use crate::config::ListenerLimits;
use crate::metrics::{ProtocolError, Refusal};
use connection::{Connection, Place};
pub use lane::FeedbackLane;
use lane::{FirstRequest, Keep};
pub use tls::CertFiles;

/// What a listener serves: the protected router, cloned per connection.
pub trait HttpService:
    tower::Service<
        axum::http::Request<Incoming>,
        Response = Response,
        Error = Infallible,
        Future: Send + Unpin + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> HttpService for S where
    S: tower::Service<
            axum::http::Request<Incoming>,
            Response = Response,
            Error = Infallible,
            Future: Send + Unpin + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Pause after an accept error that is not about one connection (out of
/// file descriptors): accepting again at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound socket with its limits, ready to `serve`.
pub struct Listener {
    tcp: TcpListener,
    limits: ListenerLimits,
    refusals: Refusals,
    tls: Option<Arc<CertFiles>>,
    /// Where plain-text connections that start by posting feedback are
    /// served (`lane`); `None`: every connection where it was accepted.
    lane: Option<Handle>,
}

impl Listener {
    pub fn new(
        tcp: TcpListener,
        limits: ListenerLimits,
        refusals: Refusals,
        tls: Option<Arc<CertFiles>>,
    ) -> Self {
        Self {
            tcp,
            limits,
            refusals,
            tls,
            lane: None,
        }
    }

    /// Serves connections whose first request posts feedback on `lane`'s
    /// runtime (plain-text connections only).
    pub fn with_lane(mut self, lane: Option<Handle>) -> Self {
        self.lane = lane;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts and serves connections until `shutdown` is cancelled, then
    /// waits for the connections to finish what they have in flight.
    pub async fn serve<S>(self, service: S, shutdown: CancellationToken)
    where
        S: HttpService,
    {
        let Listener {
            tcp,
            limits,
            refusals,
            tls,
            lane,
        } = self;
        let connections = TaskTracker::new();
        if let Some(files) = &tls {
            connections.spawn(files.clone().watch(shutdown.clone()));
        }
        let acceptor = tls.map(|files| files.acceptor());
        let open = Arc::new(Semaphore::new(limits.max_connections));
        let setup = Arc::new(Connection {
            limits,
            refusals: refusals.clone(),
        });
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                accepted = tcp.accept() => accepted,
            };
            let (stream, _peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(listener = refusals.listener(), error = %e, "cannot accept connections; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                // Closed at once: the client sees a reset or an end of
                // stream, and no task or buffer is spent on it.
                refusals.refuse(Refusal::ConnectionLimit);
                drop(stream);
                continue;
            };
            let accepted = Instant::now();
            let place = Place::take(permit, &refusals);
            match (&lane, &acceptor) {
                (Some(lane), None) => connections.spawn(steer(
                    setup.clone(),
                    stream,
                    accepted,
                    Lane {
                        runtime: lane.clone(),
                        connections: connections.clone(),
                    },
                    service.clone(),
                    shutdown.clone(),
                    place,
                )),
                _ => connections.spawn(setup.clone().serve(
                    stream,
                    accepted,
                    Keep::All,
                    acceptor.clone(),
                    service.clone(),
                    shutdown.clone(),
                    place,
                )),
            };
        }
        drop(tcp);
        connections.close();
        connections.wait().await;
    }
}

/// The lane's runtime and the tracker its connections join.
struct Lane {
    runtime: Handle,
    connections: TaskTracker,
}

/// Serves a plain-text connection on the lane if its first request posts
/// feedback, else here.
async fn steer<S: HttpService>(
    setup: Arc<Connection>,
    stream: TcpStream,
    accepted: Instant,
    lane: Lane,
    service: S,
    shutdown: CancellationToken,
    place: Place,
) {
    let deadline = accepted + setup.limits.header_read_timeout;
    match lane::first_request(&stream, deadline, &shutdown).await {
        FirstRequest::Feedback => {
            // Deregistered from this runtime's reactor, registered with
            // the lane's once there; the bytes peeked stay in the socket.
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot move a feedback connection to its threads");
                    return;
                }
            };
            lane.connections.spawn_on(
                async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => {
                            setup.refusals.instruments().feedback_lane.inc();
                            setup
                                .serve(
                                    stream,
                                    accepted,
                                    Keep::Feedback,
                                    None,
                                    service,
                                    shutdown,
                                    place,
                                )
                                .await
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot serve a feedback connection on its threads")
                        }
                    }
                },
                &lane.runtime,
            );
        }
        // A request that arrived as shutdown began is still answered
        // (hyper's graceful shutdown serves a new connection's first
        // request, then closes), here rather than on the lane.
        FirstRequest::Other | FirstRequest::Shutdown => {
            setup
                .serve(
                    stream,
                    accepted,
                    Keep::Others,
                    None,
                    service,
                    shutdown,
                    place,
                )
                .await
        }
        FirstRequest::TimedOut => setup.refusals.refuse(Refusal::HeaderTimeout),
        FirstRequest::Failed(e) => setup.refusals.protocol_error(ProtocolError::Incomplete, &e),
        FirstRequest::Gone => {}
    }
}

/// Errors that concern one connection only (as in axum's `serve`).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset
    )
}

/// The most connections the process's file-descriptor limit leaves room
/// for, after raising the soft limit to the hard one (as Go's runtime and
/// nginx's `worker_rlimit_nofile` do). `reserve` descriptors are kept for
/// files, the log and the runtime.
pub fn connection_room(reserve: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = raised,
            Err(e) => tracing::debug!(error = %e, "cannot raise the file-descriptor limit"),
        }
    }
    // `None` is no limit at all.
    limit.current.map_or(usize::MAX, |n| {
        usize::try_from(n)
            .unwrap_or(usize::MAX)
            .saturating_sub(reserve)
    })
}
