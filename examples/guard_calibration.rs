//! Prints the guard detectors' calibration figures over whole streams
//! (the tests in `tests/guard_calibration.rs` assert them on shorter
//! ones): false alarms on clean streams, a unit error on each Elec2
//! feature, and a label-inverting flood.
//!
//! `cargo run --release --example guard_calibration`

#[path = "../tests/guard/harness.rs"]
mod harness;
#[path = "../tests/api/streams.rs"]
mod streams;

use harness::{
    Guard, flood, flood_in_batches, heavy_tailed, percent, row_of, rows, rows_in_batches, run,
    unit_error,
};

fn main() {
    let elec2 = streams::dataset("elec2");
    cost(&elec2);
    println!("## clean streams (4 honest sources taking turns)");
    println!(
        "| stream | examples | outliers | held for labels | sources flagged | accuracy on | accuracy off |"
    );
    println!("| --- | ---: | ---: | ---: | --- | ---: | ---: |");
    let honest = ["h0", "h1", "h2", "h3"];
    for (name, values) in [
        ("elec2", elec2.clone()),
        ("sea (drifts at each quarter)", streams::sea(100_000, 7)),
        ("stationary", streams::stationary(50_000, 3, 0..0)),
        ("heavy-tailed (Cauchy, lognormal)", heavy_tailed(50_000, 5)),
    ] {
        let rows = rows(&values, &honest);
        let on = run(&rows, &Guard::on());
        let off = run(&rows, &Guard::off());
        println!(
            "| {name} | {} | {} ({:.3}%) | {} ({:.3}%) | {:?} | {:.4} | {:.4} |",
            rows.len(),
            on.outliers(),
            percent(on.outliers(), rows.len()),
            on.held_for_labels(),
            percent(on.held_for_labels(), rows.len()),
            on.flagged_sources(),
            on.accuracy(|_| true),
            off.accuracy(|_| true),
        );
    }

    println!("\n## clean streams, the 4 sources sending in batches in turn");
    println!("| stream | batch | held for labels | sources flagged |");
    println!("| --- | ---: | ---: | --- |");
    for (name, values) in [
        ("elec2", elec2.clone()),
        ("sea (drifts at each quarter)", streams::sea(100_000, 7)),
        ("stationary", streams::stationary(50_000, 3, 0..0)),
    ] {
        for batch in [20, 100, 300, 1000] {
            let rows = rows_in_batches(&values, &honest, batch);
            let on = run(&rows, &Guard::on());
            if std::env::var_os("SHOW_CHANGES").is_some() {
                for (i, c) in &on.changes {
                    println!("  example {i}: {c:?}");
                }
            }
            println!(
                "| {name} | {batch} | {} ({:.3}%) | {:?} |",
                on.held_for_labels(),
                percent(on.held_for_labels(), rows.len()),
                on.flagged_sources(),
            );
        }
    }

    println!("\n## unit error: one Elec2 feature x1000 on rows 22656..24656");
    println!(
        "| feature | changed | judged outliers of changed | of all 2000 | outliers elsewhere |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    let broken = 22_656..24_656;
    for name in [
        "period",
        "nswprice",
        "nswdemand",
        "vicprice",
        "vicdemand",
        "transfer",
    ] {
        let (values, changed) = unit_error(&elec2, name, 1000.0, broken.clone());
        let r = run(&rows(&values, &honest), &Guard::on());
        let caught = broken
            .clone()
            .filter(|&i| changed[i] && r.outcomes[i].outlier)
            .count();
        let n_changed = broken.clone().filter(|&i| changed[i]).count();
        let caught_all = broken.clone().filter(|&i| r.outcomes[i].outlier).count();
        let elsewhere = (0..values.len())
            .filter(|i| !broken.contains(i) && r.outcomes[*i].outlier)
            .count();
        println!(
            "| {name} (row {}) | {n_changed} | {caught} ({:.1}%) | {caught_all} ({:.1}%) | {elsewhere} |",
            row_of(name),
            percent(caught, n_changed),
            percent(caught_all, broken.len()),
        );
    }

    batched_flood(&elec2);

    println!("\n## flood: from row 22656, an attacker resends each example 5x, label inverted");
    let (rows, is_honest) = flood(&elec2, 22_656, 5);
    let first_attack = is_honest.iter().position(|h| !h).unwrap_or(0);
    let clean = harness::rows(&elec2, &honest);
    let baseline = run(&clean, &Guard::on());
    // Honest examples from the attack on, in the clean run's numbering.
    let attack_rows: Vec<usize> = (0..rows.len())
        .filter(|&i| i >= first_attack && is_honest[i])
        .collect();
    let base_acc = baseline.accuracy(|i| i >= 22_656);
    for (label, guard) in [("guard on", Guard::on()), ("guard off", Guard::off())] {
        let r = run(&rows, &guard);
        let acc = r.accuracy(|i| i >= first_attack && is_honest[i]);
        let flagged_at = r.changes.iter().find_map(|(i, c)| match c {
            eddy::learn::guard::FlagChange::Flagged(e) if e.source == "attacker" => Some(*i),
            _ => None,
        });
        let attacker_before =
            flagged_at.map(|at| (first_attack..at).filter(|&i| !is_honest[i]).count() + 1);
        let attacker_learned = (first_attack..rows.len())
            .filter(|&i| !is_honest[i] && !r.outcomes[i].held_for_labels && !r.outcomes[i].outlier)
            .count();
        println!(
            "{label}: honest accuracy over the attack {acc:.4} (no attack {base_acc:.4}, {} honest examples); \
             attacker flagged after {attacker_before:?} of its examples; attacker examples learned {attacker_learned}; \
             flagged {:?}; changes {}",
            attack_rows.len(),
            r.flagged_sources(),
            r.changes.len(),
        );
        for (i, change) in &r.changes {
            println!("  example {i}: {change:?}");
        }
    }
}

/// The flood again with everyone posting batches of `batch` rows in turn:
/// honest accuracy over the attack against the same batching unattacked.
fn batched_flood(elec2: &[serde_json::Value]) {
    println!(
        "\n## flood, everyone posting batches in turn (attacker: 5 inverted copies of each honest batch)"
    );
    println!(
        "| batch | honest accuracy, no attack | attack, guard on | attack, guard off | attacker examples learned (on) | flagged (on) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | --- |");
    for batch in [20, 100, 300, 1000] {
        let (rows, is_honest) = flood_in_batches(elec2, 22_656, 5, batch);
        let clean = harness::rows_in_batches(elec2, &["h0", "h1", "h2", "h3"], batch);
        let base = run(&clean, &Guard::on()).accuracy(|i| i >= 22_656);
        let first_attack = is_honest.iter().position(|h| !h).unwrap_or(0);
        let honest_after = |i: usize| i >= first_attack && is_honest[i];
        let on = run(&rows, &Guard::on());
        if std::env::var_os("SHOW_CHANGES").is_some() {
            for (i, c) in on.changes.iter().take(6) {
                println!("  example {i}: {c:?}");
            }
        }
        let off = run(&rows, &Guard::off());
        let learned = (first_attack..rows.len())
            .filter(|&i| {
                !is_honest[i] && !on.outcomes[i].held_for_labels && !on.outcomes[i].outlier
            })
            .count();
        println!(
            "| {batch} | {base:.4} | {:.4} | {:.4} | {learned} | {:?} |",
            on.accuracy(honest_after),
            off.accuracy(honest_after),
            on.flagged_sources(),
        );
    }
}

/// The detectors' cost: the harness over Elec2 (score, learn, publish
/// every 32) with the guard off (A) and on (B), in interleaved rounds;
/// medians and their ratio.
fn cost(elec2: &[serde_json::Value]) {
    let rows = rows(elec2, &["h0", "h1", "h2", "h3"]);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        for (guard, times) in [(Guard::off(), &mut off), (Guard::on(), &mut on)] {
            let start = std::time::Instant::now();
            std::hint::black_box(run(&rows, &guard));
            times.push(start.elapsed().as_secs_f64() * 1e9 / rows.len() as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut off), median(&mut on));
    println!(
        "\n## cost (Elec2, {} examples, 9 interleaved rounds, medians)",
        rows.len()
    );
    println!(
        "guard off {a:.0} ns/example, guard on {b:.0} ns/example: detectors add {:.0} ns/example (ratio {:.3})",
        b - a,
        b / a
    );
}
