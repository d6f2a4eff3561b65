//! The typed configuration tree, loaded in layers and validated before
//! anything binds a socket.
//!
//! Layers, lowest first: the built-in `config/eddy.toml` (compiled in), the
//! file given with `--config` (tables merge key by key; arrays such as
//! `[[models]]` replace), then `EDDY_*` environment variables. A variable
//! names a key path with `__` between levels (`EDDY_SERVER__LISTEN`); inside
//! `models` (and `sources`) the next level is an entry's name
//! (case-insensitive, any character other than a letter or digit written
//! as `_`) or its position, e.g. `EDDY_MODELS__DEMO__OPTIMIZER__LEARNING_RATE`,
//! `EDDY_MODELS__0__HASH_BITS` or `EDDY_SOURCES__CRM__TOKEN`. Unknown keys
//! at any layer are errors that name the key.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use toml::{Table, Value};

mod guard;
mod runtime;
mod sources;

pub use runtime::{ARCHIVE_DIR, RUNTIME_MODELS_FILE, model_from_json, runtime_models_comment};

pub use guard::{
    DeclaredFeature, DeclaredKind, GuardConfig, InfluenceConfig, LabelConfig, OutlierConfig,
    QuarantineConfig, UnknownFeatures,
};
pub use sources::{RateLimit, SourceConfig};

use crate::learn::features::{MAX_HASH_BITS, MIN_HASH_BITS};
use crate::learn::{Family, LabelSpace, MlpConfig, OptimizerConfig, Params, TaskKind};
pub use crate::persist::wal::Fsync;

/// The built-in default configuration.
pub const DEFAULT_TOML: &str = include_str!("../../config/eddy.toml");

/// Upper bound of queue, concurrency and cache sizes (tokio's semaphores
/// allow at most `usize::MAX >> 3`; far beyond any useful value anyway).
pub(crate) const MAX_BOUND: usize = 1 << 28;

/// Upper bound of `features.max_per_example` (a 1 MiB body holds fewer).
const MAX_FEATURES_PER_EXAMPLE: usize = 1 << 20;

/// What a replay buffer entry costs beyond its features, at most: the
/// entry itself and its source's name (checked in `serving::monitor`).
pub const REPLAY_ENTRY_SLACK: usize = 1024;

/// Most feedback or trainer threads (`server.feedback_threads`,
/// `server.feedback_io_threads`, `server.trainer_threads`); far beyond any core count that helps.
const MAX_FEEDBACK_THREADS: usize = 1024;

/// Most classes a model may have.
const MAX_CLASSES: usize = 32_768;

/// The largest `mlp` embedding table a model may have (allocated whole at
/// start).
const MAX_EMBEDDING_BYTES: u64 = 256 << 20;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "EDDY_";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub storage: StorageConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Feedback credentials; empty: sources are self-declared.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    pub models: Vec<ModelConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: NonZeroUsize,
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: NonZeroUsize,
    /// Instances one predict may hold; more answer 422 `batch_too_large`.
    #[serde(default = "default_batch_instances")]
    pub max_batch_instances: NonZeroUsize,
    /// Models one process serves, from the file and added at runtime
    /// together; a `PUT /admin/models/{model}` beyond it answers 409
    /// `model_limit`.
    #[serde(default = "default_max_models")]
    pub max_models: NonZeroUsize,
    #[serde(default = "default_grace")]
    pub shutdown_grace_ms: u64,
    /// Threads that parse, check, score and log feedback, apart from the
    /// request runtime (`serving::ingest`); 0: one per CPU core.
    #[serde(default)]
    pub feedback_threads: usize,
    /// Threads that serve the connections whose first request posts
    /// feedback (`http::listener::lane`), at the feedback threads'
    /// priority and off `request_cpus`, so reading feedback bodies keeps
    /// off the request threads; 0 serves them on the request threads.
    #[serde(default = "default_feedback_io_threads")]
    pub feedback_io_threads: usize,
    /// Threads of the trainer pool, which every model's trainer shares
    /// (`serving::trainer`: a model with nothing queued uses none); 0: one
    /// per CPU core.
    #[serde(default)]
    pub trainer_threads: usize,
    /// Feedback requests admitted at once (running or waiting for a
    /// feedback thread); beyond it 429 `feedback_overloaded` before the
    /// body is parsed.
    #[serde(default = "default_feedback_concurrency")]
    pub feedback_concurrency: NonZeroUsize,
    /// Niceness of the feedback threads on Linux (0 to 19) under
    /// `background_policy = "nice"`, a smaller share of a core than the
    /// request threads'; 0 leaves it unchanged.
    #[serde(default = "default_feedback_nice")]
    pub feedback_nice: i32,
    /// Niceness of the trainer pool's threads on Linux (0 to 19) under
    /// `background_policy = "nice"`; 0 (the default) leaves them at the
    /// request threads' priority.
    #[serde(default)]
    pub trainer_nice: i32,
    /// How the feedback and trainer threads give way to the request
    /// threads on Linux (`serving::priority`): `nice` (the default: the
    /// normal policy at the two keys above) or `idle` (`SCHED_IDLE`: they
    /// run only when no normal thread wants the CPU).
    #[serde(default)]
    pub background_policy: crate::serving::priority::BackgroundPolicy,
    /// CPUs kept free of the feedback and trainer threads for the request
    /// threads (which still run anywhere), on Linux: the lowest-numbered of
    /// those the process may use, when it may use more; 0: none kept.
    #[serde(default = "default_request_cpus")]
    pub request_cpus: usize,
    /// Transparent huge pages for the process's heap (Linux). Off by
    /// default: a huge page is cleared whole by the request thread that
    /// first touches it, a stall of milliseconds (`serving::priority`).
    #[serde(default)]
    pub huge_pages: bool,
    /// How long a feedback request over `feedback_concurrency` waits for a
    /// place (its body not parsed) before the 429; 0: refused at once.
    #[serde(default = "default_feedback_wait")]
    pub feedback_wait_ms: u64,
    /// A request's head must arrive within this long of its first byte.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_ms: u64,
    /// A request's whole body must arrive within this long of its head
    /// (408 `body_timeout` otherwise); read before the request takes a
    /// concurrency slot.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_ms: u64,
    /// A keep-alive connection with no request under way is closed after
    /// this long.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Open connections on the listener; beyond it new ones are closed at
    /// once (counted).
    #[serde(default = "default_max_connections")]
    pub max_connections: NonZeroUsize,
    /// HTTPS on this listener when present.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    #[serde(default)]
    pub token: String,
    #[serde(default = "default_admin_max_body")]
    pub max_body_bytes: NonZeroUsize,
    /// Longer than the public one: a snapshot of a large model is written
    /// while the call waits. An admin call waiting on a busy trainer
    /// answers 503 `trainer_busy` a little before it (`trainer_wait`).
    #[serde(default = "default_admin_request_timeout")]
    pub request_timeout_ms: u64,
    #[serde(default = "default_admin_concurrency")]
    pub max_concurrency: NonZeroUsize,
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_ms: u64,
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_ms: u64,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_admin_connections")]
    pub max_connections: NonZeroUsize,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How often the status page's history (`GET /`) records each model's
    /// quality, version and queue depth (a point only when one changed).
    #[serde(default = "default_status_sample")]
    pub status_sample_ms: u64,
}

