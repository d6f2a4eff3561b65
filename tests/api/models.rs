//! `GET /v1/models`: every model in configuration order, or pages of
//! them in name order with a cursor that walks them all once.

use serde_json::Value;

use crate::helpers::spawn_app;

/// Five models, configured out of name order.
const MODELS: &str = r#"
[[models]]
name = "delta"
task = "binary"
hash_bits = 8
[[models]]
name = "alpha"
task = "binary"
hash_bits = 8
[[models]]
name = "echo"
task = "regression"
hash_bits = 8
[[models]]
name = "charlie"
task = "binary"
hash_bits = 8
[[models]]
name = "bravo"
task = "multiclass"
classes = ["x", "y"]
hash_bits = 8
"#;

fn names(body: &Value) -> Vec<String> {
    body["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test]
async fn models_are_listed_whole_or_by_pages() {
    let app = spawn_app(MODELS).await;
    let get = |query: &str| {
        let url = app.url(&format!("/v1/models{query}"));
        let client = app.client.clone();
        async move {
            let r = client.get(url).send().await.expect("sent");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    let (status, all) = get("").await;
    assert_eq!(status, 200);
    assert_eq!(names(&all), ["delta", "alpha", "echo", "charlie", "bravo"]);
    assert!(all.get("next").is_none(), "unpaged: no cursor");

    // Pages of two, in name order, until `next` is null.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let (status, page) = get(&query).await;
        assert_eq!(status, 200, "{page}");
        assert!(names(&page).len() <= 2);
        seen.extend(names(&page));
        match page["next"].as_str() {
            Some(next) => query = format!("?limit=2&after={next}"),
            None => {
                assert!(page["next"].is_null(), "{page}");
                break;
            }
        }
    }
    assert_eq!(seen, ["alpha", "bravo", "charlie", "delta", "echo"]);
    // A cursor need not name a model (one since removed, say).
    let (_, page) = get("?limit=10&after=bz").await;
    assert_eq!(names(&page), ["charlie", "delta", "echo"]);
    assert!(page["next"].is_null());

    for bad in ["?limit=0", "?limit=1001", "?limit=two", "?after=alpha"] {
        let (status, body) = get(bad).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    app.stop().await.expect("clean stop");
}

/// `PUT`/`DELETE /admin/models/{model}` over HTTP; status and JSON.
async fn admin(
    app: &crate::helpers::TestApp,
    method: reqwest::Method,
    model: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .client
        .request(method, format!("http://{}/admin/models/{model}", app.admin));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.expect("admin request");
    (r.status().as_u16(), r.json().await.expect("json"))
}

/// An admin change refused with this status and error code (the body in
/// the failure message).
async fn refused(
    app: &crate::helpers::TestApp,
    method: reqwest::Method,
    model: &str,
    body: Option<Value>,
    (status, code): (u16, &str),
) {
    let (got, answer) = admin(app, method, model, body).await;
    assert_eq!(
        (got, answer["error"]["code"].as_str()),
        (status, Some(code)),
        "{answer}"
    );
}

fn two_models(c: &mut eddy::config::Config) {
    c.server.max_models = std::num::NonZeroUsize::new(2).expect("2");
}

fn example(i: u32) -> Value {
    serde_json::json!({ "features": { "x": f64::from(i % 13) * 0.1, "tag": format!("t{}", i % 3) }, "label": u32::from(i % 13 > 6) })
}

/// Added at runtime: served at once, kept across a restart (predicting
/// identically), listed as such; deleted: 404 from then on, its directory
/// archived with what it learned, its metrics gone; file models refuse.
#[tokio::test]
async fn models_are_added_and_deleted_at_runtime_and_survive_a_restart() {
    use reqwest::Method;
    let dir = tempfile::tempdir().expect("dir");
    let file = "[[models]]\nname = \"fixed\"\ntask = \"binary\"\nhash_bits = 8\n";
    let app = crate::helpers::spawn_at(file, dir.path(), two_models)
        .await
        .expect("starts");
    let table = serde_json::json!({ "task": "binary", "hash_bits": 10, "training": { "minibatch_size": 8 } });

    // Refused, naming the key; nothing is left behind.
    let (status, body) = admin(
        &app,
        Method::PUT,
        "tenant-a",
        Some(serde_json::json!({ "task": "binary", "hash_bits": 99 })),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_config")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("models[tenant-a].hash_bits"),
        "{body}"
    );
    let (status, body) = admin(
        &app,
        Method::PUT,
        "tenant-a",
        Some(serde_json::json!({ "task": "binary", "training": { "minibatch_sise": 8 } })),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("minibatch_sise"),
        "{body}"
    );
    // Files that are not regular files (a device never ends, a FIFO never
    // answers) are refused at once, not read.
    for table in [
        serde_json::json!({ "task": "binary", "init_snapshot": "/dev/zero" }),
        serde_json::json!({ "task": "binary", "monitor": { "reference_set": "/dev/zero" } }),
    ] {
        let (status, body) = admin(&app, Method::PUT, "tenant-a", Some(table)).await;
        assert_eq!(status, 422, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("not a regular file"),
            "{body}"
        );
    }
    assert_eq!(app.get("/v1/models/tenant-a").await.0, 404);

    let (status, body) = admin(&app, Method::PUT, "tenant-a", Some(table.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (
            body["name"].as_str(),
            body["added_at_runtime"].as_bool(),
            body["hash_bits"].as_u64()
        ),
        (Some("tenant-a"), Some(true), Some(10))
    );
    // Served as soon as the 201 is heard.
    let probe = serde_json::json!({ "x": 0.9, "tag": "t1" });
    let before = app.predict("tenant-a", probe.clone()).await;
    assert!(
        before["probabilities"].is_object()
            || before["probabilities"].is_array()
            || before["probability"].is_number(),
        "{before}"
    );
    // The name taken (at runtime, in the file); server.max_models = 2: a
    // third is refused; a model of the file cannot be deleted.
    for (method, model, body, expected) in [
        (Method::PUT, "tenant-a", Some(&table), (409, "model_exists")),
        (Method::PUT, "fixed", Some(&table), (409, "model_exists")),
        (Method::PUT, "tenant-b", Some(&table), (409, "model_limit")),
        (Method::DELETE, "fixed", None, (409, "model_in_config")),
    ] {
        refused(&app, method, model, body.cloned(), expected).await;
    }

    let examples: Vec<Value> = (0..200).map(example).collect();
    let (status, body) = app
        .feedback("tenant-a", serde_json::json!({ "examples": examples }))
        .await;
    assert_eq!(status, 202, "{body}");
    app.wait_trained("tenant-a", 200).await;
    let (_, list) = app.get("/v1/models").await;
    assert_eq!(names(&list), ["fixed", "tenant-a"]);
    assert!(
        crate::helpers::scrape(&app)
            .await
            .contains("model=\"tenant-a\"")
    );
    let learned = app.predict("tenant-a", probe.clone()).await;
    app.stop().await.expect("stops");

    // After a restart it is back, from its snapshot, predicting the same.
    let app = crate::helpers::spawn_at(file, dir.path(), two_models)
        .await
        .expect("restarts");
    app.wait_ready().await;
    let info = app.info("tenant-a").await;
    assert_eq!(
        (
            info["added_at_runtime"].as_bool(),
            info["examples_trained"].as_u64()
        ),
        (Some(true), Some(200)),
        "{info}"
    );
    let again = app.predict("tenant-a", probe.clone()).await;
    assert_eq!(again["probabilities"], learned["probabilities"]);
    assert_eq!(again["version"], learned["version"]);

    // Deleted after more feedback: every acknowledged example is trained
    // before the answer, the model answers 404, its directory is archived.
    let more: Vec<Value> = (200..300).map(example).collect();
    let (status, body) = app
        .feedback("tenant-a", serde_json::json!({ "examples": more }))
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, deleted) = admin(&app, Method::DELETE, "tenant-a", None).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(
        deleted["feedback_accepted"].as_u64(),
        Some(100),
        "{deleted}"
    );
    assert_eq!(
        deleted["feedback_processed"].as_u64(),
        Some(100),
        "{deleted}"
    );
    assert_eq!(deleted["examples_trained"].as_u64(), Some(300), "{deleted}");
    assert_eq!(deleted["feedback_in_log"].as_u64(), Some(0), "{deleted}");
    let archived = std::path::PathBuf::from(deleted["archived_to"].as_str().expect("archived_to"));
    assert!(
        archived.starts_with(dir.path().join(".deleted")),
        "{deleted}"
    );
    assert!(
        std::fs::read_dir(&archived)
            .expect("archived")
            .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("snapshot-")))
    );
    assert!(!dir.path().join("tenant-a").exists());
    assert_eq!(app.get("/v1/models/tenant-a").await.0, 404);
    let (status, _) = app
        .post(
            "/v1/models/tenant-a/predict",
            &serde_json::json!({ "features": probe }),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = admin(&app, Method::DELETE, "tenant-a", None).await;
    assert_eq!(status, 404);
    let text = crate::helpers::scrape(&app).await;
    let left: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("model=\"tenant-a\""))
        .collect();
    assert!(left.is_empty(), "its series are gone: {left:?}");
    app.stop().await.expect("stops");
    // And it stays deleted across a restart.
    let app = crate::helpers::spawn_at(file, dir.path(), two_models)
        .await
        .expect("restarts");
    let (_, list) = app.get("/v1/models").await;
    assert_eq!(names(&list), ["fixed"]);
    app.stop().await.expect("stops");
}

/// The trainer pool's fairness, as a user sees it: with one trainer
/// thread, a model with a long backlog does not hold back another
/// model's training. The quiet model's feedback is published (waited for
/// with `wait=published`) while the busy one still has examples queued.
#[tokio::test]
async fn a_busy_model_does_not_starve_another_on_one_trainer_thread() {
    // The busy model is a network: slow to train, so its backlog lasts.
    let models = "[[models]]\nname = \"busy\"\ntask = \"binary\"\nhash_bits = 12\nfamily = \"mlp\"\n\
                  [models.training]\nqueue_capacity = 400000\n\
                  [[models]]\nname = \"quiet\"\ntask = \"binary\"\nhash_bits = 12\n";
    let app = crate::helpers::spawn_with(models, |c| {
        c.server.trainer_threads = 1;
        c.server.max_body_bytes = std::num::NonZeroUsize::new(64 << 20).expect("size");
        c.server.max_batch_instances = std::num::NonZeroUsize::new(100_000).expect("n");
    })
    .await;
    let rows = crate::helpers::dataset("elec2");
    let examples: Vec<Value> = rows
        .iter()
        .cycle()
        .take(40_000)
        .map(|r| serde_json::json!({ "features": r["features"], "label": r["label"] }))
        .collect();
    let (status, body) = app
        .feedback("busy", serde_json::json!({ "examples": examples }))
        .await;
    assert_eq!(status, 202, "{body}");
    let r = app
        .client
        .post(app.url("/v1/models/quiet/feedback?wait=published&timeout_ms=8000"))
        .json(&serde_json::json!({ "examples": examples[..10] }))
        .send()
        .await
        .expect("sent");
    let (status, body) = (r.status().as_u16(), r.json::<Value>().await.expect("json"));
    let busy_left = app.info("busy").await["queue_depth"]
        .as_u64()
        .expect("depth");
    assert_eq!(status, 202, "{body}");
    assert!(
        body["model_version"].is_u64(),
        "published, not pending: {body}"
    );
    assert!(
        busy_left > 0,
        "the busy model still had a backlog ({busy_left})"
    );
    app.stop().await.expect("stops");
}
