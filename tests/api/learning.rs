//! A fresh model learns over HTTP: feedback in, better predictions out,
//! versions going up.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::helpers::spawn_app;

/// A linearly separable stream on raw scales: price in the thousands, a
/// ratio, and a categorical feature that shifts the boundary.
fn example(rng: &mut StdRng) -> (Value, u8) {
    let price: f64 = rng.random_range(1000.0..3000.0);
    let ratio: f64 = rng.random_range(0.0..1.0);
    let region = if rng.random_bool(0.5) {
        "north"
    } else {
        "south"
    };
    let shift = if region == "north" { 0.4 } else { -0.4 };
    let y = (price - 2000.0) / 1000.0 + (ratio - 0.5) + shift > 0.0;
    (
        json!({ "price": price, "ratio": ratio, "region": region }),
        u8::from(y),
    )
}

#[tokio::test]
async fn binary_model_learns_from_feedback_and_versions_increase() {
    let app = spawn_app("").await;
    let mut rng = StdRng::seed_from_u64(7);
    let mut versions = Vec::new();
    for _ in 0..30 {
        let examples: Vec<Value> = (0..100)
            .map(|_| {
                let (x, y) = example(&mut rng);
                json!({ "features": x, "label": y })
            })
            .collect();
        let (status, body) = app.feedback("demo", json!({ "examples": examples })).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], 100);
        let (x, _) = example(&mut rng);
        versions.push(
            app.predict("demo", x).await["model_version"]
                .as_u64()
                .expect("version"),
        );
    }
    let info = app.wait_trained("demo", 3000).await;
    assert_eq!(info["examples_trained"], 3000);
    assert!(info["minibatches_trained"].as_u64() >= Some(3000 / 32));
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "versions never go down: {versions:?}"
    );
    assert!(info["version"].as_u64() > Some(1));

    let mut correct = 0;
    for _ in 0..400 {
        let (x, y) = example(&mut rng);
        let p = app.predict("demo", x).await;
        let p1 = p["probabilities"]["1"].as_f64().expect("p");
        let p0 = p["probabilities"]["0"].as_f64().expect("p");
        assert!((p0 + p1 - 1.0).abs() < 1e-5);
        if p["label"] == json!(y) {
            correct += 1;
        }
    }
    let accuracy = correct as f64 / 400.0;
    assert!(accuracy >= 0.9, "accuracy through /predict was {accuracy}");
    // The default optimizer tunes itself: the model says which candidates
    // the live weights combine, and how much of each.
    let state = &info["optimizer_state"];
    assert_eq!(state["kind"], "auto", "{info}");
    let candidates = state["candidates"].as_array().expect("candidates");
    assert_eq!(candidates.len(), 3, "{state}");
    let total: f64 = candidates
        .iter()
        .map(|c| c["weight"].as_f64().expect("weight"))
        .sum();
    assert!((total - 1.0).abs() < 1e-4, "{state}");
    assert!(
        candidates
            .iter()
            .all(|c| c["rule"].is_string() && c["learning_rate"].as_f64() > Some(0.0)),
        "{state}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_explicit_optimizer_reports_its_one_rate() {
    let app = spawn_app(
        r#"
        [[models]]
        name = "tuned"
        task = "binary"
        [models.optimizer]
        kind = "adagrad"
        learning_rate = 0.25
        "#,
    )
    .await;
    let info = app.info("tuned").await;
    assert_eq!(
        info["optimizer_state"],
        json!({"kind": "adagrad", "candidates": [{"rule": "adagrad", "learning_rate": 0.25, "weight": 1.0}]})
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn multiclass_and_regression_models_learn() {
    let app = spawn_app(
        r#"
        [[models]]
        name = "colours"
        task = "multiclass"
        classes = ["red", "green", "blue"]
        [[models]]
        name = "price"
        task = "regression"
        "#,
    )
    .await;
    let mut rng = StdRng::seed_from_u64(11);
    let mut colours = Vec::new();
    let mut prices = Vec::new();
    for _ in 0..3000 {
        let hue: f64 = rng.random_range(0.0..360.0);
        let class = ["red", "green", "blue"][(hue / 120.0) as usize];
        colours.push(json!({ "features": { "hue": hue, "sat": rng.random_range(0.0..1.0) }, "label": class }));
        let size: f64 = rng.random_range(50.0..250.0);
        prices.push(json!({ "features": { "size": size, "rooms": (size / 40.0).floor() }, "label": 100_000.0 + 2_000.0 * size }));
    }
    for chunk in colours.chunks(500) {
        assert_eq!(
            app.feedback("colours", json!({ "examples": chunk }))
                .await
                .0,
            202
        );
    }
    for chunk in prices.chunks(500) {
        assert_eq!(
            app.feedback("price", json!({ "examples": chunk })).await.0,
            202
        );
    }
    app.wait_trained("colours", 3000).await;
    app.wait_trained("price", 3000).await;

    let p = app
        .predict("colours", json!({ "hue": 200.0, "sat": 0.5 }))
        .await;
    assert_eq!(p["label"], "green", "{p}");
    let probs = p["probabilities"].as_object().expect("map");
    assert_eq!(probs.len(), 3);
    let sum: f64 = probs.values().filter_map(Value::as_f64).sum();
    assert!((sum - 1.0).abs() < 1e-5);

    let p = app
        .predict("price", json!({ "size": 150.0, "rooms": 3.0 }))
        .await;
    let value = p["value"].as_f64().expect("regression answers a value");
    assert!(
        p.get("probabilities").is_none() && p.get("label").is_none(),
        "{p}"
    );
    assert!((value - 400_000.0).abs() < 20_000.0, "predicted {value}");
    app.stop().await.expect("clean stop");
}