/// `[server.tls]` / `[admin.tls]`: PEM files, re-read when they change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the files are re-read and compared with what is served.
    #[serde(default = "default_tls_reload")]
    pub reload_interval_ms: u64,
}

/// One listener's connection and request limits, as durations: what
/// `http::listener` and `http::protect` enforce.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub max_concurrency: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub dir: PathBuf,
    /// Seconds between periodic snapshots of each model (they are also
    /// written at shutdown).
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval_s: u64,
    /// Snapshots kept per model (the newest ones).
    #[serde(default = "default_snapshot_keep")]
    pub snapshot_keep: NonZeroUsize,
    /// The newest this many last-good snapshots are kept too, whether or
    /// not they are among the newest `snapshot_keep` (the current
    /// last-good is never removed).
    #[serde(default = "default_last_good_keep")]
    pub last_good_keep: usize,
    /// Keep a durable feedback log per model (`<dir>/<model>/wal`): every
    /// accepted example is appended before the 202 and replayed after a
    /// crash. `false` keeps feedback in memory only (lost on a crash).
    #[serde(default = "yes")]
    pub wal: bool,
    /// When the log is fsynced: `always` (before the 202; concurrent
    /// requests share one fsync), `interval` (every `fsync_interval_ms`),
    /// `never` (the operating system decides).
    #[serde(default = "default_fsync")]
    pub fsync: Fsync,
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval_ms: u64,
    /// A log segment is closed and a new one started past this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Truncate a feedback log at mid-log corruption instead of refusing
    /// to start (`eddy serve --repair` sets it).
    #[serde(default)]
    pub repair: bool,
    /// Where log segments no longer needed go (one folder per model)
    /// instead of being deleted; `eddy train --data` reads such a folder
    /// for a full retrain. Empty: deleted.
    #[serde(default)]
    pub archive_dir: PathBuf,
    /// A snapshot is also written after this many examples were trained
    /// since the last one (bounds the log a restart replays); 0: only by
    /// time.
    #[serde(default = "default_snapshot_every_examples")]
    pub snapshot_every_examples: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub task: TaskKind,
    #[serde(default)]
    pub classes: Vec<String>,
    #[serde(default = "default_hash_bits")]
    pub hash_bits: u8,
    /// `linear` (the default) or `mlp` (`[models.mlp]`).
    #[serde(default)]
    pub family: Family,
    /// The network's settings, read when `family = "mlp"`.
    #[serde(default)]
    pub mlp: MlpConfig,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub training: TrainingConfig,
    #[serde(default)]
    pub join: JoinConfig,
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
    #[serde(default)]
    pub monitor: MonitorConfig,
    #[serde(default)]
    pub features: FeaturesConfig,
    #[serde(default)]
    pub guard: GuardConfig,
    /// A snapshot file, or a directory of them (`eddy train --out`), that
    /// seeds this model when it has no snapshot of its own yet.
    #[serde(default)]
    pub init_snapshot: String,
    /// Added at runtime (`PUT /admin/models/{model}`) rather than defined
    /// in the configuration file: kept in `<storage.dir>/.models.json`.
    /// Shown by `eddy config` and `GET /v1/models`; never read from a file.
    #[serde(default, skip_deserializing, skip_serializing_if = "is_false")]
    pub added_at_runtime: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `[models.monitor]`: prequential scoring, the publish gate, promotion
/// and rollback (see `serving::monitor`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Trusted labelled examples per judged window.
    #[serde(default = "default_window")]
    pub window: u64,
    /// Paired examples needed before any verdict (window, gate, blame).
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    /// Accuracy points (classification) or relative loss (regression) the
    /// live model may lose against last-good before it counts as degraded.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Significance level of the degradation tests.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub on_degrade: OnDegrade,
    /// Examples since last-good kept for replay after a rollback.
    #[serde(default = "default_replay_capacity")]
    pub replay_capacity: usize,
    /// Bytes the replay buffer's examples may hold (oldest evicted first).
    #[serde(default = "default_replay_max_bytes")]
    pub replay_max_bytes: usize,
    /// Sources whose labels the comparisons use; empty: every source.
    #[serde(default)]
    pub trusted_sources: Vec<String>,
    /// Optional JSON Lines file of labelled examples rescored on candidates.
    #[serde(default)]
    pub reference_set: String,
    /// Labelled examples after a rollback before the next can happen.
    #[serde(default = "default_cooldown")]
    pub cooldown_examples: u64,
    /// Distinct sources tracked (quality, blame, metrics); the rest fold
    /// into `other`.
    #[serde(default = "default_max_sources")]
    pub max_sources: usize,
    /// Gate candidate versions before they are published.
    #[serde(default = "yes")]
    pub gate: bool,
    /// How long a held candidate waits for fresh evidence before it is
    /// looked at again on what there is.
    #[serde(default = "default_gate_hold")]
    pub gate_hold_ms: u64,
    /// Largest share of the trainer's time the gate may use; a publish due
    /// sooner waits (coalesced with the next).
    #[serde(default = "default_gate_budget")]
    pub gate_budget: f64,
    /// A source is blamed when its mean loss under last-good is this many
    /// times that of the reference sources (and significantly higher).
    #[serde(default = "default_blame_factor")]
    pub blame_factor: f64,
    /// Consecutive examples per block in the degradation tests (streams
    /// are autocorrelated; see `learn::compare`).
    #[serde(default = "default_block_size")]
    pub block_size: u64,
    /// Most recent trusted examples the gate scores a candidate on.
    #[serde(default = "default_gate_examples")]
    pub gate_examples: u64,
    /// Windows promotion may wait while last-good scores far below what
    /// earned it (the data changed under both versions).
    #[serde(default = "default_settle_windows")]
    pub settle_windows: u64,
    /// Promotion snapshots are written at most this often.
    #[serde(default = "default_promotion_snapshot_interval")]
    pub promotion_snapshot_interval_ms: u64,
}

/// What the monitor does after rolling back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDegrade {
    /// Re-learn the examples since last-good without the blamed sources
    /// (or drop them all when no source is to blame) and go on learning.
    #[default]
    Replay,
    /// Stop learning until an operator resumes.
    Pause,
    /// Go on learning from new feedback; nothing is replayed.
    Continue,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    #[serde(default = "default_minibatch")]
    pub minibatch_size: NonZeroUsize,
    #[serde(default = "default_max_wait")]
    pub max_wait_ms: u64,
    #[serde(default = "default_queue")]
    pub queue_capacity: NonZeroUsize,
    #[serde(default = "default_publish_every")]
    pub publish_every: NonZeroU32,
    #[serde(default = "default_min_publish")]
    pub min_publish_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    #[serde(default = "default_ttl")]
    pub ttl_s: u64,
    #[serde(default = "default_join_capacity")]
    pub capacity: usize,
    /// Bytes the remembered predictions may hold (oldest evicted first).
    #[serde(default = "default_join_max_bytes")]
    pub max_bytes: usize,
}

