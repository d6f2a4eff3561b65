//! Feedback against a log whose fsync fails: the real app, built from a
//! config and served on 127.0.0.1:0, with fsync failures injected under
//! its storage directory (`persist::wal::fail_fsyncs_under`, a seam only
//! unit tests have, so this lives here and not in `tests/api`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::App;
use crate::config::Config;

const CONFIG: &str = "[storage]\nfsync = \"always\"\n[[models]]\nname = \"demo\"\ntask = \"binary\"\nhash_bits = 12\n";

fn example(x: f64) -> Value {
    json!({ "features": { "x": x }, "label": 1 })
}

/// A request whose fsync failed was answered 507 `insufficient_storage`;
/// a retry with its `Idempotency-Key` must not turn that into a 202 (its
/// examples may not survive a crash), nor train them a second time. A
/// request acknowledged before the failure still replays its 202: its
/// records were fsynced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_request_whose_fsync_failed_is_not_acknowledged() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config::from_toml_over_default(CONFIG).expect("config");
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.admin.listen = "127.0.0.1:0".parse().expect("addr");
    config.storage.dir = dir.path().to_owned();
    let app = App::build(config).await.expect("app builds");
    let base = format!("http://{}", app.local_addr().expect("bound"));
    let shutdown = app.shutdown_token();
    let state = app.state().clone();
    let server = tokio::spawn(app.run());
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let send = |key: &'static str, body: Value| {
        client
            .post(format!("{base}/v1/models/demo/feedback"))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let before = json!({ "examples": [example(1.0), example(2.0)] });
    let lost = json!({ "examples": [example(3.0), example(4.0), example(5.0)] });

    let first = send("before", before.clone()).await.expect("sent");
    assert_eq!(first.status(), 202);

    crate::persist::wal::fail_fsyncs_under(dir.path());
    let failed = send("lost", lost.clone()).await.expect("sent");
    assert_eq!(failed.status(), 507);
    let body: Value = failed.json().await.expect("json");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    let queue = &state.model("demo").expect("demo").queue;
    assert!(
        queue
            .log()
            .stats()
            .poisoned
            .load(std::sync::atomic::Ordering::Acquire)
    );
    let accepted = queue.accepted();
    assert_eq!(accepted, 5, "the failed request's examples were queued");

    for _ in 0..2 {
        let retry = send("lost", lost.clone()).await.expect("sent");
        assert_eq!(retry.status(), 507, "a retry is refused as the first was");
        assert!(retry.headers().get("idempotent-replayed").is_none());
        let body: Value = retry.json().await.expect("json");
        assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    }
    assert_eq!(queue.accepted(), accepted, "nothing queued twice");

    let replayed = send("before", before).await.expect("sent");
    assert_eq!(replayed.status(), 202, "fsynced before the failure");
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(
        replayed.json::<Value>().await.expect("json"),
        json!({ "accepted": 2 })
    );
    // The same key with another body is still refused as reused.
    let reused = send("lost", json!({ "examples": [example(9.0)] }))
        .await
        .expect("sent");
    assert_eq!(reused.status(), 422);

    shutdown.cancel();
    // The final snapshot cannot sync a poisoned log: `run` may report that.
    let _ = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the app stops");
}
