//! Start-up and shutdown: readiness, graceful stop that trains what is
//! queued, and the binary refusing a bad config before binding.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn shutdown_trains_and_publishes_what_is_queued() {
    // A minibatch that never fills and a long wait: the examples sit in the
    // trainer's hands until shutdown.
    let app = spawn_app(
        "[[models]]\nname = \"demo\"\ntask = \"binary\"\n[models.training]\nminibatch_size = 1000\nmax_wait_ms = 600000",
    )
    .await;
    assert_eq!(app.get("/readyz").await.0, 200);
    assert_eq!(app.get("/healthz").await, (200, json!({ "status": "ok" })));
    let examples: Vec<_> = (0..10)
        .map(|i| json!({ "features": { "x": i }, "label": i % 2 }))
        .collect();
    assert_eq!(
        app.feedback("demo", json!({ "examples": examples }))
            .await
            .0,
        202
    );
    assert_eq!(app.info("demo").await["version_examples_trained"], 0);
    let state = app.state.clone();
    app.stop().await.expect("clean stop");
    let model = state.model("demo").expect("model");
    let live = model.store.live();
    assert_eq!(
        live.examples_trained, 10,
        "queued feedback was trained at shutdown"
    );
    assert!(live.version > 1);
}

#[test]
fn bad_config_exits_non_zero_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("serve")
        .env_clear()
        .env("EDDY_MODELS__DEMO__HASH_BITS", "99")
        .env("EDDY_SERVER__LISTEN", "127.0.0.1:0")
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("models[demo].hash_bits"), "{stderr}");

    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("eddy.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:0\"\nport = 3\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .env_clear()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server") && stderr.contains("port"),
        "{stderr}"
    );
}

