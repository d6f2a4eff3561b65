//! `FeedbackLane`: where a connection whose first request posts feedback
//! is served, so that reading feedback bodies (hundreds of KB a batch)
//! keeps off the request threads that answer predict.
//!
//! The lane is a tokio runtime of its own (`server.feedback_io_threads`
//! worker threads, named `eddy-feedback-io`) at the feedback threads'
//! priority and off the CPUs kept for the request threads
//! (`serving::priority`). The listener looks at the first bytes a new
//! plain-text connection sent, without consuming them (`MSG_PEEK`): a
//! request line `POST /v1/models/{model}/feedback` moves the socket to
//! the lane, where hyper serves it from its first byte as it would have
//! on the request runtime. Everything else stays where it was accepted.
//!
//! A connection stays on the runtime it started on: later requests on a
//! keep-alive connection (a predict after a feedback, or the reverse) are
//! served there, answered the same, only at that runtime's priority. A
//! request line not yet whole in the first segment, and every TLS
//! connection (its bytes are encrypted until the handshake), stays on the
//! request runtime.

use std::time::Instant;

use tokio::net::TcpStream;
use tokio::runtime::{Handle, Runtime};
use tokio_util::sync::CancellationToken;

use crate::serving::priority::Background;

/// The lane's runtime; dropping it never blocks (connections still on it
/// are dropped, as the request runtime's are when the process exits).
pub struct FeedbackLane {
    runtime: Option<Runtime>,
}

impl FeedbackLane {
    /// `threads` workers at `priority`.
    pub fn start(threads: usize, priority: Background) -> std::io::Result<Self> {
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
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FirstRequest {
    /// A request line posting feedback.
    Feedback,
    /// Anything else, or not enough to tell.
    Other,
    /// The client closed, or the connection failed, before a byte.
    Gone,
    /// Nothing arrived before the deadline (the head's, from accept).
    TimedOut,
    /// Shutdown began first.
    Shutdown,
}

/// How much of a request line is looked at: a method, a path of a model
/// name (at most 128 bytes, `http::model_name`) and the route around it.
const PEEK_BYTES: usize = 256;

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
            Ok(Ok(0) | Err(_)) => FirstRequest::Gone,
            Ok(Ok(n)) if posts_feedback(&buf[..n]) => FirstRequest::Feedback,
            Ok(Ok(_)) => FirstRequest::Other,
        },
    }
}

/// Whether `head` begins with the request line of a feedback post:
/// `POST /v1/models/{model}/feedback`, then a query or the version.
fn posts_feedback(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"POST /v1/models/") else {
        return false;
    };
    let Some(end) = rest.iter().position(|b| matches!(b, b' ' | b'?')) else {
        return false;
    };
    let path = &rest[..end];
    path.strip_suffix(b"/feedback")
        .is_some_and(|model| !model.is_empty() && !model.contains(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::posts_feedback;

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
