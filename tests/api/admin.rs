//! The admin listener: Prometheus metrics without a token, admin routes
//! behind the bearer token, and no open admin routes off loopback.

use serde_json::{Value, json};

use crate::helpers::{events, sample, scrape, spawn_app, spawn_with};

#[tokio::test]
async fn metrics_count_what_happened_and_pass_promtool() {
    let app = spawn_app("").await;
    for i in 0..5 {
        app.predict("demo", json!({ "x": i })).await;
    }
    let p = app.predict("demo", json!({ "x": 9 })).await;
    let id = p["prediction_id"].as_str().expect("id");
    assert_eq!(
        app.feedback("demo", json!({ "prediction_id": id, "label": 1 }))
            .await
            .0,
        202
    );
    assert_eq!(
        app.feedback("demo", json!({ "prediction_id": id, "label": 1 }))
            .await
            .0,
        409
    );
    let batch: Vec<Value> = (0..10)
        .map(|i| json!({ "features": { "x": i }, "label": i % 2 }))
        .collect();
    assert_eq!(
        app.feedback("demo", json!({ "examples": batch })).await.0,
        202
    );
    app.wait_trained("demo", 11).await;

    let text = scrape(&app).await;
    assert_eq!(
        sample(&text, r#"eddy_predictions_total{model="demo"}"#),
        6.0
    );
    assert_eq!(
        sample(&text, r#"eddy_feedback_accepted_total{model="demo"}"#),
        11.0
    );
    assert_eq!(
        sample(&text, r#"eddy_feedback_joined_total{model="demo"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"eddy_feedback_join_misses_total{model="demo",reason="already_labelled"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"eddy_feedback_rejected_requests_total{model="demo",reason="already_labelled"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&text, r#"eddy_examples_trained_total{model="demo"}"#),
        11.0
    );
    assert_eq!(
        sample(&text, r#"eddy_feedback_delay_seconds_count{model="demo"}"#),
        1.0
    );
    assert!(sample(&text, r#"eddy_model_version{model="demo"}"#) >= 2.0);
    assert_eq!(
        sample(
            &text,
            r#"eddy_http_requests_total{route="/v1/models/{model}/predict",method="POST",status="200"}"#
        ),
        6.0
    );
    assert!(text.contains("# HELP eddy_queue_depth "), "{text}");

    crate::helpers::promtool(&text);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn admin_routes_need_the_token() {
    let app = spawn_with("", |c| c.admin.token = "s3cret".into()).await;
    let url = format!("http://{}/admin/models/demo/snapshots", app.admin);
    let r = app.client.get(&url).send().await.expect("request");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = app
        .client
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401);
    // The right token beside a wrong one: ambiguous, refused.
    let r = app
        .client
        .get(&url)
        .header("authorization", "Bearer wrong")
        .header("authorization", "Bearer s3cret")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .get(&url)
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert!(body["snapshots"].is_array(), "{body}");
    // Scrapers need no token; one that asks for OpenMetrics gets it.
    scrape(&app).await;
    let r = app
        .client
        .get(format!("http://{}/metrics", app.admin))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .expect("scrape");
    assert!(r.text().await.expect("text").trim_end().ends_with("# EOF"));
    let r = app
        .client
        .get(format!("http://{}/admin/models/nope/snapshots", app.admin))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 404);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn open_admin_routes_are_refused_off_loopback() {
    let dir = tempfile::tempdir().expect("dir");
    let mut c = crate::helpers::config("", dir.path());
    c.admin.listen = "0.0.0.0:0".parse().expect("addr");
    let err = eddy::app::App::build(c).await.err().expect("refused");
    assert!(err.to_string().contains("admin.token"), "{err}");
}

#[tokio::test]
async fn paused_learning_keeps_feedback_and_learns_it_on_resume() {
    let app = spawn_app("").await;
    let admin = |path: &str| format!("http://{}/admin/models/demo/{path}", app.admin);
    let r = app
        .client
        .post(admin("training/pause"))
        .send()
        .await
        .expect("pause");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.expect("json")["training"], "paused");
    assert_eq!(app.info("demo").await["training"], "paused");

    let batch: Vec<Value> = (0..20)
        .map(|i| json!({ "features": { "x": i }, "label": i % 2 }))
        .collect();
    assert_eq!(
        app.feedback("demo", json!({ "examples": batch })).await.0,
        202,
        "still accepted"
    );
    // A snapshot request is answered by the trainer's loop after it has
    // seen the feedback arrive: a deterministic point to look at it.
    let r = app
        .client
        .post(admin("snapshot"))
        .send()
        .await
        .expect("snapshot");
    assert_eq!(r.status(), 200);
    let info = app.info("demo").await;
    assert_eq!(
        info["examples_trained"], 0,
        "nothing learned while paused: {info}"
    );
    assert_eq!(info["queue_depth"], 20, "the feedback is kept: {info}");
    assert!(
        scrape(&app)
            .await
            .contains(r#"eddy_training_paused{model="demo"} 1"#)
    );

    let r = app
        .client
        .post(admin("training/resume"))
        .send()
        .await
        .expect("resume");
    assert_eq!(
        r.json::<Value>().await.expect("json")["training"],
        "running"
    );
    let info = app.wait_trained("demo", 20).await;
    assert_eq!(info["training"], "running");
    app.stop().await.expect("clean stop");
}

fn probability(p: &Value) -> f64 {
    p["probabilities"]["1"].as_f64().expect("p(1)")
}

#[tokio::test]
async fn rollback_to_a_named_version_or_to_last_good() {
    let app = spawn_app("").await;
    let probe = json!({ "x": 3.0, "c": "k" });
    let fresh = probability(&app.predict("demo", probe.clone()).await);
    let train = |n: u64, label: u64| {
        let batch: Vec<Value> = (0..n)
            .map(|i| json!({ "features": { "x": i % 7, "c": "k" }, "label": label }))
            .collect();
        json!({ "examples": batch })
    };
    assert_eq!(app.feedback("demo", train(64, 1)).await.0, 202);
    app.wait_trained("demo", 64).await;
    let (status, snap) = app.admin_post("demo/snapshot", "").await;
    assert_eq!(status, 200, "{snap}");
    let kept = snap["snapshot"]["version"].as_u64().expect("version");
    let at_kept = probability(&app.predict("demo", probe.clone()).await);
    assert!(at_kept > fresh + 0.1, "{at_kept} vs {fresh}");

    assert_eq!(app.feedback("demo", train(64, 0)).await.0, 202);
    let info = app.wait_trained("demo", 128).await;
    let before = info["version"].as_u64().expect("version");
    assert_ne!(
        probability(&app.predict("demo", probe.clone()).await),
        at_kept
    );

    let (status, body) = app
        .admin_post("demo/rollback", &json!({ "version": kept }).to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restored"], kept);
    assert_eq!(body["rolled_back_from"], before);
    assert_eq!(
        body["dropped"], 64,
        "the 64 examples learned after the snapshot"
    );
    let now = body["version"].as_u64().expect("version");
    assert!(now > before, "versions only go up: {now} after {before}");
    let p = app.predict("demo", probe.clone()).await;
    assert_eq!(p["model_version"], now);
    assert_eq!(probability(&p), at_kept, "the kept weights are live again");
    let info = app.info("demo").await;
    assert_eq!(info["rolled_back_from"], before);
    assert_eq!(
        info["last_good_version"], kept,
        "an operator's choice is trusted"
    );

    // `{}` (or no body) goes back to last-good.
    assert_eq!(app.feedback("demo", train(32, 0)).await.0, 202);
    app.wait_trained("demo", 160).await;
    let (status, body) = app.admin_post("demo/rollback", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restored"], kept);
    assert_eq!(
        probability(&app.predict("demo", probe.clone()).await),
        at_kept
    );

    let (status, body) = app
        .admin_post("demo/rollback", r#"{"version": 99999}"#)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("version_not_retained"))
    );
    let (status, body) = app.admin_post("demo/rollback", r#"{"version": "x"}"#).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_request"))
    );
    let (status, body) = app.admin_post("demo/rollback", r#"{"version": 1"#).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );
    let (status, _) = app.admin_post("nope/rollback", "{}").await;
    assert_eq!(status, 404);

    let events = events(&app, "demo").await;
    let rollbacks: Vec<&Value> = events.iter().filter(|e| e["kind"] == "rollback").collect();
    assert_eq!(rollbacks.len(), 2, "{events:?}");
    for e in rollbacks {
        assert!(e["at"].as_str().is_some_and(|a| a.ends_with('Z')), "{e}");
        assert!(
            e["reason"].as_str().is_some_and(|r| r.contains("operator")),
            "{e}"
        );
        assert!(
            e["version"].is_u64() && e["figures"]["rolled_back_from"].is_u64(),
            "{e}"
        );
    }
    let text = scrape(&app).await;
    assert_eq!(
        sample(
            &text,
            r#"eddy_rollbacks_total{model="demo",reason="operator"}"#
        ),
        2.0
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn rollback_needs_the_token_and_a_last_good() {
    let app = spawn_with(
        "[[models]]\nname = \"demo\"\ntask = \"binary\"\n[models.monitor]\nenabled = false\n",
        |c| c.admin.token = "s3cret".into(),
    )
    .await;
    let url = format!("http://{}/admin/models/demo/rollback", app.admin);
    for token in [None, Some("wrong")] {
        let mut r = app.client.post(&url).body("{}");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.expect("request");
        assert_eq!(r.status(), 401);
    }
    let r = app
        .client
        .post(&url)
        .bearer_auth("s3cret")
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "no_last_good");
    assert_eq!(app.info("demo").await["monitor"]["enabled"], false);
    app.stop().await.expect("clean stop");
}

/// A resume answered 200 survives a crash even with a backlog to learn:
/// the step is in the log before the answer (it used to wait in the
/// trainer's buffer while the backlog was learned, so a crash right after
/// the 200 left the model paused with its examples held).
#[tokio::test]
async fn an_acknowledged_resume_survives_a_crash() {
    let dir = tempfile::tempdir().expect("dir");
    let settings = [
        ("EDDY_MODELS__DEMO__HASH_BITS", "12"),
        // A network: slow to learn, so the backlog lasts past the kill.
        ("EDDY_MODELS__DEMO__FAMILY", "mlp"),
        ("EDDY_MODELS__DEMO__TRAINING__QUEUE_CAPACITY", "100000"),
        ("EDDY_SERVER__MAX_BATCH_INSTANCES", "20000"),
        ("EDDY_SERVER__MAX_BODY_BYTES", "16777216"),
    ];
    let mut server = crate::helpers::start_binary(dir.path(), &settings);
    let client = reqwest::Client::new();
    let admin = |what: &str| format!("http://{}/admin/models/demo/training/{what}", server.admin);
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(client.post(admin("pause")).send().await.expect("pause")),
        200
    );
    let examples: Vec<Value> = crate::helpers::dataset("elec2")
        .iter()
        .take(20_000)
        .map(|r| json!({ "features": r["features"], "label": r["label"] }))
        .collect();
    let fed = client
        .post(format!("http://{}/v1/models/demo/feedback", server.addr))
        .json(&json!({ "examples": examples }))
        .send()
        .await
        .expect("feedback");
    assert_eq!(status(fed), 202);
    assert_eq!(
        status(client.post(admin("resume")).send().await.expect("resume")),
        200
    );
    server.child.kill().expect("SIGKILL right after the 200");
    server.child.wait().expect("reaped");
    let mut again = crate::helpers::start_binary(dir.path(), &settings);
    // Ready once the log is replayed: the resume is after the examples.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ready = format!("http://{}/readyz", again.addr);
    while client
        .get(&ready)
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let info: Value = client
        .get(format!("http://{}/v1/models/demo", again.addr))
        .send()
        .await
        .expect("info")
        .json()
        .await
        .expect("json");
    again.child.kill().expect("kill");
    again.child.wait().expect("reaped");
    assert_eq!(info["training"], "running", "{info}");
}
