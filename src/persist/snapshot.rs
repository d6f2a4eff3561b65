//! Snapshots: a model's complete learning state on disk, in a stable,
//! versioned format, written atomically and verified on load.
//!
//! A snapshot holds the weights, intercepts, feature and target statistics,
//! optimizer state, the model's shape (task, classes, hash_bits), its
//! version and counters, and quality figures. The file is
//!
//! ```text
//! "EDDYSNAP" | format u32 LE | payload length u64 LE | payload | blake3(all before)
//! ```
//!
//! where the payload is a safetensors file (readable by other ML tools):
//! tensors `weights` (f32, rows x outputs), `bias` (f32), `scaler` (f64,
//! rows x 3: count, mean, M2), `target` (f64, 3), `optim.weights` and
//! `optim.bias` (f32, when the optimizer keeps state), the `auto`
//! optimizer's state (`auto.rules` f32 (K x 2: rule code, rate),
//! `auto.table` f32 (rows x width: each candidate's weights and rule
//! state), `auto.bias` f32 (width), `auto.losses` f64 (K), `auto.applied`
//! f32 (K), `auto.counters` i64 (2), `auto.active` u32 (the rows
//! learned)), for the `mlp` family the network's `mlp.embedding` (f32,
//! 2^embedding_bits x hidden), `mlp.hidden_bias`, `mlp.output` (outputs x
//! hidden) and its update state `mlp.state.{embedding,wide,hidden_bias,
//! output,bias}` (f32), and the metadata entry `eddy` holding
//! `SnapshotMeta` as JSON. A truncated or corrupted
//! file fails the length or checksum test and is never loaded.
//!
//! The envelope (magic, format, length, checksum) stays the same in every
//! format; the format number says how to read the payload. That is how an
//! intact file written by a newer eddy is told from a damaged one: it is
//! refused with `Error::NewerFormat`, which stops start-up rather than
//! being skipped as corruption. `tests/data/fixtures/snapshot-v1.eddy` is a
//! format 1 file (before `auto` and `mlp`) that every later build must
//! still load. Format 2 added the `auto` tensors (`snapshot-v2.eddy`),
//! format 3 `family` and `mlp` in the metadata and the `mlp.*` tensors
//! (`snapshot-v3-mlp.eddy`; those two were written by parallel builds of
//! one release), and format 4 may hold either. Format 5, written now,
//! stores the row-blocked tensors (`weights`, `scaler`, `optim.weights`,
//! `auto.table`, `mlp.state.embedding`, `mlp.state.wide`) sparsely: the
//! tensor holds only the blocks of 1024 rows that have been written, one
//! after the other (2-D: their rows x the tensor's columns), and
//! `<name>.blocks` (u32) lists which blocks they are, in increasing order;
//! every other row holds zeros. A model that learned nothing is a few KB.
//! Every format only adds entries or reads as the one before it, so one
//! reader reads them all; a format 1 or 2 file reads as a linear model.
//!
//! `SnapshotStore` writes files through `atomic::write_atomic` (temp file,
//! fsync, rename, fsync of the directory), so a crash part-way leaves
//! either the old set of files or the new one, never a file that loads as
//! valid with wrong contents.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::Array2;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{ModelConfig, StorageConfig};
use crate::learn::blocked::{BLOCK_ROWS, Blocked};
use crate::learn::linear::{Moments, OptimState};
use crate::learn::mlp::{Net, NetState};
use crate::learn::optim::{ActiveRows, AutoParts, AutoState, Mixture, Rule, RuleKind};
use crate::learn::{
    Family, FeatureNames, LabelSpace, Learner, MlpConfig, OptimizerConfig, Params, TaskKind,
};

const MAGIC: &[u8; 8] = b"EDDYSNAP";
/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 5;
const HEADER_LEN: usize = 8 + 4 + 8;
const CHECKSUM_LEN: usize = 32;
const META_KEY: &str = "eddy";
const TRAINER_STATE: &str = "trainer.state";
const GUARD_STATE: &str = "guard.state";

/// What a snapshot says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub format_version: u32,
    pub model: String,
    pub task: TaskKind,
    pub classes: Vec<String>,
    pub hash_bits: u8,
    /// The model family (format 3; absent: linear).
    #[serde(default, skip_serializing_if = "is_linear")]
    pub family: Family,
    /// The network's settings when `family` is `mlp` (the embedding
    /// table's rows as built, capped at `hash_bits`), which include how a
    /// feature vector becomes its inputs (`bins`, `crosses`): a loaded
    /// network keeps the encoding it learned with, whatever the config says.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "saved_mlp"
    )]
    pub mlp: Option<MlpConfig>,
    pub optimizer: OptimizerConfig,
    /// The model version these weights were published as.
    pub version: u64,
    pub examples_trained: u64,
    /// Feedback items included (the trainer's queue position).
    pub feedback_position: u64,
    pub optimizer_steps: u64,
    /// When this snapshot was written, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When the model was first created (kept across restarts).
    #[serde(default)]
    pub model_created_at_ms: u64,
    /// Quality figures at snapshot time, by name (accuracy, log_loss, ...).
    #[serde(default)]
    pub quality: BTreeMap<String, f64>,
    /// Written when the monitor promoted this version to last-good.
    #[serde(default)]
    pub last_good: bool,
    /// The earliest feedback log position a restore from this snapshot
    /// reads (examples its trainer state refers to); `feedback_position`
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_from: Option<u64>,
    /// Written by `eddy train`: a model trained offline, which replaces
    /// whatever a server learned in this directory before.
    #[serde(default, skip_serializing_if = "is_false")]
    pub offline: bool,
    /// The feature names known for the weight rows (from `eddy train`),
    /// carried from snapshot to snapshot.
    #[serde(default, skip_serializing_if = "no_names")]
    pub feature_names: Arc<FeatureNames>,
}

/// `SnapshotMeta::family` and `mlp` for a learner: what its parameters are.
pub fn family_of(learner: &Learner) -> (Family, Option<MlpConfig>) {
    match &learner.params().net {
        Some(net) => (Family::Mlp, Some(net.config)),
        None => (Family::Linear, None),
    }
}

/// `SnapshotMeta::mlp` as saved. A snapshot from before the crossed grids
/// has no `crosses`: its network learned without them, so it keeps none
/// (the config's default would give its rows another meaning).
fn saved_mlp<'de, D>(d: D) -> Result<Option<MlpConfig>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error as _;
    let Some(mut table) = Option::<serde_json::Map<String, serde_json::Value>>::deserialize(d)?
    else {
        return Ok(None);
    };
    table.entry("crosses").or_insert(0.into());
    serde_json::from_value(serde_json::Value::Object(table))
        .map(Some)
        .map_err(D::Error::custom)
}

fn is_linear(f: &Family) -> bool {
    *f == Family::Linear
}

fn is_false(b: &bool) -> bool {
    !b
}

fn no_names(names: &Arc<FeatureNames>) -> bool {
    names.is_empty()
}

/// A model's state: metadata plus the learner (parameters and optimizer).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub learner: Learner,
    /// What a server's snapshot adds so that a restart resumes exactly;
    /// `None` in snapshots from `eddy train` and from before it existed.
    pub trainer: Option<TrainerPart>,
}

/// The trainer's state (bytes `serving` encodes and reads) and the other
/// learners it refers to by name (last-good, the candidate). Stored as the
/// tensor `trainer.state` (u8) and each learner's tensors under
/// `<name>.` (with `<name>.steps`, i64, for its optimizer's step count).
#[derive(Debug, Clone)]
pub struct TrainerPart {
    pub state: Vec<u8>,
    /// The ingestion guard's state (bytes `serving` encodes and reads),
    /// stored as the tensor `guard.state` (u8); absent in snapshots from
    /// before the guard, or of a model without one.
    pub guard: Option<Vec<u8>>,
    pub learners: Vec<(String, Learner)>,
    /// Whether the saved `auto` candidates are this build's: when they
    /// are not (the set changed in an upgrade), they are started afresh
    /// and the steps logged after the snapshot cannot be replayed exactly.
    /// Not stored: worked out when the snapshot is read.
    pub candidates_resumed: bool,
}

/// Owned tensor bytes waiting to be viewed for `safetensors::serialize`.
type Owned = (String, Dtype, Vec<usize>, Vec<u8>);

