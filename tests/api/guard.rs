//! The ingestion guard over HTTP: a flooding source is flagged and
//! quarantined while honest sources keep learning, a unit error is kept
//! out as outliers, schema violations are quarantined, and the quarantine
//! is listed, released and dropped by an operator and comes back whole
//! after a restart.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, dataset, events, promtool, sample, scrape, spawn_app, spawn_at};
use crate::streams::stationary;

const CHUNK: usize = 32;

/// Polls until the trainer has dealt with every accepted example.
async fn wait_processed(app: &TestApp, model: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = app.info(model).await;
        if info["feedback_processed"] == info["feedback_accepted"] {
            return info;
        }
        assert!(Instant::now() < deadline, "trainer never caught up: {info}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn admin(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("http://{}{path}", app.admin);
    let request = match method {
        "GET" => app.client.get(url),
        _ => app.client.post(url),
    };
    let request = match body {
        Some(b) => request.json(&b),
        None => request,
    };
    let r = request.send().await.expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Predicts `rows`, then sends them from `source` (and, when given,
/// `copies` label-inverted copies of each from the attacker). Returns how
/// many the live model got right before learning them.
async fn round(app: &TestApp, model: &str, rows: &[Value], source: &str, copies: usize) -> usize {
    let instances: Vec<Value> = rows
        .iter()
        .map(|r| json!({ "features": r["features"] }))
        .collect();
    let (status, body) = app
        .post(
            &format!("/v1/models/{model}/predict"),
            &json!({ "instances": instances }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let correct = body["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .zip(rows)
        .filter(|(p, r)| p["label"] == r["label"])
        .count();
    let examples: Vec<Value> = rows
        .iter()
        .map(|r| json!({ "features": r["features"], "label": r["label"] }))
        .collect();
    let (status, body) = app
        .feedback(model, json!({ "examples": examples, "source": source }))
        .await;
    assert_eq!(status, 202, "{body}");
    if copies > 0 {
        let inverted: Vec<Value> = rows
            .iter()
            .flat_map(|r| {
                let flipped = 1 - r["label"].as_u64().expect("0 or 1");
                std::iter::repeat_n(
                    json!({ "features": r["features"], "label": flipped }),
                    copies,
                )
            })
            .collect();
        let (status, body) = app
            .feedback(model, json!({ "examples": inverted, "source": "attacker" }))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    wait_processed(app, model).await;
    correct
}

/// Elec2 from four honest sources in turn to two identical models; from
/// row 3,000 an attacker resends each current example to one of them five
/// times with its label inverted. No trusted sources are configured.
#[tokio::test]
async fn a_flooding_source_is_flagged_and_quarantined_while_honest_ones_learn() {
    let app = spawn_app(
        "[[models]]\nname = \"attacked\"\ntask = \"binary\"\n[[models]]\nname = \"clean\"\ntask = \"binary\"",
    )
    .await;
    let rows = dataset("elec2");
    let (from, end) = (3_000, 6_000);
    let (mut hit_attacked, mut hit_clean, mut scored) = (0, 0, 0);
    for (i, chunk) in rows[..end].chunks(CHUNK).enumerate() {
        let source = format!("honest-{}", i % 4);
        let copies = if i * CHUNK >= from { 5 } else { 0 };
        let a = round(&app, "attacked", chunk, &source, copies).await;
        let c = round(&app, "clean", chunk, &source, 0).await;
        if copies > 0 {
            hit_attacked += a;
            hit_clean += c;
            scored += chunk.len();
        }
    }
    let (acc_attacked, acc_clean) = (
        hit_attacked as f64 / scored as f64,
        hit_clean as f64 / scored as f64,
    );
    assert!(
        acc_attacked >= acc_clean - 0.02,
        "honest accuracy under the flood {acc_attacked:.4} vs without it {acc_clean:.4}"
    );
    let info = app.info("attacked").await;
    let guard = &info["guard"];
    assert_eq!(guard["enabled"], true, "{info}");
    assert_eq!(guard["flagged_sources"], json!(["attacker"]), "{guard}");
    let flagged = events(&app, "attacked").await;
    let event = flagged
        .iter()
        .find(|e| e["kind"] == "source_flagged")
        .unwrap_or_else(|| panic!("no source_flagged event: {flagged:?}"));
    assert_eq!(event["figures"]["source"], "attacker", "{event}");

    let text = scrape(&app).await;
    promtool(&text);
    let attacker = sample(
        &text,
        r#"eddy_quarantine_examples_total{model="attacked",reason="label",source="attacker"}"#,
    );
    let sent = ((end - from) * 5) as f64;
    assert!(
        attacker >= 0.5 * sent,
        "only {attacker} of {sent} attacker examples quarantined"
    );
    let honest: f64 = text
        .lines()
        .filter(|l| l.starts_with("eddy_quarantine_examples_total{") && l.contains("honest-"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        honest <= 0.01 * end as f64,
        "{honest} honest examples quarantined:\n{text}"
    );
    assert!(
        !text.contains(r#"eddy_quarantine_examples_total{model="clean""#),
        "nothing of the clean model's is quarantined"
    );
    app.stop().await.expect("stops");
}

/// One source on a stationary stream; feature `a` arrives 1000x too large
/// for 300 examples after 3,000 clean ones.
#[tokio::test]
async fn a_unit_error_is_kept_out_as_outliers() {
    let app = spawn_app("[[models]]\nname = \"m\"\ntask = \"binary\"").await;
    let broken = 3_000..3_300;
    let rows = stationary(4_000, 5, broken.clone());
    for chunk in rows.chunks(500) {
        let examples: Vec<Value> = chunk
            .iter()
            .map(|r| json!({ "features": r["features"], "label": r["label"] }))
            .collect();
        let (status, body) = app.feedback("m", json!({ "examples": examples })).await;
        assert_eq!(status, 202, "{body}");
    }
    wait_processed(&app, "m").await;
    let (status, page) = admin(
        &app,
        "GET",
        "/admin/models/m/quarantine?reason=outlier&limit=1000",
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    // Log positions also number the trainer's steps: the broken examples
    // are recognised by their values of `a` (to a relative 1e-12: JSON
    // float parsing may differ in the last bit).
    let broken_a: Vec<f64> = rows[broken.clone()]
        .iter()
        .filter_map(|r| r["features"]["a"].as_f64())
        .collect();
    let is_broken = |v: f64| {
        broken_a
            .iter()
            .any(|b| (v - b).abs() <= 1e-12 * b.abs().max(1.0))
    };
    let listed = page["examples"].as_array().expect("examples");
    let inside = listed
        .iter()
        .filter(|e| {
            e["features"]
                .as_array()
                .is_some_and(|fs| fs.iter().filter_map(|f| f["value"].as_f64()).any(is_broken))
        })
        .count();
    assert!(
        inside * 10 >= broken.len() * 9,
        "{inside} of {} broken examples quarantined",
        broken.len()
    );
    assert!(
        listed.len() - inside <= 20,
        "{} clean examples quarantined as outliers: {:?}",
        listed.len() - inside,
        listed
            .iter()
            .map(|e| e["detail"].as_str().unwrap_or_default())
            .filter(|d| !d.is_empty())
            .take(40)
            .collect::<Vec<_>>()
    );
    let first = &page["examples"][0];
    assert_eq!(first["reason"], "outlier", "{first}");
    assert!(
        first["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{first}"
    );
    app.stop().await.expect("stops");
}

const SCHEMA: &str = r#"
[[models]]
name = "m"
task = "binary"
[[models.guard.features]]
name = "x"
type = "numeric"
min = 0.0
max = 10.0
required = true
"#;

/// Schema violations (inline and joined by prediction id) are quarantined
/// with the reason; an operator lists, releases and drops them; the
/// quarantine is the same after a restart; bad selections are refused.
#[tokio::test]
async fn the_quarantine_is_listed_released_dropped_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let app = spawn_at(SCHEMA, dir.path(), |_| {}).await.expect("starts");
    let mut examples = Vec::new();
    for i in 0..40 {
        let x = if i % 4 == 0 { 50.0 } else { f64::from(i % 10) };
        examples.push(json!({ "features": { "x": x }, "label": i % 2 }));
    }
    examples.push(json!({ "features": { "y": 1.0 }, "label": 1 }));
    let (status, body) = app
        .feedback("m", json!({ "examples": examples, "source": "feed" }))
        .await;
    assert_eq!(status, 202, "{body}");
    let predicted = app.predict("m", json!({ "x": -3.0 })).await;
    let id = predicted["prediction_id"].as_str().expect("id");
    let (status, body) = app
        .feedback(
            "m",
            json!({ "prediction_id": id, "label": 0, "source": "joined" }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    wait_processed(&app, "m").await;

    let (status, page) = list(&app, "?reason=schema").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["total"], 12,
        "10 out of range, 1 missing x, 1 joined: {page}"
    );
    let all = page["examples"].as_array().expect("examples").clone();
    assert!(all.iter().all(|e| e["reason"] == "schema"), "{page}");
    let joined = all
        .iter()
        .find(|e| e["source"] == "joined")
        .expect("joined one");
    assert!(
        joined["detail"].as_str().expect("detail").contains('x'),
        "{joined}"
    );

    let (_, first) = list(&app, "?limit=5").await;
    assert_eq!(
        first["examples"].as_array().map(Vec::len),
        Some(5),
        "{first}"
    );
    let next = first["next"].as_u64().expect("next page");
    let (_, second) = admin(
        &app,
        "GET",
        &format!("/admin/models/m/quarantine?limit=5&after={next}"),
        None,
    )
    .await;
    assert_eq!(
        second["examples"][0]["id"].as_u64().map(|i| i > next),
        Some(true),
        "{second}"
    );

    for (query, code) in [
        ("?reason=cosmic", 422),
        ("?limit=0", 422),
        ("?bogus=1", 422),
    ] {
        let (status, body) = list(&app, query).await;
        assert_eq!(status, code, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    }
    for body in [
        json!({}),
        json!({ "all": true, "reason": "schema" }),
        json!({ "reason": "nope" }),
    ] {
        let (status, answer) = admin(
            &app,
            "POST",
            "/admin/models/m/quarantine/release",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 422, "{body}: {answer}");
    }

    let trained_before = app.info("m").await["examples_trained"].as_u64().expect("n");
    let ids: Vec<u64> = all
        .iter()
        .take(3)
        .map(|e| e["id"].as_u64().expect("id"))
        .collect();
    let (status, body) = admin(
        &app,
        "POST",
        "/admin/models/m/quarantine/release",
        Some(json!({ "ids": ids })),
    )
    .await;
    assert_eq!((status, &body["released"]), (200, &json!(3)), "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.info("m").await["examples_trained"].as_u64() < Some(trained_before + 3) {
        assert!(Instant::now() < deadline, "released examples never trained");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (status, body) = admin(
        &app,
        "POST",
        "/admin/models/m/quarantine/drop",
        Some(json!({ "source": "joined" })),
    )
    .await;
    assert_eq!((status, &body["dropped"]), (200, &json!(1)), "{body}");
    let kinds: Vec<Value> = events(&app, "m")
        .await
        .iter()
        .map(|e| e["kind"].clone())
        .collect();
    assert!(kinds.contains(&json!("quarantine_released")), "{kinds:?}");
    assert!(kinds.contains(&json!("quarantine_dropped")), "{kinds:?}");
    let (_, before) = list(&app, "").await;
    assert_eq!(before["total"], 8, "{before}");
    let text = scrape(&app).await;
    assert_eq!(sample(&text, r#"eddy_quarantine_held{model="m"}"#), 8.0);
    assert_eq!(
        sample(&text, r#"eddy_quarantine_released_total{model="m"}"#),
        3.0
    );
    app.stop().await.expect("stops");

    let app = spawn_at(SCHEMA, dir.path(), |_| {})
        .await
        .expect("restarts");
    app.wait_ready().await;
    let (_, after) = list(&app, "").await;
    assert_eq!(
        after["examples"], before["examples"],
        "the quarantine after the restart"
    );
    let info = app.info("m").await;
    assert_eq!(info["guard"]["released_total"], 3, "{info}");
    app.stop().await.expect("stops");
}

async fn list(app: &TestApp, query: &str) -> (u16, Value) {
    admin(
        app,
        "GET",
        &format!("/admin/models/m/quarantine{query}"),
        None,
    )
    .await
}

/// Without a guard the quarantine routes say so.
#[tokio::test]
async fn a_model_without_a_guard_answers_409() {
    let app =
        spawn_app("[[models]]\nname = \"m\"\ntask = \"binary\"\n[models.guard]\nenabled = false")
            .await;
    let (status, body) = admin(&app, "GET", "/admin/models/m/quarantine", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("guard_disabled")),
        "{body}"
    );
    let (status, _) = admin(
        &app,
        "POST",
        "/admin/models/m/quarantine/release",
        Some(json!({ "all": true })),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(app.info("m").await["guard"]["enabled"], false);
    app.stop().await.expect("stops");
}

/// One client, and another source sending one example per 1,000: the
/// client keeps learning (a trickle does not make a second active source;
/// the attack found 10,000 of its examples waiting and 9,000 quarantined).
#[tokio::test]
async fn a_trickle_from_a_second_source_does_not_stall_the_only_client() {
    let app = spawn_app("[[models]]\nname = \"m\"\ntask = \"binary\"").await;
    let rows = dataset("elec2");
    for (i, chunk) in rows[..20_000].chunks(500).enumerate() {
        let examples: Vec<Value> = chunk
            .iter()
            .map(|r| json!({ "features": r["features"], "label": r["label"] }))
            .collect();
        let (status, body) = app
            .feedback("m", json!({ "examples": examples, "source": "crm" }))
            .await;
        assert_eq!(status, 202, "{body}");
        if i % 2 == 0 {
            let one = json!({ "features": chunk[0]["features"], "label": chunk[0]["label"], "source": "x" });
            assert_eq!(app.feedback("m", one).await.0, 202);
        }
    }
    wait_processed(&app, "m").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = app.info("m").await;
        let trained = info["examples_trained"].as_u64().unwrap_or(0);
        if trained >= 19_900 {
            assert!(info["guard"]["waiting"].as_u64() < Some(100), "{info}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the only client is held back: {trained} of 20,020 trained: {}",
            info["guard"]
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.stop().await.expect("stops");
}

/// Self-declared names beyond the table share `other`: together beyond its
/// burst they can never pass, and are told so (422), not to retry (429).
#[tokio::test]
async fn names_folded_into_other_beyond_its_burst_answer_exceeds_burst() {
    let app = spawn_app(
        "[[models]]\nname = \"m\"\ntask = \"binary\"\n[models.guard]\nrate = 10.0\nburst = 20\nmax_sources = 10",
    )
    .await;
    let e = |s: String| json!({ "features": {"a": 1.0}, "label": 1, "source": s });
    let fill: Vec<Value> = (0..10).map(|i| e(format!("n{i}"))).collect();
    assert_eq!(app.feedback("m", json!({ "examples": fill })).await.0, 202);
    let many: Vec<Value> = (0..50).map(|i| e(format!("z{i}"))).collect();
    let (status, body) = app.feedback("m", json!({ "examples": many })).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("exceeds_burst")),
        "{body}"
    );
    app.stop().await.expect("stops");
}
