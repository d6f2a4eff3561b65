//! Micro-benchmarks of the hot paths on an Elec2-sized example (6 numeric
//! features) and 2^18 weights: parsing and hashing a feature object,
//! predicting, one training step, and publishing a version (copy-on-write
//! blocks versus copying every weight); predict, a step and a publish for
//! AdaGrad at 0.8 and for `auto` (the default) side by side.
//!
//! Run: `cargo bench --bench learn`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use eddy::batch::shuffle::ShuffleBuffer;
use eddy::learn::blocked::Blocked;
use eddy::learn::{
    Example, Feature, FeatureHasher, FeatureVec, LabelSpace, Learner, OptimizerConfig,
    OptimizerKind, Params, RawFeatures, Target, TaskKind,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The allocator the `eddy` binary uses, so allocation-heavy passes cost
/// here what they cost there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &str = r#"{"period":0.021277,"nswprice":0.051699,"nswdemand":0.415055,"vicprice":0.003467,"vicdemand":0.422915,"transfer":0.414912}"#;

fn example(i: usize) -> FeatureVec {
    let v = i as f64 * 0.001;
    let text = format!(
        r#"{{"period":{v},"nswprice":{},"nswdemand":{},"vicprice":0.003467,"vicdemand":{},"transfer":0.414912}}"#,
        v * 0.5,
        1.0 - v,
        v * v
    );
    let raw: RawFeatures = serde_json::from_str(&text).expect("json");
    FeatureHasher::new(18).hash(&raw).expect("features")
}

fn trained_learner() -> Learner {
    trained_with(OptimizerConfig {
        kind: OptimizerKind::Adagrad,
        ..OptimizerConfig::default()
    })
}

fn trained_with(optimizer: OptimizerConfig) -> Learner {
    let space = Arc::new(LabelSpace::new(TaskKind::Binary, vec![]).expect("space"));
    let mut l = Learner::new(Params::new(space, 18), optimizer);
    for i in 0..1000 {
        l.learn_one(&example(i), Target::Class(i % 2));
    }
    l
}

fn benches(c: &mut Criterion) {
    let hasher = FeatureHasher::new(18);
    c.bench_function("parse_and_hash_6_features", |b| {
        b.iter(|| {
            let raw: RawFeatures = serde_json::from_str(black_box(BODY)).expect("json");
            black_box(hasher.hash(&raw).expect("features"))
        })
    });

    let mut learner = trained_learner();
    let x = example(7);
    c.bench_function("predict_binary_2^18", |b| {
        b.iter(|| black_box(learner.params().predict(black_box(&x))))
    });

    c.bench_function("learn_one_binary_2^18", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            learner.learn_one(black_box(&x), Target::Class(i % 2))
        })
    });

    // Publishing: what the trainer pays per version. Copy-on-write: clone
    // the block pointers, then the next minibatch of 32 copies the blocks it
    // touches. Full copy: every weight and statistic duplicated.
    let batch: Vec<FeatureVec> = (0..32).map(example).collect();
    c.bench_function("publish_cow_then_minibatch_32", |b| {
        b.iter(|| {
            let published = learner.params().clone();
            for (i, x) in batch.iter().enumerate() {
                learner.learn_one(x, Target::Class(i % 2));
            }
            black_box(published)
        })
    });
    c.bench_function("publish_full_copy_then_minibatch_32", |b| {
        b.iter(|| {
            let p = learner.params();
            let weights = Blocked::from_vec(p.weights.rows(), p.weights.cols(), p.weights.to_vec());
            let scaler = Blocked::from_vec(p.scaler.rows(), p.scaler.cols(), p.scaler.to_vec());
            for (i, x) in batch.iter().enumerate() {
                learner.learn_one(x, Target::Class(i % 2));
            }
            black_box((weights, scaler))
        })
    });
    c.bench_function("minibatch_32_without_publish", |b| {
        b.iter(|| {
            for (i, x) in batch.iter().enumerate() {
                learner.learn_one(x, Target::Class(i % 2));
            }
        })
    });

    // The same three for `auto` (three candidates mixed into the
    // published weights), with the publish as the trainer does it: the
    // weights for the new version and a clone of the learner (its
    // candidates' table) for the trainer's copy of the live version.
    let mut auto = trained_with(OptimizerConfig::default());
    c.bench_function("auto_predict_binary_2^18", |b| {
        b.iter(|| black_box(auto.params().predict(black_box(&x))))
    });
    c.bench_function("auto_learn_one_binary_2^18", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            auto.learn_one(black_box(&x), Target::Class(i % 2))
        })
    });
    for (name, l) in [("adagrad", &mut learner), ("auto", &mut auto)] {
        c.bench_function(
            &format!("{name}_publish_as_trainer_then_minibatch_32"),
            |b| {
                b.iter(|| {
                    let published = (l.params().clone(), l.clone());
                    l.params_mut().weights.take_touched();
                    for (i, x) in batch.iter().enumerate() {
                        l.learn_one(x, Target::Class(i % 2));
                    }
                    black_box(published)
                })
            },
        );
    }
}

/// One batch-training pass over 100,000 Elec2-sized examples, allocated
/// one after another as the reader allocates them, through the shuffle
/// buffer into `learn_one`: what `eddy train`'s trainer thread does per
/// row, in file order and shuffled.
fn shuffled_pass(c: &mut Criterion) {
    let template = example(3);
    let rows = |n: usize| -> Vec<Example> {
        (0..n)
            .map(|i| {
                let mut features = Vec::with_capacity(template.features.len());
                for f in &template.features {
                    features.push(Feature {
                        value: f.value + (i % 97) as f64 * 0.01,
                        ..*f
                    });
                }
                Example {
                    features: FeatureVec { features },
                    target: Target::Class(i % 2),
                }
            })
            .collect()
    };
    let mut group = c.benchmark_group("train_pass_100k");
    group.sample_size(20);
    for buffer in [0, 4096, 10_000, 30_000] {
        group.bench_function(format!("shuffle_buffer_{buffer}"), |b| {
            let mut learner = trained_learner();
            let mut rng = StdRng::seed_from_u64(1);
            b.iter_batched(
                || rows(100_000),
                |examples| {
                    let mut shuffle = ShuffleBuffer::new(buffer, usize::MAX);
                    for e in examples {
                        shuffle.push(e, &mut rng, |e| learner.learn_one(&e.features, e.target));
                    }
                    shuffle.drain(&mut rng, |e| learner.learn_one(&e.features, e.target));
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(learn, benches, shuffled_pass);
criterion_main!(learn);
