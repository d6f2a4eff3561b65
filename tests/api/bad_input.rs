//! Every kind of bad input gets its status code and a JSON error body with
//! a stable code, and changes nothing.

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::{config, item_codes, spawn_app, spawn_with};

const MODELS: &str = r#"
[[models]]
name = "bin"
task = "binary"
[[models]]
name = "named"
task = "binary"
classes = ["ham", "spam"]
[[models]]
name = "multi"
task = "multiclass"
classes = ["a", "b", "7"]
[[models]]
name = "reg"
task = "regression"
[models.training]
queue_capacity = 50
minibatch_size = 10
"#;

/// (what, path, raw body, status, error code)
const CASES: &[(&str, &str, &str, u16, &str)] = &[
    (
        "malformed json",
        "/v1/models/bin/predict",
        r#"{"features": {"a": 1"#,
        400,
        "malformed_json",
    ),
    (
        "not json at all",
        "/v1/models/bin/feedback",
        "features=1",
        400,
        "malformed_json",
    ),
    (
        "empty body",
        "/v1/models/bin/predict",
        "",
        400,
        "malformed_json",
    ),
    (
        // serde would read a struct from an array of its fields.
        "an array instead of an object (predict)",
        "/v1/models/bin/predict",
        r#"[[1, 2]]"#,
        422,
        "invalid_request",
    ),
    (
        "an array instead of an object (feedback)",
        "/v1/models/bin/feedback",
        r#" [{"a": 1}, 1]"#,
        422,
        "invalid_request",
    ),
    (
        "a broken array is still malformed",
        "/v1/models/bin/feedback",
        r#"[{"a": 1}, 1"#,
        400,
        "malformed_json",
    ),
    (
        "features of wrong type",
        "/v1/models/bin/predict",
        r#"{"features": 3}"#,
        422,
        "invalid_request",
    ),
    (
        "array with a string",
        "/v1/models/bin/predict",
        r#"{"features": [1, "a"]}"#,
        422,
        "invalid_request",
    ),
    (
        "a feature name given twice (each copy would count)",
        "/v1/models/bin/predict",
        r#"{"features": {"z": 1e30, "z": 1e30}}"#,
        422,
        "invalid_request",
    ),
    (
        "a feature name given twice in feedback",
        "/v1/models/bin/feedback",
        r#"{"features": {"c": "x", "d": 1, "c": "y"}, "label": 1}"#,
        422,
        "invalid_request",
    ),
    (
        "instances not a list",
        "/v1/models/bin/predict",
        r#"{"instances": {}}"#,
        422,
        "invalid_request",
    ),
    (
        "unknown field",
        "/v1/models/bin/predict",
        r#"{"feature": {"a": 1}}"#,
        422,
        "invalid_request",
    ),
    (
        "features and instances",
        "/v1/models/bin/predict",
        r#"{"features": {"a": 1}, "instances": []}"#,
        422,
        "invalid_request",
    ),
    (
        "no features",
        "/v1/models/bin/predict",
        r#"{}"#,
        422,
        "invalid_request",
    ),
    (
        "empty instances",
        "/v1/models/bin/predict",
        r#"{"instances": []}"#,
        422,
        "invalid_request",
    ),
    (
        "empty features",
        "/v1/models/bin/predict",
        r#"{"features": {}}"#,
        422,
        "invalid_features",
    ),
    (
        "empty feature array",
        "/v1/models/bin/predict",
        r#"{"features": []}"#,
        422,
        "invalid_features",
    ),
    (
        "null feature",
        "/v1/models/bin/predict",
        r#"{"features": {"a": null}}"#,
        422,
        "invalid_features",
    ),
    (
        "nested array feature",
        "/v1/models/bin/predict",
        r#"{"features": {"a": [1, 2]}}"#,
        422,
        "invalid_features",
    ),
    (
        "nested object feature",
        "/v1/models/bin/predict",
        r#"{"features": {"a": {"b": 1}}}"#,
        422,
        "invalid_features",
    ),
    (
        "beyond f64",
        "/v1/models/bin/predict",
        r#"{"features": {"a": 1e999}}"#,
        422,
        "invalid_request",
    ),
    (
        "bad instance in batch",
        "/v1/models/bin/predict",
        r#"{"instances": [{"features": {"a": 1}}, {"features": {}}]}"#,
        422,
        "invalid_batch",
    ),
    (
        "unknown model predict",
        "/v1/models/nope/predict",
        r#"{"features": {"a": 1}}"#,
        404,
        "model_not_found",
    ),
    (
        "unknown model feedback",
        "/v1/models/nope/feedback",
        r#"{"features": {"a": 1}, "label": 1}"#,
        404,
        "model_not_found",
    ),
    (
        "binary label 2",
        "/v1/models/bin/feedback",
        r#"{"features": {"a": 1}, "label": 2}"#,
        422,
        "unknown_class",
    ),
    (
        "binary label string",
        "/v1/models/bin/feedback",
        r#"{"features": {"a": 1}, "label": "1"}"#,
        422,
        "invalid_label",
    ),
    (
        "named binary unknown class",
        "/v1/models/named/feedback",
        r#"{"features": {"a": 1}, "label": "eggs"}"#,
        422,
        "unknown_class",
    ),
    (
        "multiclass unknown class",
        "/v1/models/multi/feedback",
        r#"{"features": {"a": 1}, "label": "z"}"#,
        422,
        "unknown_class",
    ),
    (
        "multiclass integer not a class",
        "/v1/models/multi/feedback",
        r#"{"features": {"a": 1}, "label": 8}"#,
        422,
        "unknown_class",
    ),
    (
        "multiclass boolean",
        "/v1/models/multi/feedback",
        r#"{"features": {"a": 1}, "label": true}"#,
        422,
        "invalid_label",
    ),
    (
        "regression string",
        "/v1/models/reg/feedback",
        r#"{"features": {"a": 1}, "label": "2.5"}"#,
        422,
        "invalid_label",
    ),
    (
        "regression null",
        "/v1/models/reg/feedback",
        r#"{"features": {"a": 1}, "label": null}"#,
        422,
        "invalid_request",
    ),
    (
        "missing label",
        "/v1/models/bin/feedback",
        r#"{"features": {"a": 1}}"#,
        422,
        "invalid_request",
    ),
    (
        "neither features nor id",
        "/v1/models/bin/feedback",
        r#"{"label": 1}"#,
        422,
        "invalid_request",
    ),
    (
        "features and id",
        "/v1/models/bin/feedback",
        r#"{"features": {"a": 1}, "prediction_id": "x", "label": 1}"#,
        422,
        "invalid_request",
    ),
    (
        "unknown prediction id",
        "/v1/models/bin/feedback",
        r#"{"prediction_id": "nonsense", "label": 1}"#,
        404,
        "unknown_prediction_id",
    ),
    (
        "empty examples",
        "/v1/models/bin/feedback",
        r#"{"examples": []}"#,
        422,
        "invalid_request",
    ),
    (
        "examples and fields",
        "/v1/models/bin/feedback",
        r#"{"examples": [], "label": 1}"#,
        422,
        "invalid_request",
    ),
    (
        "empty source",
        "/v1/models/bin/feedback",
        r#"{"features": {"a": 1}, "label": 1, "source": ""}"#,
        422,
        "invalid_request",
    ),
    (
        "bad example in batch",
        "/v1/models/bin/feedback",
        r#"{"examples": [{"features": {"a": 1}, "label": 1}, {"features": {"a": 1}, "label": 5}]}"#,
        422,
        "invalid_batch",
    ),
    (
        "batch beyond queue capacity",
        "/v1/models/reg/feedback",
        "BIG_BATCH",
        422,
        "batch_too_large",
    ),
    (
        "model name not UTF-8",
        "/v1/models/%FF/predict",
        r#"{"features": {"a": 1}}"#,
        404,
        "model_not_found",
    ),
    (
        "regression label too large",
        "/v1/models/reg/feedback",
        r#"{"features": {"a": 1}, "label": 1e200}"#,
        422,
        "invalid_label",
    ),
    ("unknown route", "/v2/models", "{}", 404, "not_found"),
    ("wrong method", "/healthz", "{}", 405, "method_not_allowed"),
];

