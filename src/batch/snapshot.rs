//! Snapshots for the command line: find one (a file, or the newest valid
//! one in a directory), write a trained model as a last-good snapshot that
//! `eddy serve` loads (into a directory the caller holds the `DirLock`
//! of), and show or export one as JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Value, json};

use crate::config::{ModelConfig, StorageConfig};
use crate::learn::names::NameKind;
use crate::learn::{FeatureNames, Learner};
use crate::persist::{DirLock, Snapshot, SnapshotFile, SnapshotMeta, SnapshotStore, VersionFloor};

/// Loads `path`: a snapshot file, or the newest valid one in a directory.
pub fn load(path: &Path) -> anyhow::Result<(Snapshot, PathBuf)> {
    if path.is_dir() {
        let loaded = SnapshotStore::new(path.to_owned(), usize::MAX).load_newest_valid()?;
        for skipped in &loaded.skipped {
            tracing::warn!(error = %skipped, "damaged snapshot skipped");
        }
        loaded
            .snapshot
            .with_context(|| format!("no valid snapshot in {}", path.display()))
    } else {
        let s = SnapshotStore::load(path)?;
        Ok((s, path.to_owned()))
    }
}

/// Loads `path` as the starting point of `model`, checking it fits: the
/// learner, and the feature names the snapshot knows.
pub fn load_for(model: &ModelConfig, path: &Path) -> anyhow::Result<Start> {
    let (snapshot, file) = load(path)?;
    snapshot.check_compatible(model, &file)?;
    let names = snapshot.meta.feature_names.clone();
    let version = snapshot.meta.version;
    Ok(Start {
        learner: snapshot.adopt(model.optimizer),
        names,
        origin: Origin { version, file },
    })
}

/// A snapshot loaded as a starting point.
pub struct Start {
    pub learner: Learner,
    pub names: Arc<FeatureNames>,
    pub origin: Origin,
}

/// Where a loaded snapshot came from.
pub struct Origin {
    pub version: u64,
    pub file: PathBuf,
}

impl Origin {
    /// The version, if the file lies in `dir` (where a write must not
    /// prune it).
    pub fn version_in(&self, dir: &Path) -> Option<u64> {
        let parent = self.file.parent()?.canonicalize().ok()?;
        (parent == dir.canonicalize().ok()?).then_some(self.version)
    }
}

/// What a trained snapshot records besides the learner.
pub struct Provenance {
    pub examples_trained: u64,
    pub quality: BTreeMap<String, f64>,
    pub names: FeatureNames,
    /// The version `--init` started from, when it lies in the directory
    /// written to: not pruned by this write.
    pub started_from: Option<u64>,
}

/// Writes `learner` into `dir` as a last-good snapshot, numbered above
/// every version the directory has used, so `eddy serve` on that
/// directory starts from it (and trusts it). Older snapshots there are
/// pruned as the server prunes them (`storage.snapshot_keep` and
/// `storage.last_good_keep`), so retraining into one directory does not
/// fill the disk; but never the newest last-good one found there (a
/// server running on the directory may hold it as its rollback target)
/// nor the `--init` snapshot.
///
/// The directory is the one `lock` owns: taking a `DirLock` is the only
/// way to name it, so this write and prune never race a server or another
/// `eddy train --out` on the same directory.
pub fn write_trained(
    storage: &StorageConfig,
    model: &ModelConfig,
    learner: &Learner,
    lock: &DirLock,
    provenance: Provenance,
) -> anyhow::Result<SnapshotFile> {
    let dir = lock.dir();
    let Provenance {
        examples_trained,
        quality,
        names,
        started_from,
    } = provenance;
    let store = SnapshotStore::configured(dir.to_owned(), storage);
    let existing = store.list()?;
    let newest = existing.last().map_or(0, |f| f.version);
    let protect: Vec<u64> = existing
        .iter()
        .rev()
        .find(|f| f.last_good)
        .map(|f| f.version)
        .into_iter()
        .chain(started_from)
        .collect();
    let mut floor = VersionFloor::open(dir)?;
    let version = newest.max(floor.reserved()) + 1;
    floor.reserve(version)?;
    floor.settle(version)?;
    let now = crate::serving::trainer::epoch_ms();
    let snapshot = Snapshot {
        meta: SnapshotMeta {
            format_version: crate::persist::snapshot::FORMAT_VERSION,
            model: model.name.clone(),
            task: model.task,
            classes: model.classes.clone(),
            hash_bits: model.hash_bits,
            family: crate::persist::snapshot::family_of(learner).0,
            mlp: crate::persist::snapshot::family_of(learner).1,
            optimizer: *learner.optimizer(),
            version,
            examples_trained,
            feedback_position: 0,
            optimizer_steps: learner.state().steps,
            created_at_ms: now,
            model_created_at_ms: now,
            quality,
            last_good: true,
            log_from: None,
            offline: true,
            feature_names: Arc::new(names),
        },
        learner: learner.clone(),
        trainer: None,
    };
    let file = store.write(&snapshot, &protect)?;
    // The model trained offline replaces what a server learned here: its
    // feedback log is moved aside (kept for the operator), so a server
    // started on this directory does not replay it over the new weights.
    let wal = lock.dir().join("wal");
    if wal.exists() {
        let aside = lock.dir().join(format!("wal-before-train-{version}"));
        std::fs::rename(&wal, &aside)
            .with_context(|| format!("cannot move the feedback log {} aside", wal.display()))?;
        eprintln!(
            "the server's feedback log in {} was moved to {} (the trained model replaces what it learned)",
            lock.dir().display(),
            aside.display()
        );
    }
    Ok(file)
}

