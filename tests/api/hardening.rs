//! Correctness at the edges: a final snapshot the disk refuses makes
//! `eddy serve` exit non-zero saying what was not saved; an operator's
//! snapshot the disk refuses answers 507 with the cause; `eddy config` and
//! `eddy serve` refuse the same configurations; the `Bearer` scheme is
//! case-insensitive; unsafe characters in a source are refused and the
//! exposition stays parseable; an admin call on a trainer that does not
//! answer gets 503 `trainer_busy` instead of hanging.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::{item_codes, promtool, sample, scrape, spawn_at, spawn_with, start_binary};

const MODEL: &str = "[[models]]\nname = \"demo\"\ntask = \"binary\"\nhash_bits = 10\n";

/// A storage directory whose disk a test can break and mend. When this
/// process may mount (root), it is a small tmpfs that `break_disk` fills to
/// the last byte (ENOSPC: a full disk); otherwise (not root, so
/// permissions hold) `break_disk` makes the model's directory read-only
/// (EACCES). Either way every new file in the model's directory fails,
/// while the open feedback log keeps working, as on a real full disk.
struct Disk {
    dir: tempfile::TempDir,
    model: &'static str,
    mounted: bool,
}

impl Disk {
    fn new(model: &'static str) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        Self {
            dir,
            model,
            mounted,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    fn set_mode(&self, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.path().join(self.model);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .expect("chmod the model directory");
    }

    fn break_disk(&self) {
        if self.mounted {
            use std::io::Write;
            let mut file = std::fs::File::create(self.filler()).expect("filler");
            let chunk = vec![0u8; 64 << 10];
            while file.write_all(&chunk).is_ok() {}
            let _ = file.flush();
        } else {
            self.set_mode(0o555);
        }
    }

    fn mend(&self) {
        if self.mounted {
            std::fs::remove_file(self.filler()).expect("free the space");
        } else {
            self.set_mode(0o755);
        }
    }

    /// What the operating system says about the broken disk.
    fn cause(&self) -> &'static str {
        if self.mounted {
            "No space left on device"
        } else {
            "Permission denied"
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
    }
}

/// Polls until the binary's live version holds `n` examples.
async fn wait_trained(client: &reqwest::Client, addr: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client
            .get(format!("http://{addr}/v1/models/demo"))
            .send()
            .await
        {
            let info: Value = r.json().await.unwrap_or(Value::Null);
            if info["version_examples_trained"].as_u64() >= Some(n) {
                return info;
            }
        }
        assert!(Instant::now() < deadline, "never trained {n} examples");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn examples(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({ "features": { "x": (i % 13) as f64, "c": format!("k{}", i % 3) }, "label": i % 2 }))
        .collect()
}

/// SIGTERM with the disk refusing the final snapshot: the old binary said
/// nothing and exited 0. Now it exits 74 and says, on stderr and in its
/// log, which model and version were not saved, how many examples, and
/// that the feedback log holds them; a restart on a mended disk does learn
/// them again.
#[tokio::test]
async fn sigterm_with_a_refused_final_snapshot_exits_non_zero_saying_what_was_lost() {
    let disk = Disk::new("demo");
    let client = reqwest::Client::new();
    let mut binary = start_binary(disk.path(), &[("EDDY_MODELS__DEMO__HASH_BITS", "10")]);
    let r = client
        .post(format!("http://{}/v1/models/demo/feedback", binary.addr))
        .json(&json!({ "examples": examples(100) }))
        .send()
        .await
        .expect("feedback");
    assert_eq!(r.status(), 202);
    wait_trained(&client, &binary.addr, 100).await;
    // A snapshot of those 100 now; the next 60 are what the final one
    // would have saved.
    let r = client
        .post(format!(
            "http://{}/admin/models/demo/snapshot",
            binary.admin
        ))
        .send()
        .await
        .expect("snapshot");
    assert_eq!(r.status(), 200);
    let saved: Value = r.json().await.expect("json");
    let saved = saved["snapshot"]["version"].as_u64().expect("version");
    let r = client
        .post(format!("http://{}/v1/models/demo/feedback", binary.addr))
        .json(&json!({ "examples": examples(60) }))
        .send()
        .await
        .expect("feedback");
    assert_eq!(r.status(), 202);
    let info = wait_trained(&client, &binary.addr, 160).await;
    let version = info["version"].as_u64().expect("version");
    disk.break_disk();

    let status = Command::new("kill")
        .args(["-TERM", &binary.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = binary.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The reader thread sees the pipe close when the process is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stderr = loop {
        let lines = binary.stderr.lock().expect("lines").clone();
        if lines.iter().any(|l| l.starts_with("eddy: ")) || Instant::now() > deadline {
            break lines.join("\n");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    disk.mend();
    assert_eq!(
        status.code(),
        Some(74),
        "exit status {status}; stderr:\n{stderr}"
    );
    let said = stderr
        .lines()
        .find(|l| l.starts_with("eddy: "))
        .map(|first| {
            let at = stderr.find(first).expect("line");
            stderr[at..].to_owned()
        })
        .unwrap_or_default();
    for want in [
        "not everything was saved".to_owned(),
        format!("model demo: the final snapshot of v{version} was not written"),
        disk.cause().to_owned(),
        format!("60 examples trained since the newest snapshot on disk (v{saved}) are not saved"),
        "the feedback log holds them and the next start learns them again".to_owned(),
    ] {
        assert!(
            said.contains(&want),
            "stderr should say {want:?}:\n{stderr}"
        );
    }
    let logged: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["level"] == "ERROR" && v["fields"]["examples_unsaved"] == 60)
        .collect();
    assert_eq!(
        logged.len(),
        1,
        "one error log line for the model:\n{stderr}"
    );
    assert_eq!(logged[0]["fields"]["version"], version);
    assert_eq!(logged[0]["fields"]["in_log"], true);
    assert_eq!(logged[0]["fields"]["saved_version"], saved);

    // What the message promised: the log holds the examples.
    let app = spawn_at(MODEL, disk.path(), |_| {})
        .await
        .expect("restarts on the mended disk");
    let info = app.wait_trained("demo", 160).await;
    assert_eq!(info["examples_trained"], 160, "{info}");
    app.stop().await.expect("clean stop");
}

/// An operator's snapshot the disk refuses answers 507
/// `insufficient_storage` with the cause (it was a 500 `internal` that
/// hid it); once the disk is back it is written, and the server stops
/// cleanly.
#[tokio::test]
async fn an_operator_snapshot_the_disk_refuses_answers_507_with_the_cause() {
    let disk = Disk::new("demo");
    let app = spawn_at(MODEL, disk.path(), |c| c.admin.token = "s3cret".into())
        .await
        .expect("starts");
    let (status, body) = app
        .feedback("demo", json!({ "examples": examples(50) }))
        .await;
    assert_eq!(status, 202, "{body}");
    app.wait_trained("demo", 50).await;
    let url = format!("http://{}/admin/models/demo/snapshot", app.admin);
    let snapshot = || app.client.post(&url).bearer_auth("s3cret").send();

    disk.break_disk();
    let r = snapshot().await.expect("snapshot");
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("cannot write the snapshot to disk") && message.contains(disk.cause()),
        "{message}"
    );
    let text = scrape(&app).await;
    assert!(sample(&text, r#"eddy_snapshot_failures_total{model="demo"}"#) >= 1.0);

    disk.mend();
    let r = snapshot().await.expect("snapshot");
    assert_eq!(r.status(), 200, "written once the disk is back");
    app.stop()
        .await
        .expect("a clean stop after the disk came back");
}

/// `eddy config` printed a configuration that `eddy serve` then refused
/// (an open admin API off loopback); both now refuse it, naming the key.
#[test]
fn eddy_config_refuses_what_eddy_serve_refuses() {
    let cases: &[(&str, &str, &str)] = &[
        ("EDDY_ADMIN__LISTEN", "0.0.0.0:0", "admin.token"),
        ("EDDY_LOG__LEVEL", "eddy=loud", "log.level"),
        (
            "EDDY_MODELS__DEMO__MONITOR__GATE_EXAMPLES",
            "10",
            "models[demo].monitor.gate_examples",
        ),
    ];
    for (var, value, key) in cases {
        for command in ["config", "serve"] {
            let dir = tempfile::tempdir().expect("dir");
            let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
                .arg(command)
                .env_clear()
                .env(var, value)
                .env("EDDY_SERVER__LISTEN", "127.0.0.1:0")
                .env("EDDY_STORAGE__DIR", dir.path())
                .output()
                .expect("binary runs");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "eddy {command} with {var}={value}: {stderr}"
            );
            assert!(stderr.contains(key), "eddy {command}: {stderr}");
        }
    }
    // With a token the same address is fine for both.
    let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("config")
        .env_clear()
        .env("EDDY_ADMIN__LISTEN", "0.0.0.0:9090")
        .env("EDDY_ADMIN__TOKEN", "s3cret")
        .output()
        .expect("binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_with("", |c| c.admin.token = "s3cret".into()).await;
    let url = format!("http://{}/admin/models/demo/snapshots", app.admin);
    let status = |value: &'static str| {
        let request = app.client.get(&url).header("authorization", value);
        async move { request.send().await.expect("request").status().as_u16() }
    };
    for ok in [
        "Bearer s3cret",
        "bearer s3cret",
        "BEARER s3cret",
        "bEaReR s3cret",
        "Bearer   s3cret",
    ] {
        assert_eq!(status(ok).await, 200, "{ok:?}");
    }
    for refused in [
        "Basic s3cret",
        "Bearers3cret",
        "s3cret",
        "Bearer",
        "Bearer ",
        "Bearer s3cre",
        "Bearer s3cret2",
        "Bearer s3cret extra",
        "Bear s3cret",
    ] {
        assert_eq!(status(refused).await, 401, "{refused:?}");
    }
    app.stop().await.expect("clean stop");
}

/// A sample line of the classic text format: a name, optional labels whose
/// values escape only `\`, `"` and newline, and a number. Returns the label
/// values.
fn parse_sample(line: &str) -> Result<Vec<String>, String> {
    let (series, value) = line.rsplit_once(' ').ok_or("no value")?;
    value
        .parse::<f64>()
        .map_err(|e| format!("value {value:?}: {e}"))?;
    let Some((name, labels)) = series.split_once('{') else {
        return if series
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            Ok(Vec::new())
        } else {
            Err(format!("name {series:?}"))
        };
    };
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("name {name:?}"));
    }
    let mut values = Vec::new();
    let mut rest = labels.strip_suffix('}').ok_or("labels not closed")?;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().ok_or("label value not closed")? {
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (i, '"') => break i,
                (_, c) if c.is_control() => {
                    return Err(format!("raw control character U+{:04X}", u32::from(c)));
                }
                (_, c) => value.push(c),
            }
        };
        values.push(value);
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
    Ok(values)
}

