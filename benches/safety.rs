//! The safety loop on real and generated streams, in process, through the
//! real `Trainer` and `Monitor` (minibatches of 32, a publish after every
//! minibatch, deterministic order):
//!
//! 1. Elec2, clean: rollbacks and gate refusals (target: zero).
//! 2. Elec2 label-inversion attack: from row 15,000 an untrusted source
//!    resends each current example 3 times with its label inverted while
//!    the trusted source keeps sending. Detection delay (examples from the
//!    attack's start to the first rollback or gate refusal) and the trusted
//!    prequential accuracy over rows 15,000-30,000, against the unattacked
//!    run (target: within 1 point) and an undefended learner (monitor off).
//! 3. Elec2 broken upstream: `nswprice` arrives 1000x too large on rows
//!    15,000-16,000, one source, no trusted set.
//! 4. SEA-style abrupt drift (generated): the threshold moves three times;
//!    target zero rollbacks, and the model adapts.
//!
//! The ingestion guard is off, so the monitor is measured alone
//! (`SAFETY_GUARD=1` turns it on).
//!
//! Run: `cargo bench --bench safety` (under a minute); `SAFETY_OPTIMIZER`
//! and `SAFETY_MONITOR` add keys to `[models.optimizer]` and
//! `[models.monitor]` (`;` for a new line), e.g.
//! `SAFETY_OPTIMIZER='kind = "adagrad"'`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use eddy::batch::eval::ROW_INTERVAL;
use eddy::config::{Config, ModelConfig};
use eddy::learn::{Example, FeatureHasher, FeatureVec, Target};
use eddy::serving::Trainer;
use eddy::serving::queue::Feedback;
use eddy::serving::{ManualClock, SystemClock};
use serde_json::Value;

#[path = "../tests/api/streams.rs"]
mod streams;
use streams::{dataset, sea, stationary};

const MINIBATCH: usize = 32;

// The server's allocator, so throughput figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn model(extra: &str) -> ModelConfig {
    Config::from_toml_over_default(&format!(
        "[[models]]\nname = \"m\"\ntask = \"binary\"\n[models.optimizer]\n{}\n[models.guard]\nenabled = {}\n[models.monitor]\n{}\n{extra}",
        std::env::var("SAFETY_OPTIMIZER")
            .unwrap_or_default()
            .replace(';', "\n"),
        // The safety loop alone: the guard would keep most attacks from
        // reaching it (`cargo bench --bench guard` measures the two
        // together). SAFETY_GUARD=1 runs them together here too.
        std::env::var("SAFETY_GUARD").is_ok_and(|v| v == "1"),
        std::env::var("SAFETY_MONITOR")
            .unwrap_or_default()
            .replace(';', "\n")
    ))
    .expect("config")
    .models
    .remove(0)
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

#[derive(Debug, Default)]
struct Outcome {
    /// Trusted prequential accuracy over the measured rows.
    correct: u64,
    scored: u64,
    /// Over every row.
    correct_all: u64,
    rows: u64,
    rollbacks: u64,
    gate_refusals: u64,
    promotions: u64,
    holds: u64,
    publishes: u64,
    detection_delay: Option<u64>,
    /// Examples from the attack's start to the first held publish.
    hold_delay: Option<u64>,
    blamed: Vec<String>,
    excluded: u64,
}

