//! The public listener's protective limits answer in the JSON error shape:
//! a request that takes too long gets 503 `timeout`, and one beyond the
//! concurrency limit gets 503 `overloaded`, both with Retry-After.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::helpers::spawn_with;

/// Sends headers promising a body that never fully arrives, so the handler
/// waits on it while holding a concurrency slot.
fn stalled_request(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(
        b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"features\":",
    )
    .expect("write");
    s
}

fn read_response(mut s: TcpStream) -> (u16, serde_json::Value, String) {
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the header block and the announced body are complete.
    loop {
        let n = s.read(&mut chunk).expect("read");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let head = text[..end].to_owned();
                let status = head[9..12].parse().expect("status");
                let body = serde_json::from_slice(&buf[end + 4..end + 4 + len]).expect("json body");
                return (status, body, head);
            }
        }
    }
    panic!(
        "connection closed before a full response: {:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_time_out_and_excess_ones_are_shed() {
    let app = spawn_with("", |c| {
        c.server.request_timeout_ms = 2000;
        c.server.max_concurrency = 1.try_into().expect("non-zero");
    })
    .await;
    let addr = app.addr;
    let (first, second) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut stalled = stalled_request(addr);
        // While the stalled request holds the only slot, anything else is
        // shed at once. Until the server has picked it up a health check
        // still passes; and if a health check won the race for the slot,
        // the stalled request was the one shed, so start it again. Poll,
        // never sleep.
        let second = loop {
            assert!(
                Instant::now() < deadline,
                "the stalled request never held the slot"
            );
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("write");
            let r = read_response(s);
            if r.0 == 503 {
                break r;
            }
            assert_eq!(r.0, 200, "{r:?}");
            stalled.set_nonblocking(true).expect("nonblocking");
            let answered = stalled.peek(&mut [0u8; 1]).is_ok();
            stalled.set_nonblocking(false).expect("blocking");
            if answered {
                stalled = stalled_request(addr);
            }
        };
        (read_response(stalled), second)
    })
    .await
    .expect("blocking task");
    assert_eq!(first.0, 503, "{first:?}");
    assert_eq!(first.1["error"]["code"], "timeout");
    assert!(
        first.2.to_ascii_lowercase().contains("retry-after: 1"),
        "{}",
        first.2
    );
    assert_eq!(second.1["error"]["code"], "overloaded", "{second:?}");
    assert!(
        second.2.to_ascii_lowercase().contains("retry-after: 1"),
        "{}",
        second.2
    );
    app.stop().await.expect("clean stop");
}
