//! `eddy train` and `eddy eval` with the real binary: train, serve and
//! predict agree with eval; out-of-core equals in-memory; bad rows; gzip
//! and stdin; a locked output directory.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use eddy::batch::{TrainOptions, train};
use eddy::data::{Input, ReadOptions};
use eddy::learn::{Example, FeatureHasher, LabelSpace, Learner, Params, TaskKind};
use serde_json::{Value, json};

use crate::helpers::{dataset, spawn_at};

/// Elec2 rows as CSV text (header `period,...,label`).
fn elec2_csv(rows: &[Value]) -> String {
    let names: Vec<String> = rows[0]["features"]
        .as_object()
        .expect("features")
        .keys()
        .cloned()
        .collect();
    let mut out = format!("{},label\n", names.join(","));
    for r in rows {
        let cells: Vec<String> = names.iter().map(|n| r["features"][n].to_string()).collect();
        out.push_str(&format!("{},{}\n", cells.join(","), r["label"]));
    }
    out
}

/// The JSON a successful command printed (its stderr when it failed).
fn json_of(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn eddy(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(args)
        .env_clear()
        .env("EDDY_STORAGE__DIR", dir)
        .output()
        .expect("eddy runs")
}

#[tokio::test]
async fn trained_snapshot_serves_exactly_what_eval_reports() {
    let dir = tempfile::tempdir().expect("dir");
    let rows = dataset("elec2");
    let (train_rows, test_rows) = rows[..6000].split_at(5000);
    let train_csv = dir.path().join("train.csv");
    let test_csv = dir.path().join("test.csv");
    std::fs::write(&train_csv, elec2_csv(train_rows)).expect("write");
    std::fs::write(&test_csv, elec2_csv(test_rows)).expect("write");
    let data = dir.path().join("data");
    let out = eddy(
        &data,
        &[
            "train",
            "--model",
            "demo",
            "--data",
            train_csv.to_str().expect("path"),
            "--epochs",
            "2",
            "--json",
        ],
    );
    let trained = json_of(&out);
    assert_eq!(trained["trained"]["examples"], 10_000);
    let out = eddy(
        &data,
        &[
            "eval",
            "--model",
            "demo",
            "--data",
            test_csv.to_str().expect("path"),
            "--json",
        ],
    );
    let eval = json_of(&out);
    assert_eq!(eval["rows"], 1000);

    // `eddy serve` on the same directory starts from the trained model
    // (and trusts it as last-good); its predictions give the same figures.
    let app = spawn_at("", &data, |_| {}).await.expect("serves");
    let info = app.info("demo").await;
    assert_eq!(info["version"], trained["snapshot"]["version"]);
    assert_eq!(info["last_good_version"], trained["snapshot"]["version"]);
    let (mut correct, mut log_loss) = (0usize, 0.0f64);
    for r in test_rows {
        let p = app.predict("demo", r["features"].clone()).await;
        correct += usize::from(p["label"] == r["label"]);
        let key = r["label"].to_string();
        let pt = p["probabilities"][key.as_str()].as_f64().expect("p");
        log_loss -= pt.clamp(1e-15, 1.0).ln();
    }
    let accuracy = correct as f64 / test_rows.len() as f64;
    assert_eq!(Some(accuracy), eval["accuracy"].as_f64());
    let served = log_loss / test_rows.len() as f64;
    let reported = eval["log_loss"].as_f64().expect("log_loss");
    assert!((served - reported).abs() < 1e-6, "{served} vs {reported}");
    let probe = test_rows[0]["features"].clone();
    let before = app.predict("demo", probe.clone()).await["probabilities"].clone();
    app.stop().await.expect("clean stop");

    // `init_snapshot` seeds a model that has no snapshot of its own.
    let other = tempfile::tempdir().expect("dir");
    let seeded = format!(
        "[[models]]\nname = \"demo\"\ntask = \"binary\"\ninit_snapshot = \"{}\"",
        data.join("demo").display()
    );
    let app = spawn_at(&seeded, other.path(), |_| {})
        .await
        .expect("serves");
    assert_eq!(app.predict("demo", probe).await["probabilities"], before);
    assert_eq!(
        app.info("demo").await["last_good_version"],
        trained["snapshot"]["version"]
    );
    // It learns on; the snapshot it writes at shutdown is its own.
    let examples: Vec<Value> = test_rows[..50].to_vec();
    let (status, body) = app.feedback("demo", json!({ "examples": examples })).await;
    assert_eq!(status, 202, "{body}");
    app.stop().await.expect("clean stop");

    // The export gives every row that holds a weight, with the names
    // `eddy train` saw hashed there, and the weights by name.
    let export_of = |dir: &std::path::Path| {
        json_of(&eddy(
            &data,
            &["snapshot", "export", dir.to_str().expect("path")],
        ))
    };
    let export = export_of(&data.join("demo"));
    let row = FeatureHasher::new(18).numeric("nswprice");
    let key = row.to_string();
    assert!(
        export["rows"][key.as_str()]["weights"].is_array(),
        "nswprice's row"
    );
    assert_eq!(export["rows"][key.as_str()]["names"], json!(["nswprice"]));
    let by_name = |export: &Value, name: &str| -> Value {
        export["features"]
            .as_array()
            .expect("features")
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let nswprice = by_name(&export, "nswprice");
    assert_eq!(nswprice["row"], row);
    assert_eq!(nswprice["kind"], "numeric");
    assert!(nswprice["std"].as_f64() > Some(0.0), "{nswprice}");
    assert_eq!(nswprice["weights"], export["rows"][key.as_str()]["weights"]);
    let names: Vec<&str> = export["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "nswdemand",
            "nswprice",
            "period",
            "transfer",
            "vicdemand",
            "vicprice"
        ]
    );
    // Victoria's columns are constant in these rows: known, but weightless.
    assert_eq!(by_name(&export, "vicprice")["weights"], json!([0.0]));
    assert_eq!(export["feature_names"]["complete"], true);
    assert_eq!(export["meta"]["last_good"], true);
    // The seeded server's own snapshot carries the names on.
    let served = export_of(&other.path().join("demo"));
    assert!(
        served["meta"]["version"].as_u64() > trained["snapshot"]["version"].as_u64(),
        "{}",
        served["meta"]
    );
    let served_nswprice = by_name(&served, "nswprice");
    assert_eq!(served_nswprice["row"], row);
    assert_ne!(
        served_nswprice["weights"], nswprice["weights"],
        "learned on"
    );
}

#[test]
fn out_of_core_training_equals_in_memory_for_the_same_order() {
    let rows = dataset("phishing");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("phishing.jsonl");
    let text: Vec<String> = rows.iter().map(Value::to_string).collect();
    std::fs::write(&path, text.join("\n")).expect("write");
    let model = eddy::config::Config::builtin()
        .expect("config")
        .models
        .remove(0);
    let space = Arc::new(LabelSpace::new(TaskKind::Binary, vec![]).expect("space"));
    let fresh = || Learner::new(Params::new(space.clone(), model.hash_bits), model.optimizer);

    let mut memory = fresh();
    let hasher = FeatureHasher::new(model.hash_bits);
    for r in &rows {
        let e = Example::from_json(&r.to_string(), &hasher, &space).expect("example");
        memory.learn_one(&e.features, e.target);
    }
    let streamed = |chunk: usize, shuffle_buffer: usize| {
        let mut learner = fresh();
        let options = TrainOptions {
            shuffle_buffer,
            read: ReadOptions {
                chunk,
                ..ReadOptions::default()
            },
            ..TrainOptions::default()
        };
        let trained = train(
            &mut learner,
            &[Input::File(path.clone())],
            &options,
            |_, _, _| {},
        )
        .expect("trains");
        assert_eq!(trained.examples, rows.len() as u64);
        learner
    };
    for chunk in [1, 7, 4096] {
        let file_order = streamed(chunk, 0);
        assert_eq!(
            file_order.params().weights.to_vec(),
            memory.params().weights.to_vec(),
            "chunks of {chunk}"
        );
        assert_eq!(file_order.params().bias, memory.params().bias);
    }
    // The default shuffles (the result differs from file order), and the
    // shuffled order depends on the seed alone, not on how the file was
    // chunked: out-of-core runs are reproducible.
    let shuffled = streamed(4096, TrainOptions::default().shuffle_buffer);
    assert_ne!(
        shuffled.params().weights.to_vec(),
        memory.params().weights.to_vec()
    );
    for chunk in [1, 7] {
        let again = streamed(chunk, TrainOptions::default().shuffle_buffer);
        assert_eq!(
            again.params().weights.to_vec(),
            shuffled.params().weights.to_vec(),
            "shuffled, chunks of {chunk}"
        );
    }
}

#[test]
fn bad_rows_name_file_and_line_and_are_skipped_only_when_allowed() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("rows.csv");
    std::fs::write(
        &path,
        "x,colour,label\n1.0,red,1\n2.0,blue,7\n3.0,green\n4.0,red,0\n",
    )
    .expect("write");
    let file = path.to_str().expect("path");
    let train = |extra: &[&str]| {
        let args: Vec<&str> = ["train", "--model", "demo", "--data", file]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        eddy(dir.path(), &args)
    };
    let out = train(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{file}:3")) && err.contains("label"),
        "{err}"
    );

    let out = train(&["--skip-bad-rows", "1"]);
    assert!(!out.status.success(), "two bad rows, one allowed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than 1 bad rows"));

    let out = train(&["--skip-bad-rows", "2", "--json"]);
    let summary = json_of(&out);
    assert_eq!(summary["trained"]["examples"], 2);
    assert_eq!(summary["trained"]["read"]["bad_rows"], 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("skipped {file}:3"))
            && stderr.contains(&format!("skipped {file}:4")),
        "{stderr}"
    );
}

