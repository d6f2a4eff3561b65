//! What survives a stop: only published versions reach the disk, so a
//! candidate the gate is holding when the server stops is never served
//! after the restart.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, dataset, spawn_at};

/// Trusted traffic is what the gate compares on; a hold lasts until fresh
/// trusted evidence arrives (no timed re-look during the test).
const GATED: &str = r#"
[[models]]
name = "m"
task = "binary"
hash_bits = 14
[models.monitor]
trusted_sources = ["trusted"]
gate_hold_ms = 3600000
[models.guard]
enabled = false
"#;

async fn send(app: &TestApp, rows: &[Value], source: &str, invert: bool) {
    let examples: Vec<Value> = rows
        .iter()
        .map(|r| {
            let y = r["label"].as_u64().expect("0 or 1");
            json!({ "features": r["features"], "label": if invert { 1 - y } else { y } })
        })
        .collect();
    let (status, body) = app
        .feedback("m", json!({ "examples": examples, "source": source }))
        .await;
    assert_eq!(status, 202, "{body}");
}

/// Polls until every accepted example has been dealt with.
async fn settled(app: &TestApp) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = app.info("m").await;
        if info["feedback_processed"] == info["feedback_accepted"] {
            return info;
        }
        assert!(Instant::now() < deadline, "trainer never caught up: {info}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn answers(app: &TestApp, rows: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for r in rows {
        out.push(app.predict("m", r["features"].clone()).await["probabilities"].clone());
    }
    out
}