/// What `eddy snapshot inspect` shows: the metadata and the shape.
pub fn inspect(path: &Path) -> anyhow::Result<Value> {
    let (s, file) = load(path)?;
    let p = s.learner.params();
    let weights = p.weights.to_vec();
    let nonzero_rows = weights
        .chunks(p.outputs().max(1))
        .filter(|r| r.iter().any(|w| *w != 0.0))
        .count();
    Ok(json!({
        "file": file,
        "bytes": std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0),
        "checksum": "verified (blake3)",
        "meta": meta_without_names(&s.meta)?,
        "feature_names": names_summary(&s.meta.feature_names),
        "rows": p.weights.rows(),
        "outputs": p.outputs(),
        "rows_with_weights": nonzero_rows,
        "bias": p.bias,
        "network": p.net.as_ref().map(|net| {
            let learned = s
                .learner
                .net_state()
                .map(|st| st.embedding.to_vec().iter().filter(|v| **v != 0.0).count());
            json!({
                "hidden": net.hidden(),
                "embedding_rows": net.embedding.rows(),
                "embedding_rows_learned": learned,
            })
        }),
    }))
}

/// The metadata as JSON without the names table (shown by
/// `names_summary`, and per row by the export).
fn meta_without_names(meta: &SnapshotMeta) -> anyhow::Result<Value> {
    let meta = SnapshotMeta {
        feature_names: Arc::default(),
        ..meta.clone()
    };
    Ok(serde_json::to_value(meta)?)
}

fn names_summary(names: &FeatureNames) -> Value {
    json!({
        "known": names.len(),
        "collisions": names.collisions(),
        "complete": names.complete(),
    })
}

/// What `eddy snapshot export --format json` writes: the configuration,
/// intercepts, every row that holds a weight by hashed index with its
/// feature statistics and the names known to hash there (from `eddy
/// train`; a row with two names is a collision, and a row with none was
/// learned from features the snapshot never saw named), and `features`:
/// every known name, by name, with its kind, row and weights (zero for a
/// feature that never moved its weight, e.g. a constant column) and, for a
/// numeric feature, the mean and standard deviation it is standardised by.
pub fn export_json(path: &Path) -> anyhow::Result<Value> {
    let (s, _) = load(path)?;
    let p = s.learner.params();
    let names = &s.meta.feature_names;
    let outputs = p.outputs().max(1);
    let weights = p.weights.to_vec();
    let scaler = p.scaler.to_vec();
    let mut rows = serde_json::Map::new();
    for (i, row) in weights.chunks(outputs).enumerate() {
        if row.iter().any(|w| *w != 0.0) {
            let m = scaler.get(i).copied().unwrap_or_default();
            let known: Vec<&str> = u32::try_from(i)
                .map(|r| names.get(r).map(|(n, _)| n).collect())
                .unwrap_or_default();
            rows.insert(
                i.to_string(),
                json!({ "names": known, "weights": row, "count": m.n, "mean": m.mean, "m2": m.m2 }),
            );
        }
    }
    let mut features = Vec::with_capacity(names.len());
    for (r, name, kind) in names.iter() {
        let start = r as usize * outputs;
        let Some(row) = weights.get(start..start + outputs) else {
            continue;
        };
        let mut entry = json!({ "name": name, "kind": kind, "row": r, "weights": row });
        // A numeric feature's weight applies to (x - mean) / std.
        if kind == NameKind::Numeric
            && let Some(m) = scaler.get(r as usize)
            && let Some(sd) = m.std()
        {
            entry["mean"] = json!(m.mean);
            entry["std"] = json!(sd);
        }
        features.push(entry);
    }
    features.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let classes: Vec<String> = (0..p.space.n_classes())
        .map(|k| p.space.class_key(k).to_owned())
        .collect();
    Ok(json!({
        "meta": meta_without_names(&s.meta)?,
        "feature_names": names_summary(names),
        "features": features,
        "outputs": classes,
        "bias": p.bias,
        "target": { "count": p.target.n, "mean": p.target.mean, "m2": p.target.m2 },
        "rows": rows,
    }))
}
