//! Feedback beyond `server.feedback_concurrency` admitted requests is
//! refused at once (429 `feedback_overloaded`, `Retry-After`) with nothing
//! of it applied, while predict keeps answering. The admission limit is
//! held from the test itself, as a request being ingested would hold it,
//! so the refusal is certain, not a race.

use serde_json::json;

use crate::helpers::{sample, scrape, spawn_app};

#[tokio::test]
async fn feedback_over_the_admission_limit_is_refused_whole_while_predict_answers() {
    let app = spawn_app(
        "[server]\nfeedback_threads = 1\nfeedback_concurrency = 1\nfeedback_wait_ms = 20",
    )
    .await;
    let predicted = app.predict("demo", json!({ "x": 0.5 })).await;
    let id = predicted["prediction_id"].as_str().expect("id").to_owned();
    let batch = json!({ "examples": [
        { "features": { "x": 1.0 }, "label": 1 },
        { "features": { "x": -1.0 }, "label": 0 },
        { "prediction_id": id, "label": 1 },
    ] });
    let url = app.url("/v1/models/demo/feedback");
    let runtime = app.state.model("demo").expect("model").clone();

    let held = app.state.ingest.try_admit().expect("nothing admitted yet");
    assert!(app.state.ingest.try_admit().is_none(), "the limit is one");
    let refused = app
        .client
        .post(&url)
        .header("idempotency-key", "batch-1")
        .json(&batch)
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let body: serde_json::Value = refused.json().await.expect("json error body");
    assert_eq!(body["error"]["code"], "feedback_overloaded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("server.feedback_concurrency")),
        "{body}"
    );
    // Predict does not go through the feedback admission.
    app.predict("demo", json!({ "x": -0.5 })).await;
    assert_eq!(runtime.queue.accepted(), 0, "nothing was logged or queued");
    let metrics = scrape(&app).await;
    assert_eq!(
        sample(
            &metrics,
            r#"eddy_feedback_rejected_requests_total{model="demo",reason="feedback_overloaded"}"#
        ),
        1.0
    );

    // Once admitted, the same request (same key, same prediction id) is
    // new: the refusal consumed neither.
    drop(held);
    let accepted = app
        .client
        .post(&url)
        .header("idempotency-key", "batch-1")
        .json(&batch)
        .send()
        .await
        .expect("sent");
    assert_eq!(accepted.status(), 202);
    assert!(accepted.headers().get("idempotent-replayed").is_none());
    let body: serde_json::Value = accepted.json().await.expect("json");
    assert_eq!(body["accepted"], 3);
    let info = app.wait_trained("demo", 3).await;
    assert_eq!(info["examples_trained"], 3, "{info}");
    assert_eq!(runtime.queue.accepted(), 3);
    app.stop().await.expect("clean stop");
}

/// Feedback waiting for its own admission takes no `max_concurrency`
/// slot: more waiting feedback requests than slots leave predicts
/// answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_waiting_for_admission_holds_no_request_slot() {
    let app = crate::helpers::spawn_with(
        "[server]\nfeedback_threads = 1\nfeedback_concurrency = 1\nfeedback_wait_ms = 5000",
        |c| c.server.max_concurrency = 2.try_into().expect("non-zero"),
    )
    .await;
    let held = app.state.ingest.try_admit().expect("nothing admitted yet");
    let url = app.url("/v1/models/demo/feedback");
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let request = app
                .client
                .post(&url)
                .json(&json!({ "features": { "x": 1.0 }, "label": 1 }));
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    // All four wait for the one feedback place (a deadline, not a sleep).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.state.ingest.waiting() < 4 {
        assert!(std::time::Instant::now() < deadline, "never waiting");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for _ in 0..3 {
        app.predict("demo", json!({ "x": 0.5 })).await;
    }
    drop(held);
    for w in waiting {
        assert_eq!(w.await.expect("task").expect("sent"), 202);
    }
    app.stop().await.expect("clean stop");
}