/// Streams `xs` through a trainer: each row is predicted by the live
/// version (counted when in `measure`), then sent as trusted feedback; from
/// `attack_from`, `copies` inverted copies follow from the attacker.
fn run(
    m: &ModelConfig,
    xs: &[(FeatureVec, Target)],
    attack_from: Option<usize>,
    copies: usize,
    measure: std::ops::Range<usize>,
) -> Outcome {
    let clock = Arc::new(ManualClock::default());
    let (mut trainer, queue, _commands) = Trainer::in_memory(m, clock.clone()).expect("trainer");
    let mut out = Outcome::default();
    let mut sent = 0u64;
    let mut attack_start = None;
    let mut baseline_counts: Option<(u64, u64)> = None;
    let feedback = |x: &FeatureVec, y: Target, source: &str| {
        Feedback::labelled(x.clone(), y, Some(source.into()))
    };
    for (i, (x, y)) in xs.iter().enumerate() {
        clock.advance(ROW_INTERVAL);
        let out_live = trainer.live().params.predict(x);
        let correct = Some(out_live.argmax().unwrap_or(0)) == y.class();
        out.correct_all += u64::from(correct);
        out.rows += 1;
        if measure.contains(&i) {
            out.correct += u64::from(correct);
            out.scored += 1;
        }
        let mut items = vec![feedback(x, *y, "trusted")];
        if let Some(from) = attack_from
            && i >= from
        {
            if attack_start.is_none() {
                attack_start = Some(sent);
            }
            let inverted = Target::Class(1 - y.class().unwrap_or(0));
            items.extend((0..copies).map(|_| feedback(x, inverted, "attacker")));
        }
        sent += items.len() as u64;
        queue
            .reserve(items.len())
            .expect("room")
            .send(items)
            .expect("appended");
        while trainer.position() + MINIBATCH as u64 <= sent {
            trainer.step(MINIBATCH);
            let s = &trainer.stats();
            let detections = s.rollbacks_degraded.load(Ordering::Relaxed)
                + s.rollbacks_gate.load(Ordering::Relaxed);
            let holds = s.gate_holds.load(Ordering::Relaxed);
            if let Some(start) = attack_start {
                let (d0, h0) = *baseline_counts.get_or_insert((detections, holds));
                let since = trainer.position().saturating_sub(start);
                if detections > d0 && out.detection_delay.is_none() {
                    out.detection_delay = Some(since);
                }
                if holds > h0 && out.hold_delay.is_none() {
                    out.hold_delay = Some(since);
                }
            }
        }
    }
    while trainer.step(MINIBATCH) > 0 {}
    let s = &trainer.stats();
    out.rollbacks = s.rollbacks_degraded.load(Ordering::Relaxed);
    out.gate_refusals = s.rollbacks_gate.load(Ordering::Relaxed);
    out.promotions = s.promotions.load(Ordering::Relaxed);
    out.holds = s.gate_holds.load(Ordering::Relaxed);
    out.publishes = s.publishes.load(Ordering::Relaxed);
    out.excluded = s.excluded.load(Ordering::Relaxed);
    out.blamed = s.monitor.load().blamed_sources.clone();
    if std::env::var_os("SAFETY_EVENTS").is_some() {
        for e in trainer.events().all() {
            if e.kind != eddy::serving::events::EventKind::Promotion
                || std::env::var_os("SAFETY_ALL").is_some()
            {
                println!(
                    "  {:?} v{} {} {}",
                    e.kind,
                    e.version,
                    e.reason,
                    serde_json::Value::Object(e.figures.clone())
                );
            }
        }
    }
    out
}

fn pct(c: u64, n: u64) -> f64 {
    100.0 * c as f64 / n.max(1) as f64
}

fn print(name: &str, o: &Outcome) {
    println!(
        "{name:<40} measured acc {:6.2}%  all {:6.2}%  rollbacks {:2}  gate refusals {:2}  holds {:3}/{:5} publishes  promotions {:3}  blamed {:?}  excluded {}",
        pct(o.correct, o.scored),
        pct(o.correct_all, o.rows),
        o.rollbacks,
        o.gate_refusals,
        o.holds,
        o.publishes,
        o.promotions,
        o.blamed,
        o.excluded,
    );
}