/// `[models.features]`: limits on one instance's features.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesConfig {
    /// Most features one predict or feedback instance may have; more
    /// answers 422 `too_many_features`.
    #[serde(default = "default_max_per_example")]
    pub max_per_example: usize,
}

fn default_max_body() -> NonZeroUsize {
    NonZeroUsize::new(1 << 20).expect("non-zero")
}
fn default_request_timeout() -> u64 {
    10_000
}
fn default_max_models() -> NonZeroUsize {
    NonZeroUsize::new(10_000).expect("non-zero")
}

fn default_batch_instances() -> NonZeroUsize {
    NonZeroUsize::new(1000).expect("non-zero")
}
fn default_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(1024).expect("non-zero")
}
fn default_grace() -> u64 {
    10_000
}
fn default_feedback_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(4).expect("non-zero")
}
fn default_request_cpus() -> usize {
    1
}
fn default_feedback_io_threads() -> usize {
    1
}
fn default_feedback_nice() -> i32 {
    10
}
fn default_feedback_wait() -> u64 {
    100
}
fn default_header_read_timeout() -> u64 {
    10_000
}
fn default_body_read_timeout() -> u64 {
    30_000
}
fn default_idle_timeout() -> u64 {
    60_000
}
fn default_max_connections() -> NonZeroUsize {
    NonZeroUsize::new(4096).expect("non-zero")
}
fn default_admin_max_body() -> NonZeroUsize {
    NonZeroUsize::new(64 << 10).expect("non-zero")
}
fn default_admin_request_timeout() -> u64 {
    60_000
}
fn default_status_sample() -> u64 {
    5000
}
fn default_admin_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(64).expect("non-zero")
}
fn default_admin_connections() -> NonZeroUsize {
    NonZeroUsize::new(256).expect("non-zero")
}
fn default_tls_reload() -> u64 {
    5_000
}
fn default_snapshot_interval() -> u64 {
    300
}
fn default_snapshot_keep() -> NonZeroUsize {
    NonZeroUsize::new(5).expect("non-zero")
}
fn default_level() -> String {
    "info".into()
}
fn default_hash_bits() -> u8 {
    18
}
fn default_minibatch() -> NonZeroUsize {
    NonZeroUsize::new(32).expect("non-zero")
}
fn default_max_wait() -> u64 {
    50
}
fn default_queue() -> NonZeroUsize {
    NonZeroUsize::new(10_000).expect("non-zero")
}
fn default_publish_every() -> NonZeroU32 {
    NonZeroU32::new(1).expect("non-zero")
}
fn default_min_publish() -> u64 {
    5
}
pub(crate) fn yes() -> bool {
    true
}
fn default_window() -> u64 {
    1000
}
fn default_min_samples() -> u64 {
    200
}
fn default_tolerance() -> f64 {
    0.02
}
fn default_alpha() -> f64 {
    0.01
}
fn default_replay_capacity() -> usize {
    20_000
}
fn default_cooldown() -> u64 {
    2000
}
fn default_max_sources() -> usize {
    16
}
fn default_gate_budget() -> f64 {
    0.1
}
fn default_blame_factor() -> f64 {
    2.0
}
fn default_promotion_snapshot_interval() -> u64 {
    30_000
}
fn default_settle_windows() -> u64 {
    3
}
fn default_gate_hold() -> u64 {
    1000
}
fn default_block_size() -> u64 {
    50
}
fn default_gate_examples() -> u64 {
    200
}
fn default_snapshot_every_examples() -> u64 {
    1_000_000
}
fn default_fsync() -> Fsync {
    Fsync::Interval
}
fn default_fsync_interval() -> u64 {
    100
}
fn default_segment_bytes() -> u64 {
    64 << 20
}
fn default_last_good_keep() -> usize {
    20
}
fn default_ttl() -> u64 {
    3600
}
fn default_join_capacity() -> usize {
    100_000
}
fn default_join_max_bytes() -> usize {
    64 << 20
}
fn default_replay_max_bytes() -> usize {
    64 << 20
}
fn default_max_per_example() -> usize {
    10_000
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: LogFormat::Text,
        }
    }
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            minibatch_size: default_minibatch(),
            max_wait_ms: default_max_wait(),
            queue_capacity: default_queue(),
            publish_every: default_publish_every(),
            min_publish_interval_ms: default_min_publish(),
        }
    }
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: default_window(),
            min_samples: default_min_samples(),
            tolerance: default_tolerance(),
            alpha: default_alpha(),
            on_degrade: OnDegrade::default(),
            replay_capacity: default_replay_capacity(),
            replay_max_bytes: default_replay_max_bytes(),
            trusted_sources: Vec::new(),
            reference_set: String::new(),
            cooldown_examples: default_cooldown(),
            max_sources: default_max_sources(),
            gate: true,
            gate_budget: default_gate_budget(),
            gate_hold_ms: default_gate_hold(),
            blame_factor: default_blame_factor(),
            block_size: default_block_size(),
            gate_examples: default_gate_examples(),
            settle_windows: default_settle_windows(),
            promotion_snapshot_interval_ms: default_promotion_snapshot_interval(),
        }
    }
}

/// `[models.idempotency]`: how long and how many `Idempotency-Key`s of
/// acknowledged feedback requests are remembered.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    #[serde(default = "default_idempotency_ttl")]
    pub ttl_s: u64,
    #[serde(default = "default_idempotency_capacity")]
    pub capacity: usize,
}

fn default_idempotency_ttl() -> u64 {
    86_400
}
fn default_idempotency_capacity() -> usize {
    100_000
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            ttl_s: default_idempotency_ttl(),
            capacity: default_idempotency_capacity(),
        }
    }
}

impl IdempotencyConfig {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_s)
    }
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            ttl_s: default_ttl(),
            capacity: default_join_capacity(),
            max_bytes: default_join_max_bytes(),
        }
    }
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        Self {
            max_per_example: default_max_per_example(),
        }
    }
}

impl FeaturesConfig {
    /// The most one example's features can cost on the heap.
    pub fn max_example_bytes(&self) -> usize {
        crate::learn::features::allocation_cost(
            self.max_per_example
                .saturating_mul(std::mem::size_of::<crate::learn::Feature>()),
        )
    }
}

