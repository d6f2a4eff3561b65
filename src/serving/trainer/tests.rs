//! Unit tests of the trainer itself, driven by hand on a manual clock:
//! a failed publish is retried, pause holds what it takes and resume
//! learns it, and a candidate the gate holds at shutdown is neither
//! published nor written to disk.

use std::sync::Mutex;

use super::*;
use crate::config::Config;
use crate::learn::{FeatureHasher, FeatureVec, Params, RawFeatures, Target};
use crate::serving::clock::ManualClock;
use crate::serving::queue::{FeedbackQueue, memory_channel};
use crate::serving::store::ModelStore;

fn model(extra: &str) -> ModelConfig {
    Config::from_toml_over_default(&format!(
        "[[models]]\nname = \"m\"\ntask = \"binary\"\nhash_bits = 8\n{extra}"
    ))
    .expect("config")
    .models
    .remove(0)
}

fn x(v: f64) -> FeatureVec {
    let text = format!(r#"{{"x": {v}}}"#);
    let raw: RawFeatures = serde_json::from_str(&text).expect("json");
    FeatureHasher::new(8).hash(&raw).expect("hash")
}

/// `label = x > 0` for x spread over [-1, 1), deterministic.
fn row(i: usize) -> (FeatureVec, usize) {
    let v = ((i * 53) % 200) as f64 / 100.0 - 0.995;
    (x(v), usize::from(v > 0.0))
}

/// The first `n` rows, correctly labelled, without a source.
fn honest(n: usize) -> Vec<Feedback> {
    (0..n)
        .map(|i| {
            let (x, y) = row(i);
            Feedback::labelled(x, Target::Class(y), None)
        })
        .collect()
}

fn send(queue: &FeedbackQueue, items: Vec<Feedback>) {
    queue
        .reserve(items.len())
        .expect("room")
        .send(items)
        .expect("appended");
}

/// A sink that refuses while `failing` is set, else publishes to a store.
struct FlakySink {
    store: ModelStore,
    failing: Mutex<bool>,
}

impl VersionSink for FlakySink {
    fn publish(
        &self,
        params: crate::learn::Params,
        meta: PublishMeta,
    ) -> std::io::Result<Arc<ModelVersion>> {
        if *self.failing.lock().expect("lock") {
            return Err(std::io::Error::other("disk says no"));
        }
        self.store.publish(params, meta)
    }

    fn publish_as(
        &self,
        params: crate::learn::Params,
        meta: PublishMeta,
        version: u64,
    ) -> std::io::Result<Arc<ModelVersion>> {
        self.store.publish_as(params, meta, version)
    }
}

struct Rig {
    trainer: Trainer,
    queue: FeedbackQueue,
    clock: Arc<ManualClock>,
}

fn rig(
    m: &ModelConfig,
    sink: Arc<dyn VersionSink>,
    live: Arc<ModelVersion>,
    snapshots: Option<SnapshotPolicy>,
) -> Rig {
    let space = Arc::new(m.label_space().expect("space"));
    let learner = Learner::new(Params::new(space, m.hash_bits), m.optimizer);
    let (queue, stream) = memory_channel(m.training.queue_capacity.get());
    let (_tx, commands) = mpsc::channel(8);
    let clock = Arc::new(ManualClock::default());
    let monitor = Monitor::fresh(m, live.version, &learner);
    let trainer = Trainer::new(TrainerParts {
        model: Arc::from("m"),
        learner,
        stream,
        sink,
        stats: Arc::default(),
        config: m.training,
        snapshots,
        live,
        commands,
        monitor,
        guard: m
            .guard
            .enabled
            .then(|| crate::serving::guard::Guard::new(&m.guard)),
        events: Arc::default(),
        clock: clock.clone(),
        journal: queue.log().clone(),
        recovery: None,
    });
    Rig {
        trainer,
        queue,
        clock,
    }
}

#[test]
fn a_failed_publish_keeps_the_live_version_and_is_retried() {
    let m = model("[models.monitor]\nenabled = false");
    let space = Arc::new(m.label_space().expect("space"));
    let sink = Arc::new(FlakySink {
        store: ModelStore::new(Params::new(space, m.hash_bits)),
        failing: Mutex::new(true),
    });
    let live = sink.store.live();
    let mut r = rig(&m, sink.clone(), live, None);
    send(&r.queue, honest(32));
    assert_eq!(r.trainer.step(32), 32);
    assert_eq!(
        r.trainer.live().version,
        1,
        "nothing published while the sink fails"
    );
    assert_eq!(sink.store.live().version, 1);
    assert_eq!(r.trainer.stats().publishes.load(Ordering::Relaxed), 0);
    *sink.failing.lock().expect("lock") = false;
    r.clock.advance(Duration::from_millis(50));
    r.trainer.publish_live(true);
    assert_eq!(
        r.trainer.live().version,
        2,
        "the trained work is published on the retry"
    );
    assert_eq!(sink.store.live().examples_trained, 32);
}

#[test]
fn pause_holds_what_it_takes_and_resume_learns_it() {
    let m = model("");
    let store = Arc::new(ModelStore::new(Params::new(
        Arc::new(m.label_space().expect("space")),
        m.hash_bits,
    )));
    let mut r = rig(&m, store.clone(), store.live(), None);
    let (tx, _rx) = oneshot::channel();
    r.trainer.command(TrainerCommand::Pause(tx));
    assert!(r.trainer.stats().paused.load(Ordering::Acquire));
    send(&r.queue, honest(40));
    r.trainer.step(40);
    assert_eq!(r.trainer.held(), 40, "taken, not trained");
    assert_eq!(
        r.trainer.stats().examples_trained.load(Ordering::Relaxed),
        0
    );
    assert_eq!(store.live().version, 1);
    let (tx, _rx) = oneshot::channel();
    r.trainer.command(TrainerCommand::Resume(tx));
    assert!(!r.trainer.stats().paused.load(Ordering::Acquire));
    assert_eq!(r.trainer.held(), 0);
    assert_eq!(
        r.trainer.stats().examples_trained.load(Ordering::Relaxed),
        40
    );
    assert_eq!(store.live().version, 2, "learned and published on resume");
    let kinds: Vec<_> = r.trainer.events().all().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Paused, EventKind::Resumed]);
}

