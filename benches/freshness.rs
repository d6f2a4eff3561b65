//! Freshness: time from a feedback's 202 to the first predict that
//! reflects it, with the default training settings (minibatch 32,
//! max_wait_ms 50, so a lone example waits for its minibatch to time out).
//! Target: under 2 x max_wait_ms.
//!
//! Each probe sends one example with a never-seen categorical feature
//! `probe=<i>` labelled 1, then predicts `{"probe": "<i>"}` in a loop until
//! the answer differs from the one before the feedback. Measured idle and
//! while a background client streams feedback batches.
//!
//! Run: `cargo bench --bench freshness`.

use std::time::{Duration, Instant};

use eddy::config::Config;

mod common;
use serde_json::{Value, json};

const PROBES: usize = 40;

/// P(label 1) for the probe feature `probe=<i>`.
async fn p1(client: &reqwest::Client, base: &str, i: usize) -> f64 {
    let body = json!({ "features": { "probe": i.to_string() } });
    let v = common::post_json(client, &format!("{base}/v1/models/demo/predict"), &body).await;
    v["probabilities"]["1"].as_f64().expect("p")
}

async fn probe_run(base: &str, offset: usize) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for i in offset..offset + PROBES {
        let before = p1(&client, base, i).await;
        let r = client
            .post(format!("{base}/v1/models/demo/feedback"))
            .json(&json!({ "features": { "probe": i.to_string() }, "label": 1 }))
            .send()
            .await
            .expect("feedback");
        assert_eq!(r.status(), 202);
        let accepted = Instant::now();
        loop {
            let now = p1(&client, base, i).await;
            if now != before {
                out.push(accepted.elapsed());
                break;
            }
            assert!(
                accepted.elapsed() < Duration::from_secs(5),
                "feedback never showed"
            );
        }
    }
    out
}

fn report(label: &str, mut d: Vec<Duration>) {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    println!(
        "{label}: median {:.1} ms, p90 {:.1} ms, max {:.1} ms over {} probes (target < 100 ms)",
        ms(d[d.len() / 2]),
        ms(d[d.len() * 9 / 10]),
        ms(d[d.len() - 1]),
        d.len()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let server = common::start(Config::builtin().expect("config")).await;
        let base = server.base.clone();

        report("idle", probe_run(&base, 0).await);

        // Background feedback: batches of 500 Elec2-like rows, back to back.
        let load_stop = tokio_util::sync::CancellationToken::new();
        let load = {
            let base = base.clone();
            let load_stop = load_stop.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let batch: Vec<Value> = (0..500)
                    .map(|i| json!({ "features": { "nswprice": (i % 97) as f64 / 97.0, "period": (i % 48) as f64 / 48.0 }, "label": i % 2 }))
                    .collect();
                let body = json!({ "examples": batch });
                let mut sent = 0u64;
                while !load_stop.is_cancelled() {
                    let r = client.post(format!("{base}/v1/models/demo/feedback")).json(&body).send().await.expect("load");
                    if r.status() == 202 {
                        sent += 500;
                    }
                }
                sent
            })
        };
        let t = Instant::now();
        let under_load = probe_run(&base, PROBES).await;
        load_stop.cancel();
        let sent = load.await.expect("load task");
        report(
            &format!("under load ({:.0} background examples/s)", sent as f64 / t.elapsed().as_secs_f64()),
            under_load,
        );
        server.stop().await;
    });
}
