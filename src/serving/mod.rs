//! One runtime per named model: the live-version store, the feedback
//! queue, the trainer task and the prediction join cache. Everything here
//! may use tokio; the maths it runs lives in `learn`.

pub mod clock;
pub mod events;
pub mod guard;
pub mod history;
pub mod idempotency;
pub mod ingest;
pub mod join;
pub mod log_record;
pub mod monitor;
pub mod pool;
pub mod priority;
pub mod queue;
pub mod registry;
pub mod sources;
pub mod store;
pub mod trainer;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use join::{JoinCache, JoinError, PendingPrediction};
pub use queue::{
    Feedback, FeedbackQueue, FeedbackStream, PredictionRef, QueueError, feedback_channel,
};
pub use registry::{ModelRuntime, Registry};
pub use store::{ModelStore, ModelVersion, PublishMeta, VersionSink};
pub use trainer::{Trainer, TrainerParts, TrainingStats};