impl ServerConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// How the feedback threads are sized (`feedback_threads = 0`: one
    /// per core).
    pub fn ingest_options(&self) -> crate::serving::ingest::IngestOptions {
        let threads = match self.feedback_threads {
            0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            n => n,
        };
        crate::serving::ingest::IngestOptions {
            threads,
            concurrency: self.feedback_concurrency.get(),
            priority: crate::serving::priority::Background {
                policy: self.background_policy,
                nice: self.feedback_nice,
                keep_free: self.request_cpus,
            },
            wait: Duration::from_millis(self.feedback_wait_ms),
            // Half the request's time: the client hears 429 before its
            // request times out with an unknown outcome.
            start_within: Duration::from_millis(self.request_timeout_ms / 2),
        }
    }

    /// The feedback lane's threads and what they run at (the feedback
    /// threads' priority); `None` when `feedback_io_threads = 0`.
    pub fn feedback_lane(&self) -> Option<(usize, crate::serving::priority::Background)> {
        (self.feedback_io_threads > 0)
            .then(|| (self.feedback_io_threads, self.ingest_options().priority))
    }

    /// What the trainer pool's threads run at.
    pub fn trainer_priority(&self) -> crate::serving::priority::Background {
        crate::serving::priority::Background {
            policy: self.background_policy,
            nice: self.trainer_nice,
            keep_free: self.request_cpus,
        }
    }

    /// Threads of the trainer pool (`trainer_threads = 0`: one per core).
    pub fn trainer_pool_threads(&self) -> usize {
        match self.trainer_threads {
            0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            n => n,
        }
    }

    pub fn limits(&self) -> ListenerLimits {
        let ms = Duration::from_millis;
        ListenerLimits {
            max_body_bytes: self.max_body_bytes.get(),
            request_timeout: ms(self.request_timeout_ms),
            max_concurrency: self.max_concurrency.get(),
            header_read_timeout: ms(self.header_read_timeout_ms),
            body_read_timeout: ms(self.body_read_timeout_ms),
            idle_timeout: ms(self.idle_timeout_ms),
            max_connections: self.max_connections.get(),
        }
    }
}

impl AdminConfig {
    /// How long an admin call waits for the model's trainer before its
    /// 503 `trainer_busy`: nine tenths of `request_timeout_ms`, so that
    /// answer comes before the listener's own 503 `timeout`.
    pub fn trainer_wait(&self) -> Duration {
        // At least 1 ms short of the listener's timeout, so the two 503s
        // never race.
        let ms = self.request_timeout_ms;
        Duration::from_millis((ms - ms / 10).min(ms.saturating_sub(1)).max(1))
    }
    pub fn limits(&self) -> ListenerLimits {
        let ms = Duration::from_millis;
        ListenerLimits {
            max_body_bytes: self.max_body_bytes.get(),
            request_timeout: ms(self.request_timeout_ms),
            max_concurrency: self.max_concurrency.get(),
            header_read_timeout: ms(self.header_read_timeout_ms),
            body_read_timeout: ms(self.body_read_timeout_ms),
            idle_timeout: ms(self.idle_timeout_ms),
            max_connections: self.max_connections.get(),
        }
    }
}

impl TlsConfig {
    pub fn reload_interval(&self) -> Duration {
        Duration::from_millis(self.reload_interval_ms)
    }
}

/// Checks one listener's limits; `prefix` is `server` or `admin`.
fn validate_listener(
    prefix: &str,
    limits: &ListenerLimits,
    tls: Option<&TlsConfig>,
) -> Result<(), Error> {
    let invalid = |k: &str, message: String| Error::Invalid {
        key: format!("{prefix}.{k}"),
        message,
    };
    for (k, bound) in [
        ("max_concurrency", limits.max_concurrency),
        ("max_connections", limits.max_connections),
    ] {
        if bound > MAX_BOUND {
            return Err(invalid(k, format!("must be at most {MAX_BOUND}")));
        }
    }
    for (k, d) in [
        ("request_timeout_ms", limits.request_timeout),
        ("header_read_timeout_ms", limits.header_read_timeout),
        ("body_read_timeout_ms", limits.body_read_timeout),
        ("idle_timeout_ms", limits.idle_timeout),
    ] {
        if d.is_zero() {
            return Err(invalid(k, "must be greater than 0".into()));
        }
    }
    if let Some(tls) = tls {
        if tls.cert.as_os_str().is_empty() {
            return Err(invalid("tls.cert", "must name a PEM file".into()));
        }
        if tls.key.as_os_str().is_empty() {
            return Err(invalid("tls.key", "must name a PEM file".into()));
        }
        if tls.reload_interval_ms < 100 {
            return Err(invalid(
                "tls.reload_interval_ms",
                "must be at least 100".into(),
            ));
        }
    }
    Ok(())
}

impl StorageConfig {
    pub fn snapshot_interval(&self) -> Duration {
        Duration::from_secs(self.snapshot_interval_s)
    }

    /// The feedback log's options for `model`.
    pub fn log_options(&self, model: &str) -> crate::persist::wal::LogOptions {
        crate::persist::wal::LogOptions {
            fsync: self.fsync,
            fsync_interval: Duration::from_millis(self.fsync_interval_ms.max(1)),
            segment_bytes: self.segment_bytes,
            repair: self.repair,
            archive_dir: (!self.archive_dir.as_os_str().is_empty())
                .then(|| self.archive_dir.join(model)),
        }
    }

    /// Where one model keeps its snapshots and version record.
    pub fn model_dir(&self, model: &str) -> PathBuf {
        self.dir.join(model)
    }
}

impl TrainingConfig {
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }
    pub fn min_publish_interval(&self) -> Duration {
        Duration::from_millis(self.min_publish_interval_ms)
    }
}

impl MonitorConfig {
    fn validate(&self, key: &dyn Fn(&str) -> String) -> Result<(), Error> {
        let invalid = |k: &str, message: String| Error::Invalid {
            key: key(&format!("monitor.{k}")),
            message,
        };
        let bound = MAX_BOUND as u64;
        if !(1..=bound).contains(&self.window) {
            return Err(invalid("window", format!("must lie in 1..={bound}")));
        }
        if self.min_samples > self.window {
            return Err(invalid(
                "min_samples",
                "must not exceed monitor.window (a window would never be judged)".into(),
            ));
        }
        if self.block_size == 0 || self.block_size > self.window {
            return Err(invalid(
                "block_size",
                "must lie in 1..=monitor.window".into(),
            ));
        }
        if !(1..=bound).contains(&self.gate_examples) {
            return Err(invalid("gate_examples", format!("must lie in 1..={bound}")));
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(invalid(
                "tolerance",
                "must be a finite number of at least 0".into(),
            ));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(invalid("alpha", "must lie strictly between 0 and 1".into()));
        }
        if self.replay_capacity > MAX_BOUND {
            return Err(invalid(
                "replay_capacity",
                format!("must be at most {MAX_BOUND}"),
            ));
        }
        if !(1..=10_000).contains(&self.max_sources) {
            return Err(invalid("max_sources", "must lie in 1..=10000".into()));
        }
        if !(self.gate_budget > 0.0 && self.gate_budget <= 1.0) {
            return Err(invalid(
                "gate_budget",
                "must lie in (0, 1] (a share of the trainer's time)".into(),
            ));
        }
        if !(self.blame_factor.is_finite() && self.blame_factor >= 1.0) {
            return Err(invalid(
                "blame_factor",
                "must be a finite number of at least 1".into(),
            ));
        }
        if let Some(s) = self.trusted_sources.iter().find(|s| s.is_empty()) {
            return Err(invalid(
                "trusted_sources",
                format!("source names must not be empty ({s:?})"),
            ));
        }
        Ok(())
    }