/// A source reaches the metrics as a label value. Control characters (in
/// the body or the header) are refused with a 422 before anything is
/// accepted; quotes and backslashes are fine and come out escaped, and the
/// exposition stays parseable.
#[tokio::test]
async fn unsafe_sources_are_refused_and_the_exposition_stays_parseable() {
    let app = spawn_with("", |_| {}).await;
    let one = |source: &str| json!({ "features": { "x": 1 }, "label": 1, "source": source });
    for bad in [
        "line\nbreak",
        "carriage\rreturn",
        "nul\u{0}",
        "bell\u{7}",
        "esc\u{1b}[2J",
        "next\u{85}line",
        "sep\u{2028}x",
        "rlo\u{202e}x",
    ] {
        let (status, body) = app.feedback("demo", one(bad)).await;
        assert_eq!(status, 422, "{bad:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        let (status, body) = app
            .feedback(
                "demo",
                json!({ "examples": [{ "features": { "x": 1 }, "label": 0 }], "source": bad }),
            )
            .await;
        assert_eq!(status, 422, "batch source {bad:?}: {body}");
    }
    let (status, body) = app
        .feedback(
            "demo",
            json!({ "examples": [
                { "features": { "x": 1 }, "label": 0, "source": "ok" },
                { "features": { "x": 1 }, "label": 0, "source": "tab\there" },
            ] }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(item_codes(&body), [(1, "invalid_request")]);
    // A tab is the one control character a header value may carry.
    let r = app
        .client
        .post(app.url("/v1/models/demo/feedback"))
        .header("x-eddy-source", "tab\there")
        .json(&json!({ "features": { "x": 1 }, "label": 1 }))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 422);
    assert_eq!(
        app.info("demo").await["feedback_accepted"],
        0,
        "nothing accepted"
    );

    let odd = r#"quote"and\backslash {x="1"}"#;
    let batch: Vec<Value> = (0..40)
        .map(|i| json!({ "features": { "x": i % 5 }, "label": i % 2, "source": odd }))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        // The trainer refreshes its report as it learns: keep it learning.
        let (status, body) = app
            .feedback("demo", json!({ "examples": batch.clone() }))
            .await;
        assert_eq!(status, 202, "{body}");
        let text = scrape(&app).await;
        if text.contains("eddy_source_quality{") && text.contains(r#"backslash"#) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the source never reached the metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut seen = false;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let values = parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        seen |= values.iter().any(|v| v == odd);
    }
    assert!(
        seen,
        "the source comes back whole from its escaped form:\n{text}"
    );
    promtool(&text);
    app.stop().await.expect("clean stop");
}

/// An admin call whose trainer never answers (here: built, not running,
/// the extreme of a trainer busy with a long step) answers 503
/// `trainer_busy` after `admin.request_timeout_ms` instead of hanging; the
/// withdrawn command is not carried out when the trainer gets to it.
#[tokio::test]
async fn an_admin_call_on_a_busy_trainer_times_out_with_503() {
    let dir = tempfile::tempdir().expect("dir");
    let config = crate::helpers::config(MODEL, dir.path());
    let app = eddy::app::App::build(config.clone()).await.expect("builds");
    // The router under test waits 200 ms; the app's own admin listener,
    // used once the trainer runs, keeps the default.
    let router = eddy::http::admin::admin_router(eddy::http::admin::AdminState {
        app: app.state().clone(),
        token: String::new(),
        storage: config.storage.clone(),
        trainer_timeout: Duration::from_millis(200),
        status_sample_ms: config.admin.status_sample_ms,
        catalog: app.catalog(),
    });
    let call = |path: &str, body: &'static str| {
        let request = axum::http::Request::post(format!("/admin/models/demo/{path}"))
            .body(axum::body::Body::from(body))
            .expect("request");
        let router = router.clone();
        async move {
            // The old code waited for ever: fail instead of hanging.
            let response = tokio::time::timeout(Duration::from_secs(30), router.oneshot(request))
                .await
                .expect("answered in time, not left hanging")
                .expect("infallible");
            let status = response.status().as_u16();
            let retry = response.headers().get("retry-after").cloned();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            let body: Value = serde_json::from_slice(&bytes).expect("json");
            (status, retry, body)
        }
    };
    for (path, body) in [
        ("training/pause", ""),
        ("snapshot", ""),
        ("rollback", "{}"),
        ("sources/crm/readmit", ""),
        ("training/resume", ""),
    ] {
        let (status, retry, body) = call(path, body).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(body["error"]["code"], "trainer_busy", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("admin.request_timeout_ms")),
            "{body}"
        );
        assert!(retry.is_some(), "Retry-After on a 503");
    }

    // The trainer starts: the withdrawn pause (first in its queue) is not
    // carried out. A snapshot it answers afterwards is the point where it
    // has seen every earlier command.
    let admin = app.admin_addr().expect("admin");
    let addr = app.local_addr().expect("addr");
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run());
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{admin}/admin/models/demo/snapshot"))
        .send()
        .await
        .expect("snapshot");
    assert_eq!(r.status(), 200);
    let info: Value = client
        .get(format!("http://{addr}/v1/models/demo"))
        .send()
        .await
        .expect("info")
        .json()
        .await
        .expect("json");
    assert_eq!(
        info["training"], "running",
        "the withdrawn pause was dropped"
    );
    shutdown.cancel();
    server.await.expect("task").expect("clean stop");
}