/// A learner's tensors, named with `prefix`.
fn learner_tensors(prefix: &str, learner: &Learner, out: &mut Vec<Owned>) -> Result<(), String> {
    let p = learner.params();
    let st = learner.state();
    let outputs = p.outputs();
    let slots = learner.optimizer().slots();
    let name = |n: &str| format!("{prefix}{n}");
    push_blocked(out, name("weights"), &p.weights, Dtype::F32, 1, f32_bytes);
    out.push((name("bias"), Dtype::F32, vec![outputs], f32_bytes(&p.bias)));
    push_blocked(out, name("scaler"), &p.scaler, Dtype::F64, 3, |m| {
        m.iter()
            .flat_map(|m| [m.n, m.mean, m.m2])
            .flat_map(f64::to_le_bytes)
            .collect()
    });
    out.push((
        name("target"),
        Dtype::F64,
        vec![3],
        f64_bytes(&[p.target.n, p.target.mean, p.target.m2]),
    ));
    if slots > 0 {
        let optim_b = st.bias.as_slice().ok_or("optimizer state not contiguous")?;
        push_blocked(
            out,
            name("optim.weights"),
            &st.weights,
            Dtype::F32,
            1,
            f32_bytes,
        );
        out.push((
            name("optim.bias"),
            Dtype::F32,
            vec![outputs, slots],
            f32_bytes(optim_b),
        ));
    }
    if let (Some(net), Some(ns)) = (&p.net, learner.net_state()) {
        let (hidden, er) = (net.hidden(), net.embedding.rows());
        let mut f32s = |n: &str, dims: Vec<usize>, v: &[f32]| {
            out.push((name(n), Dtype::F32, dims, f32_bytes(v)));
        };
        f32s("mlp.embedding", vec![er, hidden], &net.embedding.to_vec());
        f32s("mlp.hidden_bias", vec![hidden], &net.hidden_bias);
        f32s("mlp.output", vec![outputs, hidden], &net.output);
        f32s("mlp.state.hidden_bias", vec![hidden], &ns.hidden_bias);
        f32s("mlp.state.output", vec![outputs, hidden], &ns.output);
        f32s("mlp.state.bias", vec![outputs], &ns.bias);
        push_blocked(
            out,
            name("mlp.state.embedding"),
            &ns.embedding,
            Dtype::F32,
            1,
            f32_bytes,
        );
        push_blocked(
            out,
            name("mlp.state.wide"),
            &ns.wide,
            Dtype::F32,
            1,
            f32_bytes,
        );
        out.push((
            name("mlp.state.examples"),
            Dtype::I64,
            vec![1],
            (ns.steps as i64).to_le_bytes().to_vec(),
        ));
    }
    if let Some(auto) = &st.auto {
        auto_tensors(&name, auto, out);
    }
    if !prefix.is_empty() {
        out.push((
            name("steps"),
            Dtype::I64,
            vec![1],
            (st.steps as i64).to_le_bytes().to_vec(),
        ));
    }
    Ok(())
}

/// The `auto` optimizer's tensors (see the module doc).
fn auto_tensors(name: &dyn Fn(&str) -> String, auto: &AutoState, out: &mut Vec<Owned>) {
    let parts = auto.to_parts();
    let k = parts.rules.len();
    let rules: Vec<f32> = parts
        .rules
        .iter()
        .flat_map(|r| [f32::from(r.kind.code()), r.learning_rate])
        .collect();
    out.push((
        name("auto.rules"),
        Dtype::F32,
        vec![k, 2],
        f32_bytes(&rules),
    ));
    push_blocked(
        out,
        name("auto.table"),
        &parts.table,
        Dtype::F32,
        1,
        f32_bytes,
    );
    out.push((
        name("auto.bias"),
        Dtype::F32,
        vec![parts.bias.len()],
        f32_bytes(&parts.bias),
    ));
    out.push((
        name("auto.losses"),
        Dtype::F64,
        vec![k],
        f64_bytes(parts.mixture.losses()),
    ));
    out.push((
        name("auto.applied"),
        Dtype::F32,
        vec![k],
        f32_bytes(parts.mixture.applied()),
    ));
    let (examples, touched) = parts.mixture.counters();
    out.push((
        name("auto.counters"),
        Dtype::I64,
        vec![2],
        [examples, touched]
            .iter()
            .flat_map(|c| (*c as i64).to_le_bytes())
            .collect(),
    ));
    let active: Vec<u8> = parts
        .active
        .iter()
        .flat_map(|r| (r as u32).to_le_bytes())
        .collect();
    out.push((
        name("auto.active"),
        Dtype::U32,
        vec![parts.active.count()],
        active,
    ));
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path}: not an eddy snapshot (bad magic)")]
    BadMagic { path: PathBuf },
    #[error(
        "snapshot {path}: format version {found} is not supported (this build reads {FORMAT_VERSION})"
    )]
    Format { path: PathBuf, found: u32 },
    #[error(
        "snapshot {path} was written by a newer eddy (format {found}; this build reads up to {supported}); upgrade eddy or move the file away"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("snapshot {path}: truncated ({len} bytes, expected {expected})")]
    Truncated {
        path: PathBuf,
        len: usize,
        expected: usize,
    },
    #[error("snapshot {path}: checksum mismatch (corrupted)")]
    Checksum { path: PathBuf },
    #[error("snapshot {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("snapshot {path} does not match the configuration of model `{model}`: {message}")]
    Mismatch {
        path: PathBuf,
        model: String,
        message: String,
    },
}

impl Error {
    /// True when the file is damaged (skip it and look further), false when
    /// it is intact but unusable by this build or configuration (stop
    /// start-up). A newer format is not damage: skipping it would start the
    /// model over from an older snapshot, or from nothing, in silence.
    pub fn is_corruption(&self) -> bool {
        !matches!(
            self,
            Error::Mismatch { .. } | Error::Io { .. } | Error::NewerFormat { .. }
        )
    }
}

impl Snapshot {
    /// Encodes the snapshot in the file format described above.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut owned = Vec::new();
        learner_tensors("", &self.learner, &mut owned)?;
        if let Some(trainer) = &self.trainer {
            owned.push((
                TRAINER_STATE.to_owned(),
                Dtype::U8,
                vec![trainer.state.len()],
                trainer.state.clone(),
            ));
            if let Some(guard) = &trainer.guard {
                owned.push((
                    GUARD_STATE.to_owned(),
                    Dtype::U8,
                    vec![guard.len()],
                    guard.clone(),
                ));
            }
            for (name, learner) in &trainer.learners {
                learner_tensors(&format!("{name}."), learner, &mut owned)?;
            }
        }
        let tensors = owned
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                Ok((name.clone(), view(*dtype, shape.clone(), bytes)?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let meta = serde_json::to_string(&self.meta).map_err(|e| e.to_string())?;
        let payload =
            safetensors::serialize(tensors, Some(HashMap::from([(META_KEY.to_owned(), meta)])))
                .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&payload);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        Ok(out)
    }