    /// The degradation test's parameters.
    pub fn rule(&self) -> crate::learn::DegradationRule {
        crate::learn::DegradationRule {
            tolerance: self.tolerance,
            min_samples: self.min_samples,
            alpha: self.alpha,
        }
    }

    pub fn gate_hold(&self) -> Duration {
        Duration::from_millis(self.gate_hold_ms)
    }

    pub fn promotion_snapshot_interval(&self) -> Duration {
        Duration::from_millis(self.promotion_snapshot_interval_ms)
    }
}

impl JoinConfig {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_s)
    }
}

impl ModelConfig {
    /// The byte budgets and the feature cap, together: a budget must hold
    /// what it is for at the widest allowed example.
    fn validate_memory(&self, key: &dyn Fn(&str) -> String) -> Result<(), Error> {
        let invalid = |k: &str, message: String| Error::Invalid {
            key: key(k),
            message,
        };
        let widest = self.features.max_example_bytes();
        if !(1..=MAX_FEATURES_PER_EXAMPLE).contains(&self.features.max_per_example) {
            return Err(invalid(
                "features.max_per_example",
                format!("must lie in 1..={MAX_FEATURES_PER_EXAMPLE}"),
            ));
        }
        if self.join.capacity > 0 && self.join.max_bytes < widest {
            return Err(invalid(
                "join.max_bytes",
                format!(
                    "must be at least {widest} (one prediction of features.max_per_example = {} features), or set join.capacity = 0",
                    self.features.max_per_example
                ),
            ));
        }
        // The gate scores the newest `gate_examples`: the buffer must hold
        // that many of the widest examples, or wide examples would shrink
        // the gate's sample.
        let gate = widest
            .saturating_add(REPLAY_ENTRY_SLACK)
            .saturating_mul(self.monitor.gate_examples as usize);
        if self.monitor.enabled && self.monitor.replay_max_bytes < gate {
            return Err(invalid(
                "monitor.replay_max_bytes",
                format!(
                    "must be at least {gate} (monitor.gate_examples = {} examples of features.max_per_example = {} features)",
                    self.monitor.gate_examples, self.features.max_per_example
                ),
            ));
        }
        Ok(())
    }

    /// The label space this model's config describes (validated at load).
    pub fn label_space(&self) -> Result<LabelSpace, Error> {
        LabelSpace::new(self.task, self.classes.clone()).map_err(|e| Error::Invalid {
            key: format!("models[{}].classes", self.name),
            message: e.to_string(),
        })
    }

    /// A new model of this configuration's family and shape, before any
    /// learning (the network's weights from `mlp.seed`).
    pub fn fresh_params(&self, space: std::sync::Arc<LabelSpace>) -> Params {
        crate::learn::mlp::fresh_params(space, self.hash_bits, self.family, &self.mlp)
    }
}

/// Why a configuration was refused. Every variant names the key or file.
#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin} is not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

impl Config {
    /// The built-in default, with no file and no environment.
    pub fn builtin() -> Result<Self, Error> {
        Self::load(None, std::iter::empty())
    }

