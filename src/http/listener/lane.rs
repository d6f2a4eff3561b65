//! `FeedbackLane`: where a connection whose first request posts feedback
//! is served, so that reading feedback bodies (hundreds of KB a batch)
//! keeps off the request threads that answer predict.
//!
//! The lane is a tokio runtime of its own (`server.feedback_io_threads`
//! worker threads, named `eddy-feedback-io`), niced as the feedback
//! threads are (never `SCHED_IDLE`) and off the CPUs kept for the request
//! threads (`serving::priority`). The listener looks at the first bytes a new
//! plain-text connection sent, without consuming them (`MSG_PEEK`): a
//! request line `POST /v1/models/{model}/feedback` moves the socket to
//! the lane, where hyper serves it from its first byte as it would have
//! on the request runtime. Everything else stays where it was accepted.
//!
//! A connection stays on the runtime it started on, so one kind of
//! request does not keep being served where the other belongs (a reverse
//! proxy's or a client's keep-alive pool sends both kinds on whatever
//! connection is free): a predict on a lane connection, or a feedback
//! post on a plain-text connection of the request runtime, is answered
//! with `Connection: close` (`Keep`), and the client's next request opens
//! a connection that is steered again. A request line not yet whole in
//! the first segment stays on the request runtime. TLS connections (their
//! bytes are encrypted until the handshake) are all served on the request
//! runtime, and kept open for every request.

use std::time::Instant;

use axum::http::Method;
use tokio::net::TcpStream;
use tokio::runtime::{Handle, Runtime};
use tokio_util::sync::CancellationToken;

use crate::serving::priority::{Background, BackgroundPolicy};

/// The lane's runtime; dropping it never blocks (connections still on it
/// are dropped, as the request runtime's are when the process exits).
pub struct FeedbackLane {
    runtime: Option<Runtime>,
}

impl FeedbackLane {
    /// `threads` workers at `priority`. Under `BackgroundPolicy::Idle` the
    /// lane is niced instead: a `SCHED_IDLE` lane would get no CPU while
    /// predict takes every core, and its connections would then get no
    /// answer at all (not even the 429 the feedback threads' admission
    /// gives), their timeouts included.
    pub fn start(threads: usize, priority: Background) -> std::io::Result<Self> {
        let priority = Background {
            policy: BackgroundPolicy::Nice,
            ..priority
        };
        priority.prepare();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("eddy-feedback-io")
            .on_thread_start(move || priority.apply())
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Where the listener spawns the lane's connections.
    pub fn handle(&self) -> Option<Handle> {
        self.runtime.as_ref().map(|r| r.handle().clone())
    }
}

impl Drop for FeedbackLane {
    fn drop(&mut self) {
        // Dropping a runtime inside another's task would panic.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What the first bytes of a connection said.
#[derive(Debug)]
pub(super) enum FirstRequest {
    /// A request line posting feedback.
    Feedback,
    /// Anything else, or not enough to tell.
    Other,
    /// The client closed before a byte.
    Gone,
    /// The connection failed before a byte (a reset).
    Failed(std::io::Error),
    /// Nothing arrived before the deadline (the head's, from accept).
    TimedOut,
    /// Shutdown began first.
    Shutdown,
}

/// How much of a request line is looked at: a method and a path of a
/// model name (at most 64 characters, `config`) and the route around it,
/// with room for a percent-encoded name.
const PEEK_BYTES: usize = 512;

/// Waits for the connection's first bytes (until `deadline`) and reads
/// what request they start, leaving them in the socket for hyper.
pub(super) async fn first_request(
    stream: &TcpStream,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> FirstRequest {
    let mut buf = [0u8; PEEK_BYTES];
    tokio::select! {
        _ = shutdown.cancelled() => FirstRequest::Shutdown,
        peeked = tokio::time::timeout_at(deadline.into(), stream.peek(&mut buf)) => match peeked {
            Err(_) => FirstRequest::TimedOut,
            Ok(Ok(0)) => FirstRequest::Gone,
            Ok(Err(e)) => FirstRequest::Failed(e),
            Ok(Ok(n)) if posts_feedback(&buf[..n]) => FirstRequest::Feedback,
            Ok(Ok(_)) => FirstRequest::Other,
        },
    }
}

/// Whether `head` begins with the request line of a feedback post (the
/// route `http::is_feedback` names), then a query or the version.
fn posts_feedback(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"POST ") else {
        return false;
    };
    let Some(end) = rest.iter().position(|b| matches!(b, b' ' | b'?')) else {
        return false;
    };
    std::str::from_utf8(&rest[..end]).is_ok_and(crate::http::is_feedback)
}

/// Which requests a connection is kept open for, where a lane runs: the
/// answer to any other carries `Connection: close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    /// Every request: no lane, or a TLS connection.
    All,
    /// Feedback posts: a connection on the lane.
    Feedback,
    /// All but feedback posts: a plain-text connection on the request
    /// runtime.
    Others,
}

impl Keep {
    /// Whether the connection closes after answering this request.
    pub fn closes_after(self, method: &Method, path: &str) -> bool {
        let feedback = method == Method::POST && crate::http::is_feedback(path);
        match self {
            Keep::All => false,
            Keep::Feedback => !feedback,
            Keep::Others => feedback,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Keep, posts_feedback};
    use axum::http::Method;

    #[test]
    fn a_connection_closes_after_the_other_kind_of_request() {
        let feedback = "/v1/models/demo/feedback";
        let predict = "/v1/models/demo/predict";
        for (keep, method, path, closes) in [
            (Keep::All, Method::POST, feedback, false),
            (Keep::All, Method::POST, predict, false),
            (Keep::Feedback, Method::POST, feedback, false),
            (Keep::Feedback, Method::POST, predict, true),
            (Keep::Feedback, Method::GET, feedback, true),
            (Keep::Feedback, Method::GET, "/healthz", true),
            (Keep::Others, Method::POST, feedback, true),
            (Keep::Others, Method::POST, predict, false),
            (Keep::Others, Method::GET, feedback, false),
        ] {
            assert_eq!(
                keep.closes_after(&method, path),
                closes,
                "{keep:?} {method} {path}"
            );
        }
    }

    #[test]
    fn only_a_whole_feedback_request_line_goes_to_the_lane() {
        for (head, lane) in [
            (
                &b"POST /v1/models/demo/feedback HTTP/1.1\r\nHost: x\r\n"[..],
                true,
            ),
            (b"POST /v1/models/m0001/feedback?x=1 HTTP/1.1\r\n", true),
            (b"POST /v1/models/demo/feedback ", true),
            // Not whole yet: the end of the path is not in the bytes.
            (b"POST /v1/models/demo/feedback", false),
            (b"POST /v1/models/demo/feed", false),
            (b"POST /v1/models/demo/predict HTTP/1.1\r\n", false),
            (b"GET /v1/models/demo/feedback HTTP/1.1\r\n", false),
            (b"POST /v1/models//feedback HTTP/1.1\r\n", false),
            (b"POST /v1/models/a/b/feedback HTTP/1.1\r\n", false),
            (b"post /v1/models/demo/feedback HTTP/1.1\r\n", false),
            (b"\x16\x03\x01\x02\x00\x01", false),
            (b"", false),
        ] {
            assert_eq!(
                posts_feedback(head),
                lane,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