#[test]
fn gzip_files_and_stdin_are_read() {
    let dir = tempfile::tempdir().expect("dir");
    let rows = dataset("elec2");
    let gz = dir.path().join("elec2.csv.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(elec2_csv(&rows[..2000]).as_bytes())
        .expect("gzip");
    std::fs::write(&gz, enc.finish().expect("gzip")).expect("write");
    let out = eddy(
        dir.path(),
        &[
            "train",
            "--model",
            "demo",
            "--data",
            gz.to_str().expect("path"),
            "--json",
        ],
    );
    let summary = json_of(&out);
    assert_eq!(summary["trained"]["rows"], 2000);

    let mut child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args([
            "eval",
            "--model",
            "demo",
            "--data",
            "-",
            "--format",
            "jsonl",
            "--prequential",
            "--json",
            "--snapshot",
            dir.path().join("demo").to_str().expect("path"),
        ])
        .env_clear()
        .env("EDDY_STORAGE__DIR", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("eddy runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let lines: Vec<String> = rows[2000..2500]
        .iter()
        .map(|r| json!(r).to_string())
        .collect();
    std::thread::spawn(move || stdin.write_all(lines.join("\n").as_bytes()));
    let out = child.wait_with_output().expect("eval ends");
    let eval = json_of(&out);
    assert_eq!(eval["rows"], 500);
    assert!(eval["accuracy"].as_f64() > Some(0.6), "{eval}");
}

#[test]
fn retraining_into_one_directory_prunes_by_the_configured_retention() {
    let dir = tempfile::tempdir().expect("dir");
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, elec2_csv(&dataset("elec2")[..300])).expect("write");
    let out = dir.path().join("model");
    let good = |v: u64| format!("snapshot-{v:020}.good.eddy");
    let train = |init: Option<std::path::PathBuf>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_eddy"));
        command
            .args(["train", "--model", "demo", "--json", "--data"])
            .arg(&csv)
            .arg("--out")
            .arg(&out);
        if let Some(path) = init {
            command.arg("--init").arg(path);
        }
        let run = command
            .env_clear()
            .env("EDDY_STORAGE__DIR", dir.path())
            .env("EDDY_STORAGE__SNAPSHOT_KEEP", "1")
            .env("EDDY_STORAGE__LAST_GOOD_KEEP", "0")
            .output()
            .expect("eddy runs");
        let version = json_of(&run)["snapshot"]["version"].clone();
        let mut left: Vec<String> = std::fs::read_dir(&out)
            .expect("out dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("snapshot-"))
            .collect();
        left.sort();
        (version, left)
    };
    assert_eq!(train(None), (json!(1), vec![good(1)]));
    // Each write keeps the newest last-good it found (a server on the
    // directory may hold it as its rollback target) and prunes the rest.
    assert_eq!(train(None), (json!(2), vec![good(1), good(2)]));
    assert_eq!(train(None), (json!(3), vec![good(2), good(3)]));
    // The snapshot training started from is kept too, by that run.
    assert_eq!(
        train(Some(out.join(good(2)))),
        (json!(4), vec![good(2), good(3), good(4)])
    );
    assert_eq!(train(None), (json!(5), vec![good(4), good(5)]));
    // Started from a copy elsewhere, its version number protects nothing.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("dir");
    std::fs::copy(out.join(good(4)), elsewhere.join(good(4))).expect("copy");
    assert_eq!(
        train(Some(elsewhere.join(good(4)))),
        (json!(6), vec![good(5), good(6)])
    );
}

#[test]
fn training_into_a_directory_another_process_owns_fails_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, elec2_csv(&dataset("elec2")[..50])).expect("write");
    let out = dir.path().join("model");
    let held = eddy::persist::DirLock::acquire(&out, "eddy serve").expect("lock");
    let args = [
        "train",
        "--model",
        "demo",
        "--data",
        csv.to_str().expect("path"),
    ];
    let out_arg = ["--out", out.to_str().expect("path")];
    let run = eddy(dir.path(), &[&args[..], &out_arg[..]].concat());
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains(&format!("model directory {} is in use", out.display()))
            && err.contains(&format!("pid {}, eddy serve", std::process::id())),
        "{err}"
    );
    drop(held);
    json_of(&eddy(
        dir.path(),
        &[&args[..], &out_arg[..], &["--json"]].concat(),
    ));
}