/// Trainer-only throughput (no HTTP): Elec2 pushed through `step` in
/// minibatches of 32 with the default publish pacing, monitor on vs off.
fn throughput(xs: &[(FeatureVec, Target)], monitor: &str) -> f64 {
    let m = Config::from_toml_over_default(&format!(
        "[[models]]\nname = \"m\"\ntask = \"binary\"\n[models.monitor]\n{monitor}"
    ))
    .expect("config")
    .models
    .remove(0);
    let (mut trainer, queue, _commands) =
        Trainer::in_memory(&m, Arc::new(SystemClock::default())).expect("trainer");
    let started = Instant::now();
    let mut n = 0usize;
    let reps: usize = std::env::var("SAFETY_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    for _ in 0..reps {
        for chunk in xs.chunks(1024) {
            let items: Vec<Feedback> = chunk
                .iter()
                .map(|(x, y)| Feedback::labelled(x.clone(), *y, None))
                .collect();
            n += items.len();
            queue
                .reserve(items.len())
                .expect("room")
                .send(items)
                .expect("appended");
            while trainer.step(MINIBATCH) > 0 {}
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let started = Instant::now();
    if std::env::var_os("SAFETY_THROUGHPUT").is_some() {
        let m = model("");
        let xs = examples(&dataset("elec2"), &m, |_, _| {});
        if std::env::var_os("SAFETY_ON_ONLY").is_some() {
            println!("{:.0}", throughput(&xs, "enabled = true"));
            return;
        }
        for _ in 0..3 {
            let on = throughput(&xs, "enabled = true");
            let off = throughput(&xs, "enabled = false");
            println!(
                "trainer alone: monitor on {on:.0} ex/s, off {off:.0} ex/s, ratio {:.2}",
                on / off
            );
        }
        return;
    }
    let elec2 = dataset("elec2");
    let trusted = model("trusted_sources = [\"trusted\"]");
    let xs = examples(&elec2, &trusted, |_, _| {});
    let measure = 15_000..30_000;

    println!("== Elec2 ({} rows), minibatch {MINIBATCH}", xs.len());
    let clean = run(&trusted, &xs, None, 0, measure.clone());
    print("clean, monitor on", &clean);
    let attacked = run(&trusted, &xs, Some(15_000), 3, measure.clone());
    print("label attack x3 from 15k, monitor on", &attacked);
    for range in [
        15_000..15_250,
        15_250..15_500,
        15_500..16_000,
        16_000..17_000,
    ] {
        let a = run(&trusted, &xs, Some(15_000), 3, range.clone());
        let c = run(&trusted, &xs, None, 0, range.clone());
        println!(
            "  rows {range:?}: trusted accuracy attacked {:.2}% vs unattacked {:.2}%",
            pct(a.correct, a.scored),
            pct(c.correct, c.scored)
        );
    }
    let off = model("enabled = false");
    let undefended = run(&off, &xs, Some(15_000), 3, measure.clone());
    print("label attack x3 from 15k, monitor off", &undefended);
    let unattacked_off = run(&off, &xs, None, 0, measure.clone());
    print("clean, monitor off", &unattacked_off);
    println!(
        "trusted accuracy rows 15k-30k: attacked {:.2}% vs unattacked {:.2}% (diff {:+.2} points); undefended {:.2}%; examples from the attack's start to the first held publish {:?}, to the first refusal or rollback {:?}",
        pct(attacked.correct, attacked.scored),
        pct(clean.correct, clean.scored),
        pct(attacked.correct, attacked.scored) - pct(clean.correct, clean.scored),
        pct(undefended.correct, undefended.scored),
        attacked.hold_delay,
        attacked.detection_delay,
    );

    println!("\n== Elec2 broken upstream: nswprice x1000 on rows 15,000-16,000, one source");
    let open = model("");
    let broken = examples(&elec2, &open, |i, r| {
        if (15_000..16_000).contains(&i)
            && let Some(p) = r["features"]["nswprice"].as_f64()
        {
            r["features"]["nswprice"] = (p * 1000.0).into();
        }
    });
    let after = 16_000..30_000;
    let b_on = run(&open, &broken, None, 0, after.clone());
    print("broken upstream, monitor on", &b_on);
    let b_off = run(&off, &broken, None, 0, after.clone());
    print("broken upstream, monitor off", &b_off);
    let b_clean = run(&open, &examples(&elec2, &open, |_, _| {}), None, 0, after);
    print("no break, monitor on", &b_clean);

    println!(
        "\n== Stationary stream, 20,000 rows: feature `a` 1000x too large on rows 8,000-9,000"
    );
    let st = examples(&stationary(20_000, 3, 8_000..9_000), &open, |_, _| {});
    let st_clean = examples(&stationary(20_000, 3, 0..0), &open, |_, _| {});
    print(
        "broken, monitor on (acc rows 9k-20k)",
        &run(&open, &st, None, 0, 9_000..20_000),
    );
    print(
        "broken, monitor off",
        &run(&off, &st, None, 0, 9_000..20_000),
    );
    print(
        "no break, monitor on",
        &run(&open, &st_clean, None, 0, 9_000..20_000),
    );

    println!("\n== SEA abrupt drift, 40,000 rows, theta 8 -> 9 -> 7 -> 9.5");
    let seed = std::env::var("SAFETY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let sea_rows = sea(40_000, seed);
    let sea_x = examples(&sea_rows, &open, |_, _| {});
    for (name, range) in [
        ("last 5k before drift 1", 5_000..10_000),
        ("first 2k after drift 1", 10_000..12_000),
        ("last 5k before drift 2", 15_000..20_000),
        ("rows 22k-30k", 22_000..30_000),
    ] {
        let o = run(&open, &sea_x, None, 0, range);
        print(&format!("SEA monitor on, {name}"), &o);
    }
    println!("\n(total {:.1} s)", started.elapsed().as_secs_f64());
}
