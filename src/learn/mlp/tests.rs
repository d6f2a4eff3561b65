//! The network's behaviour: concepts a linear model cannot learn,
//! determinism, and the copy-on-write publish.

use std::sync::Arc;

use super::{Family, MlpConfig, fresh_params};
use crate::learn::{Feature, FeatureHasher};
use crate::learn::{FeatureVec, LabelSpace, Learner, OptimizerConfig, Target, TaskKind};

fn learner(family: Family, kind: TaskKind, classes: &[&str]) -> Learner {
    learner_with(family, kind, classes, &MlpConfig::default())
}

fn learner_with(family: Family, kind: TaskKind, classes: &[&str], mlp: &MlpConfig) -> Learner {
    let space = LabelSpace::new(kind, classes.iter().map(|s| s.to_string()).collect()).unwrap();
    let params = fresh_params(Arc::new(space), 12, family, mlp);
    Learner::new(params, OptimizerConfig::default())
}

fn numeric(values: &[f64]) -> FeatureVec {
    let h = FeatureHasher::new(12);
    FeatureVec {
        features: values
            .iter()
            .enumerate()
            .map(|(i, v)| Feature {
                index: h.numeric(&format!("x{i}")),
                value: *v,
                numeric: true,
            })
            .collect(),
    }
}

/// A deterministic stream of points in [0,1)^d.
fn points(n: usize, d: usize) -> impl Iterator<Item = Vec<f64>> {
    let mut s = 0x1234_5678_9abc_def0u64;
    (0..n).map(move |_| {
        (0..d)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect()
    })
}

/// Accuracy of `family` on `concept` over the last quarter of a
/// prequential pass of `n` points (what it has learned by then).
fn accuracy(family: Family, d: usize, n: usize, concept: impl Fn(&[f64]) -> bool) -> f64 {
    accuracy_over(&MlpConfig::default(), family, d, n, n / 4, concept)
}

/// Accuracy of the network over a whole prequential pass of `n` points
/// (what `eddy eval --prequential` reports: how fast it learns, too).
fn prequential_accuracy(
    mlp: &MlpConfig,
    d: usize,
    n: usize,
    concept: impl Fn(&[f64]) -> bool,
) -> f64 {
    accuracy_over(mlp, Family::Mlp, d, n, n, concept)
}

/// Accuracy over the last `tail` points of a prequential pass of `n`.
fn accuracy_over(
    mlp: &MlpConfig,
    family: Family,
    d: usize,
    n: usize,
    tail: usize,
    concept: impl Fn(&[f64]) -> bool,
) -> f64 {
    let mut l = learner_with(family, TaskKind::Binary, &[], mlp);
    let mut right = 0;
    for (i, p) in points(n, d).enumerate() {
        let x = numeric(&p);
        let y = usize::from(concept(&p));
        if i >= n - tail && l.params().predict(&x).argmax() == Some(y) {
            right += 1;
        }
        l.learn_one(&x, Target::Class(y));
    }
    right as f64 / tail as f64
}

#[test]
fn learns_xor_where_a_linear_model_cannot() {
    let xor = |p: &[f64]| (p[0] > 0.5) != (p[1] > 0.5);
    let (mlp, linear) = (
        accuracy(Family::Mlp, 2, 20_000, xor),
        accuracy(Family::Linear, 2, 20_000, xor),
    );
    assert!(mlp > 0.95, "mlp {mlp}");
    assert!(linear < 0.7, "linear {linear}");
}

#[test]
fn learns_a_conjunction_of_thresholds_better_than_a_linear_model() {
    // Agrawal-style: positive when (a < 0.4 and b > 0.6) or (a > 0.7 and c < 0.3).
    let concept = |p: &[f64]| (p[0] < 0.4 && p[1] > 0.6) || (p[0] > 0.7 && p[2] < 0.3);
    let (mlp, linear) = (
        accuracy(Family::Mlp, 4, 30_000, concept),
        accuracy(Family::Linear, 4, 30_000, concept),
    );
    assert!(mlp > 0.95, "mlp {mlp}");
    assert!(mlp - linear > 0.1, "mlp {mlp}, linear {linear}");
}

#[test]
fn crossed_grids_learn_a_small_checkerboard_the_bins_alone_miss() {
    // A 4 x 4 checkerboard on [0,1)^2, 4,000 points: each square is a
    // local 2-D boundary that no single input's bins can draw, so without
    // the grids the network needs many more examples to find it.
    let board = |p: &[f64]| ((p[0] * 4.0) as u32 + (p[1] * 4.0) as u32) % 2 == 1;
    let crossed = MlpConfig::default();
    let bins_only = MlpConfig {
        crosses: 0,
        ..crossed
    };
    let (with, without) = (
        prequential_accuracy(&crossed, 2, 4000, board),
        prequential_accuracy(&bins_only, 2, 4000, board),
    );
    assert!(with > 0.89, "crossed {with}");
    assert!(without < 0.85, "bins alone {without}");
}

