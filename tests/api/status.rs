//! The admin status page (`GET /`): in headless Chromium (Debian
//! `chromium`, installed by `.ci/run`) after a short load and an operator
//! rollback, the chart is drawn with data and the rollback is listed;
//! with many models the data comes in pages of compact rows, drawn as a
//! table, and one model's card on its own; with `admin.token` set the
//! page and its data need the token, as a bearer token or as a browser's
//! Basic password.

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
    let (code, body) = status_at(app, "").await;
    assert_eq!(code, 200, "{body}");
    body
}

/// `GET /admin/status` with `query` (`?...` or empty): status and JSON.
async fn status_at(app: &TestApp, query: &str) -> (u16, Value) {
    let r = app
        .client
        .get(format!("http://{}/admin/status{query}", app.admin))
        .send()
        .await
        .expect("status");
    (r.status().as_u16(), r.json().await.expect("json"))
}

/// Feeds `model` the first `n` Elec2 rows by hundreds, each hundred
/// trained before the next, so that its history has steps.
async fn learn_in_steps(app: &TestApp, model: &str, n: usize) {
    let rows = dataset("elec2");
    let mut sent = 0;
    for chunk in rows[..n].chunks(100) {
        let (code, body) = app.feedback(model, json!({ "examples": chunk })).await;
        assert_eq!(code, 202, "{body}");
        sent += chunk.len() as u64;
        app.wait_trained(model, sent).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
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
    learn_in_steps(&app, "demo", 1500).await;
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

/// Models of the many-models test, declared in reverse name order so
/// that name order (pages) and configuration order differ.
const MANY: usize = 25;

fn many_models() -> String {
    let mut config = String::from("[admin]\nstatus_sample_ms = 20\n");
    for i in (0..MANY).rev() {
        config.push_str(&format!(
            "[[models]]\nname = \"m{i:02}\"\ntask = \"binary\"\nhash_bits = 10\n"
        ));
    }
    config
}

fn names(rows: &Value) -> Vec<String> {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test]
async fn with_many_models_the_page_lists_them_and_shows_one_in_full() {
    let app = spawn_app(&many_models()).await;
    // One model learns (its chart gets points) and is paused and resumed
    // (its events).
    learn_in_steps(&app, "m07", 300).await;
    for step in ["pause", "resume"] {
        let (code, body) = app.admin_post(&format!("m07/training/{step}"), "").await;
        assert_eq!(code, 200, "{body}");
    }

    // Unpaged, more than 20 models: the first page of compact rows.
    let all: Vec<String> = (0..MANY).map(|i| format!("m{i:02}")).collect();
    let s = status(&app).await;
    assert_eq!(s["total"], MANY, "{s}");
    assert_eq!(names(&s["models"]), all, "the first page, in name order");
    assert!(s["next"].is_null(), "25 fit the first page of 100: {s}");
    for row in s["models"].as_array().expect("rows") {
        assert!(row.get("history").is_none() && row.get("events").is_none());
        assert_eq!(row["rollbacks"], 0, "{row}");
    }
    let m07 = &s["models"][7];
    assert_eq!(m07["examples_trained"], 300, "{m07}");
    assert!(m07["last_event_at"].is_string(), "{m07}");
    assert!(s["models"][0]["last_event_at"].is_null());

    // Pages of 10 walk every model once, in name order.
    let mut walked = Vec::new();
    let mut query = "?limit=10".to_owned();
    for page in 1.. {
        let (code, s) = status_at(&app, &query).await;
        assert_eq!(code, 200, "{s}");
        walked.extend(names(&s["models"]));
        match s["next"].as_str() {
            Some(next) => query = format!("?limit=10&after={next}"),
            None => {
                assert_eq!(page, 3);
                break;
            }
        }
    }
    assert_eq!(walked, all);

    // One model in full: its history and its events.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, s) = status_at(&app, "?model=m07").await;
        assert_eq!(code, 200, "{s}");
        assert_eq!(names(&s["models"]), ["m07"]);
        let m = &s["models"][0];
        let kinds: Vec<&Value> = m["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| &e["kind"])
            .collect();
        let scored = m["history"]
            .as_array()
            .expect("history")
            .iter()
            .any(|p| p["live"].is_number());
        if scored && kinds == ["paused", "resumed"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scored history or events: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (code, body) = status_at(&app, "?model=nope").await;
    assert_eq!(
        (code, &body["error"]["code"]),
        (404, &json!("model_not_found"))
    );
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?limit=ten",
        "?after=m03",
        "?model=m07&limit=5",
    ] {
        let (code, body) = status_at(&app, bad).await;
        assert_eq!(
            (code, &body["error"]["code"]),
            (422, &json!("invalid_request")),
            "{bad}"
        );
    }

    // The page: a table of the rows, and a model's card from the URL.
    let dir = tempfile::tempdir().expect("dir");
    let page = format!("http://{}/", app.admin);
    let Some(list) = chromium(dir.path(), &["--dump-dom"], &page).await else {
        return;
    };
    let list = String::from_utf8_lossy(&list.stdout);
    assert_eq!(list.matches("<tr data-row=").count(), MANY, "{list}");
    assert!(list.contains("<a href=\"#model=m07\">m07</a>"), "{list}");
    assert!(!list.contains("<section class=\"model\""), "{list}");
    let detail = format!("{page}#model=m07");
    let detail = chromium(dir.path(), &["--dump-dom"], &detail)
        .await
        .expect("chromium ran before");
    let detail = String::from_utf8_lossy(&detail.stdout);
    assert!(detail.contains("data-model=\"m07\""), "{detail}");
    assert!(detail.contains("<path class=\"live\""), "{detail}");
    assert!(detail.contains("data-kind=\"paused\""), "{detail}");
    assert!(!detail.contains("data-row="), "{detail}");
    assert!(!detail.contains("could not refresh"), "{detail}");
    app.stop().await.expect("clean stop");
}
