//! Progressive (test-then-train) quality: the `auto` optimizer against
//! every rate of the reference AdaGrad grid and River, on the four
//! vendored streams and two generated ones (SEA with abrupt drift; a
//! multiclass stream of many sparse numeric features with gradual drift).
//!
//! 1. In process, at minibatch 1 (every prediction sees every earlier
//!    example, River's protocol) and 32 (the server default: a prediction
//!    lags up to 32 examples). Beside each stream: the best fixed rate in
//!    hindsight, auto's gap to it in points (accuracy; for trump_approval
//!    the MAE ratio), and River's figure when `benches/progressive.sh` ran
//!    the peers first (`target/bench-streams/peers.json`).
//! 2. What auto costs against AdaGrad: training time per example (best of
//!    9 interleaved passes), predict time per example, and what a publish
//!    copies (blocks written per publish at minibatch 32, and how often
//!    the mixture weights moved and rewrote every active row).
//! 3. Over HTTP against the real server (default model, minibatch_size =
//!    1): predict, then label by prediction_id with `?wait=published`,
//!    row by row, so each next predict sees the label learned (or the
//!    version the monitor's gate keeps, when it holds a candidate).
//!
//! Run: `benches/progressive.sh` (everything), or `cargo bench --bench
//! progressive` (eddy only); `-- --write-streams` only writes the
//! generated streams for the peers script; `-- --no-http` skips part 3,
//! `-- --http-only` runs only part 3.

use std::io::Write;
use std::path::PathBuf;
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

/// The allocator the `eddy` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Stream {
    name: &'static str,
    model: &'static str,
    regression: bool,
}

const MULTICLASS_IMAGE: &str = "task = \"multiclass\"\nclasses = [\"path\", \"foliage\", \"sky\", \"grass\", \"brickface\", \"cement\", \"window\"]";
const MULTICLASS_SPARSE: &str = "task = \"multiclass\"\nclasses = [\"c0\", \"c1\", \"c2\", \"c3\", \"c4\", \"c5\", \"c6\", \"c7\"]";

const STREAMS: &[Stream] = &[
    Stream {
        name: "elec2",
        model: "task = \"binary\"",
        regression: false,
    },
    Stream {
        name: "phishing",
        model: "task = \"binary\"",
        regression: false,
    },
    Stream {
        name: "image_segments",
        model: MULTICLASS_IMAGE,
        regression: false,
    },
    Stream {
        name: "trump_approval",
        model: "task = \"regression\"",
        regression: true,
    },
    Stream {
        name: "sea",
        model: "task = \"binary\"",
        regression: false,
    },
    Stream {
        name: "sparse_multiclass",
        model: MULTICLASS_SPARSE,
        regression: false,
    },
];

/// The reference grid of issue 13: AdaGrad at these rates.
const GRID: [f64; 5] = [0.03, 0.1, 0.3, 0.8, 2.0];

fn generated_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-streams")
}

/// The stream's rows: vendored, or generated with a fixed seed.
fn rows(name: &str) -> Vec<Value> {
    match name {
        "sea" => streams::sea(40_000, 7),
        "sparse_multiclass" => streams::sparse_multiclass(20_000, 3),
        vendored => dataset(vendored),
    }
}

/// Writes the generated streams where the peers script reads them.
fn write_streams() {
    let dir = generated_dir();
    std::fs::create_dir_all(&dir).expect("dir");
    for name in ["sea", "sparse_multiclass"] {
        let file = std::fs::File::create(dir.join(format!("{name}.jsonl.gz"))).expect("file");
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        for row in rows(name) {
            writeln!(gz, "{row}").expect("write");
        }
        gz.finish().expect("gzip");
    }
}

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

fn examples(s: &Stream, rows: &[Value]) -> (ModelConfig, Vec<Example>) {
    let m = model_config(s, "");
    let space = Arc::new(m.label_space().expect("space"));
    let hasher = FeatureHasher::new(m.hash_bits);
    let examples = rows
        .iter()
        .map(|r| Example::from_json(&r.to_string(), &hasher, &space).expect("example"))
        .collect();
    (m, examples)
}

fn learner(m: &ModelConfig, optimizer: OptimizerConfig) -> Learner {
    let space = Arc::new(m.label_space().expect("space"));
    Learner::new(Params::new(space, m.hash_bits), optimizer)
}

fn in_process(
    s: &Stream,
    m: &ModelConfig,
    examples: &[Example],
    optimizer: OptimizerConfig,
    minibatch: usize,
) -> f64 {
    let mut l = learner(m, optimizer);
    let scores = prequential(
        &mut l,
        examples.iter().map(|e| (&e.features, e.target)),
        minibatch,
    );
    figure(s, &scores)
}

