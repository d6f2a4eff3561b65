//! The safety loop end to end over HTTP: a label attack is refused and its
//! source blamed, a broken upstream's damage is rolled back, a concept
//! drift is learned without rollbacks; and in process, through the real
//! trainer, clean Elec2 and a SEA drift stream see no rollback at all.
//! The monitor is the second line of defence: where these tests attack a
//! model, its ingestion guard (the first, `tests/api/guard.rs`) is off, so
//! that what they show is the monitor's doing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use eddy::batch::eval::ROW_INTERVAL;
use eddy::config::Config;
use eddy::learn::{Example, FeatureHasher};
use eddy::serving::ManualClock;
use eddy::serving::Trainer;
use eddy::serving::queue::Feedback;
use serde_json::{Value, json};

use crate::helpers::{TestApp, dataset, events, sample, scrape, spawn_app};
use crate::streams::{sea, stationary};

/// Rows sent per round: one minibatch of the default configuration.
const CHUNK: usize = 32;

/// Predicts `rows` (scoring them before their labels are sent), sends them
/// as feedback from `source`, optionally followed by `copies` label-inverted
/// copies from `attacker`, and waits until the trainer has dealt with all
/// of it. Returns how many of the rows the live model got right.
async fn round(
    app: &TestApp,
    model: &str,
    rows: &[Value],
    source: &str,
    attacker: Option<(&str, usize)>,
) -> usize {
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
    let predictions = body["predictions"].as_array().expect("predictions");
    let correct = predictions
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
    if let Some((name, copies)) = attacker {
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
            .feedback(model, json!({ "examples": inverted, "source": name }))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    wait_processed(app, model).await;
    correct
}

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

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| *k != "promotion")
        .collect()
}

const TWO_MODELS: &str = r#"
[[models]]
name = "attacked"
task = "binary"
[models.monitor]
trusted_sources = ["trusted"]
[models.guard]
enabled = false

[[models]]
name = "clean"
task = "binary"
[models.monitor]
trusted_sources = ["trusted"]
[models.guard]
enabled = false
"#;

