//! Pure computation: feature hashing, the linear model family, optimizers
//! and quality measures. Nothing here knows about tokio, HTTP or files, so
//! the server's trainer and the batch CLI run exactly the same code.

pub mod blocked;
pub mod compare;
pub mod eval;
pub mod example;
pub mod features;
pub mod guard;
pub mod label;
pub mod linear;
pub mod mlp;
pub mod names;
pub mod optim;

pub use compare::{DegradationRule, LossSample, PairedWindow, Verdict};
pub use eval::{Figures, Scored, Scores};
pub use example::Example;
pub use features::{Feature, FeatureError, FeatureHasher, FeatureVec, RawFeatures, RawValue};
pub use label::{LabelError, LabelOut, LabelSpace, RawLabel, Target, TaskKind};
pub use linear::{Learner, Output, Params};
pub use mlp::{Family, MlpConfig};
pub use names::FeatureNames;
pub use optim::{OptimizerConfig, OptimizerKind};
