//! `FeatureNames`: which feature names were hashed to which weight rows,
//! so that a model can be read by name (`eddy snapshot export`).
//!
//! Hashing is one-way: a row's names are known only where someone saw
//! them. `eddy train` notes every name it hashes (CSV columns and
//! `column=value` categories, JSON keys and `key=value` strings), the
//! snapshot keeps them, and the server carries them into the snapshots it
//! writes. Names first met over HTTP are not noted: predict and feedback
//! stay free of that bookkeeping.
//!
//! A row with two or more names is a hash collision: those features share
//! its weights. The table is bounded by `MAX_NAMES`; past it, names are
//! left out and `complete` says so.

use std::collections::BTreeMap;

use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use super::features::{FeatureHasher, RawFeatures, RawValue};

/// Most names one table keeps (about 30 MB of names at most).
pub const MAX_NAMES: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct FeatureNames {
    /// Row → the names hashed there, in the order they were first seen.
    rows: BTreeMap<u32, Vec<String>>,
    /// False once a name was left out because of `MAX_NAMES`.
    complete: bool,
    /// Names held (rows with a collision count each name).
    #[serde(skip)]
    len: usize,
    /// Hash keys already noted in this process: a repeated name costs one
    /// set lookup. The keys are xxh3 outputs already, so the set's own
    /// hash need not mix them further (`FxHashSet`).
    #[serde(skip)]
    seen: FxHashSet<u64>,
}

/// The stored form: what `FeatureNames` serialises, without the
/// in-process bookkeeping.
#[derive(Deserialize)]
struct Stored {
    rows: BTreeMap<u32, Vec<String>>,
    #[serde(default = "yes")]
    complete: bool,
}

fn yes() -> bool {
    true
}

impl From<Stored> for FeatureNames {
    fn from(stored: Stored) -> Self {
        let len = stored.rows.values().map(Vec::len).sum();
        Self {
            rows: stored.rows,
            complete: stored.complete,
            len,
            seen: FxHashSet::default(),
        }
    }
}

/// Equal when the same names are known on the same rows.
impl PartialEq for FeatureNames {
    fn eq(&self, other: &Self) -> bool {
        self.rows == other.rows && self.complete == other.complete
    }
}

impl Default for FeatureNames {
    fn default() -> Self {
        Self {
            rows: BTreeMap::new(),
            complete: true,
            len: 0,
            seen: FxHashSet::default(),
        }
    }
}

impl FeatureNames {
    /// Notes that the feature with hash `key` (its `FeatureHasher` key)
    /// goes to `row` and is called `name()`; `name` runs only the first
    /// time `key` is seen.
    #[inline]
    pub fn note(&mut self, key: u64, row: u32, name: impl FnOnce() -> String) {
        if self.seen.contains(&key) {
            return;
        }
        if self.len >= MAX_NAMES {
            self.complete = false;
            return;
        }
        self.seen.insert(key);
        self.insert(row, name());
    }

    fn insert(&mut self, row: u32, name: String) {
        let names = self.rows.entry(row).or_default();
        if !names.contains(&name) {
            names.push(name);
            self.len += 1;
        }
    }

    /// Notes every feature of a parsed JSON feature set (hashed by
    /// `hasher::hash` into the same rows).
    pub fn note_features(&mut self, hasher: &FeatureHasher, raw: &RawFeatures<'_>) {
        match raw {
            RawFeatures::Named(pairs) => {
                for (name, value) in pairs {
                    let name_hash = FeatureHasher::name_hash(name);
                    match value {
                        RawValue::Text(text) => {
                            let key = FeatureHasher::categorical_key(name_hash, text);
                            self.note(key, hasher.row_of(key), || format!("{name}={text}"));
                        }
                        _ => self.note(name_hash, hasher.row_of(name_hash), || name.to_string()),
                    }
                }
            }
            RawFeatures::Dense(values) => {
                for i in 0..values.len() {
                    let name = i.to_string();
                    let key = FeatureHasher::name_hash(&name);
                    self.note(key, hasher.row_of(key), || name);
                }
            }
        }
    }

    /// Adds `other`'s names (a model trained further keeps what its
    /// starting snapshot knew).
    pub fn merge(&mut self, other: &FeatureNames) {
        self.complete &= other.complete;
        for (row, names) in &other.rows {
            for name in names {
                if self.len >= MAX_NAMES {
                    self.complete = false;
                    return;
                }
                self.insert(*row, name.clone());
            }
        }
    }

    /// The names known for `row`.
    pub fn get(&self, row: u32) -> &[String] {
        self.rows.get(&row).map_or(&[], Vec::as_slice)
    }

    /// Every (row, names) pair, by row.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[String])> {
        self.rows.iter().map(|(r, n)| (*r, n.as_slice()))
    }

    /// Names known (rows with a collision count each name).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// False when names were left out because of `MAX_NAMES`.
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Rows holding two or more names.
    pub fn collisions(&self) -> usize {
        self.rows.values().filter(|n| n.len() > 1).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noted(json: &str, bits: u8) -> FeatureNames {
        let raw: RawFeatures = serde_json::from_str(json).expect("features");
        let mut names = FeatureNames::default();
        names.note_features(&FeatureHasher::new(bits), &raw);
        names
    }

    #[test]
    fn names_land_on_the_rows_the_hasher_uses() {
        let hasher = FeatureHasher::new(18);
        let names = noted(r#"{"price": 3.5, "colour": "red", "sale": true}"#, 18);
        assert_eq!(names.get(hasher.numeric("price")), ["price"]);
        assert_eq!(names.get(hasher.numeric("sale")), ["sale"]);
        assert_eq!(
            names.get(hasher.categorical("colour", "red")),
            ["colour=red"]
        );
        assert_eq!(names.len(), 3);
        assert!(names.complete());
        let dense = noted("[1.0, 2.0]", 18);
        assert_eq!(dense.get(hasher.numeric("1")), ["1"]);
    }

    #[test]
    fn collisions_keep_every_name_and_repeats_none() {
        // Four rows: collisions are certain among 40 names.
        let mut names = FeatureNames::default();
        let hasher = FeatureHasher::new(4);
        for round in 0..2 {
            for i in 0..40 {
                let json = format!(r#"{{"f{i}": {round}}}"#);
                let raw: RawFeatures = serde_json::from_str(&json).expect("features");
                names.note_features(&hasher, &raw);
            }
        }
        assert_eq!(names.len(), 40);
        assert!(names.collisions() > 0);
        for i in 0..40 {
            let name = format!("f{i}");
            assert!(names.get(hasher.numeric(&name)).contains(&name), "{name}");
        }
    }

    #[test]
    fn merging_and_a_round_trip_keep_names_once() {
        let a = noted(r#"{"x": 1, "c": "v"}"#, 18);
        let json = serde_json::to_string(&a).expect("serialise");
        let back: FeatureNames = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, a);
        assert_eq!(back.len(), 2);
        let mut merged = noted(r#"{"x": 2, "y": 3}"#, 18);
        merged.merge(&back);
        assert_eq!(merged.len(), 3);
        assert_eq!(merged.collisions(), 0);
    }

    #[test]
    fn the_bound_is_kept_and_reported() {
        let mut names = FeatureNames::default();
        for key in 0..(MAX_NAMES as u64 + 10) {
            names.note(key, (key % 1024) as u32, || format!("n{key}"));
        }
        assert_eq!(names.len(), MAX_NAMES);
        assert!(!names.complete());
    }
}
