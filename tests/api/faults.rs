//! Faults on real files: a torn end of the feedback log is truncated and
//! counted, damage in its middle stops start-up naming the file and offset
//! (or is truncated with `storage.repair`), and a full disk answers 507
//! with nothing accepted while predict goes on, until space returns.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::{dataset, sample, scrape, spawn_at};

const MODEL: &str = "[[models]]\nname = \"m\"\ntask = \"binary\"\nhash_bits = 10\n";

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir.join("m/wal"))
        .expect("wal dir")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    out.sort();
    out
}

async fn feed(app: &crate::helpers::TestApp, rows: &[Value]) {
    for chunk in rows.chunks(50) {
        let (status, body) = app.feedback("m", json!({ "examples": chunk })).await;
        assert_eq!(status, 202, "{body}");
    }
}

#[tokio::test]
async fn a_torn_log_end_is_cut_and_counted_and_middle_damage_stops_start_up() {
    let dir = tempfile::tempdir().expect("dir");
    let rows = dataset("elec2");
    let app = spawn_at(MODEL, dir.path(), |_| {}).await.expect("starts");
    feed(&app, &rows[..200]).await;
    app.wait_trained("m", 200).await;
    app.stop().await.expect("clean stop");

    // A crash mid-write: half a record at the end.
    let last = segments(dir.path()).pop().expect("a segment");
    let whole = std::fs::read(&last).expect("read");
    let mut torn = whole.clone();
    torn.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    std::fs::write(&last, &torn).expect("write");
    let app = spawn_at(MODEL, dir.path(), |_| {})
        .await
        .expect("starts past a torn end");
    assert_eq!(std::fs::read(&last).expect("read"), whole, "cut back");
    let text = scrape(&app).await;
    assert_eq!(
        sample(&text, r#"eddy_feedback_log_torn_tails_total{model="m"}"#),
        1.0
    );
    feed(&app, &rows[200..300]).await;
    app.wait_trained("m", 300).await;
    app.stop().await.expect("clean stop");

    // A flipped bit in the middle: refused, naming the file and offset.
    let first = segments(dir.path()).remove(0);
    let mut bytes = std::fs::read(&first).expect("read");
    bytes[200] ^= 0x10;
    std::fs::write(&first, &bytes).expect("write");
    let refused = spawn_at(MODEL, dir.path(), |_| {}).await;
    let message = format!("{:#}", refused.err().expect("refused"));
    assert!(
        message.contains(&first.display().to_string())
            && message.contains("at byte")
            && message.contains("--repair"),
        "{message}"
    );
    let app = spawn_at(MODEL, dir.path(), |c| c.storage.repair = true)
        .await
        .expect("starts with repair");
    assert_eq!(
        app.predict("m", rows[0]["features"].clone()).await["model"],
        "m"
    );
    app.stop().await.expect("clean stop");
}

/// Unmounts at the end of the test, whatever happens.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_507_and_feedback_returns_with_the_space() {
    let dir = tempfile::tempdir().expect("dir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "skipped: cannot mount a tmpfs here (needs root); the wal unit tests cover ENOSPC"
        );
        return;
    }
    let _mount = Mount(dir.path().to_owned());
    let rows = dataset("elec2");
    let app = spawn_at(MODEL, dir.path(), |_| {}).await.expect("starts");
    // Leave almost no room.
    let filler = dir.path().join("filler");
    let free = 1 << 20;
    let _ = std::fs::write(&filler, vec![0u8; free]);
    let mut refused = None;
    for chunk in rows.chunks(200).take(50) {
        let (status, body) = app.feedback("m", json!({ "examples": chunk })).await;
        if status != 202 {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("the disk filled up");
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage");
    let accepted = app.info("m").await["feedback_accepted"].clone();
    assert_eq!(
        app.predict("m", rows[0]["features"].clone()).await["model"],
        "m"
    );
    let text = scrape(&app).await;
    assert!(
        sample(
            &text,
            r#"eddy_feedback_log_write_failures_total{model="m"}"#
        ) >= 1.0
    );
    assert_eq!(
        app.info("m").await["feedback_accepted"],
        accepted,
        "nothing of the refused batch was accepted"
    );
    std::fs::remove_file(&filler).expect("free the space");
    let (status, body) = app.feedback("m", json!({ "examples": &rows[..10] })).await;
    assert_eq!(status, 202, "accepted again once space returns: {body}");
    app.stop().await.expect("clean stop");
}
