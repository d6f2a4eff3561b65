//! The admin status page (`GET /`): in headless Chromium (Debian
//! `chromium`, installed by `.ci/run`) after a short load and an operator
//! rollback, the chart is drawn with data and the rollback is listed;
//! with `admin.token` set the page and its data need the token, as a
//! bearer token or as a browser's Basic password.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, missing_tool, spawn_app, spawn_with};
use crate::streams::dataset;

const CONFIG: &str = "[admin]\nstatus_sample_ms = 20\n[[models]]\nname = \"demo\"\ntask = \"binary\"\nhash_bits = 12\n";

/// Headless Chromium on `url`, with its own profile in `dir`, off the
/// runtime's thread (the server under test runs on it) and killed after
/// a minute; `None` when it is not installed outside CI.
async fn chromium(dir: &Path, args: &[&str], url: &str) -> Option<std::process::Output> {
    let profile = format!("--user-data-dir={}", dir.join("profile").display());
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=1200,900",
            // Time enough for the script's first fetch and drawing.
            "--virtual-time-budget=5000",
            &profile,
        ])
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            missing_tool("chromium", &e);
            return None;
        }
    };
    let pid = child.id();
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let Ok(joined) = waited else {
        // Stopped by its PID, as every process a test starts.
        let _ = Command::new("kill").arg(pid.to_string()).status();
        panic!("chromium did not finish within a minute");
    };
    let out = joined.expect("joined").expect("chromium ran");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out)
}

async fn status(app: &TestApp) -> Value {
    app.client
        .get(format!("http://{}/admin/status", app.admin))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json")
}

/// Pixels of `png` within a small distance of `rgb`.
fn pixels_like(png: &[u8], rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("png");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("frame");
    let channels = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|px| {
            px.iter()
                .zip(rgb)
                .all(|(a, b)| (i16::from(*a) - i16::from(b)).abs() <= 24)
        })
        .count()
}

