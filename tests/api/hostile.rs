//! A hostile client: a generated corpus of well over 1,000 malformed
//! requests (wrong types, truncated JSON, invalid UTF-8, deep nesting,
//! 1e309, megabyte strings and names, 100,000 features, odd ids, headers
//! and paths, raw protocol garbage). Every one answers 4xx, every answer
//! eddy writes has the JSON error shape, and none of them teaches the
//! model anything. Property tests throw arbitrary bodies at both JSON
//! routes and arbitrary feature sets at the hasher.
//!
//! Inputs that once broke eddy are kept in `REGRESSIONS` (and proptest's
//! own failure file, `tests/proptest-regressions/hostile.txt`, is committed
//! when it appears).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::spawn_app;

const MODELS: &str = r#"
[[models]]
name = "bin"
task = "binary"
[[models]]
name = "multi"
task = "multiclass"
classes = ["a", "b", "c"]
"#;

const PREDICT: &str = "/v1/models/bin/predict";
const FEEDBACK: &str = "/v1/models/bin/feedback";
const MULTI_FEEDBACK: &str = "/v1/models/multi/feedback";

/// One request of the corpus.
struct Case {
    what: String,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    /// Sent over a raw socket: an HTTP client would normalise the path
    /// (`..`, `%2e`) before the server saw it.
    raw_path: bool,
}