fn adagrad(rate: f64) -> OptimizerConfig {
    OptimizerConfig {
        kind: OptimizerKind::Adagrad,
        learning_rate: rate,
        ..OptimizerConfig::default()
    }
}

fn auto() -> OptimizerConfig {
    OptimizerConfig {
        kind: OptimizerKind::Auto,
        ..OptimizerConfig::default()
    }
}

/// River's figure for a stream at a minibatch, from the peers' JSON.
fn river(peers: &Option<Value>, stream: &str, minibatch: usize) -> Option<f64> {
    let key = if minibatch == 1 {
        "river".to_owned()
    } else {
        format!("river_minibatch{minibatch}")
    };
    peers.as_ref()?["streams"][stream][key].as_f64()
}

/// Auto's gap to `other` in points (positive: auto is behind); for MAE the
/// relative excess in percent.
fn gap(s: &Stream, auto: f64, other: f64) -> f64 {
    if s.regression {
        (auto / other - 1.0) * 100.0
    } else {
        (other - auto) * 100.0
    }
}

fn quality_table(data: &[(ModelConfig, Vec<Example>)], peers: &Option<Value>) {
    println!(
        "progressive quality, one pass: accuracy (trump_approval: MAE); gaps in points (MAE: % worse)"
    );
    print!("{:<18}{:>4}{:>9}", "stream", "mb", "auto");
    for rate in GRID {
        print!("{:>9}", format!("ada {rate}"));
    }
    println!(
        "{:>9}{:>12}{:>9}{:>12}",
        "best", "gap best", "River", "gap River"
    );
    for (s, (m, examples)) in STREAMS.iter().zip(data) {
        for minibatch in [1, 32] {
            let ours = in_process(s, m, examples, auto(), minibatch);
            let grid: Vec<f64> = GRID
                .iter()
                .map(|r| in_process(s, m, examples, adagrad(*r), minibatch))
                .collect();
            let best = if s.regression {
                grid.iter().copied().fold(f64::INFINITY, f64::min)
            } else {
                grid.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            };
            print!("{:<18}{minibatch:>4}{ours:>9.4}", s.name);
            for g in &grid {
                print!("{g:>9.4}");
            }
            print!("{best:>9.4}{:>12.2}", gap(s, ours, best));
            match river(peers, s.name, minibatch) {
                Some(r) => println!("{r:>9.4}{:>12.2}", gap(s, ours, r)),
                None => println!("{:>9}{:>12}", "-", "-"),
            }
        }
    }
}

/// Nanoseconds per example of learning the stream once, best of 9
/// passes, the two optimizers interleaved: `learn_one` alone, and as the
/// server's trainer does it, a publish every 32 examples (the weights
/// cloned for the new version and the whole learner for the trainer's
/// copy of it, so the next minibatch copies the blocks it writes).
fn training_cost(m: &ModelConfig, examples: &[Example]) -> [[f64; 2]; 2] {
    let mut best = [[f64::MAX; 2]; 2];
    for _ in 0..9 {
        for (i, optimizer) in [adagrad(0.8), auto()].into_iter().enumerate() {
            let mut l = learner(m, optimizer);
            let t = Instant::now();
            for e in examples {
                l.learn_one(&e.features, e.target);
            }
            best[0][i] = best[0][i].min(t.elapsed().as_secs_f64() * 1e9 / examples.len() as f64);
            let mut l = learner(m, optimizer);
            let t = Instant::now();
            for batch in examples.chunks(32) {
                for e in batch {
                    l.learn_one(&e.features, e.target);
                }
                let published = (l.params().clone(), l.clone());
                l.params_mut().weights.take_touched();
                std::hint::black_box(published);
            }
            best[1][i] = best[1][i].min(t.elapsed().as_secs_f64() * 1e9 / examples.len() as f64);
        }
    }
    best
}

/// Nanoseconds per predict over the stream with a trained model, best of
/// 9 interleaved passes.
fn predict_cost(m: &ModelConfig, examples: &[Example]) -> [f64; 2] {
    let trained: Vec<Params> = [adagrad(0.8), auto()]
        .into_iter()
        .map(|o| {
            let mut l = learner(m, o);
            for e in examples {
                l.learn_one(&e.features, e.target);
            }
            l.params().clone()
        })
        .collect();
    let mut best = [f64::MAX; 2];
    for _ in 0..9 {
        for (i, p) in trained.iter().enumerate() {
            let t = Instant::now();
            for e in examples {
                std::hint::black_box(p.predict(&e.features));
            }
            best[i] = best[i].min(t.elapsed().as_secs_f64() * 1e9 / examples.len() as f64);
        }
    }
    best
}