#[test]
fn eval_plots_the_rolling_figure_as_svg() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("elec2.csv");
    std::fs::write(&data, elec2_csv(&dataset("elec2")[..3000])).expect("write");
    let svg = dir.path().join("chart.svg");
    let args = [
        "eval",
        "--model",
        "demo",
        "--prequential",
        "--every",
        "500",
        "--data",
        data.to_str().expect("path"),
        "--plot",
        svg.to_str().expect("path"),
    ];
    let out = eddy(dir.path(), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).expect("chart written");
    assert!(
        text.starts_with("<svg") && text.contains("accuracy over the last 500 rows"),
        "{}",
        &text[..200.min(text.len())]
    );
    assert!(text.contains("<polyline"), "a line is drawn");
    // Too few rows for one point: a clear error, no file.
    let none = dir.path().join("none.svg");
    let mut args = args.map(str::to_owned);
    args[5] = "100000".into();
    args[9] = none.to_str().expect("path").into();
    let out = eddy(
        dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no rolling figures"));
}

/// `--monitor` runs the stream through the server's trainer and monitor:
/// a broken upstream's damage is refused at a row, shown on the chart.
#[test]
fn eval_through_the_monitor_marks_its_decisions() {
    let dir = tempfile::tempdir().expect("dir");
    let rows = crate::streams::stationary(12_000, 3, 5_000..6_000);
    let mut csv = String::from("a,b,c,label\n");
    for r in &rows {
        let f = &r["features"];
        csv.push_str(&format!(
            "{},{},{},{}\n",
            f["a"], f["b"], f["c"], r["label"]
        ));
    }
    let data = dir.path().join("broken.csv");
    std::fs::write(&data, csv).expect("write");
    let svg = dir.path().join("chart.svg");
    // The monitor's decisions: with the guard on, the broken rows would be
    // quarantined as outliers before the monitor saw them.
    let config = dir.path().join("eddy.toml");
    std::fs::write(
        &config,
        "[[models]]\nname = \"demo\"\ntask = \"binary\"\n[models.guard]\nenabled = false\n",
    )
    .expect("config");
    let out = eddy(
        dir.path(),
        &[
            "eval",
            "--config",
            config.to_str().expect("path"),
            "--model",
            "demo",
            "--prequential",
            "--monitor",
            "--json",
            "--data",
            data.to_str().expect("path"),
            "--plot",
            svg.to_str().expect("path"),
        ],
    );
    let eval = json_of(&out);
    let refusal = eval["markers"]
        .as_array()
        .expect("markers")
        .iter()
        .find(|m| m["kind"] == "gate_refused" || m["kind"] == "rollback")
        .unwrap_or_else(|| panic!("{eval}"));
    let row = refusal["row"].as_u64().expect("row");
    assert!((6_000..9_000).contains(&row), "after the break: {row}");
    assert!(
        std::fs::read_to_string(&svg)
            .expect("chart")
            .contains("#FF0000"),
        "a red marker"
    );
}