impl Case {
    fn post(what: impl Into<String>, path: &str, body: impl Into<Vec<u8>>) -> Self {
        Case {
            what: what.into(),
            method: "POST",
            path: path.to_owned(),
            headers: Vec::new(),
            body: body.into(),
            raw_path: false,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Inputs that broke eddy once, kept so they never do again.
const REGRESSIONS: &[(&str, &str, &str)] = &[
    // A literal beyond f64's range was a syntax error (400) in a value
    // position; it is a refused value (422).
    ("1e309 feature", PREDICT, r#"{"features": {"a": 1e309}}"#),
    (
        "-1e309 label",
        FEEDBACK,
        r#"{"features": {"a": 1}, "label": -1e309}"#,
    ),
    // Deep nesting once reached serde_json's recursion limit inside a
    // borrowed visitor.
    (
        "nested feature",
        PREDICT,
        r#"{"features": {"a": [[[[[[1]]]]]]}}"#,
    ),
    // An empty batch was accepted as nothing at all.
    ("empty examples", FEEDBACK, r#"{"examples": []}"#),
    // A prediction id and inline features together.
    (
        "id and features",
        FEEDBACK,
        r#"{"prediction_id": "p-1", "features": {"a": 1}, "label": 1}"#,
    ),
];

/// Values of every JSON type, for fields that must have another one.
fn wrong_values() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1.5),
        json!(""),
        json!("x"),
        json!([]),
        json!([1, 2]),
        json!({}),
        json!({"a": {}}),
        json!([[[]]]),
        json!({"features": 1}),
    ]
}

fn corpus() -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(0x00ed_d1e5);
    let mut cases = Vec::new();

    // Wrong types: every field of both bodies, with values of the wrong
    // type (the other fields valid, so the wrong one is the reason).
    for v in wrong_values() {
        // A dense vector (an array of numbers) is a valid feature set.
        // So is an object of numbers, strings and booleans.
        let valid_features = v
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_number))
            || v.as_object().is_some_and(|m| {
                !m.is_empty()
                    && m.values()
                        .all(|x| x.is_number() || x.is_string() || x.is_boolean())
            });
        if !valid_features {
            cases.push(Case::post(
                format!("predict features = {v}"),
                PREDICT,
                json!({ "features": v }).to_string(),
            ));
            cases.push(Case::post(
                format!("predict instances = {v}"),
                PREDICT,
                json!({ "instances": v }).to_string(),
            ));
            cases.push(Case::post(
                format!("predict instances = [{{features: {v}}}]"),
                PREDICT,
                json!({ "instances": [{ "features": v }] }).to_string(),
            ));
            cases.push(Case::post(
                format!("feedback features = {v}"),
                FEEDBACK,
                json!({ "features": v, "label": 1 }).to_string(),
            ));
            cases.push(Case::post(
                format!("feedback examples = {v}"),
                FEEDBACK,
                json!({ "examples": v }).to_string(),
            ));
            cases.push(Case::post(
                format!("feedback examples = [{v}]"),
                FEEDBACK,
                json!({ "examples": [v] }).to_string(),
            ));
        }
        // A binary label is a boolean, 0/1 or a class name; none of these.
        if !matches!(&v, Value::Bool(_)) && v != json!(0) {
            cases.push(Case::post(
                format!("feedback label = {v}"),
                FEEDBACK,
                json!({ "features": { "a": 1 }, "label": v }).to_string(),
            ));
            cases.push(Case::post(
                format!("batch label = {v}"),
                FEEDBACK,
                json!({ "examples": [{ "features": { "a": 1 }, "label": v }] }).to_string(),
            ));
        }
        if !v.is_string() {
            cases.push(Case::post(
                format!("prediction_id = {v}"),
                FEEDBACK,
                json!({ "prediction_id": v, "label": 1 }).to_string(),
            ));
            if !v.is_null() {
                cases.push(Case::post(
                    format!("source = {v}"),
                    FEEDBACK,
                    json!({ "features": { "a": 1 }, "label": 1, "source": v }).to_string(),
                ));
            }
        }
        // A class the multiclass model does not have.
        cases.push(Case::post(
            format!("multiclass label = {v}"),
            MULTI_FEEDBACK,
            json!({ "features": { "a": 1 }, "label": v }).to_string(),
        ));
        // Unknown fields are refused, whatever their value.
        cases.push(Case::post(
            format!("unknown field = {v}"),
            FEEDBACK,
            json!({ "features": { "a": 1 }, "label": 1, "weight": v }).to_string(),
        ));
        cases.push(Case::post(
            format!("predict unknown field = {v}"),
            PREDICT,
            json!({ "features": { "a": 1 }, "label": v }).to_string(),
        ));
    }

    // Truncated JSON: every proper prefix of valid bodies is malformed.
    let valid = [
        (
            PREDICT,
            json!({ "features": { "age": 31, "city": "Oslo", "vip": true } }),
        ),
        (
            PREDICT,
            json!({ "instances": [{ "features": [0.5, 1.5] }, { "features": { "b": -2 } }] }),
        ),
        (
            FEEDBACK,
            json!({ "features": { "x": 1.25, "y": "red" }, "label": 1, "source": "s" }),
        ),
        (
            FEEDBACK,
            json!({ "examples": [{ "features": { "x": 3 }, "label": false }, { "prediction_id": "p-1", "label": true }] }),
        ),
        (
            MULTI_FEEDBACK,
            json!({ "features": { "w": 2 }, "label": "b" }),
        ),
    ];
    for (path, body) in &valid {
        let text = body.to_string();
        for cut in 0..text.len() {
            cases.push(Case::post(
                format!("truncated at {cut}: {text}"),
                path,
                text.as_bytes()[..cut].to_vec(),
            ));
        }
    }

    // Invalid UTF-8 inside strings and names, at random places.
    let bad_bytes: [&[u8]; 6] = [
        b"\xff",
        b"\xc3\x28",
        b"\xe2\x82",
        b"\xf0\x28\x8c\x28",
        b"\xc0\xaf",
        b"\xed\xa0\x80",
    ];
    for (i, bad) in bad_bytes.iter().enumerate() {
        for (path, template) in [
            (PREDICT, r#"{"features": {"nameXX": 1}}"#),
            (PREDICT, r#"{"features": {"city": "valXX"}}"#),
            (
                FEEDBACK,
                r#"{"features": {"a": 1}, "label": 1, "source": "sXX"}"#,
            ),
            (FEEDBACK, r#"{"prediction_id": "idXX", "label": 1}"#),
            (MULTI_FEEDBACK, r#"{"features": {"a": 1}, "label": "XX"}"#),
        ] {
            let mut body = Vec::new();
            let (head, tail) = template.split_once("XX").expect("marker");
            body.extend_from_slice(head.as_bytes());
            body.extend_from_slice(bad);
            body.extend_from_slice(tail.as_bytes());
            cases.push(Case::post(
                format!("invalid utf-8 #{i} in {template}"),
                path,
                body,
            ));
        }
    }

    // Deep nesting, up to depth 10,000, in every position.
    for depth in [129, 1_000, 10_000] {
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        let open = "[".repeat(depth);
        for (path, body) in [
            (PREDICT, arrays.clone()),
            (PREDICT, objects.clone()),
            (PREDICT, format!(r#"{{"features": {{"a": {arrays}}}}}"#)),
            (PREDICT, format!(r#"{{"features": {objects}}}"#)),
            (PREDICT, format!(r#"{{"instances": {arrays}}}"#)),
            (
                FEEDBACK,
                format!(r#"{{"features": {{"a": 1}}, "label": {arrays}}}"#),
            ),
            (FEEDBACK, format!(r#"{{"examples": {arrays}}}"#)),
            (
                FEEDBACK,
                format!(r#"{{"features": {{"a": 1}}, "label": 1, "source": {objects}}}"#),
            ),
            (FEEDBACK, open),
        ] {
            cases.push(Case::post(format!("depth {depth}"), path, body));
        }
    }

    // Numbers beyond f64, and numbers where none may be.
    for number in ["1e309", "-1e309", "1e999999", "-2e400000000"] {
        for (path, body) in [
            (PREDICT, format!(r#"{{"features": {{"a": {number}}}}}"#)),
            (PREDICT, format!(r#"{{"features": [1, {number}]}}"#)),
            (
                PREDICT,
                format!(r#"{{"instances": [{{"features": {{"a": {number}}}}}]}}"#),
            ),
            (
                FEEDBACK,
                format!(r#"{{"features": {{"a": {number}}}, "label": 1}}"#),
            ),
            (
                FEEDBACK,
                format!(r#"{{"features": {{"a": 1}}, "label": {number}}}"#),
            ),
            (
                MULTI_FEEDBACK,
                format!(r#"{{"features": {{"a": 1}}, "label": {number}}}"#),
            ),
        ] {
            cases.push(Case::post(format!("number {number}"), path, body));
        }
    }
    for bad in [
        "NaN",
        "Infinity",
        "-Infinity",
        "0x10",
        "01",
        "1.",
        ".5",
        "+1",
        "1e",
        "--1",
    ] {
        cases.push(Case::post(
            format!("not a JSON number {bad}"),
            PREDICT,
            format!(r#"{{"features": {{"a": {bad}}}}}"#),
        ));
        cases.push(Case::post(
            format!("not a JSON number label {bad}"),
            FEEDBACK,
            format!(r#"{{"features": {{"a": 1}}, "label": {bad}}}"#),
        ));
    }

    // Megabyte strings and names: over the default 1 MiB body limit.
    let mega = "m".repeat(1 << 20);
    cases.push(Case::post(
        "1 MiB feature name",
        PREDICT,
        format!(r#"{{"features": {{"{mega}": 1}}}}"#),
    ));
    cases.push(Case::post(
        "1 MiB categorical value",
        PREDICT,
        format!(r#"{{"features": {{"a": "{mega}"}}}}"#),
    ));
    cases.push(Case::post(
        "1 MiB source",
        FEEDBACK,
        format!(r#"{{"features": {{"a": 1}}, "label": 1, "source": "{mega}"}}"#),
    ));
    cases.push(Case::post(
        "1 MiB prediction id",
        FEEDBACK,
        format!(r#"{{"prediction_id": "{mega}", "label": 1}}"#),
    ));
    cases.push(Case::post(
        "1 MiB of whitespace",
        PREDICT,
        " ".repeat((1 << 20) + 1),
    ));

    // 100,000 features in one instance, under the body limit.
    let wide: String = (0..100_000)
        .map(|i| format!(r#""{}":1"#, radix36(i)))
        .collect::<Vec<_>>()
        .join(",");
    cases.push(Case::post(
        "100,000 named features",
        PREDICT,
        format!(r#"{{"features": {{{wide}}}}}"#),
    ));
    cases.push(Case::post(
        "100,000 named features as feedback",
        FEEDBACK,
        format!(r#"{{"features": {{{wide}}}, "label": 1}}"#),
    ));
    // More instances than server.max_batch_instances (1,000): each would
    // cost an answer held until the client reads it.
    let many = vec![r#"{"features": [1]}"#; 1_001].join(",");
    cases.push(Case::post(
        "1,001 instances",
        PREDICT,
        format!(r#"{{"instances": [{many}]}}"#),
    ));
    let dense = vec!["1"; 100_000].join(",");
    cases.push(Case::post(
        "100,000 dense features",
        PREDICT,
        format!(r#"{{"features": [{dense}]}}"#),
    ));

    // Odd prediction ids: never issued, so unknown (or malformed).
    let mut ids: Vec<String> = [
        "",
        " ",
        "../../etc/passwd",
        "p-",
        "p-0",
        "p--1",
        "p-99999999999999999999999",
        "0",
        "-1",
        "null",
        "\u{0}",
        "\u{202e}evil",
        "🦀",
        "p-1/../../x",
        "%00",
        "\\",
        "\"",
        "p-1\r\nX-Injected: 1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for _ in 0..20 {
        let len = rng.random_range(1..300);
        ids.push((0..len).map(|_| rng.random_range(' '..='~')).collect());
    }
    for id in ids {
        cases.push(Case::post(
            format!("prediction id {id:?}"),
            FEEDBACK,
            json!({ "prediction_id": id, "label": 1 }).to_string(),
        ));
    }

    // Sources that would break the metrics exposition or a log line.
    for bad in [
        r"a\u0000b",
        r"line\nbreak",
        r"tab\there",
        r"\u001b[31mred",
        r"\u2028",
        r"\u202eevil",
        r"\u007f",
    ] {
        cases.push(Case::post(
            format!("source {bad}"),
            FEEDBACK,
            format!(r#"{{"features": {{"a": 1}}, "label": 1, "source": "{bad}"}}"#),
        ));
    }

    // Odd headers, with bodies that are wrong anyway or a header that is.
    let good_feedback = json!({ "features": { "a": 1 }, "label": 1 }).to_string();
    cases.push(
        Case::post(
            "Idempotency-Key of 129 bytes",
            FEEDBACK,
            good_feedback.clone(),
        )
        .header("idempotency-key", "k".repeat(129)),
    );
    cases.push(
        Case::post("source header not text", FEEDBACK, good_feedback.clone())
            .header("x-eddy-source", b"\xff\xfe".to_vec()),
    );
    for (name, value) in [
        ("content-type", "text/plain"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-type", "multipart/form-data; boundary=x"),
        ("content-encoding", "gzip"),
        ("authorization", "Bearer nonsense"),
        ("transfer-encoding", "identity"),
        ("x-eddy-source", ""),
        ("accept", "application/xml"),
    ] {
        cases.push(
            Case::post(
                format!("header {name}: {value} with a bad body"),
                FEEDBACK,
                "a=1&label=1",
            )
            .header(name, value),
        );
    }
    cases.push(
        Case::post(
            "gzip-labelled garbage",
            PREDICT,
            vec![0x1f, 0x8b, 0x08, 0, 0, 0],
        )
        .header("content-encoding", "gzip"),
    );

    // Paths: traversal, encodings, unknown models and methods.
    for path in [
        "/v1/models/../admin/models/bin/rollback",
        "/v1/models/%2e%2e/predict",
        "/v1/models/..%2f..%2fetc%2fpasswd/predict",
        "/v1/models/bin/../../metrics",
        "/v1/models/nope/predict",
        "/v1/models/%00/predict",
        "/v1/models/bin/predict/",
        "/v1/models/bin/predict/../feedback",
        "/v1/models//predict",
        "/v1/models/bin%2Fpredict",
        "/admin/models/bin/rollback",
        "/metrics",
        "/v2/models/bin/predict",
        "/v1/models/BIN/predict",
        "/%2e%2e/%2e%2e/etc/passwd",
    ] {
        let mut case = Case::post(format!("path {path}"), path, good_feedback.clone());
        case.raw_path = true;
        cases.push(case);
    }
    for method in ["PUT", "DELETE", "PATCH", "GET"] {
        let mut case = Case::post(format!("{method} on predict"), PREDICT, "{}");
        case.method = method;
        cases.push(case);
    }

    // Random byte soup.
    for i in 0..500 {
        let len = rng.random_range(1..200);
        let mut body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Keep it from parsing as JSON by accident.
        body[0] = b'}';
        let path = if i % 2 == 0 { PREDICT } else { FEEDBACK };
        cases.push(Case::post(format!("random bytes #{i}"), path, body));
    }

    for (what, path, body) in REGRESSIONS {
        cases.push(Case::post(format!("regression: {what}"), path, *body));
    }
    cases
}

fn radix36(mut i: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[i % 36]);
        i /= 36;
        if i == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// Asserts `body` is eddy's JSON error shape.
fn assert_error_shape(what: &str, status: u16, body: &[u8]) {
    let value: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: {status} with a body that is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    });
    assert!(
        value["error"]["code"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
            && value["error"]["message"].is_string(),
        "{what}: {status} without the error shape: {value}"
    );
}

#[tokio::test]
async fn a_corpus_of_malformed_requests_answers_json_4xx_and_teaches_nothing() {
    let app = spawn_app(MODELS).await;
    let cases = corpus();
    assert!(cases.len() >= 1_000, "only {} cases", cases.len());
    let client = reqwest::Client::new();
    for case in &cases {
        if case.raw_path {
            let request = [
                format!(
                    "{} {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    case.method,
                    case.path,
                    case.body.len()
                )
                .as_bytes(),
                &case.body,
            ]
            .concat();
            let (status, body) = raw(app.addr, request).await;
            let status = status.unwrap_or_else(|| panic!("{}: no answer", case.what));
            assert_error_shape(&case.what, status, &body);
            continue;
        }
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).expect("method");
        let mut request = client
            .request(method, app.url(&case.path))
            .body(case.body.clone());
        if !case.headers.iter().any(|(n, _)| *n == "content-type") {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in &case.headers {
            request = request.header(
                *name,
                reqwest::header::HeaderValue::from_bytes(value).expect("header value"),
            );
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("body");
        assert!(
            (400..500).contains(&status),
            "{}: {status} {:?}",
            case.what,
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        assert_error_shape(&case.what, status, &body);
    }
    for (garbage, what) in raw_garbage()
        .into_iter()
        .filter(|(_, w)| !w.starts_with("SKIP"))
    {
        let (status, _) = raw(app.addr, garbage).await;
        assert!(
            status.is_none_or(|s| (400..500).contains(&s)),
            "raw {what}: {status:?}"
        );
    }
    for model in ["bin", "multi"] {
        let info = app.info(model).await;
        assert_eq!(info["examples_trained"], 0, "{model}: {info}");
        assert_eq!(
            info["queue_depth"].as_u64().unwrap_or(0),
            0,
            "{model}: {info}"
        );
    }
    // The server still works.
    let p = app.predict("bin", json!({ "a": 1 })).await;
    assert!(p["prediction_id"].is_string(), "{p}");
    app.stop().await.expect("clean stop");
}

/// Bytes that are not HTTP, or HTTP that hyper refuses before eddy sees a
/// request. They are answered by hyper's own status line (there is no
/// request to answer in JSON, and dressing the answer up would mean parsing
/// HTTP by hand), or the connection is closed.
fn raw_garbage() -> Vec<(Vec<u8>, &'static str)> {
    vec![
        (b"GARBAGE\r\n\r\n".to_vec(), "a word"),
        (b"GET / HTTP/9.9\r\n\r\n".to_vec(), "an unknown version"),
        (b"\x00\x01\x02\x03\r\n\r\n".to_vec(), "binary"),
        (
            b"POST /v1/models/bin/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}".to_vec(),
            "a bad Content-Length",
        ),
        (
            b"POST /v1/models/bin/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
            "two Content-Lengths",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n".to_vec(),
            "a NUL in a header",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n".to_vec(),
            "a header without a colon",
        ),
        (
            [
                b"GET /".as_slice(),
                "a".repeat(70_000).as_bytes(),
                b" HTTP/1.1\r\nHost: x\r\n\r\n",
            ]
            .concat(),
            "a 70 KB URI",
        ),
        (
            [
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".as_slice(),
                "b".repeat(200_000).as_bytes(),
                b"\r\n\r\n",
            ]
            .concat(),
            "a 200 KB header",
        ),
        (
            b"POST /v1/models/bin/feedback HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(),
            "a malformed chunk size",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n Folded: yes\r\n\r\n".to_vec(),
            "an obsolete line fold",
        ),
    ]
}

/// `raw_exchange` off the runtime the server runs on.
async fn raw(addr: SocketAddr, bytes: Vec<u8>) -> (Option<u16>, Vec<u8>) {
    tokio::task::spawn_blocking(move || raw_exchange(addr, &bytes))
        .await
        .expect("raw exchange")
}

/// Sends raw bytes; returns the status and body of the first answer, if
/// any (a 4xx: anything else fails the test at once).
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (Option<u16>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    // The server may close before reading everything; that is an answer
    // too. The write side stays open: hyper drops a request whose
    // connection is half-closed before it answers.
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    if let Some(code) = status
        && !(400..500).contains(&code)
    {
        panic!("{text}");
    }
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or_else(Vec::new, |at| answer[at + 4..].to_vec());
    (status, body)
}

/// Arbitrary bodies on both JSON routes, in process (no sockets): never a
/// 5xx, every 4xx in the JSON error shape, and a 2xx only for a body that
/// was valid JSON.
#[test]
fn arbitrary_bodies_never_fail_the_server() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let c = crate::helpers::config(MODELS, dir.path());
    let server = c.server.clone();
    let app = runtime
        .block_on(eddy::app::App::build(c))
        .expect("app builds");
    let router = eddy::http::public_router(app.state().clone(), &server);
    let bodies = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        arbitrary_json().prop_map(|v| v.to_string().into_bytes()),
        arbitrary_json().prop_map(|v| json!({ "features": v }).to_string().into_bytes()),
        arbitrary_json().prop_map(|v| json!({ "features": { "a": 1 }, "label": v })
            .to_string()
            .into_bytes()),
        arbitrary_json().prop_map(|v| json!({ "examples": [v] }).to_string().into_bytes()),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    });
    runner
        .run(&(bodies, any::<bool>()), |(body, to_predict)| {
            let path = if to_predict { PREDICT } else { FEEDBACK };
            let request = Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body.clone()))
                .expect("request");
            let (status, answer) = runtime.block_on(async {
                let r = router.clone().oneshot(request).await.expect("infallible");
                let status = r.status().as_u16();
                let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
                    .await
                    .expect("body");
                (status, bytes)
            });
            prop_assert!(
                status < 500,
                "{status} for {:?}",
                String::from_utf8_lossy(&body)
            );
            if status >= 400 {
                assert_error_shape(&String::from_utf8_lossy(&body), status, &answer);
            } else {
                prop_assert!(serde_json::from_slice::<Value>(&body).is_ok());
            }
            Ok(())
        })
        .expect("property holds");
}

/// Any JSON value, nested a little.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Feature hashing: any named feature set of numbers, strings and
    /// booleans hashes to rows inside the model, the same way every time
    /// and whatever the order of the names (numbers within ±1e30; beyond,
    /// or non-finite, they are refused by name).
    #[test]
    fn hashing_any_feature_set_stays_in_range_and_is_deterministic(
        bits in eddy::learn::features::MIN_HASH_BITS..=eddy::learn::features::MAX_HASH_BITS,
        pairs in proptest::collection::btree_map(".{0,20}", prop_oneof![
            any::<f64>()
                .prop_filter("within the bound", |f| f.abs() <= eddy::learn::features::MAX_MAGNITUDE)
                .prop_map(|f| json!(f)),
            ".{0,10}".prop_map(Value::String),
            any::<bool>().prop_map(Value::Bool),
        ], 1..40),
    ) {
        // Distinct names, so both orders say the same thing.
        let pairs: Vec<(String, Value)> = pairs.into_iter().collect();
        let hasher = eddy::learn::FeatureHasher::new(bits);
        let text = Value::Object(pairs.iter().cloned().collect()).to_string();
        let reversed = Value::Object(pairs.iter().rev().cloned().collect()).to_string();
        let raw: eddy::learn::RawFeatures = serde_json::from_str(&text).expect("parses");
        let raw_rev: eddy::learn::RawFeatures = serde_json::from_str(&reversed).expect("parses");
        let a = hasher.hash(&raw).expect("hashes");
        let b = hasher.hash(&raw).expect("hashes");
        prop_assert_eq!(&a, &b);
        for f in &a.features {
            prop_assert!((f.index as usize) < hasher.rows());
            prop_assert!(f.value.is_finite());
        }
        let key = |f: &eddy::learn::Feature| (f.index, f.value.to_bits(), f.numeric);
        let mut x: Vec<_> = a.features.iter().map(key).collect();
        let mut y: Vec<_> = hasher.hash(&raw_rev).expect("hashes").features.iter().map(key).collect();
        x.sort_unstable();
        y.sort_unstable();
        prop_assert_eq!(x, y);
    }

    #[test]
    fn a_non_finite_value_is_refused_by_name(name in "[a-z]{1,8}") {
        let hasher = eddy::learn::FeatureHasher::new(10);
        let text = format!(r#"{{"ok": 1, "{name}": 1e309}}"#);
        match serde_json::from_str::<eddy::learn::RawFeatures>(&text) {
            // Either the parser refuses the literal, or the hasher the value.
            Err(_) => {}
            Ok(raw) => {
                let err = hasher.hash(&raw).expect_err("refused");
                prop_assert!(err.to_string().contains(&name), "{err}");
            }
        }
    }
}