/// Blocks of weights a publish copies on average at minibatch 32 (what
/// the next minibatch writes), and how many times auto's mixture weights
/// moved and rewrote every active row.
fn publish_cost(m: &ModelConfig, examples: &[Example]) -> ([f64; 2], u64, usize) {
    let mut blocks = [0.0; 2];
    let mut moves = 0;
    let mut total_blocks = 0;
    for (i, optimizer) in [adagrad(0.8), auto()].into_iter().enumerate() {
        let mut l = learner(m, optimizer);
        total_blocks = l
            .params()
            .weights
            .rows()
            .div_ceil(eddy::learn::blocked::BLOCK_ROWS);
        let mut written = 0usize;
        let mut publishes = 0usize;
        let mut last = l.params().mixture.clone();
        for batch in examples.chunks(32) {
            let published = l.params().clone();
            for e in batch {
                l.learn_one(&e.features, e.target);
            }
            written += l.params_mut().weights.take_touched().len();
            publishes += 1;
            drop(published);
            let now = l.params().mixture.clone();
            if i == 1
                && now
                    .as_deref()
                    .map(|w| w.iter().map(|c| c.weight).collect::<Vec<_>>())
                    != last
                        .as_deref()
                        .map(|w| w.iter().map(|c| c.weight).collect::<Vec<_>>())
            {
                moves += 1;
            }
            last = now;
        }
        blocks[i] = written as f64 / publishes as f64;
    }
    (blocks, moves, total_blocks)
}

fn cost_table(data: &[(ModelConfig, Vec<Example>)]) {
    println!("\ncost of auto against adagrad 0.8, in process (best of 9 interleaved passes)");
    println!(
        "{:<18}{:>13}{:>7}{:>7}{:>16}{:>7}{:>7}{:>14}{:>7}{:>7}{:>24}{:>8}",
        "stream",
        "learn ns/ex",
        "auto",
        "ratio",
        "+publish ns/ex",
        "auto",
        "ratio",
        "predict ns/ex",
        "auto",
        "ratio",
        "weight blocks/publish",
        "auto",
    );
    for (s, (m, examples)) in STREAMS.iter().zip(data) {
        let [[la, lb], [ta, tb]] = training_cost(m, examples);
        let [pa, pb] = predict_cost(m, examples);
        let ([ba, bb], moves, total) = publish_cost(m, examples);
        println!(
            "{:<18}{la:>13.0}{lb:>7.0}{:>7.2}{ta:>16.0}{tb:>7.0}{:>7.2}{pa:>14.0}{pb:>7.0}{:>7.2}{:>24}{bb:>8.2}   mixture moved in {moves} of {} publishes",
            s.name,
            lb / la,
            tb / ta,
            pb / pa,
            format!("{ba:.2} (of {total})"),
            examples.len().div_ceil(32),
        );
    }
}

async fn over_http(s: &Stream, rows: &[Value]) -> (f64, f64, usize) {
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
    let mut pending = 0usize;
    let t = Instant::now();
    for row in rows {
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
        // Read your writes: the 202 comes once a version holding the
        // label is published (or `pending` after the timeout, when the
        // monitor's gate holds the candidate: then the next predict is
        // served by the held-back version, as a user's would be).
        let r = client
            .post(format!(
                "{base}/v1/models/m/feedback?wait=published&timeout_ms=5000"
            ))
            .json(&json!({ "prediction_id": p["prediction_id"], "label": row["label"] }))
            .send()
            .await
            .expect("feedback");
        assert_eq!(r.status(), 202);
        let answer: Value = r.json().await.expect("json");
        pending += usize::from(answer["pending"] == true);
    }
    let rate = rows.len() as f64 / t.elapsed().as_secs_f64();
    server.stop().await;
    (figure(s, &scores), rate, pending)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if args.iter().any(|a| a == "--write-streams") {
        write_streams();
        return;
    }
    let peers: Option<Value> = std::fs::read_to_string(generated_dir().join("peers.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let raw: Vec<Vec<Value>> = STREAMS.iter().map(|s| rows(s.name)).collect();
    let data: Vec<(ModelConfig, Vec<Example>)> = STREAMS
        .iter()
        .zip(&raw)
        .map(|(s, r)| examples(s, r))
        .collect();
    let http_only = args.iter().any(|a| a == "--http-only");
    if !http_only {
        quality_table(&data, &peers);
        cost_table(&data);
    }
    if args.iter().any(|a| a == "--no-http") {
        return;
    }
    println!(
        "\ndefault model (auto), minibatch 1: in process vs over HTTP (predict, label by id, row by row)"
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for ((s, rows), (m, examples)) in STREAMS.iter().zip(&raw).zip(&data).take(4) {
        let ours = in_process(s, m, examples, m.optimizer, 1);
        let (http, http_rate, pending) = rt.block_on(over_http(s, rows));
        println!(
            "{:<16} in process {ours:.4}   over HTTP {http:.4} ({http_rate:.0} rows/s; {pending} answers pending)",
            s.name
        );
    }
}
