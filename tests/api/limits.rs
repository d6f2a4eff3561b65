//! The public listener's protective limits answer in the JSON error shape:
//! a body that does not arrive in time gets 408 `body_timeout` and holds
//! no concurrency slot meanwhile. (503 `timeout` and `overloaded` need a
//! slow handler: `http::admission`'s unit tests drive them.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

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
async fn a_stalled_body_holds_no_slot_and_times_out_with_408() {
    let app = spawn_with("", |c| {
        c.server.body_read_timeout_ms = 2000;
        c.server.max_concurrency = 1.try_into().expect("non-zero");
    })
    .await;
    let addr = app.addr;
    let (stalled, probes) = tokio::task::spawn_blocking(move || {
        let stalled = stalled_request(addr);
        // While its body is awaited, the only slot stays free: probes and
        // a predict from another connection answer.
        let mut probes = Vec::new();
        for request in [
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            {
                let body = r#"{"features":{"x":1.0}}"#;
                format!(
                    "POST /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            },
        ] {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(request.as_bytes()).expect("write");
            probes.push(read_response(s));
        }
        (read_response(stalled), probes)
    })
    .await
    .expect("blocking task");
    for probe in &probes {
        assert_eq!(probe.0, 200, "{probe:?}");
    }
    assert_eq!(stalled.0, 408, "{stalled:?}");
    assert_eq!(stalled.1["error"]["code"], "body_timeout");
    assert!(
        stalled.2.to_ascii_lowercase().contains("connection: close"),
        "{}",
        stalled.2
    );
    app.stop().await.expect("clean stop");
}
