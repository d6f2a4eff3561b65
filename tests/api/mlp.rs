//! The `mlp` family over HTTP, beside a linear model in one config: it
//! serves, learns a concept the linear model cannot, snapshots, restarts
//! with identical predictions, and a rollback restores its weights exactly.

use serde_json::{Value, json};

use crate::helpers::{TestApp, scrape, spawn_at};

const MODELS: &str = r#"
[[models]]
name = "lin"
task = "binary"
hash_bits = 12
[models.training]
minibatch_size = 8
[models.monitor]
gate = false
on_degrade = "continue"

[[models]]
name = "net"
task = "binary"
hash_bits = 12
family = "mlp"
[models.mlp]
hidden = 16
[models.training]
minibatch_size = 8
[models.monitor]
gate = false
on_degrade = "continue"
"#;

/// XOR of two thresholds on a deterministic grid of points.
fn xor_examples(from: u32, n: u32, flip: bool) -> Value {
    let examples: Vec<Value> = (from..from + n)
        .map(|i| {
            let (a, b) = (f64::from(i * 7 % 19) / 19.0, f64::from(i * 11 % 23) / 23.0);
            let y = ((a > 0.5) != (b > 0.5)) != flip;
            json!({ "features": { "a": a, "b": b }, "label": u32::from(y) })
        })
        .collect();
    json!({ "examples": examples })
}

const PROBES: [(f64, f64); 4] = [(0.2, 0.2), (0.2, 0.8), (0.8, 0.2), (0.8, 0.8)];

/// p(1) for each probe, exactly as served.
async fn answers(app: &TestApp, model: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for (a, b) in PROBES {
        let p = app.predict(model, json!({ "a": a, "b": b })).await;
        out.push(p["probabilities"]["1"].as_f64().expect("p(1)"));
    }
    out
}

#[tokio::test]
async fn an_mlp_model_learns_snapshots_restarts_and_rolls_back_exactly() {
    let dir = tempfile::tempdir().expect("dir");
    // The monitor stays on (it scores every example with the live and
    // last-good networks) but neither gates nor rolls back on its own here.
    let app = spawn_at(MODELS, dir.path(), |_| {}).await.expect("starts");
    let info = app.info("net").await;
    assert_eq!(
        (info["family"].as_str(), info["mlp"]["hidden"].as_u64()),
        (Some("mlp"), Some(16))
    );
    assert_eq!(app.info("lin").await["family"], "linear");
    // What the network learns with: its own step, not the optimizer's.
    let step = &info["optimizer_state"]["candidates"];
    assert_eq!(
        (step[0]["rule"].as_str(), step.as_array().map(Vec::len)),
        (Some("rms"), Some(1))
    );
    for model in ["lin", "net"] {
        for chunk in 0..10 {
            let (status, body) = app
                .feedback(model, xor_examples(chunk * 400, 400, false))
                .await;
            assert_eq!(status, 202, "{body}");
        }
        app.wait_trained(model, 4000).await;
    }
    let net = answers(&app, "net").await;
    let lin = answers(&app, "lin").await;
    let right = |p: &[f64]| {
        p.iter()
            .zip([false, true, true, false])
            .filter(|(p, y)| (**p > 0.5) == *y)
            .count()
    };
    assert_eq!(right(&net), 4, "the network learns XOR: {net:?}");
    assert!(right(&lin) < 4, "a linear model cannot: {lin:?}");

    let (status, snap) = app.admin_post("net/snapshot", "").await;
    assert_eq!(status, 200, "{snap}");
    let kept = snap["snapshot"]["version"].as_u64().expect("version");
    // The opposite concept moves the weights away...
    let (status, _) = app.feedback("net", xor_examples(4000, 800, true)).await;
    assert_eq!(status, 202);
    app.wait_trained("net", 4800).await;
    assert_ne!(answers(&app, "net").await, net);
    // ...and a rollback brings back exactly the kept ones.
    let (status, body) = app
        .admin_post("net/rollback", &json!({ "version": kept }).to_string())
        .await;
    assert_eq!(
        (status, body["restored"].as_u64()),
        (200, Some(kept)),
        "{body}"
    );
    assert_eq!(
        answers(&app, "net").await,
        net,
        "the kept weights, to the bit"
    );
    let version = app.info("net").await["version"].as_u64();
    let metrics = scrape(&app).await;
    assert!(
        metrics.contains("model=\"net\""),
        "per-model metrics for the network"
    );
    app.stop().await.expect("clean stop");

    let app = spawn_at(MODELS, dir.path(), |_| {})
        .await
        .expect("restarts");
    assert_eq!(app.info("net").await["version"].as_u64(), version);
    assert_eq!(
        answers(&app, "net").await,
        net,
        "identical predictions after a restart"
    );
    assert_eq!(answers(&app, "lin").await, lin);
    app.stop().await.expect("clean stop");
}