#[test]
fn sigterm_stops_the_binary_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut child, addr, _) = start_binary(dir.path());
    // The server answers, then stops on SIGTERM with exit code 0.
    let mut stream = std::net::TcpStream::connect(&addr).expect("connects");
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls the binary's `/readyz` until it answers 200 (the log replayed).
async fn wait_ready(client: &reqwest::Client, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends a request and reads its JSON answer.
async fn answer(request: reqwest::RequestBuilder) -> serde_json::Value {
    request
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

/// The binary on `dir`: its child process and where it listens.
fn start_binary(dir: &std::path::Path) -> (std::process::Child, String, String) {
    start_binary_with(dir, &[])
}

/// As `start_binary`, with more `EDDY_*` settings.
fn start_binary_with(
    dir: &std::path::Path,
    settings: &[(&str, &str)],
) -> (std::process::Child, String, String) {
    let b = crate::helpers::start_binary(dir, settings);
    (b.child, b.addr, b.admin)
}

/// Posts `examples` to `demo` until accepted (202) and waits until the
/// published version has trained them all. The feedback threads are
/// niced and, with the trainers, kept off one CPU: on a busy CI
/// machine the request may be refused 429 (retried under the same
/// `Idempotency-Key`) and training may wait a while.
async fn feed_and_train(addr: &str, examples: Vec<serde_json::Value>) {
    let client = reqwest::Client::new();
    let n = examples.len();
    let body = json!({ "examples": examples });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client
            .post(format!("http://{addr}/v1/models/demo/feedback"))
            .header("Idempotency-Key", "feed-and-train")
            .json(&body)
            .send()
            .await
            .expect("feedback");
        match r.status().as_u16() {
            202 => break,
            429 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            status => panic!("feedback answered {status}: {:?}", r.text().await),
        }
    }
    loop {
        let info = answer(client.get(format!("http://{addr}/v1/models/demo"))).await;
        if info["version_examples_trained"] == n {
            break;
        }
        assert!(Instant::now() < deadline, "{info}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// SIGKILL, then restart: the model comes back from its last snapshot with
/// identical predictions under the same version, and new versions continue
/// above every number the killed process could have used.
#[tokio::test]
async fn a_killed_server_restarts_from_its_snapshot_predicting_the_same() {
    use serde_json::{Value, json};
    let dir = tempfile::tempdir().expect("dir");
    let client = reqwest::Client::new();
    let (mut child, addr, admin) = start_binary(dir.path());
    let examples: Vec<Value> = (0..300)
        .map(|i| json!({ "features": { "x": f64::from(i % 13), "c": format!("k{}", i % 3) }, "label": i % 2 }))
        .collect();
    feed_and_train(&addr, examples).await;
    let snap = answer(client.post(format!("http://{admin}/admin/models/demo/snapshot"))).await;
    let saved = snap["snapshot"]["version"].as_u64().expect("version");
    let probes = [
        json!({ "x": 2.0, "c": "k1" }),
        json!({ "x": 9.0, "c": "k0" }),
    ];
    let predict = |addr: String, features: Value| {
        answer(
            client
                .post(format!("http://{addr}/v1/models/demo/predict"))
                .json(&json!({ "features": features })),
        )
    };
    let mut before = Vec::new();
    for p in &probes {
        before.push(predict(addr.clone(), p.clone()).await["probabilities"].clone());
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let (mut child, addr, _) = start_binary(dir.path());
    for (p, want) in probes.iter().zip(&before) {
        let got = predict(addr.clone(), p.clone()).await;
        assert_eq!(&got["probabilities"], want, "identical after the kill");
        assert_eq!(got["model_version"].as_u64(), Some(saved), "{got}");
    }
    let r = client
        .post(format!("http://{addr}/v1/models/demo/feedback"))
        .json(&json!({ "features": { "x": 1.0, "c": "k0" }, "label": 1 }))
        .send()
        .await
        .expect("feedback");
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = answer(client.get(format!("http://{addr}/v1/models/demo"))).await;
        if info["version_examples_trained"] == 301 {
            // Above the block of numbers the killed process had reserved.
            assert!(info["version"].as_u64() > Some(saved + 1), "{info}");
            break;
        }
        assert!(Instant::now() < deadline, "{info}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("kill");
    child.wait().expect("reaped");
}

/// kill -9 right after the last 202 under `fsync = "always"`: every
/// acknowledged example comes back from the feedback log, trained exactly
/// once, and with `minibatch_size = 1` the restarted server predicts
/// exactly as an uninterrupted one fed the same requests in the same order.
#[tokio::test]
async fn acknowledged_feedback_survives_kill_9_and_is_trained_exactly_once() {
    use serde_json::{Value, json};
    let settings = [
        ("EDDY_STORAGE__FSYNC", "always"),
        ("EDDY_MODELS__DEMO__TRAINING__MINIBATCH_SIZE", "1"),
    ];
    let requests: Vec<Value> = (0..40)
        .map(|r| {
            let examples: Vec<Value> = (0..10)
                .map(|i| {
                    let x = f64::from((r * 10 + i) % 13);
                    json!({ "features": { "x": x, "c": format!("k{}", i % 3) }, "label": u8::from(x > 6.0) })
                })
                .collect();
            json!({ "examples": examples })
        })
        .collect();
    let client = reqwest::Client::new();
    let probes = [
        json!({ "x": 2.0, "c": "k1" }),
        json!({ "x": 9.0, "c": "k0" }),
    ];
    let run = |addr: String| {
        let client = client.clone();
        let requests = requests.clone();
        async move {
            let mut acknowledged = 0;
            for body in &requests {
                let r = client
                    .post(format!("http://{addr}/v1/models/demo/feedback"))
                    .json(body)
                    .send()
                    .await
                    .expect("feedback");
                assert_eq!(r.status(), 202);
                acknowledged += 10;
            }
            acknowledged
        }
    };
    let trained = |addr: String, n: u64| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let info = answer(client.get(format!("http://{addr}/v1/models/demo"))).await;
                if info["version_examples_trained"].as_u64() >= Some(n)
                    && info["feedback_processed"] == info["feedback_accepted"]
                {
                    return info;
                }
                assert!(Instant::now() < deadline, "{info}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let predictions = |addr: String| {
        let client = client.clone();
        let probes = probes.clone();
        async move {
            let mut out = Vec::new();
            for p in probes {
                let got = answer(
                    client
                        .post(format!("http://{addr}/v1/models/demo/predict"))
                        .json(&json!({ "features": p })),
                )
                .await;
                out.push(got["probabilities"].clone());
            }
            out
        }
    };

    // The reference: the same requests, uninterrupted.
    let reference_dir = tempfile::tempdir().expect("dir");
    let (mut reference, addr, _) = start_binary_with(reference_dir.path(), &settings);
    let n = run(addr.clone()).await;
    trained(addr.clone(), n).await;
    let want = predictions(addr).await;
    reference.kill().expect("kill");
    reference.wait().expect("reaped");

    let dir = tempfile::tempdir().expect("dir");
    let (mut child, addr, _) = start_binary_with(dir.path(), &settings);
    let acknowledged = run(addr).await;
    child.kill().expect("SIGKILL right after the last 202");
    child.wait().expect("reaped");

    let (mut child, addr, _) = start_binary_with(dir.path(), &settings);
    let info = trained(addr.clone(), acknowledged).await;
    assert_eq!(
        info["examples_trained"].as_u64(),
        Some(acknowledged),
        "every acknowledged example trained exactly once: {info}"
    );
    assert_eq!(predictions(addr).await, want, "as if never interrupted");
    child.kill().expect("kill");
    child.wait().expect("reaped");
}

/// With the monitor on and an attacker among the sources, kill -9 after
/// the trainer dealt with everything, restart: the restored snapshot plus
/// the replayed log give the same weights, versions and monitor state
/// (windows, last-good, candidate, blamed sources, rolling quality) and
/// ingestion guard state (quarantine, flags, waiting examples) as the
/// process that was killed, and an operator's pause and readmission stay.
#[tokio::test]
async fn replay_after_kill_9_reproduces_the_monitor_and_operator_state_exactly() {
    use serde_json::{Value, json};
    let settings = [
        ("EDDY_MODELS__DEMO__HASH_BITS", "12"),
        (
            "EDDY_MODELS__DEMO__MONITOR__TRUSTED_SOURCES",
            "[\"trusted\"]",
        ),
    ];
    let dir = tempfile::tempdir().expect("dir");
    let client = reqwest::Client::new();
    let (mut child, addr, admin) = start_binary_with(dir.path(), &settings);
    let rows = crate::streams::dataset("elec2");
    let feed = |examples: Vec<Value>, source: &'static str| {
        let client = client.clone();
        let addr = addr.clone();
        async move {
            let r = client
                .post(format!("http://{addr}/v1/models/demo/feedback"))
                .json(&json!({ "examples": examples, "source": source }))
                .send()
                .await
                .expect("feedback");
            assert_eq!(r.status(), 202);
        }
    };
    let settle = |addr: String| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let info = answer(client.get(format!("http://{addr}/v1/models/demo"))).await;
                if info["feedback_processed"] == info["feedback_accepted"] {
                    return info;
                }
                assert!(Instant::now() < deadline, "{info}");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let admin_post = |path: &str| {
        client
            .post(format!("http://{admin}/admin/models/demo/{path}"))
            .send()
    };
    for (i, chunk) in rows[..5000].chunks(64).enumerate() {
        feed(chunk.to_vec(), "trusted").await;
        if i * 64 >= 2000 && i * 64 < 3500 {
            let inverted: Vec<Value> = chunk
                .iter()
                .flat_map(|r| {
                    let y = 1 - r["label"].as_u64().expect("0 or 1");
                    std::iter::repeat_n(json!({ "features": r["features"], "label": y }), 3)
                })
                .collect();
            feed(inverted, "attacker").await;
        }
        if i == 40 {
            settle(addr.clone()).await;
            // A snapshot with the trainer's state, mid-stream (skipped if
            // the gate holds a candidate right now).
            let _ = admin_post("snapshot").await.expect("snapshot");
        }
    }
    settle(addr.clone()).await;
    let _ = admin_post("sources/attacker/readmit")
        .await
        .expect("readmit");
    assert_eq!(
        admin_post("training/pause").await.expect("pause").status(),
        200
    );
    feed(rows[5000..5064].to_vec(), "trusted").await;
    let probes: Vec<Value> = rows[6000..6030]
        .iter()
        .map(|r| r["features"].clone())
        .collect();
    let state = |addr: String| {
        let client = client.clone();
        let probes = probes.clone();
        async move {
            let info = answer(client.get(format!("http://{addr}/v1/models/demo"))).await;
            let mut predictions = Vec::new();
            for p in &probes {
                let got = answer(
                    client
                        .post(format!("http://{addr}/v1/models/demo/predict"))
                        .json(&json!({ "features": p })),
                )
                .await;
                predictions.push(got["probabilities"].clone());
            }
            let m = &info["monitor"];
            json!({
                "version": info["version"],
                "examples_trained": info["examples_trained"],
                "version_examples_trained": info["version_examples_trained"],
                "last_good_version": info["last_good_version"],
                "rolled_back_from": info["rolled_back_from"],
                "training": info["training"],
                "monitor": {
                    "last_good_version": m["last_good_version"],
                    "candidate_version": m["candidate_version"],
                    "live": m["live"],
                    "baseline": m["baseline"],
                    "sources": m["sources"],
                    "blamed_sources": m["blamed_sources"],
                    "cooldown_left": m["cooldown_left"],
                    "unsettled_windows": m["unsettled_windows"],
                },
                // The ingestion guard's decisions: quarantine by reason and
                // source, waiting examples, flags, shares, rates.
                "guard": info["guard"],
                "predictions": predictions,
            })
        }
    };
    let before = state(addr.clone()).await;
    assert_eq!(before["training"], "paused", "{before}");
    assert!(
        before["guard"]["quarantined"].as_u64() > Some(0),
        "the guard kept some of the attacker's examples out: {before}"
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let (mut child, addr, _) = start_binary_with(dir.path(), &settings);
    wait_ready(&client, &addr).await;
    let after = state(addr.clone()).await;
    assert_eq!(
        after, before,
        "the restarted server is the killed one, bit for bit"
    );
    child.kill().expect("kill");
    child.wait().expect("reaped");
}

/// kill -9 in the middle of sustained feedback from four clients under
/// `fsync = "always"`: after the restart every acknowledged example is
/// trained, and nothing more than what was in flight when the process
/// died (acknowledged <= trained <= acknowledged + in flight).
#[tokio::test]
async fn kill_9_under_load_from_several_clients_keeps_every_acknowledged_example() {
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let settings = [("EDDY_STORAGE__FSYNC", "always")];
    let dir = tempfile::tempdir().expect("dir");
    let (mut child, addr, _) = start_binary_with(dir.path(), &settings);
    let acknowledged = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..4u32 {
        let (addr, acknowledged, sent) = (addr.clone(), acknowledged.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for r in 0..400u32 {
                let examples: Vec<_> = (0..10u32)
                    .map(|i| json!({ "features": { "x": f64::from((c * 7 + r + i) % 13) }, "label": (r + i) % 2 }))
                    .collect();
                sent.fetch_add(10, Ordering::SeqCst);
                let answer = client
                    .post(format!("http://{addr}/v1/models/demo/feedback"))
                    .json(&json!({ "examples": examples }))
                    .send()
                    .await;
                match answer {
                    Ok(a) if a.status() == 202 => {
                        acknowledged.fetch_add(10, Ordering::SeqCst);
                    }
                    // Refused (429) or cut off by the kill: not acknowledged.
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill while the clients are still sending.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.load(Ordering::SeqCst) < 2_000 {
        assert!(Instant::now() < deadline, "feedback never flowed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().expect("SIGKILL under load");
    child.wait().expect("reaped");
    for c in clients {
        let _ = c.await;
    }
    let (acked, sent) = (
        acknowledged.load(Ordering::SeqCst),
        sent.load(Ordering::SeqCst),
    );
    assert!(acked < sent, "the kill came before the clients finished");

    let (mut child, addr, _) = start_binary_with(dir.path(), &settings);
    let client = reqwest::Client::new();
    wait_ready(&client, &addr).await;
    let info = answer(client.get(format!("http://{addr}/v1/models/demo"))).await;
    let trained = info["examples_trained"].as_u64().expect("count");
    // In flight at the kill: at most one request of 10 per client.
    assert!(
        acked <= trained && trained <= acked + 4 * 10,
        "acknowledged {acked}, trained {trained}"
    );
    child.kill().expect("kill");
    child.wait().expect("reaped");
}

/// What the kernel is asked for (Linux): by default the feedback threads
/// at `feedback_nice` and the trainers at `trainer_nice` 0, both off the
/// lowest-numbered CPU (`request_cpus` 1, when there are two or more),
/// while the request threads, the log's fsync thread and the snapshot
/// threads (started later, from those background threads) keep the
/// request threads' policy, niceness and CPUs; with `background_policy =
/// "idle"` the feedback and trainer threads at `SCHED_IDLE` (the threads
/// they start still as the request threads); with `request_cpus = 0`
/// every thread on every CPU. Transparent huge pages off for the process unless
/// `server.huge_pages`. Read from /proc right after the servers learned
/// and snapshotted (the snapshot threads outlive a write by 5 s).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_background_threads_give_way_and_huge_pages_stay_off() {
    /// A thread's name, scheduling policy (stat field 41), niceness (field
    /// 19) and the CPUs it may run on.
    type Thread = (String, u32, i32, Vec<usize>);
    fn threads_of(pid: u32) -> Vec<Thread> {
        let mut out = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
            let path = task.expect("task").path();
            let (Ok(comm), Ok(stat), Ok(status)) = (
                std::fs::read_to_string(path.join("comm")),
                std::fs::read_to_string(path.join("stat")),
                std::fs::read_to_string(path.join("status")),
            ) else {
                continue; // the thread ended meanwhile
            };
            // Fields after the command name, which ends at the last ')'.
            let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
                .split(' ')
                .collect();
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .expect("Cpus_allowed_list");
            out.push((
                comm.trim().to_owned(),
                fields[41 - 3].parse().expect("policy"),
                fields[19 - 3].parse().expect("nice"),
                cpu_list(cpus.trim()),
            ));
        }
        out
    }
    /// "0-2,5" as [0, 1, 2, 5].
    fn cpu_list(list: &str) -> Vec<usize> {
        let mut cpus = Vec::new();
        for part in list.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            cpus.extend(a.parse::<usize>().expect("cpu")..=b.parse::<usize>().expect("cpu"));
        }
        cpus
    }
    /// "THP_enabled" of /proc/PID/status (Linux 5.0 and later).
    fn thp(pid: &str) -> Option<String> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_owned()))
    }
    /// Feeds `demo`, waits until it has trained the examples, snapshots it
    /// and reads its threads: the log's fsync thread and the snapshot
    /// threads exist by then.
    async fn learn(pid: u32, addr: &str, admin: &str) -> Vec<Thread> {
        let client = reqwest::Client::new();
        let examples = (0..50)
            .map(|i| json!({ "features": { "x": i }, "label": i % 2 }))
            .collect();
        feed_and_train(addr, examples).await;
        let snap = answer(client.post(format!("http://{admin}/admin/models/demo/snapshot"))).await;
        assert!(snap["snapshot"]["version"].is_u64(), "{snap}");
        threads_of(pid)
    }
    let dir = tempfile::tempdir().expect("dir");
    let (mut child, addr, admin) = start_binary(dir.path());
    let (idle_dir, everywhere_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (mut idle, idle_addr, idle_admin) = start_binary_with(
        idle_dir.path(),
        &[
            ("EDDY_SERVER__HUGE_PAGES", "true"),
            ("EDDY_SERVER__BACKGROUND_POLICY", "idle"),
        ],
    );
    let (mut everywhere, _, _) =
        start_binary_with(everywhere_dir.path(), &[("EDDY_SERVER__REQUEST_CPUS", "0")]);
    let seen = learn(child.id(), &addr, &admin).await;
    let idle_seen = learn(idle.id(), &idle_addr, &idle_admin).await;
    let everywhere_seen = threads_of(everywhere.id());
    let (off, on) = (thp(&child.id().to_string()), thp(&idle.id().to_string()));
    for c in [&mut child, &mut idle, &mut everywhere] {
        c.kill().expect("kill");
        c.wait().expect("reaped");
    }
    const IDLE: u32 = 5;
    let of = |seen: &[Thread], name: &str| -> Vec<(u32, i32, Vec<usize>)> {
        seen.iter()
            .filter(|(n, ..)| n.starts_with(name))
            .map(|(_, policy, nice, cpus)| (*policy, *nice, cpus.clone()))
            .collect()
    };
    let workers = of(&seen, "eddy-worker");
    assert!(!workers.is_empty(), "{seen:?}");
    // As the test runner runs, which the request threads inherit.
    let request = workers[0].clone();
    let (policy, base, all) = request.clone();
    // The lowest CPU kept free when there are two or more.
    let rest = if all.len() > 1 {
        all[1..].to_vec()
    } else {
        all.clone()
    };
    let as_requests = |seen: &[Thread], name: &str| {
        let t = of(seen, name);
        assert!(
            !t.is_empty() && t.iter().all(|t| *t == request),
            "{name} as the request threads {request:?}: {seen:?}"
        );
    };
    for name in [
        "eddy-worker",
        "eddy-wal-sync",
        "eddy-snapshots",
        "eddy-spawner",
    ] {
        as_requests(&seen, name);
        as_requests(&idle_seen, name);
    }
    // feedback_nice is absolute: 10, or the process's own if it is
    // higher; the trainers keep the niceness (0) but not the CPU.
    let feedback = of(&seen, "eddy-feedback");
    // The feedback lane's threads (`eddy-feedback-io`, the name cut to 15
    // bytes) among them.
    assert!(
        !of(&seen, "eddy-feedback-i").is_empty(),
        "feedback I/O threads: {seen:?}"
    );
    assert!(
        !feedback.is_empty()
            && feedback
                .iter()
                .all(|t| *t == (policy, base.max(10), rest.clone())),
        "feedback threads niced, off CPU {}: {seen:?}",
        all[0]
    );
    let trainers = of(&seen, "eddy-trainer");
    assert!(
        !trainers.is_empty() && trainers.iter().all(|t| *t == (policy, base, rest.clone())),
        "trainers off CPU {}: {seen:?}",
        all[0]
    );
    const LANE: &str = "eddy-feedback-i";
    for name in ["eddy-feedback", "eddy-trainer"] {
        let t: Vec<_> = idle_seen
            .iter()
            .filter(|(n, ..)| n.starts_with(name) && n != LANE)
            .map(|(_, policy, nice, cpus)| (*policy, *nice, cpus.clone()))
            .collect();
        assert!(
            !t.is_empty()
                && t.iter()
                    .all(|(policy, _, cpus)| *policy == IDLE && *cpus == rest),
            "{name} at SCHED_IDLE, off CPU {}: {idle_seen:?}",
            all[0]
        );
    }
    // The lane is niced, never idle: a SCHED_IDLE lane would leave its
    // connections unanswered (not even a 429) while predict takes every core.
    let lane = of(&idle_seen, LANE);
    assert!(
        !lane.is_empty()
            && lane
                .iter()
                .all(|t| *t == (policy, base.max(10), rest.clone())),
        "the feedback lane niced under the idle policy: {idle_seen:?}"
    );
    assert!(
        !of(&everywhere_seen, "eddy-feedback").is_empty()
            && !of(&everywhere_seen, "eddy-trainer").is_empty()
            && everywhere_seen.iter().all(|(_, _, _, cpus)| *cpus == all),
        "request_cpus = 0: {everywhere_seen:?}"
    );
    if thp("self").is_some() && std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists()
    {
        // (A kernel before 5.0 does not say; one without THP has none.)
        assert_eq!(off.as_deref(), Some("0"), "huge pages off by default");
        assert_eq!(
            on.as_deref(),
            Some("1"),
            "server.huge_pages = true leaves them on"
        );
    }
}
