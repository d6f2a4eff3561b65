//! Delayed labels: feedback that names an earlier prediction.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{item_codes, spawn_app};

#[tokio::test]
async fn feedback_by_prediction_id_trains_on_the_predicted_features() {
    // AdaGrad at 0.8 explicitly: 15 labels per category must move the
    // model far (`auto` starts from equal weights on slower candidates);
    // this test is about the join, not the optimizer.
    let app = spawn_app(
        "[[models]]\nname = \"demo\"\ntask = \"binary\"\n[models.optimizer]\nkind = \"adagrad\"\n[models.training]\nminibatch_size = 1",
    )
    .await;
    // Two categories labelled oppositely, only ever through prediction ids:
    // each moves its own way only if the join hands the trainer the
    // features that were predicted.
    let red = json!({ "colour": "red" });
    let blue = json!({ "colour": "blue" });
    let before = app.predict("demo", red.clone()).await;
    let mut n = 0;
    for _ in 0..15 {
        for (x, label) in [(&red, 1), (&blue, 0)] {
            let p = app.predict("demo", x.clone()).await;
            let id = p["prediction_id"].as_str().expect("id");
            let (status, body) = app
                .feedback("demo", json!({ "prediction_id": id, "label": label }))
                .await;
            assert_eq!(status, 202, "{body}");
            n += 1;
            app.wait_trained("demo", n).await;
        }
    }
    let p = |v: &Value| v["probabilities"]["1"].as_f64().expect("p");
    let red_after = p(&app.predict("demo", red).await);
    let blue_after = p(&app.predict("demo", blue).await);
    assert!(red_after > 0.9, "red learned as 1: {red_after}");
    assert!(blue_after < 0.1, "blue learned as 0: {blue_after}");

    // An id can be labelled once; a made-up one is unknown.
    let id = before["prediction_id"].as_str().expect("id");
    assert_eq!(
        app.feedback("demo", json!({ "prediction_id": id, "label": 0 }))
            .await
            .0,
        202
    );
    let (status, body) = app
        .feedback("demo", json!({ "prediction_id": id, "label": 0 }))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_labelled"))
    );
    // Well formed and recent, but never issued.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let made_up = format!("{now_ms:012x}{}", "0".repeat(16));
    let (status, body) = app
        .feedback("demo", json!({ "prediction_id": made_up, "label": 0 }))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_prediction_id"))
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn batch_predict_ids_are_distinct_and_belong_to_their_model() {
    let app = spawn_app(
        "[[models]]\nname = \"a\"\ntask = \"binary\"\n[[models]]\nname = \"b\"\ntask = \"binary\"",
    )
    .await;
    let (status, body) = app
        .post(
            "/v1/models/a/predict",
            &json!({ "instances": [{ "features": { "x": 1 } }, { "features": { "x": 2 } }, { "features": [3.0] }] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .map(|p| p["prediction_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    assert!(body["model_version"].is_u64());

    // Model b never issued these ids.
    let (status, body) = app
        .feedback("b", json!({ "prediction_id": ids[0], "label": 1 }))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_prediction_id"))
    );

    // A batch with one bad id is refused whole: the good id stays unlabelled.
    let (status, body) = app
        .feedback(
            "a",
            json!({ "examples": [
                { "prediction_id": ids[0], "label": 1 },
                { "prediction_id": "ffffffffffffffffffffffffffff", "label": 1 },
                { "prediction_id": ids[1], "label": 1 },
                { "prediction_id": ids[1], "label": 0 },
                { "prediction_id": ids[2], "label": 0 },
                { "prediction_id": ids[2].to_uppercase(), "label": 0 },
            ]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        item_codes(&body),
        [
            (1, "unknown_prediction_id"),
            (3, "duplicate_prediction_id"),
            (5, "duplicate_prediction_id")
        ]
    );
    assert_eq!(
        app.info("a").await["feedback_accepted"],
        0,
        "nothing was accepted"
    );

    // Mixed batch: ids and inline features together.
    let (status, body) = app
        .feedback(
            "a",
            json!({ "source": "crm", "examples": [
                { "prediction_id": ids[0], "label": 1 },
                { "features": { "x": 5 }, "label": false },
                { "prediction_id": ids[2], "label": true, "source": "other" },
            ]}),
        )
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(3)),
        "{body}"
    );
    app.wait_trained("a", 3).await;
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn prediction_ids_expire_after_the_ttl() {
    let app =
        spawn_app("[[models]]\nname = \"demo\"\ntask = \"binary\"\n[models.join]\nttl_s = 1").await;
    let p = app.predict("demo", json!({ "x": 1 })).await;
    let id = p["prediction_id"].as_str().expect("id").to_owned();
    assert_eq!(app.info("demo").await["pending_predictions"], 1);
    // Poll a read-only view until the entry has aged out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.info("demo").await["pending_predictions"] != 0 {
        assert!(Instant::now() < deadline, "prediction never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = app
        .feedback("demo", json!({ "prediction_id": id, "label": 1 }))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("prediction_expired")),
        "{body}"
    );
    app.stop().await.expect("clean stop");
}
