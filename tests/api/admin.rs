//! The admin listener: Prometheus metrics without a token, admin routes
//! behind the bearer token, and no open admin routes off loopback.

use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_with};

async fn scrape(app: &crate::helpers::TestApp) -> String {
    let r = app
        .client
        .get(format!("http://{}/metrics", app.admin))
        .send()
        .await
        .expect("scrape");
    assert_eq!(r.status(), 200);
    r.text().await.expect("text")
}

/// The value of the sample line that starts with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

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

    // promtool (Debian package `prometheus`) is installed by .ci/run; in CI
    // its absence is a failure, elsewhere the check is skipped.
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write");
            let out = child.wait_with_output().expect("promtool runs");
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => assert!(
            std::env::var("CI").is_err(),
            "promtool is required in CI: {e}"
        ),
    }
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
