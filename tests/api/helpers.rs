//! `spawn_app`: the real server on 127.0.0.1:0 with a temporary storage
//! directory, plus small helpers to call it and to poll with a deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use eddy::app::App;
use eddy::config::Config;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/admin/...`).
    pub admin: SocketAddr,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    /// In-process handles, to look at what HTTP does not show.
    pub state: eddy::http::AppState,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The storage directory, when this app owns it.
    pub _dir: Option<tempfile::TempDir>,
}

/// A config over the built-in default: the given TOML, a free port, a temp
/// storage directory.
pub fn config(toml_text: &str, dir: &Path) -> Config {
    let mut c = Config::from_toml_over_default(toml_text).expect("test config is valid");
    c.server.listen = "127.0.0.1:0".parse().expect("addr");
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.storage.dir = dir.to_owned();
    c
}

pub async fn spawn_app(toml_text: &str) -> TestApp {
    spawn_with(toml_text, |_| {}).await
}

pub async fn spawn_with(toml_text: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut app = spawn_at(toml_text, dir.path(), tweak)
        .await
        .expect("app builds");
    app._dir = Some(dir);
    app
}

/// Starts the app on a storage directory the caller owns (restart tests).
pub async fn spawn_at(
    toml_text: &str,
    dir: &Path,
    tweak: impl FnOnce(&mut Config),
) -> anyhow::Result<TestApp> {
    init_logs();
    let mut c = config(toml_text, dir);
    tweak(&mut c);
    let app = App::build(c).await?;
    let addr = app.local_addr().expect("bound");
    let admin = app.admin_addr().expect("bound");
    let shutdown = app.shutdown_token();
    let state = app.state().clone();
    let server = tokio::spawn(app.run());
    let app = TestApp {
        addr,
        admin,
        client: reqwest::Client::new(),
        shutdown,
        state,
        server,
        _dir: None,
    };
    app.wait_ready().await;
    Ok(app)
}

/// Logs during tests are opt-in: TEST_LOG=debug cargo test. (Not an
/// EDDY_ variable: those are configuration.)
fn init_logs() {
    if let Ok(level) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(level)
            .with_test_writer()
            .try_init();
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs `body` to `/admin/models/{path}` (no token); status and JSON.
    pub async fn admin_post(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .client
            .post(format!("http://{}/admin/models/{path}", self.admin))
            .body(body.to_owned())
            .send()
            .await
            .expect("admin request");
        (r.status().as_u16(), r.json().await.expect("json"))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn predict(&self, model: &str, features: Value) -> Value {
        let (status, body) = self
            .post(
                &format!("/v1/models/{model}/predict"),
                &json!({ "features": features }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn feedback(&self, model: &str, body: Value) -> (u16, Value) {
        self.post(&format!("/v1/models/{model}/feedback"), &body)
            .await
    }

    pub async fn info(&self, model: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/models/{model}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls `/readyz` until it answers 200 (the feedback log replayed).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get("/readyz").await;
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "never ready: {status} {body}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Polls until the live version has learned `n` examples.
    pub async fn wait_trained(&self, model: &str, n: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = self.info(model).await;
            if info["version_examples_trained"].as_u64() >= Some(n) {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "model {model} never reached {n} trained examples: {info}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Starts a graceful shutdown and waits for the server to exit.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.server.await.expect("server task")
    }
}

pub use crate::streams::dataset;

/// The `(index, code)` pairs of a refused batch's error items.
pub fn item_codes(body: &Value) -> Vec<(u64, &str)> {
    body["error"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["index"].as_u64().expect("index"),
                i["code"].as_str().expect("code"),
            )
        })
        .collect()
}

/// `GET` on the admin listener (no token), asserting 200.
async fn admin_get(app: &TestApp, path: &str) -> reqwest::Response {
    let r = app
        .client
        .get(format!("http://{}{path}", app.admin))
        .send()
        .await
        .expect("admin request");
    assert_eq!(r.status(), 200, "GET {path}");
    r
}

/// `GET /admin/models/{model}/events`: what the safety loop did, oldest first.
pub async fn events(app: &TestApp, model: &str) -> Vec<Value> {
    let body: Value = admin_get(app, &format!("/admin/models/{model}/events"))
        .await
        .json()
        .await
        .expect("json");
    body["events"].as_array().expect("events").clone()
}

/// `GET /metrics` on the admin listener.
pub async fn scrape(app: &TestApp) -> String {
    admin_get(app, "/metrics").await.text().await.expect("text")
}

/// The value of the sample line that starts with `prefix`.
pub fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

/// Runs `promtool check metrics` on an exposition.
pub fn promtool(text: &str) {
    promtool_run(&["check", "metrics"], None, text);
}

/// Runs promtool with `args` (in `dir`, when given) and `stdin`, and
/// asserts it succeeds. promtool (Debian package `prometheus`) is
/// installed by .ci/run; in CI its absence is a failure, elsewhere the
/// check is skipped.
pub fn promtool_run(args: &[&str], dir: Option<&Path>, stdin: &str) {
    use std::io::Write;
    let mut command = std::process::Command::new("promtool");
    command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    match command.spawn() {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(stdin.as_bytes())
                .expect("write");
            let out = child.wait_with_output().expect("promtool runs");
            assert!(
                out.status.success(),
                "promtool {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => missing_tool("promtool", &e),
    }
}

/// A tool a test runs is not installed: a failure in CI (.ci/run installs
/// it), elsewhere the check is skipped.
pub fn missing_tool(tool: &str, e: &std::io::Error) {
    assert!(
        std::env::var("CI").is_err(),
        "{tool} is required in CI: {e}"
    );
}

/// The `eddy serve` binary on `dir`, with JSON logs and more `EDDY_*`
/// settings; every stderr line is kept (and the pipe always drained).
pub struct Binary {
    pub child: std::process::Child,
    pub addr: String,
    pub admin: String,
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Starts the binary and waits for the log line that says where it listens.
#[allow(
    clippy::zombie_processes,
    reason = "the caller owns the child and reaps it; a panic here fails the test"
)]
pub fn start_binary(dir: &Path, settings: &[(&str, &str)]) -> Binary {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    let mut child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("serve")
        .env_clear()
        .envs(settings.iter().copied())
        .env("EDDY_SERVER__LISTEN", "127.0.0.1:0")
        .env("EDDY_ADMIN__LISTEN", "127.0.0.1:0")
        .env("EDDY_STORAGE__DIR", dir)
        .env("EDDY_LOG__FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let pipe = child.stderr.take().expect("stderr");
    let kept = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            kept.lock().expect("lines").push(line.clone());
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the server says where it listens in time");
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if let (Some(addr), Some(admin)) =
            (v["fields"]["addr"].as_str(), v["fields"]["admin"].as_str())
        {
            return Binary {
                child,
                addr: addr.to_owned(),
                admin: admin.to_owned(),
                stderr: lines,
            };
        }
    }
}
