//! Bounded memory under wide requests: an instance with more than
//! `features.max_per_example` features answers 422 `too_many_features`
//! and nothing of its request is applied; the join cache keeps to
//! `join.max_bytes`, and an id it evicted answers 404 saying so.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::helpers::{TestApp, item_codes, sample, scrape, spawn_app};

const CAP: usize = 50;

fn features(n: usize) -> Value {
    let map: Map<String, Value> = (0..n).map(|i| (format!("f{i}"), json!(1.0))).collect();
    Value::Object(map)
}

fn assert_too_many(status: u16, body: &Value) {
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "too_many_features", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("51 features") && message.contains("features.max_per_example (50)"),
        "{message}"
    );
}

async fn pending(app: &TestApp) -> u64 {
    app.info("demo").await["pending_predictions"]
        .as_u64()
        .expect("pending_predictions")
}

#[tokio::test]
async fn an_instance_over_the_cap_is_refused_whole_and_changes_nothing() {
    let app = spawn_app(&format!("[[models]]\nname = \"demo\"\ntask = \"binary\"\n[models.features]\nmax_per_example = {CAP}\n")).await;
    let predict = "/v1/models/demo/predict";

    // Predict: one instance, and a batch with one too wide.
    let (status, body) = app
        .post(predict, &json!({ "features": features(CAP + 1) }))
        .await;
    assert_too_many(status, &body);
    let batch =
        json!({ "instances": [{ "features": features(CAP) }, { "features": features(CAP + 1) }] });
    let (status, body) = app.post(predict, &batch).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_batch");
    assert_eq!(item_codes(&body), [(1, "too_many_features")]);
    assert_eq!(pending(&app).await, 0, "no prediction id was cached");
    // Dense arrays count the same way.
    let dense: Vec<f64> = vec![0.5; CAP + 1];
    let (status, body) = app.post(predict, &json!({ "features": dense })).await;
    assert_too_many(status, &body);
    let at_cap = app.predict("demo", features(CAP)).await;
    assert_eq!(pending(&app).await, 1);

    // Feedback: one example, and a batch with one too wide.
    let (status, _) = app
        .feedback("demo", json!({ "features": features(CAP), "label": 1 }))
        .await;
    assert_eq!(status, 202);
    app.wait_trained("demo", 1).await;
    let (status, body) = app
        .feedback("demo", json!({ "features": features(CAP + 1), "label": 1 }))
        .await;
    assert_too_many(status, &body);
    let examples = json!({ "examples": [
        { "prediction_id": at_cap["prediction_id"], "label": 0 },
        { "features": features(CAP + 1), "label": 1 },
    ] });
    let (status, body) = app.feedback("demo", examples).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(item_codes(&body), [(1, "too_many_features")]);
    // The id of the refused batch was not claimed, and nothing was trained:
    // queued after the refused requests, this one is the second trained.
    let (status, body) = app
        .feedback(
            "demo",
            json!({ "prediction_id": at_cap["prediction_id"], "label": 0 }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let info = app.wait_trained("demo", 2).await;
    assert_eq!(info["examples_trained"], 2, "{info}");
    let text = scrape(&app).await;
    assert_eq!(
        sample(
            &text,
            r#"eddy_feedback_rejected_requests_total{model="demo",reason="too_many_features"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"eddy_feedback_rejected_requests_total{model="demo",reason="invalid_batch"}"#
        ),
        1.0
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_join_cache_keeps_to_max_bytes_and_says_why_an_id_is_gone() {
    // 50 features cost 896 bytes (800, rounded up by the allocator): four fit.
    let app = spawn_app(&format!(
        "[[models]]\nname = \"demo\"\ntask = \"binary\"\n[models.features]\nmax_per_example = {CAP}\n[models.join]\nmax_bytes = 3600\n"
    ))
    .await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let p = app.predict("demo", features(CAP)).await;
        ids.push(p["prediction_id"].as_str().expect("id").to_owned());
    }
    let text = scrape(&app).await;
    assert_eq!(
        sample(&text, r#"eddy_join_cache_bytes{model="demo"}"#),
        4.0 * 896.0
    );
    assert_eq!(
        sample(
            &text,
            r#"eddy_join_cache_evictions_total{model="demo",reason="bytes"}"#
        ),
        2.0
    );
    let (status, body) = app
        .feedback("demo", json!({ "prediction_id": ids[1], "label": 1 }))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_prediction_id");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("join.max_bytes"), "{message}");
    let (status, body) = app
        .feedback("demo", json!({ "prediction_id": ids[2], "label": 1 }))
        .await;
    assert_eq!(status, 202, "the newest four are kept: {body}");
    app.wait_trained("demo", 1).await;
    let text = scrape(&app).await;
    assert_eq!(
        sample(&text, r#"eddy_join_cache_bytes{model="demo"}"#),
        3.0 * 896.0,
        "a labelled prediction holds no features"
    );
    // The trained example reaches the replay buffer (its report follows
    // the trainer's step).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(&app).await;
        if sample(&text, r#"eddy_replay_buffer_examples{model="demo"}"#) == 1.0 {
            let bytes = sample(&text, r#"eddy_replay_buffer_bytes{model="demo"}"#);
            assert!(bytes > 896.0, "the example and its entry: {bytes}");
            break;
        }
        assert!(Instant::now() < deadline, "never remembered:\n{text}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.stop().await.expect("clean stop");
}

/// One predict holds at most `server.max_batch_instances` instances: its
/// answer, kept until the client reads it, and the ids it adds to the join
/// cache are bounded per request.
#[tokio::test]
async fn a_predict_batch_over_max_batch_instances_is_refused() {
    let app = crate::helpers::spawn_with("", |c| {
        c.server.max_batch_instances = 3.try_into().expect("non-zero")
    })
    .await;
    let batch = |n: usize| json!({ "instances": vec![json!({ "features": [1.0] }); n] });
    let (status, body) = app.post("/v1/models/demo/predict", &batch(4)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "batch_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("server.max_batch_instances")),
        "{body}"
    );
    let (status, body) = app.post("/v1/models/demo/predict", &batch(3)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["predictions"].as_array().map(Vec::len),
        Some(3),
        "{body}"
    );
    app.stop().await.expect("clean stop");
}
