//! Start-up and shutdown: readiness, graceful stop that trains what is
//! queued, and the binary refusing a bad config before binding.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn shutdown_trains_and_publishes_what_is_queued() {
    // A minibatch that never fills and a long wait: the examples sit in the
    // trainer's hands until shutdown.
    let app = spawn_app(
        "[[models]]\nname = \"demo\"\ntask = \"binary\"\n[models.training]\nminibatch_size = 1000\nmax_wait_ms = 600000",
    )
    .await;
    assert_eq!(app.get("/readyz").await.0, 200);
    assert_eq!(app.get("/healthz").await, (200, json!({ "status": "ok" })));
    let examples: Vec<_> = (0..10)
        .map(|i| json!({ "features": { "x": i }, "label": i % 2 }))
        .collect();
    assert_eq!(
        app.feedback("demo", json!({ "examples": examples }))
            .await
            .0,
        202
    );
    assert_eq!(app.info("demo").await["version_examples_trained"], 0);
    let state = app.state.clone();
    app.stop().await.expect("clean stop");
    let model = state.model("demo").expect("model");
    let live = model.store.live();
    assert_eq!(
        live.examples_trained, 10,
        "queued feedback was trained at shutdown"
    );
    assert!(live.version > 1);
}

#[test]
fn bad_config_exits_non_zero_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("serve")
        .env_clear()
        .env("EDDY_MODELS__DEMO__HASH_BITS", "99")
        .env("EDDY_SERVER__LISTEN", "127.0.0.1:0")
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("models[demo].hash_bits"), "{stderr}");

    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("eddy.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:0\"\nport = 3\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .env_clear()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server") && stderr.contains("port"),
        "{stderr}"
    );
}

#[test]
fn sigterm_stops_the_binary_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("serve")
        .env_clear()
        .env("EDDY_SERVER__LISTEN", "127.0.0.1:0")
        .env("EDDY_ADMIN__LISTEN", "127.0.0.1:0")
        .env("EDDY_STORAGE__DIR", dir.path())
        .env("EDDY_LOG__FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    // Read the log on its own thread so waiting for a line has a deadline.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the server says where it listens in time");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        if let Some(addr) = v["fields"]["addr"].as_str() {
            break addr.to_owned();
        }
    };
    // The server answers, then stops on SIGTERM with exit code 0.
    let mut stream = std::net::TcpStream::connect(&addr).expect("connects");
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
