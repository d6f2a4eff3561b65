//! `POST /v1/models/{model}/feedback?wait=published`: the answer comes once
//! the examples are in a published version (or kept out of it), so a
//! client sees its own feedback at once and prequential evaluation over
//! HTTP equals the in-process one.

use serde_json::{Value, json};

use eddy::config::Config;
use eddy::learn::eval::prequential;
use eddy::learn::{Example, FeatureHasher, Learner, Params};

use crate::helpers::{TestApp, dataset, spawn_app, spawn_with};

const ONE_BY_ONE: &str = "[[models]]\nname = \"m\"\ntask = \"binary\"\nhash_bits = 14\n[models.training]\nminibatch_size = 1";

async fn feedback_waiting(app: &TestApp, query: &str, body: Value) -> (u16, Value) {
    app.post(&format!("/v1/models/m/feedback?{query}"), &body)
        .await
}

/// Predict, then feedback with `wait=published`, row by row over Elec2:
/// the accuracy of the predictions is `eddy eval --prequential`'s on the
/// same rows with minibatches of 1, within 0.3 point.
#[tokio::test]
async fn waiting_for_the_version_makes_http_prequential_match_in_process() {
    let app = spawn_app(ONE_BY_ONE).await;
    let rows = &dataset("elec2")[..2_000];
    let mut correct = 0usize;
    let mut last_version = 0;
    for r in rows {
        let p = app.predict("m", r["features"].clone()).await;
        let version = p["model_version"].as_u64().expect("version");
        assert!(
            version >= last_version,
            "a predict after the 202 sees its version"
        );
        correct += usize::from(p["label"] == r["label"]);
        let (status, body) = feedback_waiting(
            &app,
            "wait=published",
            json!({ "features": r["features"], "label": r["label"] }),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], 1, "{body}");
        if let Some(v) = body["model_version"].as_u64() {
            last_version = v;
        } else {
            assert_eq!(body["pending"], true, "{body}");
        }
    }
    let http = correct as f64 / rows.len() as f64;

    let m = Config::from_toml_over_default(ONE_BY_ONE)
        .expect("config")
        .models
        .remove(0);
    let hasher = FeatureHasher::new(m.hash_bits);
    let space = std::sync::Arc::new(m.label_space().expect("space"));
    let examples: Vec<Example> = rows
        .iter()
        .map(|r| Example::from_json(&r.to_string(), &hasher, &space).expect("example"))
        .collect();
    let mut learner = Learner::new(Params::new(space, m.hash_bits), m.optimizer);
    let offline = prequential(
        &mut learner,
        examples.iter().map(|e| (&e.features, e.target)),
        1,
    )
    .accuracy();
    eprintln!("prequential accuracy over HTTP {http:.4}, in process {offline:.4}");
    assert!(
        (http - offline).abs() <= 0.003,
        "over HTTP {http:.4}, in process {offline:.4}"
    );
    app.stop().await.expect("stops");
}

/// Paused training cannot publish: the answer says `pending` after the
/// timeout, and the examples stay accepted. Bad queries are refused
/// before anything is applied. Examples the guard quarantines count as
/// done.
#[tokio::test]
async fn a_version_that_cannot_come_in_time_is_pending_and_quarantined_examples_count_as_done() {
    let app = spawn_app(&format!(
        "{ONE_BY_ONE}\n[[models.guard.features]]\nname = \"x\"\ntype = \"numeric\"\nmax = 1.0"
    ))
    .await;
    let one = json!({ "features": { "x": 0.5 }, "label": 1 });
    let (status, body) = feedback_waiting(&app, "wait=published", one.clone()).await;
    assert_eq!(status, 202, "{body}");
    let v = body["model_version"].as_u64().expect("published");
    assert!(app.predict("m", json!({ "x": 0.5 })).await["model_version"].as_u64() >= Some(v));

    // Quarantined by the schema: nothing to publish, yet it is done.
    let (status, body) = feedback_waiting(
        &app,
        "wait=published&timeout_ms=5000",
        json!({ "features": { "x": 7.0 }, "label": 1 }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(body["model_version"].as_u64() >= Some(v), "{body}");

    for query in [
        "wait=trained",
        "timeout_ms=10",
        "wait=published&timeout_ms=-1",
    ] {
        let (status, body) = feedback_waiting(&app, query, one.clone()).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (422, &json!("invalid_request")),
            "{query}: {body}"
        );
    }

    // Other parameters (cache busters, trace ids) are ignored.
    let (status, body) = feedback_waiting(&app, "wait=published&trace=1", one.clone()).await;
    assert_eq!(status, 202, "{body}");

    let r = app
        .client
        .post(format!(
            "http://{}/admin/models/m/training/pause",
            app.admin
        ))
        .send()
        .await
        .expect("pause");
    assert_eq!(r.status(), 200);
    let accepted_before = app.info("m").await["feedback_accepted"].as_u64();
    let (status, body) = feedback_waiting(&app, "wait=published&timeout_ms=100", one).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({ "accepted": 1, "model_version": null, "pending": true })
    );
    assert_eq!(
        app.info("m").await["feedback_accepted"].as_u64(),
        accepted_before.map(|n| n + 1),
        "the examples stay accepted"
    );
    app.stop().await.expect("stops");
}

/// A request waiting for its version has handed its body's share of the
/// body budget back: clients waiting on a paused model with large bodies
/// cannot crowd out predicts (found by the hostile client of issue 13).
#[tokio::test]
async fn waiting_requests_hold_no_body_budget() {
    let app = spawn_with(ONE_BY_ONE, |c| {
        c.server.max_concurrency = 2.try_into().expect("non-zero");
        c.server.max_body_bytes = (64 * 1024).try_into().expect("non-zero");
    })
    .await;
    let (status, body) = app.admin_post("m/training/pause", "").await;
    assert_eq!(status, 200, "{body}");
    // Two bodies of 64 KiB (64 permits of 1 KiB each, rounded up): the
    // whole 128 KiB budget.
    let big = format!(
        r#"{{"features": {{"x": 1}},{}"label": 1}}"#,
        " ".repeat(65_000)
    );
    let url = format!(
        "http://{}/v1/models/m/feedback?wait=published&timeout_ms=5000",
        app.addr
    );
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let (client, url, big) = (app.client.clone(), url.clone(), big.clone());
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(big)
                    .send()
                    .await
                    .expect("sent");
                (r.status().as_u16(), r.json::<Value>().await.expect("json"))
            })
        })
        .collect();
    let beside = async {
        while app.info("m").await["feedback_accepted"].as_u64() < Some(2) {
            tokio::task::yield_now().await;
        }
        app.post("/v1/models/m/predict", &json!({ "features": { "x": 1 } }))
            .await
    };
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(4), beside)
        .await
        .expect("the waiters were accepted and a predict answered beside them");
    assert_eq!(status, 200, "a predict beside the waiters: {body}");
    let (status, body) = app.admin_post("m/training/resume", "").await;
    assert_eq!(status, 200, "{body}");
    for w in waiters {
        let (status, body) = w.await.expect("joined");
        assert_eq!(status, 202, "{body}");
    }
    app.stop().await.expect("stops");
}
