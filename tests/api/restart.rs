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

/// A monitor that judges small windows, so a few hundred examples promote.
const QUICK_MONITOR: &str = "[models.monitor]\nwindow = 200\nmin_samples = 100\nblock_size = 10\ngate_examples = 100\npromotion_snapshot_interval_ms = 0";

/// Feeds 200 examples at a time until a version after the first is
/// promoted to last-good; returns how many were fed and that version.
async fn feed_until_promoted(app: &crate::helpers::TestApp) -> (u32, u64) {
    let mut fed = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        feed(app, fed, 200).await;
        fed += 200;
        let info = app.wait_trained("demo", u64::from(fed)).await;
        if let Some(v) = info["last_good_version"].as_u64().filter(|v| *v > 1) {
            return (fed, v);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never promoted: {info}"
        );
    }
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
    let after = answers(&app).await;
    app.stop().await.expect("clean stop");

    // Damage the newest snapshot: it is skipped, the one before loads, the
    // feedback log replays what came after it (re-publishing the same
    // versions with the same weights), and new versions go on from there.
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
    assert_eq!(info["version"].as_u64(), Some(second_last), "{info}");
    assert_eq!(
        info["examples_trained"], 500,
        "the older snapshot was loaded, and the feedback log gave back the 100 examples after it"
    );
    assert_eq!(
        answers(&app).await,
        after,
        "as the damaged snapshot would have answered"
    );
    feed(&app, 500, 8).await;
    let info = app.wait_trained("demo", 508).await;
    assert!(info["version"].as_u64() > Some(second_last), "{info}");
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

#[tokio::test]
async fn last_good_is_snapshotted_on_promotion_and_kept_across_a_restart() {
    let model = format!("{MODEL}\n{QUICK_MONITOR}");
    let dir = tempfile::tempdir().expect("dir");
    let app = spawn_at(&model, dir.path(), |_| {}).await.expect("starts");
    let (_, promoted) = feed_until_promoted(&app).await;
    app.stop().await.expect("clean stop");
    let good: Vec<String> = std::fs::read_dir(dir.path().join("demo"))
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".good.eddy"))
        .collect();
    assert!(
        good.iter().any(|n| n.contains(&format!("{promoted:020}"))),
        "{good:?}"
    );

    let app = spawn_at(&model, dir.path(), |_| {})
        .await
        .expect("restarts");
    let info = app.info("demo").await;
    assert!(
        info["last_good_version"].as_u64() >= Some(promoted),
        "last-good survives the restart: {info}"
    );
    app.stop().await.expect("clean stop");
}

/// A model saved under one optimizer and restarted under another (the
/// upgrade's default moved from `adagrad` to `auto`) keeps the configured
/// one after a rollback to last-good: the saved last-good learner is
/// adopted like the live one, so `auto` goes on mixing its candidates.
#[tokio::test]
async fn a_rollback_after_a_change_of_optimizer_keeps_the_configured_one() {
    let adagrad = format!("{MODEL}\n[models.optimizer]\nkind = \"adagrad\"\n{QUICK_MONITOR}");
    let dir = tempfile::tempdir().expect("dir");
    let app = spawn_at(&adagrad, dir.path(), |_| {})
        .await
        .expect("starts");
    let (fed, _) = feed_until_promoted(&app).await;
    app.stop().await.expect("clean stop");

    let auto = format!("{MODEL}\n{QUICK_MONITOR}");
    let app = spawn_at(&auto, dir.path(), |_| {}).await.expect("restarts");
    let (status, body) = app.admin_post("demo/rollback", "").await;
    assert_eq!(status, 200, "{body}");
    feed(&app, fed, 1000).await;
    let info = app.wait_trained("demo", u64::from(fed + 1000)).await;
    let state = &info["optimizer_state"];
    assert_eq!(state["kind"], "auto", "{state}");
    let weights: Vec<f64> = state["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .map(|c| c["weight"].as_f64().expect("weight"))
        .collect();
    assert!(
        weights.iter().any(|w| (w - 1.0 / 3.0).abs() > 0.01),
        "auto mixes its candidates after the rollback: {state}"
    );
    app.stop().await.expect("clean stop");
}
