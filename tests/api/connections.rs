//! The connection layer of both listeners, over raw sockets: slow bodies
//! hold no concurrency slot (probes and other clients' predicts answer),
//! an oversized `Content-Length` gets the JSON 413 at once, slow bodies
//! get the JSON 408, dripped headers and idle keep-alive connections are
//! closed, connections beyond `max_connections` are refused, protocol
//! errors get hyper's status and are counted, connections that start by
//! posting feedback are served on the feedback I/O threads, and TLS
//! certificates are served and reloaded. Every refusal shows in the
//! metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, sample, scrape, spawn_with};

/// Bound on any single wait for the server in these tests.
const PATIENCE: Duration = Duration::from_secs(20);

/// A response read until the server closed the connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Reads until the server closes the connection (or a reset), then splits
/// the first response into status, head and body.
async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> Answer {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server neither answered nor closed");
    let text = String::from_utf8_lossy(&buf);
    let end = text
        .find("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let head = text[..end].to_owned();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Answer {
        status,
        head,
        body: buf[end + 4..].to_vec(),
    }
}

/// Sends `bytes` on a new connection and reads the answer to its end.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_answer(&mut s).await
}

/// Whether the server closed the connection (end of stream or reset)
/// before `deadline`, reading and discarding anything it sent.
async fn closed_by_server(s: &mut TcpStream, deadline: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(deadline, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Headers announcing a predict body of the default `max_body_bytes`,
/// and its first byte. The body budget is charged for bytes received, so
/// declaring the most a listener allows holds no more than sending one.
const SLOW_BODY: &[u8] = b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\n\
    Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{";

/// Polls the public listener's open-connection gauge until it reaches `n`.
async fn wait_connections(app: &TestApp, listener: &str, n: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = scrape(app).await;
        let open = sample(
            &text,
            &format!("eddy_http_connections{{listener=\"{listener}\"}}"),
        );
        if open >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {open} connections open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn refusals(app: &TestApp, listener: &str, reason: &str) -> f64 {
    sample(
        &scrape(app).await,
        &format!("eddy_http_refusals_total{{listener=\"{listener}\",reason=\"{reason}\"}}"),
    )
}

async fn protocol_errors(app: &TestApp, kind: &str) -> f64 {
    sample(
        &scrape(app).await,
        &format!("eddy_http_protocol_errors_total{{listener=\"public\",kind=\"{kind}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_hold_no_slot_so_probes_and_predicts_answer() {
    // Far more slow bodies than slots: before bodies were read outside
    // the limit, each held a slot and everything else answered 503.
    const SLOW: usize = 64;
    let app = spawn_with("", |c| {
        c.server.max_concurrency = 2.try_into().expect("non-zero");
        c.server.body_read_timeout_ms = 60_000;
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut s = TcpStream::connect(app.addr).await.expect("connect");
        s.write_all(SLOW_BODY).await.expect("write");
        slow.push(s);
    }
    wait_connections(&app, "public", SLOW as f64).await;
    for path in ["/healthz", "/readyz"] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for i in 0..10 {
        let (status, body) = app
            .post(
                "/v1/models/demo/predict",
                &json!({ "features": { "x": f64::from(i) } }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // The slow ones are still waiting, not refused.
    assert_eq!(refusals(&app, "public", "overloaded").await, 0.0);
    assert_eq!(refusals(&app, "public", "body_timeout").await, 0.0);
    // Clients that hang up mid-body are not refusals (nor malformed).
    drop(slow);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = scrape(&app).await;
        // What is left is the test client's own pool (one connection,
        // sometimes two or three when a request starts before the last
        // one's connection is back in the pool).
        let open = sample(&text, "eddy_http_connections{listener=\"public\"}");
        if open <= 4.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slow connections not closed: {open} open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refusals(&app, "public", "malformed_body").await, 0.0);
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_bodies_get_json_errors() {
    let app = spawn_with("", |c| {
        c.server.max_body_bytes = 1000.try_into().expect("non-zero");
        c.server.body_read_timeout_ms = 300;
    })
    .await;
    // Declared too large: answered before any body byte is sent (the body
    // deadline is short here, so a late answer would be a 408 instead).
    let big = exchange(
        app.addr,
        b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n",
    )
    .await;
    assert_eq!(big.status, 413, "{big:?}");
    assert_eq!(big.json()["error"]["code"], "payload_too_large", "{big:?}");
    assert_eq!(big.header("connection").as_deref(), Some("close"));
    // Chunked, so only reading finds it too large.
    let mut chunked =
        b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    chunked.extend_from_slice(format!("7d0\r\n{}\r\n0\r\n\r\n", "a".repeat(2000)).as_bytes());
    let read_big = exchange(app.addr, &chunked).await;
    assert_eq!(read_big.status, 413, "{read_big:?}");
    assert_eq!(read_big.json()["error"]["code"], "payload_too_large");
    // A body that stops coming.
    let slow = exchange(
        app.addr,
        b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\n\
        Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await;
    assert_eq!(slow.status, 408, "{slow:?}");
    assert_eq!(slow.json()["error"]["code"], "body_timeout", "{slow:?}");
    assert_eq!(refusals(&app, "public", "payload_too_large").await, 2.0);
    assert_eq!(refusals(&app, "public", "body_timeout").await, 1.0);
    app.stop().await.expect("clean stop");
}

/// A keep-alive request posting `body` to `path`.
fn request(path: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends one request and reads its answer whole (by `Content-Length`):
/// the status, and whether it says `Connection: close`.
async fn one(s: &mut TcpStream, bytes: &[u8]) -> (u16, bool) {
    s.write_all(bytes).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let answered = tokio::time::timeout(PATIENCE, async {
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let answer = Answer {
                    status: text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0),
                    head: text[..end].to_owned(),
                    body: Vec::new(),
                };
                let length: usize = answer
                    .header("content-length")
                    .and_then(|n| n.parse().ok())
                    .expect("content-length");
                if buf.len() >= end + 4 + length {
                    let close = answer.header("connection").as_deref() == Some("close");
                    return (answer.status, close);
                }
            }
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before the answer: {text:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    answered.expect("an answer in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_start_with_feedback_are_served_on_the_feedback_threads() {
    let lane = |text: &str| {
        sample(
            text,
            "eddy_http_feedback_lane_connections_total{listener=\"public\"}",
        )
    };
    let feedback = request(
        "/v1/models/demo/feedback",
        &json!({ "features": { "x": 1.0 }, "label": 1 }),
    );
    let predict = request(
        "/v1/models/demo/predict",
        &json!({ "features": { "x": 1.0 } }),
    );
    for threads in [1, 0] {
        let app = spawn_with("", |c| {
            c.server.feedback_io_threads = threads;
            c.server.header_read_timeout_ms = 300;
        })
        .await;
        let on = threads > 0;
        let steered = if on { 1.0 } else { 0.0 };
        // Started with feedback: on the lane, kept open for feedback; a
        // predict there is answered, then the connection is closed (a
        // keep-alive pool reopens one, steered again).
        let mut s = TcpStream::connect(app.addr).await.expect("connect");
        assert_eq!(one(&mut s, &feedback).await, (202, false));
        assert_eq!(one(&mut s, &feedback).await, (202, false));
        assert_eq!(one(&mut s, &predict).await, (200, on));
        if on {
            assert!(closed_by_server(&mut s, PATIENCE).await);
        }
        assert_eq!(lane(&scrape(&app).await), steered);
        // Started with a predict: where it was accepted, closed after a
        // feedback when the lane runs.
        let mut s = TcpStream::connect(app.addr).await.expect("connect");
        assert_eq!(one(&mut s, &predict).await, (200, false));
        assert_eq!(one(&mut s, &predict).await, (200, false));
        assert_eq!(one(&mut s, &feedback).await, (202, on));
        assert_eq!(
            lane(&scrape(&app).await),
            steered,
            "a connection that starts with a predict stays where it was accepted"
        );
        // A feedback head that stops after its request line is closed at
        // the head deadline, counted once, wherever it is served.
        let mut s = TcpStream::connect(app.addr).await.expect("connect");
        s.write_all(b"POST /v1/models/demo/feedback HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        assert!(
            closed_by_server(&mut s, PATIENCE).await,
            "dripped head kept"
        );
        assert_eq!(refusals(&app, "public", "header_timeout").await, 1.0);
        assert_eq!(lane(&scrape(&app).await), 2.0 * steered);
        app.stop().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dripped_headers_and_idle_connections_are_closed() {
    let app = spawn_with("", |c| {
        c.server.header_read_timeout_ms = 300;
        c.server.idle_timeout_ms = 600;
    })
    .await;
    // One byte of the head every 50 ms: the deadline counts from the
    // first byte, so the drip does not extend it.
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut s = TcpStream::connect(app.addr).await.expect("connect");
    let mut sent = 0;
    for byte in head {
        if s.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        if closed_by_server(&mut s, Duration::from_millis(50)).await {
            break;
        }
    }
    assert!(sent < head.len(), "the whole dripped head was accepted");
    assert_eq!(refusals(&app, "public", "header_timeout").await, 1.0);
    // A keep-alive connection that asks nothing more is closed after the
    // idle timeout (longer than the header timeout: resting is not
    // dripping).
    let mut s = TcpStream::connect(app.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(closed_by_server(&mut s, PATIENCE).await, "idle kept open");
    // (The test client's own pooled connection may have been closed
    // idle too.)
    let text = scrape(&app).await;
    assert!(sample(&text, "eddy_http_idle_closed_total{listener=\"public\"}") >= 1.0);
    assert_eq!(refusals(&app, "public", "header_timeout").await, 1.0);
    // A new connection that sends nothing is on the head deadline from
    // the start (nginx's client_header_timeout), not the idle one.
    let mut s = TcpStream::connect(app.addr).await.expect("connect");
    assert!(closed_by_server(&mut s, PATIENCE).await, "silent kept open");
    assert_eq!(refusals(&app, "public", "header_timeout").await, 2.0);
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let app = spawn_with("", |c| {
        c.server.max_connections = 3.try_into().expect("non-zero");
    })
    .await;
    // The test client may keep a pooled connection open too: one of
    // these four is beyond the limit either way.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(app.addr).await.expect("connect"));
    }
    wait_connections(&app, "public", 3.0).await;
    let mut extra = TcpStream::connect(app.addr).await.expect("connect");
    assert!(closed_by_server(&mut extra, PATIENCE).await);
    assert!(refusals(&app, "public", "connection_limit").await >= 1.0);
    // Room again once they close.
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut s = TcpStream::connect(app.addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf)).await;
        if buf.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no room after a close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_get_hyper_status_and_are_counted() {
    let app = spawn_with("", |_| {}).await;
    let cases: [(&str, Vec<u8>, u16); 4] = [
        (
            "bad content-length",
            b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "NUL in a header",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "URI too long",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
        ),
        (
            "headers too large",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: {}\r\n\r\n",
                "a".repeat(120_000)
            )
            .into_bytes(),
            431,
        ),
    ];
    for (what, bytes, status) in &cases {
        let answer = exchange(app.addr, bytes).await;
        assert_eq!(answer.status, *status, "{what}: {answer:?}");
    }
    // Once the head is parsed, eddy answers: a malformed chunk is a JSON 400.
    let answer = exchange(
        app.addr,
        b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(
        answer.json()["error"]["code"],
        "malformed_body",
        "{answer:?}"
    );
    assert_eq!(refusals(&app, "public", "malformed_body").await, 1.0);
    assert!(protocol_errors(&app, "malformed").await >= 2.0);
    assert_eq!(protocol_errors(&app, "too_large").await, 2.0);
    // The server still serves.
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_has_the_same_limits() {
    let app = spawn_with("", |c| {
        c.admin.body_read_timeout_ms = 300;
        c.admin.max_body_bytes = 100.try_into().expect("non-zero");
        c.admin.max_connections = 4.try_into().expect("non-zero");
    })
    .await;
    let slow = exchange(
        app.admin,
        b"POST /admin/models/demo/rollback HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{",
    )
    .await;
    assert_eq!(slow.status, 408, "{slow:?}");
    assert_eq!(slow.json()["error"]["code"], "body_timeout");
    let big = exchange(
        app.admin,
        b"POST /admin/models/demo/rollback HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
    )
    .await;
    assert_eq!(big.status, 413, "{big:?}");
    assert_eq!(refusals(&app, "admin", "body_timeout").await, 1.0);
    assert_eq!(refusals(&app, "admin", "payload_too_large").await, 1.0);
    // Held connections fill the admin listener; /metrics answered on a
    // connection opened before them keeps working.
    let mut scraper = TcpStream::connect(app.admin).await.expect("connect");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(app.admin).await.expect("connect"));
    }
    let mut extra = TcpStream::connect(app.admin).await.expect("connect");
    assert!(closed_by_server(&mut extra, PATIENCE).await);
    scraper
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = read_answer(&mut scraper).await;
    assert_eq!(answer.status, 200);
    let text = String::from_utf8_lossy(&answer.body);
    assert!(
        sample(
            &text,
            "eddy_http_refusals_total{listener=\"admin\",reason=\"connection_limit\"}"
        ) >= 1.0
    );
    drop(held);
    app.stop().await.expect("clean stop");
}

mod tls {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

    struct Authority(CertifiedIssuer<'static, KeyPair>);

    impl Authority {
        fn new() -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let key = KeyPair::generate().expect("key");
            Self(CertifiedIssuer::self_signed(params, key).expect("ca"))
        }

        /// A new leaf for localhost with a new key: (cert PEM, key PEM, DER).
        fn leaf(&self) -> (String, String, CertificateDer<'static>) {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(vec!["localhost".to_owned()])
                .expect("params")
                .signed_by(&key, &self.0)
                .expect("signed");
            (cert.pem(), key.serialize_pem(), cert.der().clone())
        }

        fn connector(&self) -> TlsConnector {
            let mut roots = RootCertStore::empty();
            roots.add(self.0.der().clone()).expect("root");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            // Every handshake in full: a resumed session would show the
            // certificate of the session it resumes.
            config.resumption = rustls::client::Resumption::disabled();
            TlsConnector::from(Arc::new(config))
        }
    }

    /// `GET path` over TLS; answers the status and the leaf served.
    async fn healthz(
        addr: SocketAddr,
        connector: &TlsConnector,
        path: &str,
    ) -> (u16, CertificateDer<'static>) {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        let leaf = tls.get_ref().1.peer_certificates().expect("certs")[0].clone();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.expect("write");
        let answer = read_answer(&mut tls).await;
        (answer.status, leaf)
    }

    fn write_pair(dir: &std::path::Path, cert: &str, key: &str) {
        // Key first, then the certificate: a reload in between sees a
        // mismatched pair and keeps the old one until the second lands.
        std::fs::write(dir.join("key.pem"), key).expect("write key");
        std::fs::write(dir.join("cert.pem"), cert).expect("write cert");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn https_is_served_and_certificates_reload_without_restart() {
        let ca = Authority::new();
        let files = tempfile::tempdir().expect("dir");
        let (cert, key, first) = ca.leaf();
        write_pair(files.path(), &cert, &key);
        let tls = eddy::config::TlsConfig {
            cert: files.path().join("cert.pem"),
            key: files.path().join("key.pem"),
            reload_interval_ms: 100,
        };
        // Started by hand: the helpers wait for readiness over plain HTTP.
        let dir = tempfile::tempdir().expect("dir");
        let mut config = crate::helpers::config("", dir.path());
        config.server.tls = Some(tls.clone());
        config.admin.tls = Some(tls);
        let built = eddy::app::App::build(config).await.expect("builds");
        let (addr, admin) = (
            built.local_addr().expect("bound"),
            built.admin_addr().expect("bound"),
        );
        let shutdown = built.shutdown_token();
        let server = tokio::spawn(built.run());
        let connector = ca.connector();
        let deadline = Instant::now() + PATIENCE;
        while healthz(addr, &connector, "/readyz").await.0 != 200 {
            assert!(Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for addr in [addr, admin] {
            let (status, served) = healthz(addr, &connector, "/metrics").await;
            // The public listener has no /metrics: a 404 over TLS.
            assert!(status == 200 || status == 404, "{status}");
            assert_eq!(served, first);
        }
        // Plain HTTP on a TLS listener gets no HTTP answer.
        let mut plain = TcpStream::connect(addr).await.expect("connect");
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut buf)).await;
        assert!(!buf.starts_with(b"HTTP/1.1 200"));

        let (cert, key, second) = ca.leaf();
        assert_ne!(first, second);
        write_pair(files.path(), &cert, &key);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, served) = healthz(addr, &connector, "/healthz").await;
            assert_eq!(status, 200);
            if served == second {
                break;
            }
            assert_eq!(served, first, "an unknown certificate was served");
            assert!(
                Instant::now() < deadline,
                "the new certificate never served"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        server.await.expect("joins").expect("clean stop");
    }

    #[tokio::test]
    async fn a_bad_new_pair_keeps_the_old_certificate() {
        let ca = Authority::new();
        let files = tempfile::tempdir().expect("dir");
        let (cert, key, first) = ca.leaf();
        write_pair(files.path(), &cert, &key);
        let config = eddy::config::TlsConfig {
            cert: files.path().join("cert.pem"),
            key: files.path().join("key.pem"),
            reload_interval_ms: 100,
        };
        let served = eddy::http::listener::CertFiles::load(&config).expect("loads");
        let current = |files: &eddy::http::listener::CertFiles| files.current().cert[0].clone();
        assert_eq!(current(&served), first);
        // Garbage, then a key that is not the certificate's: both refused.
        std::fs::write(files.path().join("cert.pem"), "not a certificate").expect("write");
        assert!(!served.reload_if_changed());
        assert_eq!(current(&served), first);
        let (_, other_key, _) = ca.leaf();
        write_pair(files.path(), &cert, &other_key);
        assert!(!served.reload_if_changed());
        assert_eq!(current(&served), first);
        // A good pair is taken.
        let (cert, key, second) = ca.leaf();
        write_pair(files.path(), &cert, &key);
        assert!(served.reload_if_changed());
        assert_eq!(current(&served), second);
        // A start-up with a bad file fails, naming it.
        std::fs::write(files.path().join("key.pem"), "nope").expect("write");
        let err = eddy::http::listener::CertFiles::load(&config).expect_err("bad key");
        assert!(err.to_string().contains("key.pem"), "{err}");
    }
}