fn big_batch() -> String {
    let examples: Vec<Value> = (0..51)
        .map(|i| json!({ "features": { "a": i }, "label": 1.5 }))
        .collect();
    json!({ "examples": examples }).to_string()
}

#[tokio::test]
async fn every_bad_input_answers_its_status_and_code_and_accepts_nothing() {
    let app = spawn_app(MODELS).await;
    for (what, path, body, status, code) in CASES {
        let body = if *body == "BIG_BATCH" {
            big_batch()
        } else {
            body.to_string()
        };
        let (got, json) = app.post_raw(path, body).await;
        assert_eq!(got, *status, "{what}: {json}");
        assert_eq!(json["error"]["code"], *code, "{what}: {json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {json}"
        );
    }
    for model in ["bin", "named", "multi", "reg"] {
        let info = app.info(model).await;
        assert_eq!(info["feedback_accepted"], 0, "{model}: {info}");
    }
    let (status, json) = app.get("/v1/models/nope").await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_refused_batch_lists_every_failing_example() {
    let app = spawn_app(MODELS).await;
    let p = app.predict("bin", json!({ "a": 1 })).await;
    let good_id = p["prediction_id"].as_str().expect("id");
    let (status, body) = app
        .feedback(
            "bin",
            json!({ "examples": [
                { "features": { "a": 1 }, "label": 5 },
                { "prediction_id": "0123", "label": 1 },
                { "prediction_id": good_id, "label": 1 },
                { "features": {}, "label": 1 },
            ]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        item_codes(&body),
        [
            (0, "unknown_class"),
            (1, "unknown_prediction_id"),
            (3, "invalid_features")
        ]
    );
    // Nothing was applied: the good id can still be labelled.
    let (status, _) = app
        .feedback("bin", json!({ "prediction_id": good_id, "label": 1 }))
        .await;
    assert_eq!(status, 202);
    // Large features up to the bound are answered with a distribution;
    // beyond it (where a model's running statistics would overflow) 422.
    let p = app.predict("multi", json!({ "a": 1e30, "b": -3e29 })).await;
    let (status, body) = app
        .post(
            "/v1/models/multi/predict",
            &json!({ "features": { "a": 1e300 } }),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &json!("invalid_features")),
        "{body}"
    );
    let sum: f64 = p["probabilities"]
        .as_object()
        .expect("map")
        .values()
        .filter_map(Value::as_f64)
        .sum();
    assert!((sum - 1.0).abs() < 1e-5, "{p}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_right_labels_are_accepted() {
    let app = spawn_app(MODELS).await;
    for (model, label) in [
        ("bin", json!(1)),
        ("bin", json!(false)),
        ("named", json!("spam")),
        ("multi", json!("b")),
        ("multi", json!(7)),
        ("reg", json!(-2.5)),
    ] {
        let (status, body) = app
            .feedback(model, json!({ "features": { "a": 1 }, "label": label }))
            .await;
        assert_eq!(status, 202, "{model} {label}: {body}");
    }
    let p = app.predict("named", json!({ "a": 1 })).await;
    assert!(p["label"] == "ham" || p["label"] == "spam", "{p}");
    assert!(p["probabilities"]["spam"].is_f64(), "{p}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_with(MODELS, |c| {
        c.server.max_body_bytes = 1024.try_into().expect("non-zero")
    })
    .await;
    let features: serde_json::Map<String, Value> =
        (0..200).map(|i| (format!("f{i}"), json!(i))).collect();
    let (status, body) = app
        .post("/v1/models/bin/predict", &json!({ "features": features }))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    // Just under the limit still works.
    let (status, _) = app
        .post("/v1/models/bin/predict", &json!({ "features": { "a": 1 } }))
        .await;
    assert_eq!(status, 200);
    app.stop().await.expect("clean stop");
}

/// Without its trainer running (the app is built, never run), the queue
/// fills: a batch that does not fit is refused whole with 429.
#[tokio::test]
async fn a_full_queue_answers_429_and_takes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let c = config(
        "[[models]]\nname = \"demo\"\ntask = \"binary\"\n[models.training]\nqueue_capacity = 10\nminibatch_size = 2",
        dir.path(),
    );
    let server = c.server.clone();
    let app = eddy::app::App::build(c).await.expect("builds");
    let router = eddy::http::public_router(app.state().clone(), &server);
    let send = |n: usize| {
        let examples: Vec<Value> = (0..n)
            .map(|i| json!({ "features": { "a": i }, "label": 1 }))
            .collect();
        Request::post("/v1/models/demo/feedback")
            .header("content-type", "application/json")
            .body(Body::from(json!({ "examples": examples }).to_string()))
            .expect("request")
    };
    let r = router.clone().oneshot(send(6)).await.expect("response");
    assert_eq!(r.status(), 202);
    let r = router.clone().oneshot(send(6)).await.expect("response");
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .expect("body"),
    )
    .expect("json");
    assert_eq!(body["error"]["code"], "queue_full");
    let model = app.state().model("demo").expect("model");
    assert_eq!(model.queue.depth(), 6, "the refused batch took no room");
    assert_eq!(
        router
            .clone()
            .oneshot(send(4))
            .await
            .expect("response")
            .status(),
        202
    );
    assert_eq!(model.queue.depth(), 10);

    // A label by prediction id refused for the full queue leaves the id
    // unlabelled: its claim went back, features and all.
    let r = router
        .clone()
        .oneshot(
            Request::post("/v1/models/demo/predict")
                .header("content-type", "application/json")
                .body(Body::from(json!({ "features": { "a": 1 } }).to_string()))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(r.status(), 200);
    let p: Value = serde_json::from_slice(
        &axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .expect("body"),
    )
    .expect("json");
    let id = p["prediction_id"].as_str().expect("id").to_owned();
    let held = model
        .joins
        .usage()
        .bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(held > 0);
    let r = router
        .clone()
        .oneshot(
            Request::post("/v1/models/demo/feedback")
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({ "prediction_id": id, "label": 1 }).to_string(),
                ))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(r.status(), 429);
    assert_eq!(model.joins.batch().check(&id), Ok(()), "still pending");
    assert_eq!(
        model
            .joins
            .usage()
            .bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        held
    );

    // Not running yet, so not ready.
    let r = router
        .oneshot(
            Request::get("/readyz")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(r.status(), 503);
}