    /// Decodes and verifies a snapshot file's bytes; `path` is for messages.
    ///
    /// The envelope (magic, format, length, checksum) is verified first and
    /// is the same for every format, so a damaged file is corruption
    /// whatever its format field says, and an intact file of a format this
    /// build does not know is told apart: newer means a newer eddy wrote it.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self, Error> {
        let path = path.to_owned();
        let (format, payload) = open_envelope(bytes, &path)?;
        match format {
            // Each later format only adds entries to format 1's payload
            // (format 5's sparse tensors are told by their `.blocks`).
            1..=FORMAT_VERSION => Self::decode_v1(payload, path),
            found if found > FORMAT_VERSION => Err(Error::NewerFormat {
                path,
                found,
                supported: FORMAT_VERSION,
            }),
            found => Err(Error::Format { path, found }),
        }
    }

    /// Formats 1 and 2: the payload is a safetensors file (see the module
    /// doc; format 2 adds the `auto` tensors).
    fn decode_v1(payload: &[u8], path: PathBuf) -> Result<Self, Error> {
        let invalid = |message: String| Error::Invalid {
            path: path.clone(),
            message,
        };
        let st =
            safetensors::SafeTensors::deserialize(payload).map_err(|e| invalid(e.to_string()))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(payload).map_err(|e| invalid(e.to_string()))?;
        let meta_json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| invalid("no eddy metadata".into()))?;
        let meta: SnapshotMeta =
            serde_json::from_str(meta_json).map_err(|e| invalid(format!("metadata: {e}")))?;
        let mlp = match (meta.family, meta.mlp) {
            (Family::Linear, _) => None,
            (Family::Mlp, Some(c))
                if c.problem().is_none() && c.embedding_bits <= meta.hash_bits =>
            {
                Some(c)
            }
            (Family::Mlp, _) => {
                return Err(invalid("mlp family without valid mlp settings".into()));
            }
        };
        let space =
            LabelSpace::new(meta.task, meta.classes.clone()).map_err(|e| invalid(e.to_string()))?;
        let outputs = space.outputs();
        let rows = 1usize
            .checked_shl(u32::from(meta.hash_bits))
            .filter(|_| meta.hash_bits <= crate::learn::features::MAX_HASH_BITS)
            .ok_or_else(|| invalid("hash_bits out of range".into()))?;
        let space = Arc::new(space);
        let shape = Shape {
            space: &space,
            hash_bits: meta.hash_bits,
            rows,
            outputs,
            optimizer: meta.optimizer,
            mlp,
        };
        let read = |prefix: &str, steps: u64| read_learner(&st, prefix, &shape, steps, &invalid);
        let (learner, candidates_resumed) = read("", meta.optimizer_steps)?;
        let trainer = match st.tensor(TRAINER_STATE) {
            Err(_) => None,
            Ok(state) => {
                let mut learners = Vec::new();
                for name in st.names() {
                    if let Some(prefix) = name.strip_suffix(".steps") {
                        let steps = st
                            .tensor(name)
                            .ok()
                            .and_then(|t| t.data().try_into().ok())
                            .map(i64::from_le_bytes)
                            .ok_or_else(|| invalid(format!("{name}: not one i64")))?;
                        let (learner, _) = read(&format!("{prefix}."), steps.max(0) as u64)?;
                        learners.push((prefix.to_owned(), learner));
                    }
                }
                learners.sort_by(|a, b| a.0.cmp(&b.0));
                Some(TrainerPart {
                    state: state.data().to_vec(),
                    guard: st.tensor(GUARD_STATE).ok().map(|t| t.data().to_vec()),
                    learners,
                    candidates_resumed,
                })
            }
        };
        Ok(Snapshot {
            meta,
            learner,
            trainer,
        })
    }

    /// Checks that this snapshot can serve as `config`'s model: task,
    /// classes and hash_bits must match. A changed optimizer is allowed
    /// (see `adopt`).
    pub fn check_compatible(&self, config: &ModelConfig, path: &Path) -> Result<(), Error> {
        let m = &self.meta;
        let mismatch = |message: String| Error::Mismatch {
            path: path.to_owned(),
            model: config.name.clone(),
            message,
        };
        if m.task != config.task {
            return Err(mismatch(format!(
                "task is {:?} in the snapshot, {:?} in config",
                m.task, config.task
            )));
        }
        if m.classes != config.classes {
            return Err(mismatch(format!(
                "classes are {:?} in the snapshot, {:?} in config",
                m.classes, config.classes
            )));
        }
        if m.hash_bits != config.hash_bits {
            return Err(mismatch(format!(
                "hash_bits is {} in the snapshot, {} in config",
                m.hash_bits, config.hash_bits
            )));
        }
        if m.family != config.family {
            return Err(mismatch(format!(
                "family is {} in the snapshot, {} in config",
                m.family.name(),
                config.family.name()
            )));
        }
        if let Some(saved) = &m.mlp {
            // The shape must match. The network's other settings (step,
            // clip, bins, crosses) are the snapshot's: it goes on learning
            // as it was, so a restart replays its log exactly; a model
            // that should learn otherwise is trained afresh.
            let built = Net::new(&config.mlp, config.hash_bits, 0).config;
            if (saved.hidden, saved.embedding_bits) != (built.hidden, built.embedding_bits) {
                return Err(mismatch(format!(
                    "mlp hidden {} embedding_bits {} in the snapshot, {} and {} in config",
                    saved.hidden, saved.embedding_bits, built.hidden, built.embedding_bits
                )));
            }
        }
        Ok(())
    }

    /// The learner to continue with under `optimizer`: the saved one, or,
    /// if the optimizer kind changed, the saved parameters with fresh
    /// optimizer state (the old state means nothing to another rule).
    pub fn adopt(self, optimizer: OptimizerConfig) -> Learner {
        adopt(&self.learner, &self.meta.optimizer, optimizer)
    }

    /// Whether the saved learners go on learning exactly as they were
    /// saved under `optimizer`: the same settings and, for `auto`, the
    /// same candidates. Otherwise the trainer's logged steps after this
    /// snapshot cannot be replayed exactly (they were taken by another
    /// learner) and the log's examples are learned afresh.
    pub fn optimizer_resumes(&self, optimizer: &OptimizerConfig) -> bool {
        self.meta.optimizer == *optimizer
            && self.trainer.as_ref().is_none_or(|t| t.candidates_resumed)
    }
}

/// `saved` (learned under `saved_with`) continued under `optimizer`: see
/// `Snapshot::adopt`. The trainer's saved learners (last-good, the
/// candidate) go through it too, so a rollback after a change of
/// optimizer keeps the configured one.
pub fn adopt(saved: &Learner, saved_with: &OptimizerConfig, optimizer: OptimizerConfig) -> Learner {
    let mut learner = if saved_with.kind == optimizer.kind {
        Learner::with_state(saved.params().clone(), optimizer, saved.state().clone())
    } else {
        Learner::new(saved.params().clone(), optimizer)
    };
    if let Some(state) = saved.net_state() {
        learner.set_net_state(state.clone());
    }
    learner
}

/// Checks the envelope every format shares and returns the format and the
/// payload: magic, a length that matches the file, and the checksum over
/// everything before it.
fn open_envelope<'a>(bytes: &'a [u8], path: &Path) -> Result<(u32, &'a [u8]), Error> {
    let path = path.to_owned();
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(Error::Truncated {
            path,
            len: bytes.len(),
            expected: HEADER_LEN + CHECKSUM_LEN,
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(Error::BadMagic { path });
    }
    // The slices are of fixed length, inside the length checked above.
    let format = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let payload_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let Some(expected) = usize::try_from(payload_len)
        .ok()
        .and_then(|n| n.checked_add(HEADER_LEN + CHECKSUM_LEN))
    else {
        return Err(Error::Invalid {
            path,
            message: "payload length overflows".into(),
        });
    };
    if bytes.len() != expected {
        return Err(Error::Truncated {
            path,
            len: bytes.len(),
            expected,
        });
    }
    let (body, sum) = bytes.split_at(expected - CHECKSUM_LEN);
    if blake3::hash(body).as_bytes() != sum {
        return Err(Error::Checksum { path });
    }
    Ok((format, &body[HEADER_LEN..]))
}

/// What every learner of one snapshot shares.
struct Shape<'a> {
    space: &'a Arc<LabelSpace>,
    hash_bits: u8,
    rows: usize,
    outputs: usize,
    optimizer: OptimizerConfig,
    /// The network's settings (`mlp` family), else `None`.
    mlp: Option<MlpConfig>,
}

