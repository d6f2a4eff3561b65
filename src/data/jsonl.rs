//! JSON Lines rows to examples: `{"features": {...}, "label": ...}` per
//! line, the shape `POST /feedback` takes; blank lines are skipped.

use crate::learn::{Example, Feature, FeatureHasher, FeatureNames, LabelSpace};

/// One line; `Ok(None)` for a blank line, `Err` says what is wrong. The
/// feature names of a valid line are noted in `names` when given; the
/// features are hashed into `buffer` (reused, as `CsvSchema::example`
/// reuses it).
pub fn example(
    line: &str,
    hasher: &FeatureHasher,
    space: &LabelSpace,
    names: Option<&mut FeatureNames>,
    buffer: Vec<Feature>,
) -> Result<Option<Example>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    Example::from_json_noting(line, hasher, space, names, buffer)
        .map(Some)
        .map_err(|e| e.to_string())
}
