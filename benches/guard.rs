//! The ingestion guard's scenarios (issue 12), in process, through the
//! real `Trainer` with its guard and monitor (default configuration:
//! minibatches of 32, deterministic clock and order):
//!
//! 1. Flood, no trusted sources: Elec2 sent by four honest sources in
//!    turn; from the middle on, an attacker resends each current example 5
//!    times with its label inverted. Prequential accuracy on the honest
//!    examples over the attack, guard on and off, against the run without
//!    the attack (target: guard on within 1 point), and the curve by block.
//! 2. Unit error: from the middle of Elec2, `nswprice` arrives 1000x too
//!    large for 2,000 examples. Share quarantined (target >= 90%) and
//!    accuracy on a fixed probe set (the last 5,000 rows, never learned)
//!    right after, against the run without the error (target <= 0.5 point).
//! 3. No false alarms: Elec2 as is, SEA with three abrupt drifts, and a
//!    stationary stream: share quarantined (target < 0.5%) and accuracy
//!    against the guard off (target within 0.2 points); after each SEA
//!    drift the new concept is learned.
//! 4. Cost: the trainer's own time per example (through `step`, on
//!    examples scored as the server scores them on acceptance) with the
//!    guard on and off, alternating rounds. The target (ingest with
//!    the guard >= 0.75 of without) is end to end, over HTTP:
//!    `PARTS=guard benches/durability.sh`.
//!
//! Run: `cargo bench --bench guard` (about a minute); `GUARD_CURVE=path.csv`
//! also writes the flood's accuracy curve by block of 1,000 rows;
//! `GUARD_BATCH=n` makes every source post batches of `n` rows in turn
//! (the attacker following each honest batch with its copies of it)
//! instead of taking turns row by row.

use std::sync::Arc;
use std::time::Instant;

use eddy::batch::eval::ROW_INTERVAL;
use eddy::config::{Config, ModelConfig};
use eddy::learn::{Example, FeatureHasher, FeatureVec, Target};
use eddy::serving::queue::{Feedback, Prescored};
use eddy::serving::{ManualClock, SystemClock, Trainer};
use serde_json::Value;

#[path = "../tests/api/streams.rs"]
mod streams;
use streams::{dataset, sea, stationary};

const MINIBATCH: usize = 32;
const HONEST: usize = 4;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn model(extra: &str) -> ModelConfig {
    Config::from_toml_over_default(&format!(
        "[[models]]\nname = \"m\"\ntask = \"binary\"\n{extra}"
    ))
    .expect("config")
    .models
    .remove(0)
}

fn guard_off() -> ModelConfig {
    model("[models.guard]\nenabled = false")
}

fn examples(
    rows: &[Value],
    m: &ModelConfig,
    edit: impl Fn(usize, &mut Value),
) -> Vec<(FeatureVec, Target)> {
    let hasher = FeatureHasher::new(m.hash_bits);
    let space = m.label_space().expect("space");
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let mut r = r.clone();
            edit(i, &mut r);
            let e = Example::from_json(&r.to_string(), &hasher, &space).expect("example");
            (e.features, e.target)
        })
        .collect()
}

/// What a run measured.
#[derive(Debug, Default)]
struct Outcome {
    /// Prequential accuracy on the honest examples in `measure`.
    correct: u64,
    scored: u64,
    /// Correct predictions per block of 1,000 rows (honest examples).
    blocks: Vec<(u64, u64)>,
    sent: u64,
    quarantined: u64,
    by_reason: Vec<(String, String, u64)>,
    flagged: Vec<String>,
    rollbacks: u64,
    /// Examples of rows in `marked` that were quarantined.
    marked_quarantined: u64,
    /// Accuracy of the final model on the probe rows.
    probe: Option<f64>,
}