#[tokio::test]
async fn the_status_page_draws_quality_over_time_and_lists_a_rollback() {
    let app = spawn_app(CONFIG).await;
    let rows = dataset("elec2");
    let mut sent = 0;
    for chunk in rows[..1500].chunks(100) {
        let (code, body) = app.feedback("demo", json!({ "examples": chunk })).await;
        assert_eq!(code, 202, "{body}");
        sent += chunk.len() as u64;
        // Trained before the next chunk, so the history has steps.
        app.wait_trained("demo", sent).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (code, body) = app.admin_post("demo/rollback", "{}").await;
    assert_eq!(code, 200, "{body}");
    // The sampler records the rollback's version within a few ticks.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rolled_to = body["version"].as_u64().expect("version");
    loop {
        let s = status(&app).await;
        let m = &s["models"][0];
        let points = m["history"].as_array().map_or(0, Vec::len);
        if points >= 5 && m["history"][points - 1]["version"] == rolled_to {
            assert!(
                m["events"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["kind"] == "rollback"))
            );
            break;
        }
        assert!(Instant::now() < deadline, "no history: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let dir = tempfile::tempdir().expect("dir");
    let page = format!("http://{}/", app.admin);
    let Some(dom) = chromium(dir.path(), &["--dump-dom"], &page).await else {
        return;
    };
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("data-model=\"demo\""), "{dom}");
    let live = dom
        .split("<path class=\"live\" d=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no live line: {dom}"));
    assert!(
        live.matches('L').count() >= 4,
        "the live line has the history's points: {live}"
    );
    assert!(dom.contains("<path class=\"baseline\""), "{dom}");
    assert!(dom.contains("data-kind=\"rollback\""), "{dom}");
    assert!(dom.contains("an operator rolled back"), "{dom}");
    assert!(!dom.contains("could not refresh"), "{dom}");

    let shot = dir.path().join("status.png");
    let arg = format!("--screenshot={}", shot.display());
    chromium(dir.path(), &[&arg], &page).await;
    let png = std::fs::read(&shot).expect("screenshot");
    // The live line (#1f77b4), last-good's (#ff7f0e) and the rollback
    // marker and event (#d62728) are on screen.
    let short: Vec<String> = [
        ("live line", [0x1f, 0x77, 0xb4], 400),
        ("last-good line", [0xff, 0x7f, 0x0e], 200),
        ("rollback", [0xd6, 0x27, 0x28], 100),
    ]
    .into_iter()
    .filter_map(|(what, rgb, least)| {
        let n = pixels_like(&png, rgb);
        (n < least).then(|| format!("{what}: {n} pixels of its colour, expected {least}"))
    })
    .collect();
    if !short.is_empty() {
        let kept = dir.keep();
        panic!(
            "{short:?}; the screenshot is {}",
            kept.join("status.png").display()
        );
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn with_a_token_the_page_and_its_data_need_it() {
    let app = spawn_with(CONFIG, |c| c.admin.token = "s3cret-token".into()).await;
    let admin = app.admin;
    let get = |path: &str, auth: Option<&str>| {
        let mut r = app.client.get(format!("http://{admin}{path}"));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send()
    };
    for path in ["/", "/status.js", "/admin/status"] {
        let r = get(path, None).await.expect("sent");
        assert_eq!(r.status(), 401, "{path}");
        // Two challenges, each its own header value: browsers ask for
        // Basic credentials only then.
        let challenges: Vec<&str> = r
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(challenges.len(), 2, "{challenges:?}");
        assert!(challenges.iter().any(|c| c.starts_with("Basic ")));
        // user:wrong, then any user with the token as password.
        let wrong = get(path, Some("Basic dXNlcjp3cm9uZw=="))
            .await
            .expect("sent");
        assert_eq!(wrong.status(), 401, "{path}");
        let basic = get(path, Some("Basic b3BzOnMzY3JldC10b2tlbg=="))
            .await
            .expect("sent");
        assert_eq!(basic.status(), 200, "{path}");
        let bearer = get(path, Some("Bearer s3cret-token")).await.expect("sent");
        assert_eq!(bearer.status(), 200, "{path}");
    }
    let page = get("/", Some("Bearer s3cret-token")).await.expect("sent");
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(
        page.text()
            .await
            .expect("html")
            .contains("<script src=\"/status.js\">")
    );

    // Routes that change anything take no Basic credentials, which a
    // browser would send with a hostile page's form too, and no request
    // a browser makes for another site.
    let pause = format!("http://{admin}/admin/models/demo/training/pause");
    let basic = app
        .client
        .post(&pause)
        .header("Authorization", "Basic b3BzOnMzY3JldC10b2tlbg==")
        .send()
        .await
        .expect("sent");
    assert_eq!(basic.status(), 401);
    let forged = app
        .client
        .post(&pause)
        .header("Authorization", "Bearer s3cret-token")
        .header("Origin", "http://evil.example")
        .send()
        .await
        .expect("sent");
    assert_eq!(forged.status(), 403);
    assert_eq!(app.info("demo").await["training"], "running");

    // A browser given the credentials in the URL answers the challenge
    // and draws the page.
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("http://ops:s3cret-token@{admin}/");
    if let Some(dom) = chromium(dir.path(), &["--dump-dom"], &url).await {
        let dom = String::from_utf8_lossy(&dom.stdout);
        assert!(dom.contains("data-model=\"demo\""), "{dom}");
    }
    app.stop().await.expect("clean stop");
}

/// Without a token the admin listener is open to this machine only: a
/// browser led to it under another name (DNS rebinding) or by another
/// site is refused.
#[tokio::test]
async fn an_open_admin_listener_answers_loopback_names_only() {
    let app = spawn_app(CONFIG).await;
    let status = format!("http://{}/admin/status", app.admin);
    let ok = app.client.get(&status).send().await.expect("sent");
    assert_eq!(ok.status(), 200);
    for (name, value) in [
        ("Host", "rebound.evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Origin", "http://evil.example"),
    ] {
        let r = app
            .client
            .get(&status)
            .header(name, value)
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 403, "{name}: {value}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "cross_site");
    }
    app.stop().await.expect("clean stop");
}