#[test]
fn crosses_leave_examples_with_more_numeric_inputs_as_they_were() {
    let concept = |p: &[f64]| p[0] + p[1] > p[2] + p[3] * p[4];
    let crossed = MlpConfig::default();
    let bins_only = MlpConfig {
        crosses: 0,
        ..crossed
    };
    assert!(crossed.crosses < 5);
    assert_eq!(
        prequential_accuracy(&crossed, 5, 2000, concept),
        prequential_accuracy(&bins_only, 5, 2000, concept)
    );
}

#[test]
fn same_seed_same_stream_same_weights_bit_for_bit() {
    let run = || {
        let mut l = learner(Family::Mlp, TaskKind::Multiclass, &["a", "b", "c"]);
        for (i, p) in points(3000, 3).enumerate() {
            l.learn_one(&numeric(&p), Target::Class(i % 3));
        }
        let net = l.params().net.clone().unwrap();
        let bits = |v: &[f32]| v.iter().map(|w| w.to_bits()).collect::<Vec<_>>();
        (
            bits(&net.embedding.to_vec()),
            bits(&net.output),
            bits(&net.hidden_bias),
            bits(&l.params().weights.to_vec()),
            bits(&l.net_state().unwrap().embedding.to_vec()),
        )
    };
    assert!(run() == run());
    let other = MlpConfig {
        seed: 7,
        ..MlpConfig::default()
    };
    let space = Arc::new(LabelSpace::new(TaskKind::Binary, vec![]).unwrap());
    let a = fresh_params(space.clone(), 12, Family::Mlp, &MlpConfig::default());
    let b = fresh_params(space, 12, Family::Mlp, &other);
    assert_ne!(
        a.net.unwrap().embedding.to_vec(),
        b.net.unwrap().embedding.to_vec(),
        "the seed chooses the initial weights"
    );
}

#[test]
fn regression_finds_a_nonlinear_target_on_its_scale() {
    let mut l = learner(Family::Mlp, TaskKind::Regression, &[]);
    let f = |p: &[f64]| 1000.0 + 200.0 * (p[0] - 0.5).abs() + 50.0 * p[1];
    for p in points(30_000, 2) {
        l.learn_one(&numeric(&p), Target::Value(f(&p)));
    }
    let mut err = 0.0;
    for p in points(500, 2) {
        let crate::learn::Output::Value(v) = l.params().predict(&numeric(&p)) else {
            panic!("regression")
        };
        err += (v - f(&p)).abs() / 500.0;
    }
    assert!(err < 8.0, "mean absolute error {err}");
}

#[test]
fn a_published_copy_does_not_move_and_a_step_copies_few_blocks() {
    let mut l = learner(Family::Mlp, TaskKind::Binary, &[]);
    for p in points(200, 2) {
        l.learn_one(&numeric(&p), Target::Class(usize::from(p[0] > 0.5)));
    }
    let published = l.params().clone();
    let probe = numeric(&[0.3, 0.7]);
    let before = published.predict(&probe);
    l.learn_one(&numeric(&[0.3, 0.7]), Target::Class(1));
    let emb = &l.params().net.as_ref().unwrap().embedding;
    // Two numeric inputs, their two bins and the pair's cell in each
    // grid: at most that many blocks of rows.
    let inputs = 4 + MlpConfig::default().cross_tilings as usize;
    assert!(emb.unshared_blocks() <= inputs, "{}", emb.unshared_blocks());
    assert_eq!(published.predict(&probe), before);
    assert_ne!(l.params().predict(&probe), before);
}

#[test]
fn score_agrees_with_predict() {
    let mut l = learner(Family::Mlp, TaskKind::Multiclass, &["a", "b", "c"]);
    for (i, p) in points(500, 3).enumerate() {
        l.learn_one(&numeric(&p), Target::Class(i % 3));
    }
    for (i, p) in points(50, 3).enumerate() {
        let x = numeric(&p);
        let y = Target::Class(i % 3);
        let out = l.params().predict(&x);
        assert_eq!(l.params().score(&x, y), crate::learn::Scored::of(&out, y));
    }
    let mut b = learner(Family::Mlp, TaskKind::Binary, &[]);
    for p in points(500, 2) {
        b.learn_one(&numeric(&p), Target::Class(usize::from(p[0] > p[1])));
    }
    for p in points(50, 2) {
        let x = numeric(&p);
        let y = Target::Class(usize::from(p[0] > p[1]));
        let out = b.params().predict(&x);
        // The same probability, rounded once more on predict's path.
        let (
            crate::learn::Scored::Class {
                correct: c1,
                log_loss: l1,
            },
            crate::learn::Scored::Class {
                correct: c2,
                log_loss: l2,
            },
        ) = (b.params().score(&x, y), crate::learn::Scored::of(&out, y))
        else {
            panic!("classification")
        };
        assert!(c1 == c2 && (l1 - l2).abs() < 1e-6, "{l1} {l2}");
    }
}