    /// Loads the layers; `env` is the process environment in `main` and a
    /// plain list in tests (tests never change the real environment).
    pub fn load<I>(file: Option<&Path>, env: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut tree = parse(DEFAULT_TOML, "built-in config")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
            let over = parse(&text, &path.display().to_string())?;
            merge(&mut tree, over);
        }
        for (var, value) in env {
            if let Some(rest) = var.strip_prefix(ENV_PREFIX) {
                apply_env(&mut tree, &var, rest, &value)?;
            }
        }
        Self::from_table(tree)
    }

    /// Parses a complete TOML document over the built-in default (for tests
    /// and tools that hold config text rather than a file).
    pub fn from_toml_over_default(text: &str) -> Result<Self, Error> {
        let mut tree = parse(DEFAULT_TOML, "built-in config")?;
        merge(&mut tree, parse(text, "config text")?);
        Self::from_table(tree)
    }

    fn from_table(tree: Table) -> Result<Self, Error> {
        let mut config: Config =
            serde_path_to_error::deserialize(Value::Table(tree)).map_err(|e| {
                let path = e.path().to_string();
                Error::Invalid {
                    key: if path == "." { "config".into() } else { path },
                    message: e.into_inner().to_string(),
                }
            })?;
        sources::resolve_tokens(&mut config.sources)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |key: String, message: &str| Error::Invalid {
            key,
            message: message.to_owned(),
        };
        if self.models.is_empty() {
            return Err(invalid(
                "models".into(),
                "at least one [[models]] entry is required",
            ));
        }
        validate_listener("server", &self.server.limits(), self.server.tls.as_ref())?;
        validate_listener("admin", &self.admin.limits(), self.admin.tls.as_ref())?;
        for (key, threads) in [
            ("server.feedback_threads", self.server.feedback_threads),
            (
                "server.feedback_io_threads",
                self.server.feedback_io_threads,
            ),
        ] {
            if threads > MAX_FEEDBACK_THREADS {
                return Err(invalid(
                    key.into(),
                    &format!("must be at most {MAX_FEEDBACK_THREADS}"),
                ));
            }
        }
        // The file's models only: those added at runtime are served
        // whatever the limit became since (it bounds further adds).
        let in_file = self.models.iter().filter(|m| !m.added_at_runtime).count();
        if in_file > self.server.max_models.get() {
            return Err(invalid(
                "models".into(),
                &format!(
                    "{in_file} models, more than server.max_models ({})",
                    self.server.max_models
                ),
            ));
        }
        if self.server.trainer_threads > MAX_FEEDBACK_THREADS {
            return Err(invalid(
                "server.trainer_threads".into(),
                &format!("must be at most {MAX_FEEDBACK_THREADS}"),
            ));
        }
        if self.server.feedback_concurrency.get() > MAX_BOUND {
            return Err(invalid(
                "server.feedback_concurrency".into(),
                &format!("must be at most {MAX_BOUND}"),
            ));
        }
        if self.server.feedback_wait_ms >= self.server.request_timeout_ms {
            return Err(invalid(
                "server.feedback_wait_ms".into(),
                "must be less than server.request_timeout_ms",
            ));
        }
        if !(0..=19).contains(&self.server.feedback_nice) {
            return Err(invalid(
                "server.feedback_nice".into(),
                "must be 0 to 19 (a thread may lower its priority, not raise it)",
            ));
        }
        if !(0..=19).contains(&self.server.trainer_nice) {
            return Err(invalid(
                "server.trainer_nice".into(),
                "must be 0 to 19 (a thread may lower its priority, not raise it)",
            ));
        }
        for (i, m) in self.models.iter().enumerate() {
            let key = |k: &str| {
                format!(
                    "models[{}].{k}",
                    if m.name.is_empty() {
                        i.to_string()
                    } else {
                        m.name.clone()
                    }
                )
            };
            if m.name.starts_with('.') {
                // Names are directory names: ".", ".." and the storage
                // directory's own entries (`.deleted`, `.models.json`) are
                // never a model's.
                return Err(invalid(key("name"), "must not start with '.'"));
            }
            if m.name.is_empty()
                || m.name.len() > 64
                || !m
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(invalid(
                    key("name"),
                    "must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' or '.'",
                ));
            }
            if self.models[..i].iter().any(|o| o.name == m.name) {
                return Err(invalid(key("name"), "two models share this name"));
            }
            m.label_space()?;
            if m.classes.len() > MAX_CLASSES {
                // Each class is a column of every row-blocked matrix; a
                // snapshot refuses wider ones.
                return Err(invalid(key("classes"), &format!("at most {MAX_CLASSES}")));
            }
            if !(MIN_HASH_BITS..=MAX_HASH_BITS).contains(&m.hash_bits) {
                return Err(invalid(
                    key("hash_bits"),
                    &format!("must lie in {MIN_HASH_BITS}..={MAX_HASH_BITS}"),
                ));
            }
            if let Some((k, message)) = m.mlp.problem() {
                return Err(invalid(key(&format!("mlp.{k}")), &message));
            }
            // The network's embedding table starts random, so it is
            // allocated whole (and copied by a rollback's checkpoint):
            // bound it as the memory it is.
            let embedding_rows = 1u64 << m.mlp.embedding_bits.min(m.hash_bits).min(40);
            let embedding_bytes = embedding_rows.saturating_mul(m.mlp.hidden as u64 * 4);
            if m.family == Family::Mlp && embedding_bytes > MAX_EMBEDDING_BYTES {
                return Err(invalid(
                    key("mlp.embedding_bits"),
                    &format!(
                        "the embedding table (2^{} rows x {} hidden) would take {} MiB; at most {} MiB",
                        m.mlp.embedding_bits.min(m.hash_bits),
                        m.mlp.hidden,
                        embedding_bytes >> 20,
                        MAX_EMBEDDING_BYTES >> 20
                    ),
                ));
            }
            let o = &m.optimizer;
            if !(o.learning_rate.is_finite() && o.learning_rate > 0.0) {
                return Err(invalid(
                    key("optimizer.learning_rate"),
                    "must be a finite number above 0",
                ));
            }
            if !(o.l1.is_finite() && o.l1 >= 0.0) {
                return Err(invalid(
                    key("optimizer.l1"),
                    "must be a finite number of at least 0",
                ));
            }
            if !(o.l2.is_finite() && o.l2 >= 0.0) {
                return Err(invalid(
                    key("optimizer.l2"),
                    "must be a finite number of at least 0",
                ));
            }
            if m.training.minibatch_size > m.training.queue_capacity {
                return Err(invalid(
                    key("training.minibatch_size"),
                    "must not exceed training.queue_capacity",
                ));
            }
            if m.training.queue_capacity.get() > MAX_BOUND {
                return Err(invalid(
                    key("training.queue_capacity"),
                    &format!("must be at most {MAX_BOUND}"),
                ));
            }
            if m.join.capacity > MAX_BOUND {
                return Err(invalid(
                    key("join.capacity"),
                    &format!("must be at most {MAX_BOUND}"),
                ));
            }
            if !(1..=MAX_BOUND).contains(&m.idempotency.capacity) {
                return Err(invalid(
                    key("idempotency.capacity"),
                    &format!("must lie in 1..={MAX_BOUND}"),
                ));
            }
            if m.join.ttl_s == 0 {
                return Err(invalid(key("join.ttl_s"), "must be at least 1"));
            }
            m.validate_memory(&key)?;
            m.monitor.validate(&key)?;
            m.guard.validate(&key)?;
            sources::validate_limit(m.guard.rate, m.guard.burst, &|k| key(&format!("guard.{k}")))?;
        }
        sources::validate(&self.sources)?;
        self.validate_combinations()?;
        Ok(())
    }

    /// The settings each valid alone that together would switch a feature
    /// off without a word (an open admin API on the network, a gate that
    /// can never judge, a log filter that falls back to `info`, ...).
    /// `eddy config` and `eddy serve` both refuse them, through `validate`.
    fn validate_combinations(&self) -> Result<(), Error> {
        let invalid = |key: String, message: String| Error::Invalid { key, message };
        if self.admin.token.is_empty() && !self.admin.listen.ip().is_loopback() {
            return Err(invalid(
                "admin.token".into(),
                format!(
                    "must be set when admin.listen ({}) is not a loopback address; without a token the admin routes are open",
                    self.admin.listen
                ),
            ));
        }
        if !(10..=3_600_000).contains(&self.admin.status_sample_ms) {
            return Err(invalid(
                "admin.status_sample_ms".into(),
                "must be 10 to 3600000 (an hour)".into(),
            ));
        }
        if self.server.shutdown_grace_ms == 0 {
            return Err(invalid(
                "server.shutdown_grace_ms".into(),
                "must be greater than 0 (with 0 the final training and snapshot are never waited for)"
                    .into(),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid(
                "log.level".into(),
                format!("is not a tracing filter (such as \"info\" or \"eddy=debug,warn\"): {e}"),
            ));
        }
        if self.storage.fsync == Fsync::Interval && self.storage.fsync_interval_ms == 0 {
            return Err(invalid(
                "storage.fsync_interval_ms".into(),
                "must be at least 1 with fsync = \"interval\" (use fsync = \"always\" to sync before every 202)".into(),
            ));
        }
        for m in &self.models {
            let key = |k: &str| format!("models[{}].{k}", m.name);
            if m.idempotency.ttl_s == 0 {
                return Err(invalid(
                    key("idempotency.ttl_s"),
                    "must be at least 1 (with 0 every Idempotency-Key is forgotten at once and retries are trained twice)".into(),
                ));
            }
            let monitor = &m.monitor;
            if !monitor.enabled {
                continue;
            }
            if monitor.gate && monitor.gate_examples < monitor.min_samples {
                return Err(invalid(
                    key("monitor.gate_examples"),
                    format!(
                        "must be at least monitor.min_samples ({}): the gate scores candidates on gate_examples examples and judges none on fewer than min_samples, so it would never refuse one",
                        monitor.min_samples
                    ),
                ));
            }
            if m.task != TaskKind::Regression && monitor.tolerance >= 1.0 {
                return Err(invalid(
                    key("monitor.tolerance"),
                    "must be below 1 for a classifier (accuracy points, as a fraction): a model cannot lose more than all of its accuracy, so nothing would ever count as degraded".into(),
                ));
            }
        }
        Ok(())
    }
}

