//! Restarts: a model comes back from its snapshot predicting exactly as
//! before, its versions and counters continue upward, a damaged snapshot is
//! skipped, and a snapshot that no longer fits the config stops start-up.

use serde_json::{Value, json};

use crate::helpers::spawn_at;

const MODEL: &str = "[[models]]\nname = \"demo\"\ntask = \"binary\"\nhash_bits = 12\n[models.training]\nminibatch_size = 8";

fn probes() -> Vec<Value> {
    (0..5)
        .map(|i| json!({ "x": f64::from(i) * 0.3, "tag": format!("t{}", i % 2) }))
        .collect()
}

async fn feed(app: &crate::helpers::TestApp, from: u32, n: u32) {
    let examples: Vec<Value> = (from..from + n)
        .map(|i| json!({ "features": { "x": f64::from(i % 17) * 0.1, "tag": format!("t{}", i % 2) }, "label": u32::from(i % 17 > 8) }))
        .collect();
    let (status, body) = app.feedback("demo", json!({ "examples": examples })).await;
    assert_eq!(status, 202, "{body}");
}

async fn answers(app: &crate::helpers::TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    for p in probes() {
        out.push(app.predict("demo", p).await["probabilities"].clone());
    }
    out
}

#[tokio::test]
async fn a_restart_resumes_the_model_exactly() {
    let dir = tempfile::tempdir().expect("dir");
    let app = spawn_at(MODEL, dir.path(), |_| {}).await.expect("starts");
    feed(&app, 0, 400).await;
    let info = app.wait_trained("demo", 400).await;
    let before = answers(&app).await;
    app.stop().await.expect("clean stop");
    let last_version = info["version"].as_u64().expect("version");

    let app = spawn_at(MODEL, dir.path(), |_| {}).await.expect("restarts");
    let info = app.info("demo").await;
    assert_eq!(
        info["version"].as_u64(),
        Some(last_version),
        "a clean restart keeps the number"
    );
    assert_eq!(info["examples_trained"], 400);
    assert_eq!(
        answers(&app).await,
        before,
        "identical predictions after the restart"
    );
    feed(&app, 400, 100).await;
    let info = app.wait_trained("demo", 500).await;
    assert!(info["version"].as_u64() > Some(last_version));
    let second_last = info["version"].as_u64().expect("version");
    app.stop().await.expect("clean stop");

    // Damage the newest snapshot: it is skipped, the one before loads, and
    // the version number still moves past every number used so far.
    let model_dir = dir.path().join("demo");
    let mut snaps: Vec<_> = std::fs::read_dir(&model_dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eddy"))
        .collect();
    snaps.sort();
    assert!(snaps.len() >= 2, "{snaps:?}");
    let newest = snaps.last().expect("a snapshot");
    let bytes = std::fs::read(newest).expect("read");
    std::fs::write(newest, &bytes[..bytes.len() - 100]).expect("truncate");
    let app = spawn_at(MODEL, dir.path(), |_| {})
        .await
        .expect("starts past a damaged snapshot");
    let info = app.info("demo").await;
    assert!(info["version"].as_u64() > Some(second_last), "{info}");
    assert_eq!(
        info["examples_trained"], 400,
        "the older snapshot was loaded"
    );
    assert_eq!(answers(&app).await, before);
    app.stop().await.expect("clean stop");

    // A snapshot of another shape stops start-up with a clear message.
    let other = MODEL.replace("hash_bits = 12", "hash_bits = 14");
    let err = spawn_at(&other, dir.path(), |_| {})
        .await
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("hash_bits") && msg.contains("demo"), "{msg}");
}
