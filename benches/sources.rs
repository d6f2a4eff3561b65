//! What per-source rate limits add to a feedback request
//! (`serving::sources`): charging a batch to one tracked self-declared
//! source, to a credential, a new name against a full table (the idle
//! check and `other`), and matching a token against ten.
//!
//! Run: `cargo bench --bench sources`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use eddy::config::Config;
use eddy::serving::sources::FeedbackSources;

/// One binary model, `demo`, with `extra` (a guard table, `[[sources]]`).
fn sources(extra: &str) -> FeedbackSources {
    let toml = format!("[[models]]\nname = \"demo\"\ntask = \"binary\"\n{extra}");
    FeedbackSources::new(&Config::from_toml_over_default(&toml).expect("valid config"))
}

fn bench(c: &mut Criterion) {
    // A rate no benchmark run reaches, so every charge is accepted.
    let open = sources("[models.guard]\nrate = 1e9\nburst = 1000000\nmax_sources = 1000\n");
    c.bench_function("charge 32 examples, one tracked source", |b| {
        b.iter(|| {
            open.charge("demo", None, black_box(&[(Some("crm"), 32)]))
                .expect("within the limit")
                .commit();
        })
    });
    let mut names = 0u64;
    let full = sources("[models.guard]\nrate = 1e-3\nburst = 1000\nmax_sources = 1000\n");
    for i in 0..1000 {
        let name = format!("n{i}");
        let _ = full.charge("demo", None, &[(Some(name.as_str()), 1)]);
    }
    c.bench_function("charge 1 example, new name, full table (to other)", |b| {
        b.iter(|| {
            names += 1;
            let name = format!("new-{names}");
            // `other` runs dry quickly; refused or not, the work is the same.
            let _ = black_box(full.charge("demo", None, &[(Some(name.as_str()), 1)]));
        })
    });
    let mut toml = String::new();
    for i in 0..10 {
        toml.push_str(&format!(
            "[[sources]]\nname = \"s{i}\"\ntoken = \"token-{i:032}\"\nrate = 1e9\nburst = 1000000\n"
        ));
    }
    let credentialed = sources(&toml);
    let token = format!("token-{:032}", 7);
    c.bench_function("authenticate among 10 tokens", |b| {
        b.iter(|| black_box(credentialed.authenticate(black_box(token.as_bytes()))))
    });
    let sender = credentialed.authenticate(token.as_bytes()).expect("known");
    c.bench_function("charge 32 examples, credential", |b| {
        b.iter(|| {
            credentialed
                .charge("demo", Some(&sender), black_box(&[(Some("s7"), 32)]))
                .expect("within the limit")
                .commit();
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
