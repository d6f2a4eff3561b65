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
