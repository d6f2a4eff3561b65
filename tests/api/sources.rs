//! Who sends feedback: `[[sources]]` credentials (401 without a token,
//! the token's name as the source, 403 for another name), per-source rate
//! limits in examples (429 with `Retry-After`, 422 beyond the burst,
//! nothing applied), and the bounded table of self-declared sources under
//! a flood of invented names.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, promtool, sample, scrape, spawn_app};

const CREDENTIALS: &str = r#"
[[sources]]
name = "crm"
token = "t-crm"
rate = 0.1
burst = 4

[[sources]]
name = "web-shop"
token = "t-shop"
"#;

/// Posts feedback for `demo` with optional bearer token and source header.
async fn send(
    app: &TestApp,
    token: Option<&str>,
    header_source: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = app
        .client
        .post(app.url("/v1/models/demo/feedback"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    if let Some(source) = header_source {
        request = request.header("x-eddy-source", source);
    }
    let r = request.send().await.expect("request sent");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

fn examples(n: usize, source: Option<&str>) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut e =
                json!({"features": {"x": i as f64, "region": "north"}, "label": (i % 2) as u8});
            if let Some(s) = source {
                e["source"] = json!(s);
            }
            e
        })
        .collect()
}

fn batch(examples: Vec<Value>) -> String {
    json!({ "examples": examples }).to_string()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// `Retry-After` in whole seconds.
fn retry_after(headers: &reqwest::header::HeaderMap) -> u64 {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds")
}

/// Polls the model's monitor report until its per-source example counts
/// reach `want`; returns them.
async fn wait_sources(app: &TestApp, want: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = app.info("demo").await;
        let seen: BTreeMap<String, u64> = info["monitor"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s["source"].as_str().unwrap_or("").to_owned(),
                    s["examples"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        if seen == *want || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn with_credentials_a_token_is_required_and_names_the_source() {
    let app = spawn_app(CREDENTIALS).await;
    let one = json!({"features": {"x": 1.0}, "label": 1}).to_string();

    // No token, a wrong one, another scheme: 401 with the scheme named.
    // A malformed body still gets 401: it is never parsed.
    for (token, body) in [
        (None, one.clone()),
        (Some("Bearer t-crm-x"), one.clone()),
        (Some("Bearer t-cr"), one.clone()),
        (Some("Basic t-crm"), one.clone()),
        (None, "{not json".to_owned()),
    ] {
        let (status, headers, body) = send(&app, token, None, body).await;
        assert_eq!((status, code(&body)), (401, "unauthorized"), "{token:?}");
        assert_eq!(
            headers.get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
    }

    // Two Authorization headers, even one of them valid: which one would
    // count is ambiguous, so neither does.
    let r = app
        .client
        .post(app.url("/v1/models/demo/feedback"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer t-crm")
        .header("authorization", "Bearer t-shop")
        .body(one.clone())
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 401);

    // The token's name is the source; naming it too is fine.
    let crm = Some("Bearer t-crm");
    let (status, _, body) = send(&app, crm, None, one.clone()).await;
    assert_eq!(status, 202, "{body}");
    let named = json!({"examples": examples(2, Some("crm")), "source": "crm"}).to_string();
    let (status, _, body) = send(&app, crm, Some("crm"), named).await;
    assert_eq!(status, 202, "{body}");

    // Claiming another name, anywhere, is refused whole.
    let claims = [
        (None, batch(examples(2, Some("web-shop")))),
        (
            None,
            json!({"examples": examples(1, None), "source": "web-shop"}).to_string(),
        ),
        (
            None,
            json!({"features": {"x": 1.0}, "label": 1, "source": "anyone"}).to_string(),
        ),
        (Some("web-shop"), one.clone()),
        (Some("crm"), batch(examples(1, Some("nobody")))),
    ];
    for (header, body) in claims {
        let (status, _, answer) = send(&app, crm, header, body.clone()).await;
        assert_eq!((status, code(&answer)), (403, "source_mismatch"), "{body}");
    }

    // crm (rate 0.1/s, burst 4) has used 3. More than the burst can never
    // pass; a batch with a bad example is refused before the limit is
    // charged; two are over the limit; then its last one is accepted.
    let (status, _, body) = send(&app, crm, None, batch(examples(5, None))).await;
    assert_eq!((status, code(&body)), (422, "exceeds_burst"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("burst of 4"), "{message}");
    let mut bad = examples(1, None);
    bad[0]["label"] = json!("not a class");
    let (status, _, body) = send(&app, crm, None, batch(bad)).await;
    assert_eq!((status, code(&body)), (422, "invalid_batch"), "{body}");
    let (status, headers, body) = send(&app, crm, None, batch(examples(2, None))).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"), "{body}");
    let wait = retry_after(&headers);
    assert!(
        (1..=20).contains(&wait),
        "one example more takes 10 s: {wait}"
    );
    let (status, _, body) = send(&app, crm, None, batch(examples(1, None))).await;
    assert_eq!(status, 202, "nothing refused used the quota: {body}");
    let (status, headers, body) = send(&app, crm, None, one.clone()).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"), "{body}");
    assert!(retry_after(&headers) >= 1);

    // web-shop has no limit.
    let (status, _, body) =
        send(&app, Some("bearer t-shop"), None, batch(examples(50, None))).await;
    assert_eq!(status, 202, "{body}");

    // What was learned carries the tokens' names and nothing else.
    let want: BTreeMap<String, u64> = [("crm".into(), 4), ("web-shop".into(), 50)].into();
    assert_eq!(wait_sources(&app, &want).await, want);

    let text = scrape(&app).await;
    promtool(&text);
    assert_eq!(
        sample(&text, "eddy_feedback_unauthorized_total{model=\"demo\"}"),
        6.0
    );
    // 5 beyond the burst, 2 and 1 over the rate.
    assert_eq!(
        sample(
            &text,
            "eddy_feedback_rate_limited_total{model=\"demo\",source=\"crm\"}"
        ),
        8.0
    );
    // A path naming no model is refused the same, and not counted under
    // its name.
    let r = app
        .client
        .post(app.url("/v1/models/nope/feedback"))
        .body(one.clone())
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 401);
    assert!(!scrape(&app).await.contains("model=\"nope\""));

    // Credentials are checked before a request is admitted to the
    // feedback threads: with admission closed, a request with a token is
    // refused for that (503), one without still gets its 401.
    app.state.ingest.close();
    let (status, _, body) = send(&app, crm, None, one.clone()).await;
    assert_eq!((status, code(&body)), (503, "shutting_down"), "{body}");
    let (status, _, _) = send(&app, None, None, one).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn self_declared_sources_are_limited_per_source_and_model() {
    let app = spawn_app(
        r#"
        [[models]]
        name = "demo"
        task = "binary"
        [models.guard]
        rate = 0.5
        burst = 3

        [[models]]
        name = "open"
        task = "binary"
        [models.guard]
        enabled = false
        rate = 0.5
        burst = 3
        "#,
    )
    .await;
    let post = |header: Option<&'static str>, body: String| send(&app, None, header, body);
    // Each source has its own bucket of 3.
    let (status, _, body) = post(None, batch(examples(3, Some("a")))).await;
    assert_eq!(status, 202, "{body}");
    let (status, headers, body) = post(None, batch(examples(1, Some("a")))).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"), "{body}");
    assert_eq!(retry_after(&headers), 2, "one example takes 2 s at 0.5/s");
    let (status, _, body) = post(Some("b"), batch(examples(3, None))).await;
    assert_eq!(status, 202, "the header names b: {body}");
    // Examples without a source share one bucket.
    let (status, _, body) = post(None, batch(examples(3, None))).await;
    assert_eq!(status, 202, "{body}");
    let (status, _, body) = post(None, batch(examples(1, None))).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"), "{body}");
    // A batch over several sources is charged whole or not at all: c has
    // room, a does not, so c's examples are not charged either.
    let mut mixed = examples(2, Some("c"));
    mixed.extend(examples(1, Some("a")));
    let (status, _, body) = post(None, batch(mixed)).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("`a`")
    );
    let (status, _, body) = post(None, batch(examples(3, Some("c")))).await;
    assert_eq!(status, 202, "c's bucket was given back: {body}");
    let (status, _, body) = post(None, batch(examples(4, Some("d")))).await;
    assert_eq!((status, code(&body)), (422, "exceeds_burst"), "{body}");

    // A model with its guard off has no limit.
    let (status, body) = app
        .post(
            "/v1/models/open/feedback",
            &json!({"examples": examples(20, Some("a"))}),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    let text = scrape(&app).await;
    promtool(&text);
    let limited = |source: &str| {
        sample(
            &text,
            &format!("eddy_feedback_rate_limited_total{{model=\"demo\",source=\"{source}\"}}"),
        )
    };
    assert_eq!(limited("a"), 4.0, "1 alone, then the mixed batch's 3");
    assert_eq!(limited("unknown"), 1.0);
    assert_eq!(limited("d"), 4.0);
    assert!(!text.contains("model=\"open\",source="), "{text}");
}

/// 100,000 invented source names, each example its own, in batches of
/// 1,000: the table and every family's source labels stay bounded, the
/// server keeps answering, and an honest source arriving afterwards gets
/// its own limit.
#[tokio::test]
async fn a_flood_of_invented_sources_stays_bounded() {
    const BOUND: usize = 100;
    let app = spawn_app(&format!(
        r#"
        [[models]]
        name = "demo"
        task = "binary"
        [models.training]
        queue_capacity = 200000
        [models.guard]
        max_sources = {BOUND}
        rate = 1000.0
        burst = 1000
        "#
    ))
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..4usize {
        let (client, url) = (app.client.clone(), app.url("/v1/models/demo/feedback"));
        tasks.spawn(async move {
            let mut statuses = BTreeMap::<String, usize>::new();
            for b in (worker..100).step_by(4) {
                let examples: Vec<Value> = (0..1000)
                    .map(|i| {
                        json!({
                            "features": {"x": (i % 7) as f64},
                            "label": (i % 2) as u8,
                            "source": format!("invented-{b}-{i}"),
                        })
                    })
                    .collect();
                let r = client
                    .post(&url)
                    .json(&json!({ "examples": examples }))
                    .send()
                    .await
                    .expect("the server answers");
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                let key = format!("{status} {}", code(&body));
                *statuses.entry(key).or_default() += 1;
            }
            statuses
        });
    }
    let mut statuses = BTreeMap::<String, usize>::new();
    while let Some(done) = tasks.join_next().await {
        for (k, n) in done.expect("worker") {
            *statuses.entry(k).or_default() += n;
        }
    }
    let allowed = ["202 ", "429 rate_limited", "429 feedback_overloaded"];
    assert!(
        statuses.keys().all(|k| allowed.contains(&k.as_str())),
        "{statuses:?}"
    );
    assert_eq!(statuses.values().sum::<usize>(), 100);
    assert!(statuses.contains_key("429 rate_limited"), "{statuses:?}");
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
    let tracked = app.state.sources.tracked("demo").expect("a table");
    assert!(tracked <= BOUND, "{tracked}");

    // An honest source after the flood: its own full burst, then its own
    // limit (the refusal names it, not `other`).
    let honest = json!({"examples": examples(1000, None), "source": "honest"});
    let (status, body) = app.post("/v1/models/demo/feedback", &honest).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = app.post("/v1/models/demo/feedback", &honest).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("`honest`"),
        "{body}"
    );

    let text = scrape(&app).await;
    promtool(&text);
    let mut sources: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((family, rest)) = line.split_once('{') else {
            continue;
        };
        if let Some(start) = rest.find("source=\"") {
            let value = &rest[start + 8..];
            let value = &value[..value.find('"').unwrap_or(value.len())];
            sources.entry(family).or_default().insert(value);
        }
    }
    assert!(
        sources.contains_key("eddy_feedback_rate_limited_total"),
        "{sources:?}"
    );
    for (family, values) in &sources {
        assert!(
            values.len() <= BOUND + 3,
            "{family} has {} source label values",
            values.len()
        );
    }
    let honest_limited = "eddy_feedback_rate_limited_total{model=\"demo\",source=\"honest\"}";
    assert_eq!(sample(&text, honest_limited), 1000.0);
}

/// `eddy config` shows where a token comes from, never the token.
#[test]
fn eddy_config_prints_no_token() {
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("crm.token");
    std::fs::write(&token_file, "file-secret-1\n").expect("write");
    let config = dir.path().join("eddy.toml");
    std::fs::write(
        &config,
        format!(
            "[[sources]]\nname = \"crm\"\ntoken_file = {:?}\n[[sources]]\nname = \"web-shop\"\n",
            token_file.display().to_string()
        ),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["config", "--config"])
        .arg(&config)
        .env_clear()
        .env("EDDY_SOURCES__WEB_SHOP__TOKEN", "env-secret-2")
        .env("EDDY_ADMIN__TOKEN", "admin-secret-3")
        .output()
        .expect("binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("secret"), "{stdout}");
    assert_eq!(
        stdout.matches("token = \"<redacted>\"").count(),
        3,
        "{stdout}"
    );
    assert!(stdout.contains("crm.token"), "the file is named: {stdout}");
    // A token file that cannot be read is a config error naming the key.
    std::fs::remove_file(&token_file).expect("remove");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["config", "--config"])
        .arg(&config)
        .env_clear()
        .env("EDDY_SOURCES__WEB_SHOP__TOKEN", "env-secret-2")
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("sources[crm].token_file"), "{stderr}");
}

/// An `Idempotency-Key` belongs to its credential: another client using
/// the same key is a new request, neither refused as a reuse nor answered
/// with the first client's 202.
#[tokio::test]
async fn idempotency_keys_are_scoped_to_the_credential() {
    let app = spawn_app(CREDENTIALS).await;
    let post = |token: &'static str, body: String| {
        let app = &app;
        async move {
            let r = app
                .client
                .post(app.url("/v1/models/demo/feedback"))
                .header("content-type", "application/json")
                .header("authorization", token)
                .header("idempotency-key", "retry-1")
                .body(body)
                .send()
                .await
                .expect("sent");
            (
                r.status().as_u16(),
                r.headers().get("idempotent-replayed").is_some(),
            )
        }
    };
    let one = json!({"features": {"x": 1.0}, "label": 1}).to_string();
    let two = json!({"examples": examples(2, None)}).to_string();
    assert_eq!(post("Bearer t-crm", one.clone()).await, (202, false));
    assert_eq!(
        post("Bearer t-shop", two.clone()).await,
        (202, false),
        "another credential's key"
    );
    assert_eq!(
        post("Bearer t-crm", one).await,
        (202, true),
        "crm's retry is replayed"
    );
    assert_eq!(
        post("Bearer t-shop", two).await,
        (202, true),
        "and web-shop's"
    );
    app.stop().await.expect("stops");
}
