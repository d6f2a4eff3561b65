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