/// Reads the learner whose tensors are named with `prefix`.
fn read_learner(
    st: &safetensors::SafeTensors<'_>,
    prefix: &str,
    shape: &Shape<'_>,
    steps: u64,
    invalid: &dyn Fn(String) -> Error,
) -> Result<(Learner, bool), Error> {
    let (rows, outputs) = (shape.rows, shape.outputs);
    let slots = shape.optimizer.slots();
    let tensor = |name: &str, dtype: Dtype, dims: &[usize]| -> Result<&[u8], Error> {
        let name = format!("{prefix}{name}");
        let t = st
            .tensor(&name)
            .map_err(|e| invalid(format!("{name}: {e}")))?;
        if t.dtype() != dtype || t.shape() != dims {
            return Err(invalid(format!(
                "{name}: expected {dtype:?} {dims:?}, found {:?} {:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data())
    };
    let blocked = |name: &str, dtype, rows, width, dense: &[usize]| {
        read_blocked(
            st,
            &format!("{prefix}{name}"),
            rows,
            width,
            dtype,
            dense,
            invalid,
        )
    };
    let weights = blocked("weights", Dtype::F32, rows, outputs, &[rows, outputs])?;
    let weights = Blocked::from_sparse(
        rows,
        outputs,
        BLOCK_ROWS,
        0.0,
        &weights.0,
        &read_f32(weights.1),
    )
    .ok_or_else(|| invalid("weights shape".into()))?;
    let bias = read_f32(tensor("bias", Dtype::F32, &[outputs])?);
    let scaler = blocked("scaler", Dtype::F64, rows, 3, &[rows, 3])?;
    let moments: Vec<Moments> = read_f64(scaler.1)
        .chunks_exact(3)
        .map(|c| Moments::from_parts(c[0], c[1], c[2]))
        .collect();
    let scaler = Blocked::from_sparse(rows, 1, BLOCK_ROWS, Moments::default(), &scaler.0, &moments)
        .ok_or_else(|| invalid("scaler shape".into()))?;
    let t = read_f64(tensor("target", Dtype::F64, &[3])?);
    let (optim_w, optim_b) = if slots > 0 {
        let w = blocked(
            "optim.weights",
            Dtype::F32,
            rows,
            outputs * slots,
            &[rows, outputs * slots],
        )?;
        (
            Blocked::from_sparse(rows, outputs * slots, BLOCK_ROWS, 0.0, &w.0, &read_f32(w.1)),
            read_f32(tensor("optim.bias", Dtype::F32, &[outputs, slots])?),
        )
    } else {
        (Some(Blocked::new(rows, 0)), Vec::new())
    };
    let params = Params {
        space: shape.space.clone(),
        hash_bits: shape.hash_bits,
        weights,
        bias,
        scaler,
        target: Moments::from_parts(t[0], t[1], t[2]),
        net: None,
        mixture: None,
    };
    let auto = match st.tensor(&format!("{prefix}auto.rules")) {
        Err(_) => None,
        Ok(_) => {
            let len_at = |name: &str, dim: usize| {
                st.tensor(&format!("{prefix}{name}"))
                    .ok()
                    .and_then(|t| t.shape().get(dim).copied())
                    .unwrap_or(0)
            };
            let table =
                |width: usize| blocked("auto.table", Dtype::F32, rows, width, &[rows, width]);
            Some(read_auto(&tensor, &len_at, &table, rows, outputs, invalid)?)
        }
    };
    let state = OptimState {
        weights: optim_w.ok_or_else(|| invalid("optimizer state shape".into()))?,
        bias: Array2::from_shape_vec((outputs, slots), optim_b)
            .map_err(|e| invalid(e.to_string()))?,
        steps,
        auto,
    };
    // Whether `auto`'s saved candidates are the ones this build runs
    // (`Learner::with_state` starts others afresh).
    let candidates_resumed = match (&state.auto, shape.optimizer.kind) {
        (Some(a), crate::learn::OptimizerKind::Auto) => a.runs(&shape.optimizer.candidates()),
        (None, crate::learn::OptimizerKind::Auto) => shape.mlp.is_some(),
        _ => true,
    };
    let Some(config) = shape.mlp else {
        return Ok((
            Learner::with_state(params, shape.optimizer, state),
            candidates_resumed,
        ));
    };
    let (hidden, er) = (config.hidden, 1usize << config.embedding_bits);
    let f32s = |name: &str, dims: &[usize]| tensor(name, Dtype::F32, dims).map(read_f32);
    let net = Net::from_parts(
        config,
        f32s("mlp.embedding", &[er, hidden])?,
        f32s("mlp.hidden_bias", &[hidden])?,
        f32s("mlp.output", &[outputs, hidden])?,
        outputs,
    )
    .ok_or_else(|| invalid("mlp shape".into()))?;
    let net_steps = tensor("mlp.state.examples", Dtype::I64, &[1])?;
    let state_rows = |name: &str, rows: usize| {
        let (blocks, data) = blocked(name, Dtype::F32, rows, 1, &[rows])?;
        Blocked::from_sparse(rows, 1, BLOCK_ROWS, 0.0, &blocks, &read_f32(data))
            .ok_or_else(|| invalid("mlp state shape".into()))
    };
    let net_state = NetState {
        embedding: state_rows("mlp.state.embedding", er)?,
        wide: state_rows("mlp.state.wide", rows)?,
        hidden_bias: f32s("mlp.state.hidden_bias", &[hidden])?,
        output: f32s("mlp.state.output", &[outputs, hidden])?,
        bias: f32s("mlp.state.bias", &[outputs])?,
        steps: i64::from_le_bytes(
            net_steps
                .try_into()
                .map_err(|_| invalid("mlp steps".into()))?,
        )
        .max(0) as u64,
    };
    let params = Params {
        net: Some(net),
        ..params
    };
    let mut learner = Learner::with_state(params, shape.optimizer, state);
    if !learner.set_net_state(net_state) {
        return Err(invalid("mlp state shape".into()));
    }
    Ok((learner, candidates_resumed))
}

/// Reads one tensor of a learner by name, checking its type and shape.
type TensorReader<'a> = dyn Fn(&str, Dtype, &[usize]) -> Result<&'a [u8], Error> + 'a;

/// Reads the `auto` tensors of one learner; `tensor` reads one by name
/// (under the learner's prefix), checking its type and shape, and `len`
/// says a tensor's dimension (by index).
fn read_auto<'a>(
    tensor: &TensorReader<'a>,
    len_at: &dyn Fn(&str, usize) -> usize,
    table: &dyn Fn(usize) -> Result<(Vec<u32>, &'a [u8]), Error>,
    rows: usize,
    outputs: usize,
    invalid: &dyn Fn(String) -> Error,
) -> Result<AutoState, Error> {
    let rules_bytes = tensor("auto.rules", Dtype::F32, &[len_at("auto.rules", 0), 2])?;
    let rules: Vec<Rule> = read_f32(rules_bytes)
        .chunks_exact(2)
        .map(|c| {
            let kind = RuleKind::from_code(c[0] as u8)
                .filter(|_| c[0].fract() == 0.0)
                .ok_or_else(|| invalid(format!("auto.rules: unknown rule {}", c[0])))?;
            Ok(Rule {
                kind,
                learning_rate: c[1],
                l1: 0.0,
                l2: 0.0,
            })
        })
        .collect::<Result<_, Error>>()?;
    let k = rules.len();
    if k == 0 {
        return Err(invalid("auto.rules: no candidates".into()));
    }
    let losses = read_f64(tensor("auto.losses", Dtype::F64, &[k])?);
    let applied = read_f32(tensor("auto.applied", Dtype::F32, &[k])?);
    let counters: Vec<u64> = tensor("auto.counters", Dtype::I64, &[2])?
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")).max(0) as u64)
        .collect();
    let mixture = Mixture::from_parts(losses, applied, counters[0], counters[1])
        .ok_or_else(|| invalid("auto: mixture losses or weights invalid".into()))?;
    let active_list: Vec<u32> = tensor("auto.active", Dtype::U32, &[len_at("auto.active", 0)])?
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let active = ActiveRows::from_list(rows, &active_list)
        .ok_or_else(|| invalid("auto.active: row out of range".into()))?;
    // The row width the rules and outputs make, never the file's word for
    // it: a sparse table of no blocks costs no bytes, whatever its shape.
    let width: usize = rules.iter().map(|r| outputs * (1 + r.slots())).sum();
    if len_at("auto.table", 1) != width {
        return Err(invalid(format!(
            "auto.table: expected {width} columns for these rules and outputs"
        )));
    }
    let (blocks, table) = table(width)?;
    AutoState::from_parts(AutoParts {
        rules,
        table: Blocked::from_sparse(rows, width, BLOCK_ROWS, 0.0, &blocks, &read_f32(table))
            .ok_or_else(|| invalid("auto.table shape".into()))?,
        bias: read_f32(tensor("auto.bias", Dtype::F32, &[width])?),
        mixture,
        active,
    })
    .filter(|a| a.candidate_bias(0).len() == outputs)
    .ok_or_else(|| invalid("auto: tensors do not fit the rules and outputs".into()))
}

fn view(dtype: Dtype, shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>, String> {
    TensorView::new(dtype, shape, data).map_err(|e| e.to_string())
}

/// A row-blocked matrix as format 5 stores it: the allocated blocks'
/// rows in `name` (2-D, `width` columns per row of the matrix) and their
/// indices in `name.blocks`.
fn push_blocked<T: Clone + Default + PartialEq>(
    out: &mut Vec<Owned>,
    name: String,
    matrix: &Blocked<T>,
    dtype: Dtype,
    width_per_col: usize,
    bytes: impl Fn(&[T]) -> Vec<u8>,
) {
    let (blocks, values) = matrix.to_sparse();
    let width = matrix.cols() * width_per_col;
    let rows = values.len() / matrix.cols().max(1);
    out.push((
        format!("{name}.blocks"),
        Dtype::U32,
        vec![blocks.len()],
        blocks.iter().flat_map(|b| b.to_le_bytes()).collect(),
    ));
    out.push((name, dtype, vec![rows, width], bytes(&values)));
}

/// Reads a row-blocked matrix's tensor `name` (full name): with
/// `name.blocks` (format 5) the listed blocks and their packed rows,
/// checked to be `width` wide; without (formats 1-4) the dense tensor of
/// shape `dense`, whose blocks are all listed. Returns the block indices
/// and the raw bytes for `Blocked::from_sparse`, which checks they fit.
#[allow(clippy::too_many_arguments)]
fn read_blocked<'a>(
    st: &'a safetensors::SafeTensors<'a>,
    name: &str,
    rows: usize,
    width: usize,
    dtype: Dtype,
    dense: &[usize],
    invalid: &dyn Fn(String) -> Error,
) -> Result<(Vec<u32>, &'a [u8]), Error> {
    let read = |name: &str| -> Result<_, Error> {
        st.tensor(name).map_err(|e| invalid(format!("{name}: {e}")))
    };
    let blocks_name = format!("{name}.blocks");
    let Ok(listed) = st.tensor(&blocks_name) else {
        let t = read(name)?;
        if t.dtype() != dtype || t.shape() != dense {
            return Err(invalid(format!(
                "{name}: expected {dtype:?} {dense:?}, found {:?} {:?}",
                t.dtype(),
                t.shape()
            )));
        }
        let all = (0..rows.div_ceil(BLOCK_ROWS) as u32).collect();
        return Ok((all, t.data()));
    };
    if listed.dtype() != Dtype::U32 || listed.shape().len() != 1 {
        return Err(invalid(format!("{blocks_name}: expected a u32 list")));
    }
    // The shared block of zeros is allocated whatever the file holds:
    // bound it (1 GiB of f32), as a dense tensor was bounded by its bytes.
    if width.checked_mul(BLOCK_ROWS).is_none_or(|n| n > 1 << 28) {
        return Err(invalid(format!("{name}: {width} columns is too wide")));
    }
    let blocks = listed
        .data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let t = read(name)?;
    if t.dtype() != dtype || t.shape().len() != 2 || t.shape()[1] != width {
        return Err(invalid(format!(
            "{name}: expected {dtype:?} [_, {width}], found {:?} {:?}",
            t.dtype(),
            t.shape()
        )));
    }
    Ok((blocks, t.data()))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Copies little-endian floats out of a tensor (its bytes need not be aligned).
fn read_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn read_f64(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

/// One model's snapshot directory.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    /// How many of the newest snapshots to keep.
    keep: usize,
    /// How many last-good snapshots to keep besides those.
    keep_last_good: usize,
}

/// A snapshot file found in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotFile {
    pub version: u64,
    pub path: PathBuf,
    pub bytes: u64,
    /// A last-good snapshot (named `*.good.eddy`).
    pub last_good: bool,
}

/// What `load_newest_valid` found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: Option<(Snapshot, PathBuf)>,
    /// Damaged files passed over, newest first, with why.
    pub skipped: Vec<Error>,
}

impl SnapshotStore {
    pub fn new(dir: PathBuf, keep: usize) -> Self {
        Self {
            dir,
            keep: keep.max(1),
            keep_last_good: 0,
        }
    }

    /// The store of `dir` with the configured retention
    /// (`storage.snapshot_keep`, `storage.last_good_keep`).
    pub fn configured(dir: PathBuf, storage: &StorageConfig) -> Self {
        Self::new(dir, storage.snapshot_keep.get()).keeping_last_good(storage.last_good_keep)
    }

    /// Also keeps the newest `n` last-good snapshots.
    pub fn keeping_last_good(mut self, n: usize) -> Self {
        self.keep_last_good = n;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
        let path = path.to_owned();
        move |source| Error::Io {
            path: path.clone(),
            source,
        }
    }

    /// Writes atomically, then prunes old snapshots (never those in `protect`).
    pub fn write(&self, snapshot: &Snapshot, protect: &[u64]) -> Result<SnapshotFile, Error> {
        let path = self
            .dir
            .join(file_name(snapshot.meta.version, snapshot.meta.last_good));
        let bytes = snapshot.encode().map_err(|message| Error::Invalid {
            path: path.clone(),
            message,
        })?;
        super::write_atomic(&path, &bytes).map_err(self.io(&path))?;
        if snapshot.meta.last_good {
            // The same weights written earlier without the mark are now
            // redundant.
            let plain = self.dir.join(file_name(snapshot.meta.version, false));
            match std::fs::remove_file(&plain) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(self.io(&plain)(e));
                }
                _ => {}
            }
        }
        self.prune(protect)?;
        Ok(SnapshotFile {
            version: snapshot.meta.version,
            path,
            bytes: bytes.len() as u64,
            last_good: snapshot.meta.last_good,
        })
    }

    /// Snapshot files, oldest first.
    pub fn list(&self) -> Result<Vec<SnapshotFile>, Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(self.io(&self.dir))?;
            let name = entry.file_name();
            let Some((version, last_good)) = name.to_str().and_then(parse_file_name) else {
                continue;
            };
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(SnapshotFile {
                version,
                path: entry.path(),
                bytes,
                last_good,
            });
        }
        out.sort_by_key(|f| (f.version, f.last_good));
        Ok(out)
    }

    /// The feedback position a snapshot file records, read from its
    /// header alone (no checksum: for retention decisions, which a damaged
    /// file, never loaded, does not need). `None` when unreadable.
    pub fn position_of(path: &Path) -> Option<u64> {
        // Opening a FIFO waits for a writer: only files are read.
        if !std::fs::metadata(path).ok()?.is_file() {
            return None;
        }
        use std::io::Read;
        #[derive(Deserialize)]
        struct Meta {
            feedback_position: u64,
            #[serde(default)]
            log_from: Option<u64>,
        }
        let mut file = std::fs::File::open(path).ok()?;
        let mut head = [0u8; HEADER_LEN + 8];
        file.read_exact(&mut head).ok()?;
        if &head[..8] != MAGIC || head[8..12] != 1u32.to_le_bytes() {
            return None;
        }
        let len = u64::from_le_bytes(head[HEADER_LEN..].try_into().ok()?);
        let mut json = vec![0u8; usize::try_from(len).ok().filter(|n| *n <= 1 << 26)?];
        file.read_exact(&mut json).ok()?;
        let header: serde_json::Value = serde_json::from_slice(&json).ok()?;
        let meta = header.get("__metadata__")?.get(META_KEY)?.as_str()?;
        serde_json::from_str::<Meta>(meta)
            .ok()
            .map(|m| m.log_from.unwrap_or(m.feedback_position))
    }

    /// Loads one file.
    pub fn load(path: &Path) -> Result<Snapshot, Error> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        // A device or a pipe never ends or never answers: only files.
        if !std::fs::metadata(path).map_err(io)?.is_file() {
            return Err(Error::Invalid {
                path: path.to_owned(),
                message: "not a regular file".into(),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Snapshot::decode(&bytes, path)
    }

    /// The newest snapshot that verifies; damaged ones are skipped and
    /// reported, never loaded.
    pub fn load_newest_valid(&self) -> Result<Loaded, Error> {
        self.load_newest(false)
    }

    /// As `load_newest_valid`, but a snapshot that holds a trainer's state
    /// (a plain file a server wrote) wins over newer last-good files: with
    /// a feedback log, restoring the state and replaying what followed
    /// ends later, and exactly, where a last-good file cannot continue.
    pub fn load_newest_resumable(&self) -> Result<Loaded, Error> {
        // A model trained offline since replaces what the server learned.
        let newest = self.load_newest(false)?;
        if newest
            .snapshot
            .as_ref()
            .is_some_and(|(s, _)| s.meta.offline)
        {
            return Ok(newest);
        }
        let preferred = self.load_newest(true)?;
        if preferred
            .snapshot
            .as_ref()
            .is_some_and(|(s, _)| s.trainer.is_some())
        {
            return Ok(preferred);
        }
        self.load_newest(false)
    }

    fn load_newest(&self, with_state_only: bool) -> Result<Loaded, Error> {
        let mut loaded = Loaded::default();
        for file in self
            .list()?
            .into_iter()
            .rev()
            .filter(|f| !(with_state_only && f.last_good))
        {
            match Self::load(&file.path) {
                Ok(s) if with_state_only && s.trainer.is_none() => continue,
                Ok(s) => {
                    loaded.snapshot = Some((s, file.path));
                    break;
                }
                Err(e) if e.is_corruption() => loaded.skipped.push(e),
                Err(e) => return Err(e),
            }
        }
        Ok(loaded)
    }

    /// The newest last-good snapshot that verifies (damaged ones skipped).
    pub fn load_newest_last_good(&self) -> Result<Option<(Snapshot, PathBuf)>, Error> {
        for file in self.list()?.into_iter().rev().filter(|f| f.last_good) {
            match Self::load(&file.path) {
                Ok(s) => return Ok(Some((s, file.path))),
                Err(e) if e.is_corruption() => {
                    tracing::error!(error = %e, "damaged last-good snapshot skipped");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// The retained snapshot of `version` (its last-good file if both exist).
    pub fn find(&self, version: u64) -> Result<Option<SnapshotFile>, Error> {
        Ok(self
            .list()?
            .into_iter()
            .rev()
            .find(|f| f.version == version))
    }

    /// Keeps the newest `keep` snapshots, the newest `keep_last_good`
    /// last-good ones, and those in `protect`.
    fn prune(&self, protect: &[u64]) -> Result<(), Error> {
        let files = self.list()?;
        let cut = files.len().saturating_sub(self.keep);
        let good_cut = files
            .iter()
            .filter(|f| f.last_good)
            .count()
            .saturating_sub(self.keep_last_good);
        let mut good_seen = 0;
        for f in &files[..cut] {
            let kept_as_good = f.last_good && {
                good_seen += 1;
                good_seen > good_cut
            };
            if !kept_as_good && !protect.contains(&f.version) {
                match std::fs::remove_file(&f.path) {
                    // Another process pruning the same directory (a server
                    // and `eddy train --out`) removed it first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    other => other.map_err(self.io(&f.path))?,
                }
            }
        }
        Ok(())
    }
}

fn file_name(version: u64, last_good: bool) -> String {
    if last_good {
        format!("snapshot-{version:020}.good.eddy")
    } else {
        format!("snapshot-{version:020}.eddy")
    }
}

/// The version and last-good mark a snapshot file name carries.
fn parse_file_name(name: &str) -> Option<(u64, bool)> {
    let stem = name.strip_prefix("snapshot-")?.strip_suffix(".eddy")?;
    match stem.strip_suffix(".good") {
        Some(v) => Some((v.parse().ok()?, true)),
        None => Some((stem.parse().ok()?, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{FeatureHasher, OptimizerKind, RawFeatures, Target};

    fn trained(kind: OptimizerKind, task: TaskKind, classes: &[&str]) -> Snapshot {
        let classes: Vec<String> = classes.iter().map(|s| s.to_string()).collect();
        let space = Arc::new(LabelSpace::new(task, classes.clone()).unwrap());
        let optimizer = OptimizerConfig {
            kind,
            ..OptimizerConfig::default()
        };
        let mut learner = Learner::new(Params::new(space.clone(), 10), optimizer);
        let mut names = FeatureNames::default();
        for i in 0..200 {
            let json = format!(r#"{{"a": {}, "c": "k{}"}}"#, i % 13, i % 3);
            let raw: RawFeatures = serde_json::from_str(&json).unwrap();
            names.note_features(&FeatureHasher::new(10), &raw);
            let x = features(&json);
            let y = match task {
                TaskKind::Regression => Target::Value(i as f64 * 0.5),
                _ => Target::Class(i % space.n_classes()),
            };
            learner.learn_one(&x, y);
        }
        Snapshot {
            meta: SnapshotMeta {
                format_version: FORMAT_VERSION,
                model: "m".into(),
                task,
                classes,
                hash_bits: 10,
                family: Family::Linear,
                mlp: None,
                optimizer,
                version: 7,
                examples_trained: 200,
                feedback_position: 200,
                optimizer_steps: learner.state().steps,
                created_at_ms: 1,
                model_created_at_ms: 1,
                quality: BTreeMap::from([("accuracy".to_owned(), 0.75)]),
                last_good: false,
                log_from: None,
                offline: false,
                feature_names: Arc::new(names),
            },
            learner,
            trainer: None,
        }
    }

    fn features(json: &str) -> crate::learn::FeatureVec {
        let raw: RawFeatures = serde_json::from_str(json).unwrap();
        FeatureHasher::new(10).hash(&raw).unwrap()
    }

    #[test]
    fn an_untouched_model_is_a_few_kb_and_memory_follows_the_rows_learned() {
        let mut s = trained(OptimizerKind::Auto, TaskKind::Binary, &[]);
        let space = s.learner.params().space.clone();
        // The default shape: 2^18 rows.
        s.learner = Learner::new(Params::new(space, 18), s.meta.optimizer);
        s.meta.hash_bits = 18;
        let empty = s.encode().unwrap();
        assert!(empty.len() < 16 * 1024, "{} bytes", empty.len());
        let back = Snapshot::decode(&empty, Path::new("x")).unwrap();
        assert_eq!(back.learner.params().weights.allocated_blocks(), 0);
        assert_eq!(back.learner.params().scaler.allocated_blocks(), 0);
        // Two features touch at most two blocks of each matrix.
        let x = features(r#"{"a": 5, "c": "k1"}"#);
        for _ in 0..50 {
            s.learner.learn_one(&x, Target::Class(1));
        }
        let blocks = s.learner.params().weights.allocated_blocks();
        assert!((1..=2).contains(&blocks), "{blocks}");
        let bytes = s.encode().unwrap();
        assert!(bytes.len() < 256 * 1024, "{} bytes", bytes.len());
        let back = Snapshot::decode(&bytes, Path::new("x")).unwrap();
        assert_eq!(back.learner.params().weights.allocated_blocks(), blocks);
        assert_eq!(back.encode().unwrap(), bytes);
        assert_eq!(
            back.learner.params().predict(&x),
            s.learner.params().predict(&x)
        );
    }

    #[test]
    fn round_trip_predicts_and_learns_identically() {
        for (kind, task, classes) in [
            (OptimizerKind::Sgd, TaskKind::Binary, &[][..]),
            (
                OptimizerKind::Adagrad,
                TaskKind::Multiclass,
                &["x", "y", "z"][..],
            ),
            (OptimizerKind::Adam, TaskKind::Regression, &[][..]),
            (OptimizerKind::Ftrl, TaskKind::Binary, &["no", "yes"][..]),
            (OptimizerKind::Auto, TaskKind::Binary, &[][..]),
            (
                OptimizerKind::Auto,
                TaskKind::Multiclass,
                &["x", "y", "z"][..],
            ),
            (OptimizerKind::Auto, TaskKind::Regression, &[][..]),
        ] {
            let s = trained(kind, task, classes);
            let bytes = s.encode().unwrap();
            let back = Snapshot::decode(&bytes, Path::new("x")).unwrap();
            assert_eq!(back.meta, s.meta);
            assert_eq!(back.encode().unwrap(), bytes, "{kind:?}: bit-identical");
            assert_eq!(back.meta.feature_names.len(), 4, "a, c=k0, c=k1, c=k2");
            let probe = features(r#"{"a": 5, "c": "k1"}"#);
            assert_eq!(
                back.learner.params().predict(&probe),
                s.learner.params().predict(&probe)
            );
            // Optimizer state came back too: one more step agrees.
            let (mut a, mut b) = (s.learner.clone(), back.learner.clone());
            let y = if task == TaskKind::Regression {
                Target::Value(3.0)
            } else {
                Target::Class(1)
            };
            for _ in 0..100 {
                a.learn_one(&probe, y);
                b.learn_one(&probe, y);
            }
            assert_eq!(
                a.params().predict(&probe),
                b.params().predict(&probe),
                "{kind:?}"
            );
            assert_eq!(
                a.params().weights.to_vec(),
                b.params().weights.to_vec(),
                "{kind:?}"
            );
            assert_eq!(a.params().mixture, b.params().mixture, "{kind:?}");
        }
    }

    #[test]
    fn damaged_files_are_refused() {
        let bytes = trained(OptimizerKind::Adagrad, TaskKind::Binary, &[])
            .encode()
            .unwrap();
        let p = Path::new("x");
        assert!(matches!(
            Snapshot::decode(&bytes[..bytes.len() - 1], p),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            Snapshot::decode(&bytes[..10], p),
            Err(Error::Truncated { .. })
        ));
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 1;
        assert!(matches!(
            Snapshot::decode(&flipped, p),
            Err(Error::Checksum { .. })
        ));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(matches!(
            Snapshot::decode(&magic, p),
            Err(Error::BadMagic { .. })
        ));
        // A damaged format field fails the checksum like any other byte.
        let mut format = bytes.clone();
        format[8] = 99;
        assert!(matches!(
            Snapshot::decode(&format, p),
            Err(Error::Checksum { .. })
        ));
        // An intact file of an unknown older format is no use either.
        assert!(matches!(
            Snapshot::decode(&with_format(&bytes, 0), p),
            Err(Error::Format { found: 0, .. })
        ));
        for e in [
            Snapshot::decode(&flipped, p).unwrap_err(),
            Snapshot::decode(&bytes[..50], p).unwrap_err(),
            Snapshot::decode(&with_format(&bytes, 0), p).unwrap_err(),
        ] {
            assert!(e.is_corruption());
        }
    }

    /// `bytes` claiming format `format`, with the checksum made good again,
    /// as an intact file of that format would be.
    fn with_format(bytes: &[u8], format: u32) -> Vec<u8> {
        let mut out = bytes[..bytes.len() - CHECKSUM_LEN].to_vec();
        out[8..12].copy_from_slice(&format.to_le_bytes());
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    #[test]
    fn a_snapshot_from_a_newer_eddy_stops_loading_instead_of_being_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().to_owned(), 5);
        let mut s = trained(OptimizerKind::Adagrad, TaskKind::Binary, &[]);
        store.write(&s, &[]).unwrap();
        s.meta.version += 1;
        let newer = store.write(&s, &[]).unwrap();
        let bytes = std::fs::read(&newer.path).unwrap();
        std::fs::write(&newer.path, with_format(&bytes, FORMAT_VERSION + 1)).unwrap();
        let e = store.load_newest_valid().unwrap_err();
        assert!(
            matches!(&e, Error::NewerFormat { path, found, supported }
                if path == &newer.path && *found == FORMAT_VERSION + 1 && *supported == FORMAT_VERSION),
            "{e:?}"
        );
        assert!(!e.is_corruption());
        assert_eq!(
            e.to_string(),
            format!(
                "snapshot {} was written by a newer eddy (format {}; this build reads up to {}); \
                 upgrade eddy or move the file away",
                newer.path.display(),
                FORMAT_VERSION + 1,
                FORMAT_VERSION
            )
        );
        s.meta.last_good = true;
        s.meta.version += 1;
        let good = store.write(&s, &[]).unwrap();
        let bytes = std::fs::read(&good.path).unwrap();
        std::fs::write(&good.path, with_format(&bytes, FORMAT_VERSION + 1)).unwrap();
        assert!(matches!(
            store.load_newest_last_good(),
            Err(Error::NewerFormat { .. })
        ));
    }

    /// The committed snapshot in today's format: every later build must
    /// still load it (see `tests/data/README.md`).
    const FIXTURE_V1: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/fixtures/snapshot-v1.eddy"
    );
    /// What the fixture predicts for the probe in
    /// `the_committed_format_1_fixture_still_loads`, recorded when it was
    /// made: loading must give back these exact weights.
    const PROBE_P0: f32 = 0.2979139;
    const PROBE_P1: f32 = 0.7020861;

    fn fixture_features(json: &str) -> crate::learn::FeatureVec {
        let raw: RawFeatures = serde_json::from_str(json).unwrap();
        FeatureHasher::new(6).hash(&raw).unwrap()
    }

    /// The fixture's model: 50 deterministic examples, binary, Adagrad,
    /// hash_bits 6. Changing this does not change the committed file; only
    /// `EDDY_WRITE_FIXTURES=1` rewrites it.
    fn fixture_v1() -> Snapshot {
        let space = Arc::new(LabelSpace::new(TaskKind::Binary, Vec::new()).unwrap());
        let optimizer = OptimizerConfig {
            kind: OptimizerKind::Adagrad,
            learning_rate: 0.1,
            l1: 0.0,
            l2: 0.0,
        };
        let hasher = FeatureHasher::new(6);
        let mut learner = Learner::new(Params::new(space, 6), optimizer);
        let mut names = FeatureNames::default();
        for i in 0..50u32 {
            let x = (i * 7) % 11;
            let json = format!(r#"{{"x": {x}, "colour": "c{}"}}"#, i % 4);
            let raw: RawFeatures = serde_json::from_str(&json).unwrap();
            names.note_features(&hasher, &raw);
            learner.learn_one(&fixture_features(&json), Target::Class(usize::from(x > 5)));
        }
        Snapshot {
            meta: SnapshotMeta {
                format_version: FORMAT_VERSION,
                model: "fixture".into(),
                task: TaskKind::Binary,
                classes: Vec::new(),
                hash_bits: 6,
                family: Family::Linear,
                mlp: None,
                optimizer,
                version: 3,
                examples_trained: 50,
                feedback_position: 50,
                optimizer_steps: learner.state().steps,
                created_at_ms: 1_700_000_000_000,
                model_created_at_ms: 1_700_000_000_000,
                quality: BTreeMap::from([("accuracy".to_owned(), 0.5)]),
                log_from: None,
                offline: false,
                last_good: true,
                feature_names: Arc::new(names),
            },
            learner,
            trainer: None,
        }
    }

    /// The committed format 2 snapshot: an `auto` model.
    const FIXTURE_V2: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/fixtures/snapshot-v2.eddy"
    );

    /// The format 2 fixture's model: 400 deterministic examples whose
    /// concept flips halfway, binary, `auto`, hash_bits 6 (enough for the
    /// mixture weights to move away from equal).
    fn fixture_v2() -> Snapshot {
        let mut s = fixture_v1();
        let space = s.learner.params().space.clone();
        let optimizer = OptimizerConfig::default();
        let mut learner = Learner::new(Params::new(space, 6), optimizer);
        for i in 0..400u32 {
            let x = (i * 7) % 11;
            let json = format!(r#"{{"x": {x}, "colour": "c{}"}}"#, i % 4);
            let y = usize::from((x > 5) == (i < 200));
            learner.learn_one(&fixture_features(&json), Target::Class(y));
        }
        s.meta.optimizer = optimizer;
        s.meta.optimizer_steps = learner.state().steps;
        s.meta.examples_trained = 400;
        s.meta.feedback_position = 400;
        s.learner = learner;
        s
    }

    /// Writes a committed fixture that is missing, only when asked: a
    /// committed file is evidence of what an earlier build wrote, so it
    /// never follows the current encoder.
    #[test]
    fn write_fixtures_when_asked() {
        if std::env::var("EDDY_WRITE_FIXTURES").as_deref() == Ok("1") {
            // Only missing ones: a committed fixture is evidence of its
            // format, and today's encoder writes the newest format.
            for (path, snapshot) in [
                (FIXTURE_V1, fixture_v1()),
                (FIXTURE_V2, fixture_v2()),
                (FIXTURE_V3_MLP, fixture_v3_mlp()),
            ] {
                if !Path::new(path).exists() {
                    let bytes = snapshot.encode().unwrap();
                    super::super::write_atomic(Path::new(path), &bytes).unwrap();
                }
            }
        }
    }

    /// A format 3 snapshot of an `mlp` model, committed like `FIXTURE_V1`.
    const FIXTURE_V3_MLP: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/fixtures/snapshot-v3-mlp.eddy"
    );
    /// What it predicts for the probe, recorded when it was made.
    const MLP_PROBE_P1: f32 = 0.584_625_24;

    /// Written before the crossed grids: `crosses` is absent from its
    /// metadata and reads as 0.
    fn fixture_mlp_config() -> MlpConfig {
        MlpConfig {
            hidden: 8,
            embedding_bits: 6,
            bins: 4,
            crosses: 0,
            ..MlpConfig::default()
        }
    }

    #[test]
    fn an_mlp_saved_without_crosses_keeps_none_and_one_with_them_keeps_them() {
        let mut meta = fixture_v3_mlp().meta;
        let crossed = MlpConfig::default();
        assert!(crossed.crosses > 0);
        meta.mlp = Some(crossed);
        let mut json: serde_json::Value = serde_json::to_value(&meta).unwrap();
        let back: SnapshotMeta = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.mlp, Some(crossed));
        json["mlp"].as_object_mut().unwrap().remove("crosses");
        let old: SnapshotMeta = serde_json::from_value(json).unwrap();
        assert_eq!(old.mlp.unwrap().crosses, 0);
    }

    /// The mlp fixture's model: `fixture_v1`'s examples through a small
    /// network (hidden 8, hash_bits 6).
    fn fixture_v3_mlp() -> Snapshot {
        let mut s = fixture_v1();
        let space = s.learner.params().space.clone();
        let params = crate::learn::mlp::fresh_params(space, 6, Family::Mlp, &fixture_mlp_config());
        let mut learner = Learner::new(params, s.meta.optimizer);
        for i in 0..50u32 {
            let x = (i * 7) % 11;
            let json = format!(r#"{{"x": {x}, "colour": "c{}"}}"#, i % 4);
            learner.learn_one(&fixture_features(&json), Target::Class(usize::from(x > 5)));
        }
        (s.meta.family, s.meta.mlp) = family_of(&learner);
        s.meta.model = "fixture_mlp".into();
        s.learner = learner;
        s
    }

    #[test]
    fn the_committed_format_3_mlp_fixture_still_loads() {
        let s = SnapshotStore::load(Path::new(FIXTURE_V3_MLP)).unwrap();
        assert_eq!((s.meta.format_version, s.meta.family), (3, Family::Mlp));
        assert_eq!(s.meta.mlp, Some(fixture_mlp_config()));
        let probe = fixture_features(r#"{"x": 8, "colour": "c1"}"#);
        let crate::learn::Output::Probabilities(p) = s.learner.params().predict(&probe) else {
            panic!("binary")
        };
        assert_eq!(p[1], MLP_PROBE_P1, "{:?}", p);
        // And it goes on learning as the model that wrote it would have.
        let (mut a, mut b) = (s.learner.clone(), fixture_v3_mlp().learner);
        a.learn_one(&probe, Target::Class(0));
        b.learn_one(&probe, Target::Class(0));
        assert_eq!(a.params().predict(&probe), b.params().predict(&probe));
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|w| w.to_bits()).collect()
    }

    /// Every float of an mlp learner (weights and update state), as bits.
    fn mlp_bits(l: &Learner) -> Vec<Vec<u32>> {
        let p = l.params();
        let net = p.net.as_ref().unwrap();
        let st = l.net_state().unwrap();
        vec![
            bits(&p.weights.to_vec()),
            bits(&p.bias),
            bits(&net.embedding.to_vec()),
            bits(&net.hidden_bias),
            bits(&net.output),
            bits(&st.embedding.to_vec()),
            bits(&st.wide.to_vec()),
            bits(&st.hidden_bias),
            bits(&st.output),
            bits(&st.bias),
            vec![st.steps as u32],
        ]
    }

    #[test]
    fn an_mlp_round_trip_is_bit_identical_and_refuses_another_family() {
        for (task, classes) in [
            (
                TaskKind::Multiclass,
                vec!["x".to_owned(), "y".into(), "z".into()],
            ),
            (TaskKind::Regression, vec![]),
        ] {
            let space = Arc::new(LabelSpace::new(task, classes).unwrap());
            let mut s = fixture_v1();
            let config = fixture_mlp_config();
            let params = crate::learn::mlp::fresh_params(space.clone(), 6, Family::Mlp, &config);
            let mut learner = Learner::new(params, s.meta.optimizer);
            for i in 0..300 {
                let json = format!(r#"{{"x": {}, "colour": "c{}"}}"#, i % 13, i % 3);
                let y = match task {
                    TaskKind::Regression => Target::Value(f64::from(i % 13) * 2.5),
                    _ => Target::Class(i as usize % 3),
                };
                learner.learn_one(&fixture_features(&json), y);
            }
            (s.meta.family, s.meta.mlp) = family_of(&learner);
            (s.meta.task, s.meta.classes) = (task, space.classes().to_vec());
            s.learner = learner;
            // A trainer's part too: last-good as a second named learner.
            s.trainer = Some(TrainerPart {
                state: vec![1, 2, 3],
                guard: None,
                learners: vec![("last_good".into(), s.learner.clone())],
                candidates_resumed: true,
            });
            let back = Snapshot::decode(&s.encode().unwrap(), Path::new("x")).unwrap();
            assert_eq!(back.meta, s.meta);
            assert_eq!(mlp_bits(&back.learner), mlp_bits(&s.learner));
            let part = back.trainer.as_ref().unwrap();
            assert_eq!(mlp_bits(&part.learners[0].1), mlp_bits(&s.learner));
            // Through `adopt`, as start-up does, the update state survives.
            let adopted = back.clone().adopt(s.meta.optimizer);
            assert_eq!(mlp_bits(&adopted), mlp_bits(&s.learner));
            let mut config_m = crate::config::Config::from_toml_over_default(
                "[[models]]\nname = \"m\"\ntask = \"binary\"\nhash_bits = 6",
            )
            .unwrap()
            .models
            .remove(0);
            (config_m.task, config_m.classes) = (task, s.meta.classes.clone());
            let err = back
                .check_compatible(&config_m, Path::new("x"))
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains("family is mlp in the snapshot, linear in config"),
                "{err}"
            );
            (config_m.family, config_m.mlp) = (Family::Mlp, config);
            back.check_compatible(&config_m, Path::new("x")).unwrap();
        }
    }

    /// What the format 2 fixture predicts for the probe, recorded when it
    /// was made.
    const PROBE_V2_P1: f32 = 0.054526318;

    #[test]
    fn the_committed_format_2_fixture_still_loads() {
        let s = SnapshotStore::load(Path::new(FIXTURE_V2)).unwrap();
        let m = &s.meta;
        assert_eq!(
            (m.format_version, m.examples_trained, m.hash_bits),
            (2, 400, 6)
        );
        assert_eq!(m.optimizer.kind, OptimizerKind::Auto);
        let probe = fixture_features(r#"{"x": 8, "colour": "c1"}"#);
        let crate::learn::Output::Probabilities(p) = s.learner.params().predict(&probe) else {
            panic!("binary")
        };
        let mixture = s.learner.params().mixture.as_deref().unwrap();
        assert_eq!(p[1], PROBE_V2_P1);
        // Its candidates (RMS 0.01, RMS 0.1, AdaGrad 0.3) are not this
        // build's, so they are not resumed: this build's candidates start
        // from the published weights, in equal shares, and the model
        // predicts what it did.
        let weights: Vec<f32> = mixture.iter().map(|w| w.weight).collect();
        let rules: Vec<_> = mixture.iter().map(|w| w.rule).collect();
        assert_eq!(weights, vec![1.0 / 3.0; 3]);
        assert_eq!(rules, s.meta.optimizer.candidates());
        // Learning on from there keeps the published weights the mixture
        // of the candidates.
        let mut loaded = s.learner.clone();
        for i in 0..100 {
            let x = fixture_features(&format!(r#"{{"x": {}, "colour": "c2"}}"#, i % 11));
            loaded.learn_one(&x, Target::Class(i % 2));
        }
        let auto = loaded.state().auto.as_ref().unwrap();
        let shares = auto.mixture.applied();
        for r in auto.active.iter() {
            let want: f32 = (0..3)
                .map(|k| shares[k] * auto.candidate_row(k, r)[0])
                .sum();
            assert_eq!(loaded.params().weights.row_slice(r)[0], want);
        }
        assert_ne!(
            loaded.params().predict(&probe),
            s.learner.params().predict(&probe)
        );
    }

    /// An explicit kind learns exactly as before `auto` existed: the
    /// format 1 fixture's model, trained again by this build, has the
    /// committed file's weights to the bit.
    #[test]
    fn explicit_adagrad_learns_as_the_format_1_build_did() {
        let committed = SnapshotStore::load(Path::new(FIXTURE_V1)).unwrap();
        assert!(committed.optimizer_resumes(&committed.meta.optimizer));
        assert!(!committed.optimizer_resumes(&OptimizerConfig::default()));
        let again = fixture_v1();
        assert_eq!(
            again.learner.params().weights.to_vec(),
            committed.learner.params().weights.to_vec()
        );
        assert_eq!(again.learner.params().bias, committed.learner.params().bias);
        assert_eq!(
            again.learner.state().weights.to_vec(),
            committed.learner.state().weights.to_vec()
        );
    }

    /// A snapshot written before `auto` (AdaGrad) adopted by an `auto`
    /// model predicts as it did, then learns with the candidates.
    #[test]
    fn a_format_1_snapshot_adopted_by_auto_predicts_as_before() {
        let s = SnapshotStore::load(Path::new(FIXTURE_V1)).unwrap();
        let probe = fixture_features(r#"{"x": 8, "colour": "c1"}"#);
        let before = s.learner.params().predict(&probe);
        let mut adopted = s.adopt(OptimizerConfig::default());
        assert_eq!(adopted.params().predict(&probe), before);
        assert_eq!(adopted.params().mixture.as_deref().map(<[_]>::len), Some(3));
        for i in 0..50 {
            adopted.learn_one(&probe, Target::Class(i % 2));
        }
        assert_ne!(adopted.params().predict(&probe), before);
    }

    #[test]
    fn the_committed_format_1_fixture_still_loads() {
        let s = SnapshotStore::load(Path::new(FIXTURE_V1)).unwrap();
        let m = &s.meta;
        assert_eq!(
            (
                m.format_version,
                m.version,
                m.examples_trained,
                m.task,
                m.hash_bits
            ),
            (1, 3, 50, TaskKind::Binary, 6)
        );
        assert_eq!(m.optimizer.kind, OptimizerKind::Adagrad);
        assert!(m.last_good);
        let probe = fixture_features(r#"{"x": 8, "colour": "c1"}"#);
        assert_eq!(
            s.learner.params().predict(&probe),
            crate::learn::Output::Probabilities(vec![PROBE_P0, PROBE_P1])
        );
    }

    #[test]
    fn retention_keeps_recent_last_good_snapshots_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().to_owned(), 2).keeping_last_good(2);
        let mut s = trained(OptimizerKind::Adagrad, TaskKind::Binary, &[]);
        for (v, good) in [(1, true), (2, false), (3, true), (4, false), (5, true)] {
            s.meta.version = v;
            s.meta.last_good = good;
            store.write(&s, &[]).unwrap();
        }
        // Version 6 written plain, then promoted: one file, marked good.
        s.meta.version = 6;
        s.meta.last_good = false;
        store.write(&s, &[]).unwrap();
        s.meta.last_good = true;
        store.write(&s, &[]).unwrap();
        s.meta.version = 7;
        s.meta.last_good = false;
        store.write(&s, &[]).unwrap();
        let kept: Vec<(u64, bool)> = store
            .list()
            .unwrap()
            .iter()
            .map(|f| (f.version, f.last_good))
            .collect();
        assert_eq!(
            kept,
            [(5, true), (6, true), (7, false)],
            "newest two, plus the two newest last-good"
        );
        let (good, _) = store.load_newest_last_good().unwrap().unwrap();
        assert_eq!((good.meta.version, good.meta.last_good), (6, true));
        assert_eq!(store.find(5).unwrap().map(|f| f.last_good), Some(true));
        assert_eq!(store.find(2).unwrap(), None);
    }

    #[test]
    fn a_fifo_among_the_snapshots_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("snapshot-00000000000000000003.eddy");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: no mkfifo here");
            return;
        }
        // Opening it would wait for a writer for ever.
        assert_eq!(SnapshotStore::position_of(&fifo), None);
        assert!(SnapshotStore::load(&fifo).is_err());
    }

    #[test]
    fn store_keeps_the_newest_and_skips_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().to_owned(), 2);
        let mut s = trained(OptimizerKind::Adagrad, TaskKind::Binary, &[]);
        for v in [3, 5, 9, 12] {
            s.meta.version = v;
            store.write(&s, &[3]).unwrap();
        }
        let versions: Vec<u64> = store.list().unwrap().iter().map(|f| f.version).collect();
        assert_eq!(
            versions,
            [3, 9, 12],
            "the newest two plus the protected one"
        );
        // Damage the newest: it is skipped and reported, the next one loads.
        let newest = store.list().unwrap().pop().unwrap();
        let bytes = std::fs::read(&newest.path).unwrap();
        std::fs::write(&newest.path, &bytes[..bytes.len() / 2]).unwrap();
        let loaded = store.load_newest_valid().unwrap();
        assert_eq!(loaded.snapshot.unwrap().0.meta.version, 9);
        assert_eq!(loaded.skipped.len(), 1);
        // Leftover temp files from a crash are not snapshots.
        std::fs::write(dir.path().join(".snapshot-abc.tmp"), b"partial").unwrap();
        assert_eq!(store.list().unwrap().len(), 3);
    }

    #[test]
    fn a_snapshot_of_another_shape_is_a_mismatch() {
        let s = trained(OptimizerKind::Adagrad, TaskKind::Binary, &[]);
        let mut config: ModelConfig = crate::config::Config::builtin().unwrap().models.remove(0);
        config.hash_bits = 10;
        assert!(s.check_compatible(&config, Path::new("x")).is_ok());
        config.hash_bits = 12;
        let e = s.check_compatible(&config, Path::new("x")).unwrap_err();
        assert!(
            !e.is_corruption() && e.to_string().contains("hash_bits"),
            "{e}"
        );
        config.hash_bits = 10;
        config.task = TaskKind::Regression;
        assert!(s.check_compatible(&config, Path::new("x")).is_err());
    }
}
