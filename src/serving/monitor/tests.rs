//! Unit tests of the monitor's decisions: blame, recovery, the gate.

use super::*;
use crate::learn::{FeatureHasher, LabelSpace, OptimizerConfig, RawFeatures};
use std::time::{Duration, SystemTime};

const NOW: Duration = Duration::from_secs(1);

fn x(v: f64) -> FeatureVec {
    let text = format!(r#"{{"x": {v}}}"#);
    let raw: RawFeatures = serde_json::from_str(&text).unwrap();
    FeatureHasher::new(8).hash(&raw).unwrap()
}

fn fb(v: f64, label: usize, source: &str) -> Feedback {
    Feedback::labelled(x(v), Target::Class(label), Some(source.into()))
}

/// A learner that knows `label = x > 0`.
fn trained() -> Learner {
    let space = Arc::new(LabelSpace::new(TaskKind::Binary, vec![]).unwrap());
    let mut l = Learner::new(Params::new(space, 8), OptimizerConfig::default());
    for i in 0..2000 {
        let v = ((i * 37) % 200) as f64 / 100.0 - 1.0;
        l.learn_one(&x(v), Target::Class(usize::from(v > 0.0)));
    }
    l
}

fn monitor(trusted: &[&str]) -> (Monitor, Learner) {
    let config = MonitorConfig {
        window: 200,
        min_samples: 100,
        block_size: 10,
        gate_examples: 100,
        trusted_sources: trusted.iter().map(|s| s.to_string()).collect(),
        ..MonitorConfig::default()
    };
    let learner = trained();
    let checkpoint = Checkpoint {
        version: 1,
        learner: learner.clone(),
        position: 0,
        examples_trained: 2000,
    };
    let m = Monitor::new(
        config,
        TaskKind::Binary,
        Vec::new(),
        checkpoint,
        Default::default(),
    );
    (m, learner)
}

/// Feeds `batch` through observe/remember as the trainer would.
/// Feeds `batch` through observe/remember as the trainer would, at log
/// positions from `first`.
fn feed(m: &mut Monitor, mut batch: Vec<Feedback>, first: u64, live: &ModelVersion) {
    for (i, fb) in batch.iter_mut().enumerate() {
        fb.position = first + i as u64;
    }
    m.observe(&batch, live);
    m.remember(batch.into_iter());
}

fn version(n: u64, learner: &Learner) -> ModelVersion {
    ModelVersion {
        version: n,
        params: learner.params().clone(),
        published_at: SystemTime::now(),
        examples_trained: 0,
        feedback_position: 0,
        rolled_back_from: None,
    }
}

fn rows(n: usize, offset: usize) -> impl Iterator<Item = (f64, usize)> {
    (0..n).map(move |i| {
        let v = (((i + offset) * 53) % 200) as f64 / 100.0 - 0.995;
        (v, usize::from(v > 0.0))
    })
}

#[test]
fn the_source_whose_labels_last_good_disputes_is_blamed_never_a_trusted_one() {
    let (mut m, mut learner) = monitor(&["trusted"]);
    let live = version(1, &learner);
    let mut batch = Vec::new();
    for (v, y) in rows(300, 0) {
        batch.push(fb(v, y, "trusted"));
        batch.push(fb(v, 1 - y, "attacker"));
        batch.push(fb(v, y, "honest"));
    }
    feed(&mut m, batch, 0, &live);
    let recovery = m.recover(&mut learner);
    let blamed: Vec<&str> = recovery.blamed.iter().map(|b| b.source.as_str()).collect();
    assert_eq!(blamed, ["attacker"]);
    assert!(recovery.blamed[0].mean_loss > 2.0 * recovery.blamed[0].reference_loss);
    assert_eq!(
        (recovery.replayed, recovery.dropped),
        (600, 300),
        "trusted and honest replayed, the attacker's dropped"
    );
    let mut next = vec![fb(0.5, 0, "attacker"), fb(0.5, 1, "honest")];
    next[0].position = 900;
    next[1].position = 901;
    m.observe(&next, &live);
    assert_eq!(
        m.retain_admitted(&mut next).len(),
        1,
        "blamed examples are not trained"
    );
    assert!(m.readmit("attacker"));
    assert!(!m.readmit("attacker"));
}

#[test]
fn with_one_source_nothing_is_blamed_and_the_damage_is_dropped() {
    let (mut m, mut learner) = monitor(&[]);
    let live = version(1, &learner);
    let batch = rows(300, 0)
        .map(|(v, y)| fb(v, 1 - y, "upstream"))
        .collect();
    feed(&mut m, batch, 0, &live);
    let recovery = m.recover(&mut learner);
    assert!(recovery.blamed.is_empty());
    assert_eq!((recovery.replayed, recovery.dropped), (0, 300));
    assert_eq!(
        learner.params().predict(&x(0.5)),
        trained().params().predict(&x(0.5)),
        "back to last-good exactly"
    );
}

#[test]
fn a_reference_set_gates_candidates_when_no_trusted_traffic_arrives() {
    let config = MonitorConfig {
        window: 200,
        min_samples: 100,
        block_size: 10,
        gate_examples: 100,
        trusted_sources: vec!["nobody".into()],
        ..MonitorConfig::default()
    };
    let learner = trained();
    let reference: Vec<Labelled> = rows(200, 3)
        .map(|(v, y)| (x(v), Target::Class(y)))
        .collect();
    let checkpoint = Checkpoint {
        version: 1,
        learner: learner.clone(),
        position: 0,
        examples_trained: 2000,
    };
    let mut m = Monitor::new(
        config,
        TaskKind::Binary,
        reference,
        checkpoint,
        Default::default(),
    );
    let live = version(1, &learner);
    let mut damaged = learner.clone();
    for (v, y) in rows(400, 7) {
        damaged.learn_one(&x(v), Target::Class(1 - y));
    }
    assert!(matches!(
        m.gate(learner.params(), None, NOW),
        GateVerdict::Pass
    ));
    assert!(matches!(
        m.gate(damaged.params(), None, NOW),
        GateVerdict::Hold
    ));
    // Untrusted traffic is not compared, but it is fresh evidence time.
    feed(
        &mut m,
        rows(60, 0).map(|(v, y)| fb(v, y, "other")).collect(),
        0,
        &live,
    );
    let GateVerdict::Refuse(d) = m.gate(damaged.params(), None, NOW) else {
        panic!("refused on the reference set")
    };
    assert!(d.reason.contains("the reference set"), "{}", d.reason);
}

#[test]
fn the_gate_holds_then_refuses_a_damaged_candidate_and_passes_a_sound_one() {
    let (mut m, learner) = monitor(&[]);
    let live = version(1, &learner);
    feed(
        &mut m,
        rows(100, 0).map(|(v, y)| fb(v, y, "s")).collect(),
        0,
        &live,
    );
    assert!(matches!(
        m.gate(learner.params(), None, NOW),
        GateVerdict::Pass
    ));
    let mut damaged = learner.clone();
    for (v, y) in rows(400, 7) {
        damaged.learn_one(&x(v), Target::Class(1 - y));
    }
    assert!(matches!(
        m.gate(damaged.params(), None, NOW),
        GateVerdict::Hold
    ));
    assert!(m.holding());
    assert!(
        matches!(m.gate(damaged.params(), None, NOW), GateVerdict::Hold),
        "no new evidence yet: still holding"
    );
    feed(
        &mut m,
        rows(60, 100).map(|(v, y)| fb(v, y, "s")).collect(),
        100,
        &live,
    );
    let GateVerdict::Refuse(d) = m.gate(damaged.params(), None, NOW) else {
        panic!("confirmed on fresh examples")
    };
    assert_eq!(d.trigger, Trigger::GateRefused);
    assert!(d.reason.contains("worse than last-good v1"), "{}", d.reason);
    assert!(!m.holding());
    assert!(matches!(
        m.gate(learner.params(), None, NOW),
        GateVerdict::Pass
    ));
}

/// An example of `width` features (the first is `x = v`), labelled as
/// the trained learner would, from `source`.
fn wide_fb(v: f64, width: usize, source: &str, spare: usize) -> Feedback {
    let mut features = Vec::with_capacity(width + spare);
    features.extend(x(v).features);
    features.extend((1..width as u32).map(|i| crate::learn::Feature {
        index: i % 256,
        value: 0.0,
        numeric: true,
    }));
    let fv = FeatureVec { features };
    Feedback::labelled(fv, Target::Class(usize::from(v > 0.0)), Some(source.into()))
}

/// A stream of mixed widths: mostly narrow, every seventh wide.
fn mixed(n: usize, spare: usize) -> Vec<Feedback> {
    rows(n, 11)
        .enumerate()
        .map(|(i, (v, _))| {
            let width = if i % 7 == 3 { 2_000 } else { 1 + i % 5 };
            wide_fb(v, width, if i % 2 == 0 { "a" } else { "bb" }, spare)
        })
        .collect()
}

fn budgeted(max_bytes: usize) -> (Monitor, Learner) {
    budgeted_trusting(max_bytes, &[])
}

fn budgeted_trusting(max_bytes: usize, trusted: &[&str]) -> (Monitor, Learner) {
    let (m, learner) = monitor(trusted);
    let config = MonitorConfig {
        replay_capacity: 10_000,
        replay_max_bytes: max_bytes,
        gate_examples: 20,
        ..m.config.clone()
    };
    let m = Monitor::new(
        config,
        TaskKind::Binary,
        Vec::new(),
        m.last_good.clone(),
        Default::default(),
    );
    (m, learner)
}

fn positions(m: &Monitor) -> Vec<u64> {
    m.buffer.iter().map(|e| e.position).collect()
}

#[test]
fn entry_bytes_covers_an_entry() {
    assert!(std::mem::size_of::<Entry>() <= replay::ENTRY_BYTES);
    // The longest source name the API accepts is 128 bytes.
    let fb = wide_fb(0.5, 1, &"s".repeat(128), 0);
    assert!(
        replay::entry_cost(&fb) - fb.features.heap_bytes() <= crate::config::REPLAY_ENTRY_SLACK,
        "config validation's slack covers an entry and its longest source"
    );
}

#[test]
fn the_replay_buffer_keeps_its_byte_budget_oldest_evicted_first() {
    let max = 200_000;
    let (mut m, learner) = budgeted(max);
    let live = version(1, &learner);
    let batch = mixed(300, 0);
    let costs: Vec<usize> = batch.iter().map(replay::entry_cost).collect();
    let mut first = 0;
    for chunk in batch.chunks(32) {
        feed(&mut m, chunk.to_vec(), first, &live);
        first += chunk.len() as u64;
        let usage = m.buffer.usage();
        assert!(usage.bytes as usize <= max, "{usage:?}");
        let held: usize = m.buffer.iter().map(|e| replay::entry_cost(&e.fb)).sum();
        assert_eq!(usage.bytes as usize, held, "bytes are the entries' costs");
    }
    // What is left is the newest suffix that fits: evicted oldest first.
    let kept = positions(&m);
    let oldest = *kept.first().unwrap();
    assert_eq!(kept, (oldest..300).collect::<Vec<_>>());
    let usage = m.buffer.usage();
    assert_eq!(usage.evicted_bytes, oldest);
    assert_eq!(usage.evicted_capacity, 0);
    assert!(
        usage.bytes as usize + costs[oldest as usize - 1] > max,
        "evicts no more than it must"
    );
    // The evicted examples were since last-good: a recovery says so.
    let mut learner = learner;
    assert_eq!(m.recover(&mut learner).lost, oldest);
}

#[test]
fn the_replay_buffers_evictions_replay_exactly() {
    let (mut live_run, learner) = budgeted(150_000);
    let live = version(1, &learner);
    // The same examples as the log gives them back: vectors with other
    // capacities and sources in other allocations.
    let (mut replayed, _) = budgeted(150_000);
    for (i, (a, b)) in mixed(200, 0)
        .chunks(25)
        .zip(mixed(200, 64).chunks(25))
        .enumerate()
    {
        feed(&mut live_run, a.to_vec(), 25 * i as u64, &live);
        feed(&mut replayed, b.to_vec(), 25 * i as u64, &live);
        assert_eq!(positions(&live_run), positions(&replayed));
        assert_eq!(live_run.buffer.usage(), replayed.buffer.usage());
    }
    // A snapshot's state refilled from the log holds the same buffer and
    // goes on evicting the same way.
    let (state, last_good, candidate) = live_run.state();
    let by_position: HashMap<u64, Feedback> = mixed(200, 8)
        .into_iter()
        .enumerate()
        .map(|(i, mut fb)| {
            fb.position = i as u64;
            (i as u64, fb)
        })
        .collect();
    let entries: Vec<(EntryState, Feedback)> = state
        .buffer
        .iter()
        .map(|e| (*e, by_position[&e.position].clone()))
        .collect();
    let mut restored = Monitor::restore(
        live_run.config.clone(),
        TaskKind::Binary,
        Vec::new(),
        state,
        last_good,
        candidate,
        Default::default(),
    );
    restored.refill(entries);
    assert_eq!(positions(&restored), positions(&live_run));
    assert_eq!(restored.buffer.usage().bytes, live_run.buffer.usage().bytes);
    let more = mixed(260, 0).split_off(200);
    feed(&mut live_run, more.clone(), 200, &live);
    feed(&mut restored, more, 200, &live);
    assert_eq!(positions(&restored), positions(&live_run));
    assert_eq!(restored.buffer.usage().bytes, live_run.buffer.usage().bytes);
}

/// Over the byte budget, untrusted examples go first: wide traffic from a
/// source outside `trusted_sources` cannot push out the trusted examples
/// the gate judges on.
#[test]
fn over_the_byte_budget_untrusted_examples_are_evicted_first() {
    let max = 200_000;
    let (mut m, learner) = budgeted_trusting(max, &["a"]);
    let live = version(1, &learner);
    // Trusted narrow examples from "a", untrusted wide ones from "bb".
    let batch: Vec<Feedback> = rows(300, 5)
        .enumerate()
        .map(|(i, (v, _))| {
            if i % 2 == 0 {
                wide_fb(v, 2, "a", 0)
            } else {
                wide_fb(v, 2_000, "bb", 0)
            }
        })
        .collect();
    feed(&mut m, batch, 0, &live);
    let usage = m.buffer.usage();
    assert!(usage.bytes as usize <= max, "{usage:?}");
    assert!(usage.evicted_bytes > 0, "the budget was short: {usage:?}");
    let trusted = m.buffer.iter().filter(|e| e.trusted).count();
    assert_eq!(trusted, 150, "every trusted example is kept");
    // The untrusted ones kept are the newest.
    let untrusted: Vec<u64> = m
        .buffer
        .iter()
        .filter(|e| !e.trusted)
        .map(|e| e.position)
        .collect();
    assert!(!untrusted.is_empty());
    assert_eq!(untrusted.last(), Some(&299));
    assert!(
        positions(&m).windows(2).all(|w| w[0] < w[1]),
        "still in log order"
    );
}
