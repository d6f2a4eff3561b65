//! `Example`: one labelled example, and its JSON form
//! `{"features": {...}, "label": ...}` as used by JSON Lines data files.

use serde::Deserialize;
use thiserror::Error;

use super::features::{Feature, FeatureError, FeatureHasher, FeatureVec, RawFeatures};
use super::label::{LabelError, LabelSpace, RawLabel, Target};
use super::names::FeatureNames;

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub features: FeatureVec,
    pub target: Target,
}

#[derive(Debug, Error)]
pub enum ExampleError {
    #[error("not a JSON example: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Features(#[from] FeatureError),
    #[error(transparent)]
    Label(#[from] LabelError),
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    features: RawFeatures<'a>,
    #[serde(borrow)]
    label: RawLabel<'a>,
}

impl Example {
    /// Parses one JSON Lines record.
    pub fn from_json(
        line: &str,
        hasher: &FeatureHasher,
        space: &LabelSpace,
    ) -> Result<Self, ExampleError> {
        Self::from_json_noting(line, hasher, space, None, Vec::new())
    }

    /// `from_json`, noting the feature names of a valid line in `names` and
    /// hashing the features into `buffer` (`FeatureHasher::hash_into`).
    pub fn from_json_noting(
        line: &str,
        hasher: &FeatureHasher,
        space: &LabelSpace,
        names: Option<&mut FeatureNames>,
        buffer: Vec<Feature>,
    ) -> Result<Self, ExampleError> {
        let raw: Line = serde_json::from_str(line)?;
        let example = Self {
            features: hasher.hash_into(&raw.features, buffer)?,
            target: space.target(&raw.label)?,
        };
        if let Some(names) = names {
            names.note_features(hasher, &raw.features);
        }
        Ok(example)
    }
}
