//! JSON Lines rows to examples: `{"features": {...}, "label": ...}` per
//! line, the shape `POST /feedback` takes; blank lines are skipped.

use crate::learn::{Example, FeatureHasher, LabelSpace};

/// One line; `Ok(None)` for a blank line, `Err` says what is wrong.
pub fn example(
    line: &str,
    hasher: &FeatureHasher,
    space: &LabelSpace,
) -> Result<Option<Example>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    Example::from_json(line, hasher, space)
        .map(Some)
        .map_err(|e| e.to_string())
}