#[test]
fn a_candidate_held_at_shutdown_is_neither_published_nor_snapshotted() {
    // The monitor's gate alone: the guard would keep the attacker out.
    let m = model(
        "[models.monitor]\ntrusted_sources = [\"trusted\"]\ngate_hold_ms = 3600000\n[models.guard]\nenabled = false",
    );
    let dir = tempfile::tempdir().expect("dir");
    let space = Arc::new(m.label_space().expect("space"));
    let store = Arc::new(ModelStore::new(Params::new(space, m.hash_bits)));
    let snapshots = SnapshotPolicy::new(
        SnapshotStore::new(dir.path().to_owned(), 5),
        Duration::from_secs(3600),
        m.clone(),
        0,
        Arc::default(),
    );
    let mut r = rig(&m, store.clone(), store.live(), Some(snapshots));
    let fb = |i: usize, invert: bool, source: &str| {
        let (x, y) = row(i);
        Feedback::labelled(
            x,
            Target::Class(if invert { 1 - y } else { y }),
            Some(source.into()),
        )
    };
    for i in 0..3000 {
        r.clock.advance(Duration::from_millis(1));
        send(&r.queue, vec![fb(i, false, "trusted")]);
        if i % 32 == 31 {
            r.trainer.step(32);
        }
    }
    r.trainer.step(32);
    let probe = x(0.3);
    let before = store.live();
    for round in 0..20 {
        send(
            &r.queue,
            (0..64)
                .map(|i| fb(2800 + (i + round * 64) % 200, true, "attacker"))
                .collect(),
        );
        while r.trainer.step(32) > 0 {}
        if r.trainer.stats().gate_holds.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    assert!(
        r.trainer.monitor.as_ref().is_some_and(Monitor::holding),
        "the gate is holding"
    );
    let live = store.live();
    assert!(live.version >= before.version);
    assert_ne!(
        r.trainer.learner.params().predict(&probe),
        live.params.predict(&probe),
        "the held working copy differs from the live version"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let stop = CancellationToken::new();
    stop.cancel();
    let (trainer, _queue) = (r.trainer, r.queue);
    rt.block_on(trainer.run(stop, Duration::from_secs(1)));
    assert_eq!(
        store.live().version,
        live.version,
        "nothing published at shutdown"
    );
    let saved = SnapshotStore::new(dir.path().to_owned(), 5)
        .load_newest_valid()
        .expect("list")
        .snapshot
        .expect("a shutdown snapshot");
    assert_eq!(saved.0.meta.version, live.version);
    assert_eq!(
        saved.0.learner.params().predict(&probe),
        live.params.predict(&probe),
        "the snapshot holds the live weights, not the held candidate"
    );
}

/// `?wait=published` reads `settled`: an example waiting for its source's
/// share is in no version yet, so the settled position stays at it until
/// it is learned, though later examples were trained.
#[test]
fn an_example_waiting_for_its_share_holds_the_settled_position_back() {
    let m = model(
        "[models.guard.influence]\nmax_share = 0.5\nactive_examples = 100\nwait_capacity = 1000\n[models.monitor]\nenabled = false",
    );
    let clock = Arc::new(ManualClock::default());
    let (mut trainer, queue, _commands) = Trainer::in_memory(&m, clock.clone()).expect("trainer");
    let labelled = |i: usize, source: &str| {
        let (x, y) = row(i);
        Feedback::labelled(x, Target::Class(y), Some(source.into()))
    };
    // The normal: one source, long enough for the history.
    send(&queue, (0..1200).map(|i| labelled(i, "honest")).collect());
    while trainer.step(32) > 0 {}
    // Then a surge: five from the flood for every honest one.
    let surge = (1200..1800)
        .map(|i| labelled(i, if i % 6 == 0 { "honest" } else { "flood" }))
        .collect();
    send(&queue, surge);
    let mut held = 0;
    while trainer.step(32) > 0 {
        clock.advance(std::time::Duration::from_millis(100));
        let settled = trainer.stats().settled.subscribe().borrow().position;
        if let Some(oldest) = trainer.guard().expect("guard").oldest_waiting() {
            assert!(settled <= oldest, "settled {settled} past waiting {oldest}");
            held += usize::from(settled > 1200 && trainer.position() > oldest);
        }
    }
    assert!(
        held > 0,
        "some of the flood waited while later examples were taken"
    );
}