/// Elec2 rows 0-12,000 from a trusted source to two identical models; from
/// row 6,000 an attacker resends each current example to one of them three
/// times with its label inverted.
#[tokio::test]
async fn a_label_attack_is_refused_and_its_source_blamed() {
    let app = spawn_app(TWO_MODELS).await;
    let rows = dataset("elec2");
    let (attack_from, end) = (6_000, 12_000);
    let (mut hit_attacked, mut hit_clean, mut scored) = (0, 0, 0);
    for (i, chunk) in rows[..end].chunks(CHUNK).enumerate() {
        let under_attack = i * CHUNK >= attack_from;
        let attacker = under_attack.then_some(("attacker", 3));
        let a = round(&app, "attacked", chunk, "trusted", attacker).await;
        let c = round(&app, "clean", chunk, "trusted", None).await;
        if under_attack {
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
        "trusted accuracy under attack {acc_attacked:.4} vs unattacked {acc_clean:.4}"
    );

    let attacked = events(&app, "attacked").await;
    let k = kinds(&attacked);
    assert!(
        k.contains(&"gate_refused") || k.contains(&"rollback"),
        "no rollback or refusal: {attacked:?}"
    );
    let blamed = attacked
        .iter()
        .find(|e| e["kind"] == "source_blamed")
        .unwrap_or_else(|| panic!("no source blamed: {attacked:?}"));
    assert_eq!(blamed["figures"]["source"], "attacker");
    let detection = attacked
        .iter()
        .find(|e| e["kind"] == "gate_refused" || e["kind"] == "rollback")
        .expect("detection");
    let reason = detection["reason"].as_str().expect("reason");
    assert!(
        reason.contains("candidate was worse than") && reason.contains("attacker"),
        "{reason}"
    );
    assert!(
        detection["figures"]["rolled_back_from"].is_u64(),
        "{detection}"
    );
    assert_eq!(
        kinds(&events(&app, "clean").await),
        Vec::<&str>::new(),
        "the unattacked model never rolls back"
    );

    let info = app.info("attacked").await;
    assert_eq!(
        info["monitor"]["blamed_sources"],
        json!(["attacker"]),
        "{info}"
    );
    assert!(
        info["monitor"]["excluded_examples"].as_u64() > Some(1000),
        "{info}"
    );
    assert!(info["last_good_version"].is_u64(), "{info}");
    assert!(
        info["quality"]["live"]["accuracy"].as_f64() > Some(0.6),
        "{info}"
    );
    assert!(info["quality"]["baseline"]["accuracy"].is_f64(), "{info}");

    let text = scrape(&app).await;
    let detections = sample(
        &text,
        r#"eddy_rollbacks_total{model="attacked",reason="gate_refused"}"#,
    ) + sample(
        &text,
        r#"eddy_rollbacks_total{model="attacked",reason="degraded"}"#,
    );
    assert!(detections >= 1.0, "{text}");
    assert_eq!(
        sample(
            &text,
            r#"eddy_source_blamed{model="attacked",source="attacker"}"#
        ),
        1.0
    );
    assert!(sample(&text, r#"eddy_feedback_excluded_total{model="attacked"}"#) > 1000.0);
    assert_eq!(
        sample(
            &text,
            r#"eddy_rollbacks_total{model="clean",reason="gate_refused"}"#
        ) + sample(
            &text,
            r#"eddy_rollbacks_total{model="clean",reason="degraded"}"#
        ),
        0.0
    );

    // An operator takes the source back; a second readmit finds nothing.
    let url = format!(
        "http://{}/admin/models/attacked/sources/attacker/readmit",
        app.admin
    );
    let r = app.client.post(&url).send().await.expect("readmit");
    assert_eq!(r.status(), 200);
    let r = app.client.post(&url).send().await.expect("readmit");
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "source_not_blamed");
    assert_eq!(
        events(&app, "attacked")
            .await
            .last()
            .map(|e| e["kind"].clone()),
        Some(json!("source_readmitted"))
    );
    assert_eq!(
        app.info("attacked").await["monitor"]["blamed_sources"],
        json!([])
    );
    app.stop().await.expect("clean stop");
}

/// One upstream (no sources, nothing trusted) sends feature `a` on a wrong
/// scale for 1,000 rows, then correctly again. Its statistics would stay
/// polluted: the monitor finds the damage on ordinary traffic, rolls back
/// to last-good and drops (does not replay) what was learned since, since
/// no source can be blamed.
#[tokio::test]
async fn a_broken_upstreams_damage_is_rolled_back() {
    let app = spawn_app(
        r#"
[[models]]
name = "guarded"
task = "binary"
[models.guard]
enabled = false

[[models]]
name = "unguarded"
task = "binary"
[models.monitor]
enabled = false
[models.guard]
enabled = false
"#,
    )
    .await;
    let rows = stationary(10_000, 3, 4_000..5_000);
    let (mut guarded, mut unguarded, mut scored) = (0, 0, 0);
    for (i, chunk) in rows.chunks(CHUNK).enumerate() {
        let g = round(&app, "guarded", chunk, "upstream", None).await;
        let u = round(&app, "unguarded", chunk, "upstream", None).await;
        if i * CHUNK >= 6_000 {
            guarded += g;
            unguarded += u;
            scored += chunk.len();
        }
    }
    let (g, u) = (
        guarded as f64 / scored as f64,
        unguarded as f64 / scored as f64,
    );
    assert!(g > 0.85 && g > u + 0.1, "guarded {g:.4}, unguarded {u:.4}");
    let ev = events(&app, "guarded").await;
    let detection = ev
        .iter()
        .find(|e| e["kind"] == "gate_refused" || e["kind"] == "rollback")
        .unwrap_or_else(|| panic!("not detected: {ev:?}"));
    let reason = detection["reason"].as_str().expect("reason");
    assert!(
        reason.contains("no source could be blamed") && reason.contains("dropped"),
        "{reason}"
    );
    assert!(!ev.iter().any(|e| e["kind"] == "source_blamed"), "{ev:?}");
    let info = app.info("guarded").await;
    assert!(
        info["monitor"]["rollbacks"]["gate_refused"]
            .as_u64()
            .unwrap_or(0)
            + info["monitor"]["rollbacks"]["degraded"]
                .as_u64()
                .unwrap_or(0)
            >= 1,
        "{info}"
    );
    assert!(events(&app, "unguarded").await.is_empty());
    assert_eq!(
        app.info("unguarded").await["last_good_version"],
        Value::Null
    );
    app.stop().await.expect("clean stop");
}

/// Abrupt concept drift over HTTP: both versions get worse together, so
/// nothing is rolled back, and the live model adapts to each new concept.
#[tokio::test]
async fn concept_drift_is_learned_without_rollbacks() {
    let app = spawn_app("").await;
    let n = 16_000;
    let rows = sea(n, 11);
    let quarter = n / 4;
    let mut tail_hits = [0usize; 4];
    for (i, chunk) in rows.chunks(CHUNK).enumerate() {
        let hits = round(&app, "demo", chunk, "sensor", None).await;
        let row = i * CHUNK;
        if row % quarter >= quarter / 2 {
            tail_hits[row / quarter] += hits;
        }
    }
    for (q, hits) in tail_hits.iter().enumerate() {
        let acc = *hits as f64 / (quarter / 2) as f64;
        assert!(
            acc > 0.8,
            "concept {q}: accuracy {acc:.3} on its second half"
        );
    }
    let ev = events(&app, "demo").await;
    assert_eq!(kinds(&ev), Vec::<&str>::new(), "{ev:?}");
    assert!(
        ev.iter().any(|e| e["kind"] == "promotion"),
        "last-good moves on: {ev:?}"
    );
    app.stop().await.expect("clean stop");
}

/// In process, through the real trainer and monitor (deterministic): the
/// whole of clean Elec2 and a longer SEA drift stream roll back nothing.
#[test]
fn clean_streams_see_no_rollback_in_process() {
    let model = |extra: &str| {
        Config::from_toml_over_default(&format!(
            "[[models]]\nname = \"m\"\ntask = \"binary\"\n[models.monitor]\n{extra}"
        ))
        .expect("config")
        .models
        .remove(0)
    };
    for (name, rows) in [("elec2", dataset("elec2")), ("sea", sea(40_000, 7))] {
        let m = model("");
        let clock = Arc::new(ManualClock::default());
        let (mut trainer, queue, _commands) =
            Trainer::in_memory(&m, clock.clone()).expect("trainer");
        let hasher = FeatureHasher::new(m.hash_bits);
        let space = m.label_space().expect("space");
        let mut correct = 0usize;
        for row in &rows {
            clock.advance(ROW_INTERVAL);
            let e = Example::from_json(&row.to_string(), &hasher, &space).expect("example");
            let p = trainer.live().params.predict(&e.features);
            correct += usize::from(p.argmax() == e.target.class());
            let fb = Feedback::labelled(e.features, e.target, None);
            queue
                .reserve(1)
                .expect("room")
                .send(vec![fb])
                .expect("appended");
            if queue.depth() >= CHUNK {
                trainer.step(CHUNK);
            }
        }
        while trainer.step(CHUNK) > 0 {}
        let s = &trainer.stats();
        let acc = correct as f64 / rows.len() as f64;
        assert_eq!(
            (
                s.rollbacks_degraded.load(Ordering::Relaxed),
                s.rollbacks_gate.load(Ordering::Relaxed)
            ),
            (0, 0),
            "{name}: {:?}",
            trainer.events().all()
        );
        assert!(s.promotions.load(Ordering::Relaxed) >= 5, "{name}");
        assert!(acc > 0.78, "{name}: prequential accuracy {acc:.4}");
    }
}

/// What each `on_degrade` does after a label attack is detected, in
/// process: replay re-learns the trusted examples without the blamed
/// source; pause stops learning (and holds what it took); continue goes on
/// without replaying.
#[test]
fn on_degrade_replays_pauses_or_continues() {
    for mode in ["replay", "pause", "continue"] {
        let m = Config::from_toml_over_default(&format!(
            "[[models]]\nname = \"m\"\ntask = \"binary\"\n[models.guard]\nenabled = false\n[models.monitor]\ntrusted_sources = [\"trusted\"]\non_degrade = \"{mode}\""
        ))
        .expect("config")
        .models
        .remove(0);
        let clock = Arc::new(ManualClock::default());
        let (mut trainer, queue, _commands) =
            Trainer::in_memory(&m, clock.clone()).expect("trainer");
        let hasher = FeatureHasher::new(m.hash_bits);
        let space = m.label_space().expect("space");
        let feedback = |e: &Example, label: usize, source: &str| {
            Feedback::labelled(
                e.features.clone(),
                eddy::learn::Target::Class(label),
                Some(source.into()),
            )
        };
        for (i, row) in stationary(8_000, 5, 0..0).iter().enumerate() {
            clock.advance(ROW_INTERVAL);
            let e = Example::from_json(&row.to_string(), &hasher, &space).expect("example");
            let y = e.target.class().expect("class");
            let mut items = vec![feedback(&e, y, "trusted")];
            if i >= 4_000 {
                items.extend((0..3).map(|_| feedback(&e, 1 - y, "attacker")));
            }
            queue
                .reserve(items.len())
                .expect("room")
                .send(items)
                .expect("appended");
            while queue.depth() >= CHUNK {
                trainer.step(CHUNK);
            }
        }
        let events = trainer.events().all();
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        use eddy::serving::events::EventKind as K;
        assert!(kinds.contains(&K::SourceBlamed), "{mode}: {events:?}");
        let detection = events
            .iter()
            .find(|e| matches!(e.kind, K::GateRefused | K::Rollback))
            .unwrap_or_else(|| panic!("{mode}: {events:?}"));
        let paused = trainer.stats().paused.load(Ordering::Relaxed);
        match mode {
            "replay" => {
                assert!(
                    detection.reason.contains("replayed"),
                    "{}",
                    detection.reason
                );
                assert!(detection.figures["replayed"].as_u64() > Some(0));
                assert!(!paused);
            }
            "pause" => {
                assert!(paused, "learning stopped");
                assert!(kinds.contains(&K::Paused), "{events:?}");
                assert!(trainer.held() > 0, "what was taken is kept for the resume");
            }
            _ => {
                assert!(detection.reason.contains("dropped"), "{}", detection.reason);
                assert_eq!(detection.figures["replayed"], 0);
                assert!(!paused);
            }
        }
    }
}

#[tokio::test]
async fn a_reference_set_is_loaded_or_start_up_says_why_not() {
    let dir = tempfile::tempdir().expect("dir");
    let model = |path: &std::path::Path| {
        format!(
            "[[models]]\nname = \"demo\"\ntask = \"binary\"\n[models.monitor]\nreference_set = \"{}\"",
            path.display()
        )
    };
    let good = dir.path().join("reference.jsonl");
    let lines: Vec<String> = (0..50)
        .map(|i| json!({ "features": { "x": i }, "label": i % 2 }).to_string())
        .collect();
    std::fs::write(&good, lines.join("\n")).expect("write");
    let app = crate::helpers::spawn_app(&model(&good)).await;
    assert_eq!(app.info("demo").await["monitor"]["enabled"], true);
    app.stop().await.expect("clean stop");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!("{}\n{{\"features\": {{}}, \"label\": 1}}\n", lines[0]),
    )
    .expect("write");
    for (path, says) in [
        (dir.path().join("missing.jsonl"), "cannot open"),
        (bad, "line 2"),
    ] {
        let config = crate::helpers::config(&model(&path), dir.path());
        let err = eddy::app::App::build(config).await.err().expect("refused");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("models[demo].monitor.reference_set") && msg.contains(says),
            "{msg}"
        );
    }
}
