//! Progressive (test-then-train) quality on the four vendored streams.
//!
//! 1. In process, for each optimizer at a few learning rates, at minibatch
//!    1 (every prediction sees every earlier example, River's protocol)
//!    and 32 (the server default: a prediction lags up to 32 examples).
//!    This is the table behind the default optimizer in config/eddy.toml.
//! 2. Over HTTP against the real server (minibatch_size = 1): predict, then
//!    label by prediction_id, row by row, waiting for each label to be
//!    trained before the next predict.
//!
//! Run: `cargo bench --bench progressive` (about a minute).

use std::sync::Arc;
use std::time::Instant;

use eddy::config::{Config, ModelConfig};
use eddy::learn::eval::{Scores, prequential};
use eddy::learn::{Example, FeatureHasher, Learner, OptimizerConfig, OptimizerKind, Params};
use serde::Deserialize;

mod common;
#[path = "../tests/api/streams.rs"]
mod streams;
use serde_json::{Value, json};
use streams::dataset;

struct Stream {
    name: &'static str,
    model: &'static str,
    regression: bool,
    river: f64,
}

const STREAMS: &[Stream] = &[
    Stream {
        name: "elec2",
        model: "task = \"binary\"",
        regression: false,
        river: 0.8165,
    },
    Stream {
        name: "phishing",
        model: "task = \"binary\"",
        regression: false,
        river: 0.8928,
    },
    Stream {
        name: "image_segments",
        model: "task = \"multiclass\"\nclasses = [\"path\", \"foliage\", \"sky\", \"grass\", \"brickface\", \"cement\", \"window\"]",
        regression: false,
        river: 0.7957,
    },
    Stream {
        name: "trump_approval",
        model: "task = \"regression\"",
        regression: true,
        river: 1.3145,
    },
];

fn model_config(s: &Stream, extra: &str) -> ModelConfig {
    Config::from_toml_over_default(&format!(
        "[[models]]\nname = \"{}\"\n{}\n{extra}",
        s.name, s.model
    ))
    .expect("config")
    .models
    .remove(0)
}

fn figure(s: &Stream, scores: &Scores) -> f64 {
    if s.regression {
        scores.mae()
    } else {
        scores.accuracy()
    }
}

fn in_process(
    s: &Stream,
    rows: &[Value],
    optimizer: OptimizerConfig,
    minibatch: usize,
) -> (f64, f64) {
    let m = model_config(s, "");
    let space = Arc::new(m.label_space().expect("space"));
    let hasher = FeatureHasher::new(m.hash_bits);
    let examples: Vec<Example> = rows
        .iter()
        .map(|r| Example::from_json(&r.to_string(), &hasher, &space).expect("example"))
        .collect();
    let mut learner = Learner::new(Params::new(space, m.hash_bits), optimizer);
    let t = Instant::now();
    let scores = prequential(
        &mut learner,
        examples.iter().map(|e| (&e.features, e.target)),
        minibatch,
    );
    let rate = examples.len() as f64 / t.elapsed().as_secs_f64();
    (figure(s, &scores), rate)
}

async fn over_http(s: &Stream, rows: &[Value]) -> (f64, f64) {
    let config = Config::from_toml_over_default(&format!(
        "[[models]]\nname = \"m\"\n{}\n[models.training]\nminibatch_size = 1",
        s.model
    ))
    .expect("config");
    let server = common::start(config).await;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let space = model_config(s, "").label_space().expect("space");
    let mut scores = Scores::default();
    let t = Instant::now();
    for (i, row) in rows.iter().enumerate() {
        let p = common::post_json(
            &client,
            &format!("{base}/v1/models/m/predict"),
            &json!({ "features": row["features"] }),
        )
        .await;
        let out = if s.regression {
            eddy::learn::Output::Value(p["value"].as_f64().expect("value"))
        } else {
            let probs = (0..space.n_classes())
                .map(|k| p["probabilities"][space.class_key(k)].as_f64().expect("p") as f32)
                .collect();
            eddy::learn::Output::Probabilities(probs)
        };
        let label = eddy::learn::RawLabel::deserialize(&row["label"]).expect("label");
        scores.add(&out, space.target(&label).expect("label"));
        let r = client
            .post(format!("{base}/v1/models/m/feedback"))
            .json(&json!({ "prediction_id": p["prediction_id"], "label": row["label"] }))
            .send()
            .await
            .expect("feedback");
        assert_eq!(r.status(), 202);
        loop {
            let info: Value = client
                .get(format!("{base}/v1/models/m"))
                .send()
                .await
                .expect("info")
                .json()
                .await
                .expect("json");
            if info["version_examples_trained"].as_u64() >= Some(i as u64 + 1) {
                break;
            }
        }
    }
    let rate = rows.len() as f64 / t.elapsed().as_secs_f64();
    server.stop().await;
    (figure(s, &scores), rate)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let data: Vec<Vec<Value>> = STREAMS.iter().map(|s| dataset(s.name)).collect();
    println!("in process: accuracy (MAE for trump_approval) at minibatch 1 / 32");
    let candidates = [
        (OptimizerKind::Sgd, 0.01),
        (OptimizerKind::Sgd, 0.05),
        (OptimizerKind::Adagrad, 0.1),
        (OptimizerKind::Adagrad, 0.5),
        (OptimizerKind::Adagrad, 0.8),
        (OptimizerKind::Adam, 0.01),
        (OptimizerKind::Adam, 0.02),
        (OptimizerKind::Ftrl, 0.5),
    ];
    print!("{:<16}", "optimizer");
    for s in STREAMS {
        print!("{:>22}", s.name);
    }
    println!();
    for (kind, lr) in candidates {
        let optimizer = OptimizerConfig {
            kind,
            learning_rate: lr,
            l1: 0.0,
            l2: 0.0,
        };
        print!("{:<16}", format!("{kind:?} {lr}").to_lowercase());
        for (s, rows) in STREAMS.iter().zip(&data) {
            let (one, _) = in_process(s, rows, optimizer, 1);
            let (lagged, _) = in_process(s, rows, optimizer, 32);
            print!("{:>22}", format!("{one:.4} / {lagged:.4}"));
        }
        println!();
    }
    print!("{:<16}", "River (1 / 32)");
    for (s, lagged) in STREAMS.iter().zip(["0.7944", "0.8856", "0.7866", "5.1501"]) {
        print!("{:>22}", format!("{:.4} / {lagged}", s.river));
    }
    println!();

    println!(
        "\ndefault model, minibatch 1: in process vs over HTTP (predict, label by id, row by row)"
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (s, rows) in STREAMS.iter().zip(&data) {
        let default = model_config(s, "").optimizer;
        let (ours, rate) = in_process(s, rows, default, 1);
        let (http, http_rate) = rt.block_on(over_http(s, rows));
        println!(
            "{:<16} in process {ours:.4} ({rate:.0} ex/s)   over HTTP {http:.4} ({http_rate:.0} rows/s)   River {:.4}",
            s.name, s.river
        );
    }
}
