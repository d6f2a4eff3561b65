//! An open-loop load client for `benches/soak.sh`: predicts and feedback
//! batches sent at fixed rates (not as fast as answers come back, so a slow
//! server shows as latency, not as a lower rate), with predict latency
//! percentiles and feedback outcomes printed per window.
//!
//! Run: `cargo run --release --example soak_client -- ADDR SECONDS
//! PREDICT_PER_S FEEDBACK_BATCHES_PER_S PREDICT_BODY FEEDBACK_BODY [WINDOW_S]`
//! Output, one line per window, tab separated:
//! `t_s predicts p50_us p99_us predict_errors batches accepted_202
//! refused_429 other_errors missed_ticks`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Semaphore};

/// Requests in flight at once, per kind; a tick that finds none free is
/// counted as missed instead of queueing without bound.
const IN_FLIGHT: usize = 256;

#[derive(Default)]
struct Window {
    predict_us: Mutex<Vec<u32>>,
    predict_errors: AtomicU64,
    batches: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    feedback_errors: AtomicU64,
    missed: AtomicU64,
}

fn arg(args: &[String], i: usize, what: &str) -> String {
    args.get(i)
        .cloned()
        .unwrap_or_else(|| panic!("missing argument {i}: {what}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = arg(&args, 1, "ADDR");
    let seconds: u64 = arg(&args, 2, "SECONDS").parse().expect("SECONDS");
    let predict_rate: f64 = arg(&args, 3, "PREDICT_PER_S").parse().expect("rate");
    let feedback_rate: f64 = arg(&args, 4, "FEEDBACK_BATCHES_PER_S")
        .parse()
        .expect("rate");
    let predict_body = std::fs::read(arg(&args, 5, "PREDICT_BODY")).expect("predict body");
    let feedback_body = std::fs::read(arg(&args, 6, "FEEDBACK_BODY")).expect("feedback body");
    let window_s: u64 = args.get(7).map_or(10, |w| w.parse().expect("WINDOW_S"));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .expect("client");
    let window = Arc::new(Mutex::new(Arc::new(Window::default())));
    let end = Instant::now() + Duration::from_secs(seconds);

    let predict = spawn_ticker(
        predict_rate,
        end,
        window.clone(),
        client.clone(),
        format!("http://{addr}/v1/models/demo/predict"),
        predict_body,
        |w, started, result| async move {
            match result {
                Ok(200) => {
                    let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    w.predict_us.lock().await.push(us);
                }
                _ => {
                    w.predict_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        },
    );
    let feedback = spawn_ticker(
        feedback_rate,
        end,
        window.clone(),
        client,
        format!("http://{addr}/v1/models/demo/feedback"),
        feedback_body,
        |w, _, result| async move {
            w.batches.fetch_add(1, Ordering::Relaxed);
            let counter = match result {
                Ok(202) => &w.accepted,
                Ok(429) => &w.refused,
                _ => &w.feedback_errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        },
    );

    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(window_s));
    ticks.tick().await;
    println!(
        "t_s\tpredicts\tp50_us\tp99_us\tpredict_errors\tbatches\taccepted\trefused_429\tother_errors\tmissed"
    );
    while Instant::now() < end {
        ticks.tick().await;
        let done = std::mem::replace(&mut *window.lock().await, Arc::new(Window::default()));
        let mut us = std::mem::take(&mut *done.predict_us.lock().await);
        us.sort_unstable();
        let pct = |q: f64| {
            if us.is_empty() {
                0
            } else {
                us[((us.len() - 1) as f64 * q).round() as usize]
            }
        };
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            started.elapsed().as_secs(),
            us.len(),
            pct(0.5),
            pct(0.99),
            done.predict_errors.load(Ordering::Relaxed),
            done.batches.load(Ordering::Relaxed),
            done.accepted.load(Ordering::Relaxed),
            done.refused.load(Ordering::Relaxed),
            done.feedback_errors.load(Ordering::Relaxed),
            done.missed.load(Ordering::Relaxed),
        );
    }
    predict.abort();
    feedback.abort();
}

/// Sends `body` to `url` `rate` times a second until `end`, each answer
/// recorded by `record` into the window current when it arrives.
fn spawn_ticker<F, Fut>(
    rate: f64,
    end: Instant,
    window: Arc<Mutex<Arc<Window>>>,
    client: reqwest::Client,
    url: String,
    body: Vec<u8>,
    record: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Arc<Window>, Instant, Result<u16, reqwest::Error>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    // Leaked once: each request sends the same bytes without a copy.
    let body: &'static [u8] = Box::leak(body.into_boxed_slice());
    tokio::spawn(async move {
        if rate <= 0.0 {
            return;
        }
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while Instant::now() < end {
            ticks.tick().await;
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                window.lock().await.missed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let request = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body);
            let window = window.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = match request.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        r.bytes().await.map(|_| status)
                    }
                    Err(e) => Err(e),
                };
                let w = window.lock().await.clone();
                record(w, started, result).await;
                drop(slot);
            });
        }
    })
}
