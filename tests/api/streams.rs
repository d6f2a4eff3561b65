//! Streams for tests and benchmarks (the benchmarks include this file):
//! the vendored data sets, and generated streams for the safety loop, as
//! JSON Lines values `{"features": {...}, "label": ...}`.

// Each includer uses part of it.
#![allow(dead_code)]

use std::path::Path;

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// A SEA concepts stream (Street and Kim, 2001): three features in
/// [0, 10], label `f1 + f2 <= theta`, 10% label noise; theta moves
/// abruptly at each quarter (8, 9, 7, 9.5).
pub fn sea(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let thetas = [8.0, 9.0, 7.0, 9.5];
    (0..n)
        .map(|i| {
            let f: [f64; 3] = [
                rng.random_range(0.0..10.0),
                rng.random_range(0.0..10.0),
                rng.random_range(0.0..10.0),
            ];
            let mut label = f[0] + f[1] <= thetas[i * thetas.len() / n];
            if rng.random_bool(0.1) {
                label = !label;
            }
            json!({"features": {"f1": f[0], "f2": f[1], "f3": f[2]}, "label": u8::from(label)})
        })
        .collect()
}

/// A multiclass stream with many sparse numeric features: 8 classes, 400
/// features on scales from 1 to 1000, 12 of them present per example;
/// the class is the best-scoring of linear class prototypes plus noise,
/// and the prototypes move from one set to another over the stream
/// (gradual drift).
pub fn sparse_multiclass(n: usize, seed: u64) -> Vec<Value> {
    const CLASSES: usize = 8;
    const FEATURES: usize = 400;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = |rng: &mut rand::rngs::StdRng| -> f64 {
        // Box-Muller.
        let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random_range(0.0..1.0));
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let protos = |rng: &mut rand::rngs::StdRng| -> Vec<Vec<f64>> {
        (0..CLASSES)
            .map(|_| (0..FEATURES).map(|_| normal(rng)).collect())
            .collect()
    };
    let (start, end) = (protos(&mut rng), protos(&mut rng));
    let scales: Vec<f64> = (0..FEATURES)
        .map(|_| 10f64.powf(rng.random_range(0.0..3.0)))
        .collect();
    (0..n)
        .map(|i| {
            let t = i as f64 / n as f64;
            let mut features = serde_json::Map::new();
            let mut score = [0.0f64; CLASSES];
            for _ in 0..12 {
                let j = rng.random_range(0..FEATURES);
                let x: f64 = rng.random_range(0.0..1.0);
                for (c, s) in score.iter_mut().enumerate() {
                    *s += x * ((1.0 - t) * start[c][j] + t * end[c][j]);
                }
                features.insert(format!("f{j}"), json!(x * scales[j]));
            }
            for s in score.iter_mut() {
                *s += 0.5 * rng.random_range(-1.0..1.0);
            }
            let label = (0..CLASSES)
                .max_by(|a, b| score[*a].total_cmp(&score[*b]))
                .unwrap_or(0);
            json!({"features": features, "label": format!("c{label}")})
        })
        .collect()
}

/// A stationary stream: label = [2a - b + 0.5c + noise > 0], features on
/// scales of their own; `a` arrives 1000x too large on rows `broken` (a
/// broken upstream).
pub fn stationary(n: usize, seed: u64, broken: std::ops::Range<usize>) -> Vec<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let (a, b, c): (f64, f64, f64) = (
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
            );
            let noise: f64 = rng.random_range(-0.5..0.5);
            let label = 2.0 * a - b + 0.5 * c + noise > 0.0;
            let shown = if broken.contains(&i) { a * 1000.0 } else { a };
            json!({"features": {"a": 40.0 + 5.0 * shown, "b": b * 300.0, "c": c}, "label": u8::from(label)})
        })
        .collect()
}

/// Reads one of the vendored data sets (tests/data/NAME.jsonl.gz).
pub fn dataset(name: &str) -> Vec<Value> {
    use std::io::Read;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/{name}.jsonl.gz"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .expect("gzip");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}
