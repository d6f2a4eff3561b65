//! Many clients predict while the trainer publishes as fast as it can:
//! every answer is internally consistent and matches the version it names.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_stay_consistent_while_versions_are_published() {
    // Minibatches of one, published every time: the highest publish rate.
    let app = Arc::new(
        spawn_app(
            "[[models]]\nname = \"demo\"\ntask = \"multiclass\"\nclasses = [\"a\", \"b\", \"c\"]\n\
             [models.training]\nminibatch_size = 1\nmin_publish_interval_ms = 0",
        )
        .await,
    );
    let probe = json!({ "x": 0.7, "y": -2.0, "tag": "t" });
    let feeder = {
        let app = app.clone();
        tokio::spawn(async move {
            for i in 0..60u32 {
                let examples: Vec<Value> = (0..50u32)
                    .map(|j| {
                        let k = (i * 50 + j) % 3;
                        let label = ["a", "b", "c"][k as usize];
                        json!({ "features": { "x": f64::from(k) * 0.5, "y": f64::from(j % 7) - 3.0, "tag": "t" },
                                "label": label })
                    })
                    .collect();
                let (status, body) = app.feedback("demo", json!({ "examples": examples })).await;
                assert!(status == 202 || status == 429, "{status} {body}");
            }
        })
    };
    // version -> probabilities of the probe under that version
    let seen: Arc<Mutex<HashMap<u64, Vec<f64>>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let app = app.clone();
        let probe = probe.clone();
        let seen = seen.clone();
        clients.push(tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..150 {
                let (status, body) = app
                    .post(
                        "/v1/models/demo/predict",
                        &json!({ "instances": [{ "features": probe }, { "features": probe }] }),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
                let version = body["model_version"].as_u64().expect("version");
                assert!(
                    version >= last,
                    "a client saw version {version} after {last}"
                );
                last = version;
                let preds = body["predictions"].as_array().expect("predictions");
                let probs: Vec<Vec<f64>> = preds
                    .iter()
                    .map(|p| {
                        ["a", "b", "c"]
                            .iter()
                            .map(|c| p["probabilities"][c].as_f64().expect("p"))
                            .collect()
                    })
                    .collect();
                for p in &probs {
                    let sum: f64 = p.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-5, "probabilities sum to {sum}");
                }
                assert_eq!(probs[0], probs[1], "one batch, one version");
                let mut seen = seen.lock().await;
                let first = seen.entry(version).or_insert_with(|| probs[0].clone());
                assert_eq!(
                    *first, probs[0],
                    "two answers named version {version} but differ"
                );
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }
    feeder.await.expect("feeder");
    let versions = seen.lock().await.len();
    assert!(
        versions > 10,
        "the trainer published while clients read ({versions} versions seen)"
    );
    let app = Arc::try_unwrap(app).ok().expect("sole owner");
    app.stop().await.expect("clean stop");
}