struct Run<'a> {
    m: &'a ModelConfig,
    xs: &'a [(FeatureVec, Target)],
    /// From this row on, the attacker sends `copies` inverted copies.
    attack_from: Option<usize>,
    copies: usize,
    measure: std::ops::Range<usize>,
    /// Rows whose quarantine is counted (`marked_quarantined`).
    marked: std::ops::Range<usize>,
    /// Rows never sent; accuracy on them at the end (or at `probe_at`).
    probe: std::ops::Range<usize>,
    /// Stop (and probe) after this row.
    until: usize,
}

/// Rows each source posts at a time (`GUARD_BATCH`, default 1).
fn sender_batch() -> usize {
    std::env::var("GUARD_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1usize)
        .max(1)
}

fn run(r: Run<'_>) -> Outcome {
    let batch = sender_batch();
    let mut pending: Vec<Feedback> = Vec::new();
    let clock = Arc::new(ManualClock::default());
    let (mut trainer, queue, _commands) = Trainer::in_memory(r.m, clock.clone()).expect("trainer");
    let mut out = Outcome::default();
    let mut sent = 0u64;
    let step = r.m.training.minibatch_size.get();
    let mut marked = std::collections::HashSet::new();
    for (i, (x, y)) in r.xs.iter().enumerate().take(r.until) {
        if r.probe.contains(&i) {
            continue;
        }
        clock.advance(ROW_INTERVAL);
        let live = trainer.live().params.predict(x);
        let correct = Some(live.argmax().unwrap_or(0)) == y.class();
        if r.measure.contains(&i) {
            out.correct += u64::from(correct);
            out.scored += 1;
        }
        let block = i / 1000;
        if out.blocks.len() <= block {
            out.blocks.resize(block + 1, (0, 0));
        }
        out.blocks[block].0 += u64::from(correct);
        out.blocks[block].1 += 1;
        let source = format!("honest-{}", (i / batch) % HONEST);
        let mut items = vec![Feedback::labelled(
            x.clone(),
            *y,
            Some(source.as_str().into()),
        )];
        if r.attack_from.is_some_and(|from| i >= from) {
            let inverted = Target::Class(1 - y.class().unwrap_or(0));
            pending.extend(
                (0..r.copies)
                    .map(|_| Feedback::labelled(x.clone(), inverted, Some("attacker".into()))),
            );
        }
        if (i + 1) % batch == 0 {
            items.append(&mut pending);
        }
        if r.marked.contains(&i) {
            marked.insert(features_key(x));
        }
        sent += items.len() as u64;
        post(&queue, items);
        while trainer.position() + step as u64 <= sent {
            trainer.step(step);
        }
    }
    sent += pending.len() as u64;
    post(&queue, pending);
    while trainer.step(step) > 0 {}
    out.sent = sent;
    let report = trainer.stats().guard.load_full();
    out.quarantined = report.quarantined_total.iter().map(|q| q.examples).sum();
    out.by_reason = report
        .quarantined_total
        .iter()
        .map(|q| (q.reason.as_str().to_owned(), q.source.clone(), q.examples))
        .collect();
    out.flagged = report.flagged_sources.clone();
    out.rollbacks = trainer
        .stats()
        .rollbacks_degraded
        .load(std::sync::atomic::Ordering::Relaxed)
        + trainer
            .stats()
            .rollbacks_gate
            .load(std::sync::atomic::Ordering::Relaxed);
    if let Some(g) = trainer.guard() {
        // Log positions also number the trainer's steps, so the marked
        // examples are recognised by their features.
        let page = g.quarantine().page(&Default::default(), None, usize::MAX);
        out.marked_quarantined = page
            .examples
            .iter()
            .filter(|(_, h)| marked.contains(&features_key(&h.fb.features)))
            .count() as u64;
    }
    if !r.probe.is_empty() {
        let live = trainer.live();
        let (mut c, mut n) = (0u64, 0u64);
        for (x, y) in &r.xs[r.probe.clone()] {
            c += u64::from(Some(live.params.predict(x).argmax().unwrap_or(0)) == y.class());
            n += 1;
        }
        out.probe = Some(pct(c, n));
    }
    out
}

/// Sends one request's examples to the trainer's queue.
fn post(queue: &eddy::serving::queue::FeedbackQueue, items: Vec<Feedback>) {
    if items.is_empty() {
        return;
    }
    queue
        .reserve(items.len())
        .expect("room")
        .send(items)
        .expect("appended");
}

/// An example's features, bit for bit, to recognise it in quarantine.
fn features_key(x: &FeatureVec) -> Vec<(u32, u64)> {
    x.features
        .iter()
        .map(|f| (f.index, f.value.to_bits()))
        .collect()
}

fn pct(c: u64, n: u64) -> f64 {
    100.0 * c as f64 / n.max(1) as f64
}

fn quarantined_share(o: &Outcome) -> f64 {
    pct(o.quarantined, o.sent)
}

fn flood(elec2: &[Value]) {
    let on = model("");
    let off = guard_off();
    let xs = examples(elec2, &on, |_, _| {});
    let from = xs.len() / 2;
    let measure = from..xs.len();
    let base = |m, attack_from| Run {
        m,
        xs: &xs,
        attack_from,
        copies: 5,
        measure: measure.clone(),
        marked: 0..0,
        probe: 0..0,
        until: xs.len(),
    };
    println!(
        "== 1. Flood: Elec2 ({} rows), {HONEST} honest sources in turn; from row {from} an attacker resends each example 5x with the label inverted",
        xs.len()
    );
    let clean_on = run(base(&on, None));
    let attacked_on = run(base(&on, Some(from)));
    let clean_off = run(base(&off, None));
    let attacked_off = run(base(&off, Some(from)));
    // Under the attack a minibatch of 32 holds about 5 honest rows, so the
    // live model is published after every 5 or so honest rows instead of
    // 32: fresher, which Elec2 rewards. The same cadence without the attack:
    let small = model("[models.training]\nminibatch_size = 5");
    let cadence = run(Run {
        m: &small,
        ..base(&small, None)
    });
    for (name, o) in [
        ("no attack, guard on", &clean_on),
        ("no attack, minibatch 5", &cadence),
        ("attack, guard on", &attacked_on),
        ("no attack, guard off", &clean_off),
        ("attack, guard off", &attacked_off),
    ] {
        println!(
            "  {name:<22} honest accuracy over the attack {:6.2}%  quarantined {:5} ({:.2}%)  flagged {:?}  rollbacks {}",
            pct(o.correct, o.scored),
            o.quarantined,
            quarantined_share(o),
            o.flagged,
            o.rollbacks
        );
        if !name.starts_with("attack") && o.quarantined > 0 {
            println!("    quarantined by reason and source {:?}", o.by_reason);
        }
    }
    let diff =
        pct(attacked_on.correct, attacked_on.scored) - pct(clean_on.correct, clean_on.scored);
    println!(
        "  guard on: attack vs no attack at the attacked run's publish cadence (minibatch 5) {:+.2} points (target within 1); vs no attack at minibatch 32 {diff:+.2} points (fresher publishes under the attack); guard off: {:+.2} points",
        pct(attacked_on.correct, attacked_on.scored) - pct(cadence.correct, cadence.scored),
        pct(attacked_off.correct, attacked_off.scored) - pct(clean_off.correct, clean_off.scored)
    );
    let attacker: u64 = attacked_on
        .by_reason
        .iter()
        .filter(|(_, s, _)| s == "attacker")
        .map(|(_, _, n)| n)
        .sum();
    let honest: u64 = attacked_on
        .by_reason
        .iter()
        .filter(|(_, s, _)| s != "attacker")
        .map(|(_, _, n)| n)
        .sum();
    println!(
        "  quarantined, guard on under attack: attacker {attacker} of {} sent; honest {honest}; by reason and source {:?}",
        (xs.len() - from) * 5,
        attacked_on.by_reason
    );
    if let Ok(path) = std::env::var("GUARD_CURVE") {
        let mut csv =
            String::from("block_start,no_attack_guard_on,attack_guard_on,attack_guard_off\n");
        for b in 0..clean_on.blocks.len() {
            let acc = |o: &Outcome| o.blocks.get(b).map_or(f64::NAN, |(c, n)| pct(*c, *n));
            csv.push_str(&format!(
                "{},{:.2},{:.2},{:.2}\n",
                b * 1000,
                acc(&clean_on),
                acc(&attacked_on),
                acc(&attacked_off)
            ));
        }
        std::fs::write(&path, csv).expect("curve");
        println!("  curve by block of 1,000 rows written to {path}");
    }
}

fn unit_error(elec2: &[Value]) {
    let on = model("");
    let n = elec2.len();
    let probe = n - 5_000..n;
    let from = (n - 5_000) / 2;
    let broken = from..from + 2_000;
    let scale = |i: usize, r: &mut Value| {
        if broken.contains(&i)
            && let Some(p) = r["features"]["nswprice"].as_f64()
        {
            r["features"]["nswprice"] = (p * 1000.0).into();
        }
    };
    let changed = broken
        .clone()
        .filter(|i| {
            elec2[*i]["features"]["nswprice"]
                .as_f64()
                .is_some_and(|p| p != 0.0)
        })
        .count();
    let xs_broken = examples(elec2, &on, scale);
    let xs_clean = examples(elec2, &on, |_, _| {});
    println!(
        "\n== 2. Unit error: nswprice x1000 on rows {broken:?} ({changed} of them nonzero); probe = rows {probe:?}, never learned"
    );
    for m in [on.clone(), guard_off()] {
        let guard = if m.guard.enabled { "on" } else { "off" };
        let case = |xs| {
            run(Run {
                m: &m,
                xs,
                attack_from: None,
                copies: 0,
                measure: 0..0,
                marked: broken.clone(),
                probe: probe.clone(),
                until: broken.end + 1_000,
            })
        };
        let b = case(&xs_broken);
        let c = case(&xs_clean);
        println!(
            "  guard {guard}: quarantined {} of the 2,000 ({:.1}%; {:.1}% of the {changed} changed); probe accuracy 1,000 rows after: with the error {:.2}%, without {:.2}% ({:+.2} points); all quarantined {}",
            b.marked_quarantined,
            pct(b.marked_quarantined, 2_000),
            pct(b.marked_quarantined, changed as u64),
            b.probe.unwrap_or(f64::NAN),
            c.probe.unwrap_or(f64::NAN),
            b.probe.unwrap_or(f64::NAN) - c.probe.unwrap_or(f64::NAN),
            b.quarantined,
        );
    }
}

fn no_false_alarms(elec2: &[Value]) {
    println!("\n== 3. No false alarms: clean streams, {HONEST} sources in turn");
    let on = model("");
    let off = guard_off();
    let streams: Vec<(&str, Vec<Value>)> = vec![
        ("Elec2", elec2.to_vec()),
        ("SEA, 3 abrupt drifts (40k)", sea(40_000, 7)),
        ("stationary (20k)", stationary(20_000, 3, 0..0)),
    ];
    for (name, rows) in &streams {
        let xs = examples(rows, &on, |_, _| {});
        let case = |m| {
            run(Run {
                m,
                xs: &xs,
                attack_from: None,
                copies: 0,
                measure: 0..xs.len(),
                marked: 0..0,
                probe: 0..0,
                until: xs.len(),
            })
        };
        let g = case(&on);
        let o = case(&off);
        println!(
            "  {name:<28} quarantined {:5} ({:.3}%, target < 0.5%)  accuracy guard on {:.2}% vs off {:.2}% ({:+.2} points, target within 0.2)  flagged {:?}  by reason {:?}",
            g.quarantined,
            quarantined_share(&g),
            pct(g.correct, g.scored),
            pct(o.correct, o.scored),
            pct(g.correct, g.scored) - pct(o.correct, o.scored),
            g.flagged,
            g.by_reason
        );
        if name.starts_with("SEA") {
            let q = |o: &Outcome, r: std::ops::Range<usize>| {
                let (c, n) = o.blocks[r]
                    .iter()
                    .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                pct(c, n)
            };
            println!(
                "    after each drift (rows 10k-20k, 20k-30k, 30k-40k, last 5k of each): guard on {:.2}% / {:.2}% / {:.2}%, off {:.2}% / {:.2}% / {:.2}%",
                q(&g, 15..20),
                q(&g, 25..30),
                q(&g, 35..40),
                q(&o, 15..20),
                q(&o, 25..30),
                q(&o, 35..40)
            );
        }
    }
}

/// Examples per second of the trainer's own time, guard on or off, on
/// examples scored as the server scores them when it accepts them.
fn throughput(xs: &[(FeatureVec, Target)], m: &ModelConfig) -> f64 {
    let (mut trainer, queue, _commands) =
        Trainer::in_memory(m, Arc::new(SystemClock::default())).expect("trainer");
    let mut n = 0usize;
    let sources: Vec<Arc<str>> = (0..HONEST).map(|i| Arc::from(format!("s{i}"))).collect();
    let mut busy = std::time::Duration::ZERO;
    for _ in 0..3 {
        for (c, chunk) in xs.chunks(1024).enumerate() {
            // Scored as the server's feedback threads score on acceptance
            // (not the trainer's time, so not timed).
            let live = trainer.live().clone();
            let items: Vec<Feedback> = chunk
                .iter()
                .enumerate()
                .map(|(i, (x, y))| {
                    let mut fb =
                        Feedback::labelled(x.clone(), *y, Some(sources[(c + i) % HONEST].clone()));
                    let scored = live.params.score(x, *y);
                    fb.scored = Some(Prescored {
                        live_version: live.version,
                        live: scored,
                        base_version: live.version,
                        base: scored,
                        candidate: None,
                    });
                    fb
                })
                .collect();
            n += items.len();
            queue
                .reserve(items.len())
                .expect("room")
                .send(items)
                .expect("appended");
            let started = Instant::now();
            while trainer.step(MINIBATCH) > 0 {}
            busy += started.elapsed();
        }
    }
    n as f64 / busy.as_secs_f64()
}

fn cost(elec2: &[Value]) {
    println!(
        "\n== 4. Cost: the trainer's own throughput, Elec2 x3, {HONEST} sources, guard on vs off (alternating)"
    );
    let on = model(
        &std::env::var("GUARD_COST_CONFIG")
            .unwrap_or_default()
            .replace(';', "\n"),
    );
    let off = guard_off();
    let xs = examples(elec2, &on, |_, _| {});
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        a.push(throughput(&xs, &on));
        b.push(throughput(&xs, &off));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (on_m, off_m) = (median(&mut a), median(&mut b));
    println!(
        "  guard on {on_m:.0} ex/s, off {off_m:.0} ex/s of trainer time (medians of 5): ratio {:.2} (the trainer alone; the ingest target is end to end)",
        on_m / off_m
    );
}

fn main() {
    let started = Instant::now();
    let elec2 = dataset("elec2");
    let only = std::env::var("GUARD_ONLY").unwrap_or_default();
    let want = |s: &str| only.is_empty() || only.split(',').any(|o| o == s);
    if want("flood") {
        flood(&elec2);
    }
    if want("unit") {
        unit_error(&elec2);
    }
    if want("clean") {
        no_false_alarms(&elec2);
    }
    if want("cost") {
        cost(&elec2);
    }
    println!("\n(total {:.1} s)", started.elapsed().as_secs_f64());
}