fn parse(text: &str, origin: &str) -> Result<Table, Error> {
    text.parse::<Table>().map_err(|e| Error::Syntax {
        origin: origin.to_owned(),
        message: e.to_string(),
    })
}

/// Lays `over` onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Applies one `EDDY_A__B__C=value` override.
fn apply_env(tree: &mut Table, var: &str, rest: &str, value: &str) -> Result<(), Error> {
    let err = |message: String| Error::Env {
        var: var.to_owned(),
        message,
    };
    let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(String::is_empty) {
        return Err(err("empty key segment (use __ between levels)".into()));
    }
    let mut table = tree;
    let mut i = 0;
    while i + 1 < parts.len() {
        let part = &parts[i];
        if let Some(kind) = match part.as_str() {
            "models" => Some("model"),
            "sources" => Some("source"),
            _ => None,
        } {
            let Some(Value::Array(entries)) = table.get_mut(part.as_str()) else {
                return Err(err(format!("no [[{part}]] entries to override")));
            };
            let which = &parts[i + 1];
            let pos = which
                .parse::<usize>()
                .ok()
                .filter(|p| *p < entries.len())
                .or_else(|| {
                    entries.iter().position(|m| {
                        m.get("name")
                            .and_then(Value::as_str)
                            .is_some_and(|n| env_name(n) == *which)
                    })
                });
            let Some(pos) = pos else {
                return Err(err(format!("no {kind} named or numbered `{which}`")));
            };
            let Some(Value::Table(t)) = entries.get_mut(pos) else {
                return Err(err(format!("{part} entries must be tables")));
            };
            table = t;
            i += 2;
            if i == parts.len() {
                return Err(err(format!("name a key inside the {kind}")));
            }
            continue;
        }
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(t) = entry else {
            return Err(err(format!("`{part}` is not a table")));
        };
        table = t;
        i += 1;
    }
    let key = &parts[parts.len() - 1];
    let parsed = match table.get(key) {
        // A string key stays a string: a token of digits is still a token
        // (also one set where the file has none yet).
        Some(Value::String(_)) => Value::String(value.to_owned()),
        _ if STRING_KEYS.contains(&key.as_str()) => Value::String(value.to_owned()),
        _ => parse_scalar(value),
    };
    table.insert(key.clone(), parsed);
    Ok(())
}

/// Keys whose value is text whatever it looks like.
const STRING_KEYS: [&str; 3] = ["name", "token", "token_file"];

