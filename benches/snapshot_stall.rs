//! How long a snapshot stops the trainer, at `hash_bits` 22 and 24: before
//! the writer thread (the trainer encoded and fsynced the snapshot itself,
//! as `snapshot(true)` still does for shutdown) and after (it hands
//! copy-on-write clones to the writer, `snapshot(false)`). The model has
//! learned examples spread over the whole table, so every block is
//! allocated and the snapshot is full size.
//!
//! `cargo bench --bench snapshot_stall` (ROUNDS=5 by default; BITS=22,24).
//! Prints per round and the medians, in milliseconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy::config::Config;
use eddy::learn::{FeatureHasher, Learner, Params, RawFeatures, Target};
use eddy::persist::SnapshotStore;
use eddy::serving::monitor::Monitor;
use eddy::serving::queue::{Feedback, memory_channel};
use eddy::serving::trainer::SnapshotPolicy;
use eddy::serving::{ManualClock, ModelStore, Trainer, TrainerParts};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let bits: Vec<u8> = std::env::var("BITS")
        .unwrap_or_else(|_| "22,24".into())
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    for bits in bits {
        let m = Config::from_toml_over_default(&format!(
            "[[models]]\nname = \"m\"\ntask = \"binary\"\nhash_bits = {bits}"
        ))
        .expect("config")
        .models
        .remove(0);
        let dir = tempfile::tempdir().expect("dir");
        let space = Arc::new(m.label_space().expect("space"));
        let learner = Learner::new(Params::new(space, m.hash_bits), m.optimizer);
        let store = Arc::new(ModelStore::new(learner.params().clone()));
        let (queue, stream) = memory_channel(m.training.queue_capacity.get());
        let (_tx, commands) = tokio::sync::mpsc::channel(1);
        let clock = Arc::new(ManualClock::default());
        let mut trainer = Trainer::new(TrainerParts {
            model: Arc::from("m"),
            monitor: Monitor::fresh(&m, 1, &learner),
            learner,
            stream,
            sink: store.clone(),
            stats: Arc::default(),
            config: m.training,
            snapshots: Some(SnapshotPolicy::new(
                SnapshotStore::new(dir.path().to_owned(), 2),
                Duration::from_secs(1 << 30),
                m.clone(),
                0,
                Arc::default(),
            )),
            live: store.live(),
            commands,
            guard: None,
            events: Arc::default(),
            clock: clock.clone(),
            journal: queue.log().clone(),
            recovery: None,
        });
        // Examples whose features land all over the table.
        let hasher = FeatureHasher::new(bits);
        let rows = 1usize << bits;
        let per_example = 64;
        let examples = (rows / per_example).min(1 << 18);
        let mut sent = 0;
        for chunk in 0..examples.div_ceil(1000) {
            let items: Vec<Feedback> = (0..1000)
                .map(|i| {
                    let n = chunk * 1000 + i;
                    let text = format!(
                        "{{{}}}",
                        (0..per_example)
                            .map(|k| format!("\"f{}\": 1.0", n * per_example + k))
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                    let raw: RawFeatures = serde_json::from_str(&text).expect("json");
                    Feedback::labelled(hasher.hash(&raw).expect("hash"), Target::Class(n % 2), None)
                })
                .collect();
            sent += items.len();
            queue
                .reserve(items.len())
                .expect("room")
                .send(items)
                .expect("appended");
            while trainer.step(1000) > 0 {}
        }
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Each round writes after more learning, as a server would.
            let items: Vec<Feedback> = (0..32)
                .map(|i| {
                    let text = format!("{{\"f{i}\": 1.0}}");
                    let raw: RawFeatures = serde_json::from_str(&text).expect("json");
                    Feedback::labelled(
                        hasher.hash(&raw).expect("hash"),
                        Target::Class(round % 2),
                        None,
                    )
                })
                .collect();
            queue
                .reserve(32)
                .expect("room")
                .send(items)
                .expect("appended");
            trainer.step(32);
            let started = Instant::now();
            let file = trainer.snapshot(true).expect("snapshot").expect("written");
            let sync = started.elapsed().as_secs_f64() * 1e3;
            let started = Instant::now();
            trainer.snapshot(false).expect("handed over");
            let handoff = started.elapsed().as_secs_f64() * 1e3;
            // Let the writer finish before the next round's measurement.
            trainer.snapshot(true).expect("snapshot");
            println!(
                "hash_bits {bits} round {}: trainer stalled {sync:.1} ms writing itself (before), {handoff:.3} ms handing over (after); file {} MB",
                round + 1,
                file.bytes / (1 << 20)
            );
            before.push(sync);
            after.push(handoff);
        }
        println!(
            "hash_bits {bits} ({sent} examples learned): median stall {:.1} ms before, {:.3} ms after ({:.0}x less)",
            median(before.clone()),
            median(after.clone()),
            median(before) / median(after).max(1e-6)
        );
    }
}