#[tokio::test]
async fn a_candidate_held_at_a_graceful_stop_is_never_served_after_the_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let rows = dataset("elec2");
    let app = spawn_at(GATED, dir.path(), |_| {}).await.expect("starts");
    for chunk in rows[..3000].chunks(500) {
        send(&app, chunk, "trusted", false).await;
    }
    settled(&app).await;
    // The newest trusted examples, relabelled by an attacker many times
    // over: the candidate learns them and the gate holds it back.
    let recent = &rows[2800..3000];
    for _ in 0..4 {
        send(&app, recent, "attacker", true).await;
    }
    let info = settled(&app).await;
    assert!(
        info["monitor"]["gate_holds"].as_u64() >= Some(1),
        "the gate held the damaged candidate: {info}"
    );
    let probes = &rows[3000..3020];
    let served = answers(&app, probes).await;
    let version = info["version"].clone();
    app.stop().await.expect("clean stop");

    let app = spawn_at(GATED, dir.path(), |_| {}).await.expect("restarts");
    let info = app.info("m").await;
    assert_eq!(info["version"], version, "{info}");
    assert_eq!(
        answers(&app, probes).await,
        served,
        "after the restart the last published weights are served, not the held ones"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_second_server_on_the_same_directory_fails_at_once_naming_the_holder() {
    let dir = tempfile::tempdir().expect("dir");
    let app = spawn_at(GATED, dir.path(), |_| {}).await.expect("starts");
    let second = spawn_at(GATED, dir.path(), |_| {}).await;
    let message = format!("{:#}", second.err().expect("refused"));
    assert!(
        message.contains("in use by another eddy process")
            && message.contains(&format!("pid {}", std::process::id()))
            && message.contains(&dir.path().join("m").display().to_string()),
        "{message}"
    );
    app.stop().await.expect("clean stop");
    let again = spawn_at(GATED, dir.path(), |_| {})
        .await
        .expect("free again");
    again.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_unusable_storage_directory_is_a_start_up_error_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("file");
    let built = spawn_at(GATED, &file, |_| {}).await;
    let message = format!("{:#}", built.err().expect("refused"));
    assert!(message.contains("not-a-dir"), "{message}");
}

/// Snapshots every 500 examples let the log drop what they hold: whole
/// segments before every retained snapshot (and last-good) move to
/// `storage.archive_dir`, and `eddy train --data` reads the archive plus
/// the live log back as every example the server accepted.
#[tokio::test]
async fn learned_log_segments_are_archived_and_retrain_from_the_archive() {
    let dir = tempfile::tempdir().expect("dir");
    let archive = dir.path().join("archive");
    let config = format!(
        "[storage]\nsegment_bytes = 4096\nsnapshot_every_examples = 500\nsnapshot_keep = 1\nlast_good_keep = 0\narchive_dir = {:?}\n",
        archive.display().to_string()
    );
    let data = dir.path().join("data");
    let app = spawn_at(&config, &data, |_| {}).await.expect("starts");
    let rows = dataset("elec2");
    for chunk in rows[..3000].chunks(100) {
        let (status, body) = app.feedback("demo", json!({ "examples": chunk })).await;
        assert_eq!(status, 202, "{body}");
    }
    app.wait_trained("demo", 3000).await;
    let segments = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .map(|entries| {
                entries
                    .filter(|e| {
                        e.as_ref()
                            .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "wal"))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    // Before any shutdown snapshot: the count, not the clock, did it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while segments(&archive.join("demo")) == 0 {
        assert!(Instant::now() < deadline, "nothing was archived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.stop().await.expect("clean stop");
    let (archived, live) = (
        segments(&archive.join("demo")),
        segments(&data.join("demo/wal")),
    );
    assert!(archived > 0 && live > 0, "archived {archived}, live {live}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["train", "--model", "demo", "--json", "--data"])
        .arg(archive.join("demo"))
        .arg(data.join("demo/wal"))
        .env_clear()
        .env("EDDY_STORAGE__DIR", dir.path().join("retrained"))
        .output()
        .expect("eddy runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["trained"]["examples"], 3000, "{report}");
}

/// A client that retries with the same `Idempotency-Key` gets the first
/// 202 and trains nothing twice, also after a restart whose log no longer
/// holds the request (trimmed after snapshots); the same key with another
/// body is refused.
#[tokio::test]
async fn a_retried_request_with_its_idempotency_key_is_trained_once() {
    let dir = tempfile::tempdir().expect("dir");
    let config = "[storage]\nsegment_bytes = 4096\nsnapshot_every_examples = 300\nsnapshot_keep = 1\nlast_good_keep = 0\n[[models]]\nname = \"demo\"\ntask = \"binary\"\nhash_bits = 12\n";
    let rows = dataset("elec2");
    let body = json!({ "examples": rows[..3] });
    let send = |app: &TestApp, key: &str, body: &Value| {
        app.client
            .post(app.url("/v1/models/demo/feedback"))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
    };
    let app = spawn_at(config, dir.path(), |_| {}).await.expect("starts");
    let first = send(&app, "order-17", &body).await.expect("sent");
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let again = send(&app, "order-17", &body).await.expect("sent");
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.json::<Value>().await.expect("json"),
        json!({ "accepted": 3 })
    );
    let other = json!({ "examples": rows[3..5] });
    let reused = send(&app, "order-17", &other).await.expect("sent");
    assert_eq!(reused.status(), 422);
    let err: Value = reused.json().await.expect("json");
    assert_eq!(err["error"]["code"], "idempotency_key_reused");
    let long = "k".repeat(129);
    assert_eq!(send(&app, &long, &body).await.expect("sent").status(), 422);
    // A retry whose header names no valid source is refused, not replayed
    // (an empty header once hashed as no header; found by schemathesis).
    let empty_source = app
        .client
        .post(app.url("/v1/models/demo/feedback"))
        .header("Idempotency-Key", "order-17")
        .header("X-Eddy-Source", "")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(empty_source.status(), 422);
    // Two keys (or two sources) in one request: refused, not the first.
    let two_keys = app
        .client
        .post(app.url("/v1/models/demo/feedback"))
        .header("Idempotency-Key", "order-17")
        .header("Idempotency-Key", "order-18")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(two_keys.status(), 422);
    // Enough unkeyed feedback for a promotion and snapshots to trim the
    // request's segment (last-good's range is kept until then).
    for chunk in rows[5..3005].chunks(250) {
        let (status, b) = app.feedback("demo", json!({ "examples": chunk })).await;
        assert_eq!(status, 202, "{b}");
    }
    app.wait_trained("demo", 3003).await;
    let first_segment = || {
        std::fs::read_dir(dir.path().join("demo/wal"))
            .expect("wal")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".wal"))
            .min()
            .expect("a segment")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while first_segment() == format!("{:020}.wal", 0) {
        assert!(Instant::now() < deadline, "the log was never trimmed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.stop().await.expect("clean stop");

    let app = spawn_at(config, dir.path(), |_| {})
        .await
        .expect("restarts");
    let retry = send(&app, "order-17", &body).await.expect("sent");
    assert_eq!(retry.status(), 202);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(
        app.info("demo").await["examples_trained"],
        3003,
        "nothing trained twice"
    );
    app.stop().await.expect("clean stop");
}