/// How an entry's name is spelled in a variable: lowercase (variables are
/// matched lowercased), anything but a letter or digit as `_`.
fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A TOML value (number, boolean, array) when the text is one, else a string.
fn parse_scalar(text: &str) -> Value {
    format!("v = {text}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<Config, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eddy.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), env(vars))
    }

    #[test]
    fn builtin_default_loads_with_one_demo_model() {
        let c = Config::builtin().unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.models.len(), 1);
        assert_eq!(c.models[0].name, "demo");
        assert_eq!(c.models[0].training.minibatch_size.get(), 32);
    }

    #[test]
    fn env_overrides_nested_and_model_keys() {
        let c = Config::load(
            None,
            env(&[
                ("EDDY_SERVER__LISTEN", "127.0.0.1:0"),
                ("EDDY_ADMIN__TOKEN", "12345"),
                ("EDDY_MODELS__DEMO__OPTIMIZER__LEARNING_RATE", "0.25"),
                ("EDDY_MODELS__0__HASH_BITS", "12"),
                ("OTHER_VAR", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 0);
        assert_eq!(c.admin.token, "12345");
        assert_eq!(c.models[0].optimizer.learning_rate, 0.25);
        assert_eq!(c.models[0].hash_bits, 12);
    }

    #[test]
    fn file_models_replace_the_default_ones() {
        let c = load_text(
            r#"
            [[models]]
            name = "segments"
            task = "multiclass"
            classes = ["a", "b", "c"]
            [[models]]
            name = "price"
            task = "regression"
            "#,
            &[("EDDY_MODELS__PRICE__TRAINING__MINIBATCH_SIZE", "1")],
        )
        .unwrap();
        let names: Vec<_> = c.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["segments", "price"]);
        assert_eq!(c.models[1].training.minibatch_size.get(), 1);
        assert_eq!(c.server.listen.port(), 8080, "unset keys keep the default");
    }

    #[test]
    fn errors_name_the_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("[server]\nlisen = \"x\"", &[], "server"),
            (
                "[server]\nlisten = \"not an address\"",
                &[],
                "server.listen",
            ),
            (
                "[[models]]\nname = \"m\"\ntask = \"multiclass\"",
                &[],
                "models[m].classes",
            ),
            (
                "[[models]]\nname = \"m\"\ntask = \"binary\"\nhash_bits = 40",
                &[],
                "models[m].hash_bits",
            ),
            (
                "[[models]]\nname = \"m\"\ntask = \"bin\"",
                &[],
                "models[0].task",
            ),
            (
                "[[models]]\nname = \"a b\"\ntask = \"binary\"",
                &[],
                "models[a b].name",
            ),
            (
                "",
                &[("EDDY_MODELS__NOPE__HASH_BITS", "3")],
                "EDDY_MODELS__NOPE__HASH_BITS",
            ),
            (
                "",
                &[("EDDY_SERVER__MAX_BODY_BYTES", "0")],
                "server.max_body_bytes",
            ),
            ("[server]\nfeedback_nice = 20", &[], "server.feedback_nice"),
            ("[server]\ntrainer_nice = -1", &[], "server.trainer_nice"),
            (
                "",
                &[("EDDY_SERVER__FEEDBACK_CONCURRENCY", "0")],
                "server.feedback_concurrency",
            ),
            (
                "[server]\nfeedback_wait_ms = 10000",
                &[],
                "server.feedback_wait_ms",
            ),
            (
                "[server]\nfeedback_threads = 100000",
                &[],
                "server.feedback_threads",
            ),
            (
                "[server]\ntrainer_threads = 100000",
                &[],
                "server.trainer_threads",
            ),
            (
                "[server]\nfeedback_io_threads = 100000",
                &[],
                "server.feedback_io_threads",
            ),
            (
                "[server]\nbackground_policy = \"realtime\"",
                &[],
                "server.background_policy",
            ),
            (
                "",
                &[("EDDY_SERVER__HUGE_PAGES", "maybe")],
                "server.huge_pages",
            ),
            (
                "[server]\nmax_models = 1\n[[models]]\nname = \"a\"\ntask = \"binary\"\n[[models]]\nname = \"b\"\ntask = \"binary\"",
                &[],
                "models",
            ),
            (
                "[[models]]\nname = \".hidden\"\ntask = \"binary\"",
                &[],
                "models[.hidden].name",
            ),
            (
                "[[models]]\nname = \"m\"\ntask = \"binary\"\nfamily = \"mlp\"\nhash_bits = 24\n[models.mlp]\nhidden = 1024\nembedding_bits = 24",
                &[],
                "models[m].mlp.embedding_bits",
            ),
            (
                "",
                &[("EDDY_MODELS__DEMO__OPTIMIZER__KIND", "rmsprop")],
                "models[0].optimizer.kind",
            ),
            (
                "",
                &[("EDDY_MODELS__DEMO__OPTIMIZER__LEARNING_RATE", "-1")],
                "models[demo].optimizer.learning_rate",
            ),
            ("[server\n", &[], "not valid TOML"),
        ];
        for (text, vars, key) in cases {
            let e = load_text(text, vars).expect_err(text).to_string();
            assert!(e.contains(key), "{text:?}: {e:?} should name {key}");
        }
        let e = load_text("[server]\nlisen = \"x\"", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn memory_budgets_must_hold_the_widest_example() {
        let c = Config::builtin().unwrap();
        let m = &c.models[0];
        assert_eq!(m.features.max_per_example, 10_000);
        assert_eq!(
            (m.join.max_bytes, m.monitor.replay_max_bytes),
            (64 << 20, 64 << 20)
        );
        // 10,000 features of 16 bytes: 160,000, in whole 4 KiB pages.
        assert_eq!(m.features.max_example_bytes(), 163_840);
        let model = |table: &str| format!("[[models]]\nname = \"m\"\ntask = \"binary\"\n{table}");
        for (table, key, says) in [
            (
                "[models.features]\nmax_per_example = 0",
                "models[m].features.max_per_example",
                "1..=",
            ),
            (
                "[models.join]\nmax_bytes = 100000",
                "models[m].join.max_bytes",
                "at least 163840",
            ),
            (
                "[models.monitor]\nreplay_max_bytes = 30000000",
                "models[m].monitor.replay_max_bytes",
                "at least 32972800 (monitor.gate_examples = 200",
            ),
            (
                "[models.features]\nmax_per_example = 100000",
                "models[m].monitor.replay_max_bytes",
                "features.max_per_example = 100000",
            ),
        ] {
            let text = model(table);
            let e = load_text(&text, &[]).expect_err(&text).to_string();
            assert!(e.contains(key) && e.contains(says), "{text:?}: {e}");
        }
        // A cache that keeps nothing, or a monitor that is off, needs no budget.
        load_text(&model("[models.join]\ncapacity = 0\nmax_bytes = 0"), &[]).unwrap();
        load_text(
            &model("[models.monitor]\nenabled = false\nreplay_max_bytes = 0"),
            &[],
        )
        .unwrap();
    }

    /// Settings that each parse but together would switch a feature off
    /// silently: refused, naming the key.
    #[test]
    fn combinations_that_switch_a_feature_off_are_refused() {
        let model = "[[models]]\nname = \"m\"\ntask = \"binary\"\n";
        let cases: &[(String, &str)] = &[
            (
                "[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"\"".into(),
                "admin.token",
            ),
            ("[admin]\nlisten = \"[::]:9090\"".into(), "admin.token"),
            (
                "[admin]\nrequest_timeout_ms = 0".into(),
                "admin.request_timeout_ms",
            ),
            (
                "[server]\nshutdown_grace_ms = 0".into(),
                "server.shutdown_grace_ms",
            ),
            ("[log]\nlevel = \"eddy=loud\"".into(), "log.level"),
            ("[log]\nlevel = \"[{\"".into(), "log.level"),
            (
                "[storage]\nfsync = \"interval\"\nfsync_interval_ms = 0".into(),
                "storage.fsync_interval_ms",
            ),
            (
                format!("{model}[models.idempotency]\nttl_s = 0"),
                "models[m].idempotency.ttl_s",
            ),
            (
                format!("{model}[models.monitor]\nmin_samples = 300\ngate_examples = 299"),
                "models[m].monitor.gate_examples",
            ),
            (
                format!("{model}[models.monitor]\ntolerance = 1.0"),
                "models[m].monitor.tolerance",
            ),
            (
                format!("{model}[models.join]\nttl_s = 0"),
                "models[m].join.ttl_s",
            ),
            (
                "[storage]\nsnapshot_keep = 0".into(),
                "storage.snapshot_keep",
            ),
        ];
        for (text, key) in cases {
            let e = load_text(text, &[]).expect_err(text).to_string();
            assert!(e.starts_with(key), "{text:?}: {e:?} should name {key}");
        }
        // The same through the environment, as `eddy config` and `eddy
        // serve` read it.
        let e = Config::load(None, env(&[("EDDY_ADMIN__LISTEN", "10.0.0.1:9090")]))
            .expect_err("an open admin API off loopback")
            .to_string();
        assert!(e.starts_with("admin.token"), "{e}");
    }

    /// The neighbours of each refused combination stay valid.
    #[test]
    fn the_allowed_side_of_each_combination_loads() {
        let model = "[[models]]\nname = \"m\"\ntask = \"binary\"\n";
        let regression = "[[models]]\nname = \"r\"\ntask = \"regression\"\n";
        let cases: &[String] = &[
            "[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"s3cret\"".into(),
            "[admin]\nlisten = \"[::1]:9090\"".into(),
            "[log]\nlevel = \"eddy=debug,tower_http=warn\"".into(),
            "[storage]\nfsync = \"always\"\nfsync_interval_ms = 0".into(),
            format!("{model}[models.monitor]\nmin_samples = 300\ngate_examples = 300"),
            format!("{model}[models.monitor]\ngate = false\nmin_samples = 300\ngate_examples = 10"),
            format!("{model}[models.monitor]\nenabled = false\ntolerance = 5.0"),
            format!("{regression}[models.monitor]\ntolerance = 1.5"),
        ];
        for text in cases {
            if let Err(e) = load_text(text, &[]) {
                panic!("{text:?} should load: {e}");
            }
        }
    }

    #[test]
    fn listener_limits_are_validated_by_key() {
        let cases = [
            (
                "[server]\nheader_read_timeout_ms = 0",
                "server.header_read_timeout_ms",
            ),
            ("[admin]\nidle_timeout_ms = 0", "admin.idle_timeout_ms"),
            (
                "[admin]\nbody_read_timeout_ms = 0",
                "admin.body_read_timeout_ms",
            ),
            ("[admin]\nmax_connections = 0", "admin.max_connections"),
            (
                "[server.tls]\ncert = \"\"\nkey = \"k.pem\"",
                "server.tls.cert",
            ),
            ("[admin.tls]\ncert = \"c.pem\"\nkey = \"\"", "admin.tls.key"),
            (
                "[server.tls]\ncert = \"c\"\nkey = \"k\"\nreload_interval_ms = 1",
                "server.tls.reload_interval_ms",
            ),
            ("[server.tls]\ncert = \"c\"", "server.tls"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml_over_default(text).expect_err(text);
            assert!(err.to_string().starts_with(key), "{text}: {err}");
        }
        let ok = Config::from_toml_over_default("[admin.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"")
            .expect("valid");
        assert!(ok.server.tls.is_none());
        assert_eq!(ok.admin.tls.expect("tls").reload_interval_ms, 5000);
    }
}
