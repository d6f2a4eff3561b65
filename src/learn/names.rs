//! `FeatureNames`: which feature names were hashed to which weight rows,
//! so that a model can be read by name (`eddy snapshot export`).
//!
//! Hashing is one-way: a row's names are known only where someone saw
//! them. `eddy train` notes the names of the rows it trains on (CSV columns
//! and `column=value` categories, JSON keys and `key=value` strings), the
//! snapshot keeps them, and the server carries them into the snapshots it
//! writes. Names first met over HTTP are not noted: predict and feedback
//! stay free of that bookkeeping.
//!
//! A row with two or more names is a hash collision: those features share
//! its weights. The table is bounded (`MAX_NAMES` names, `MAX_NAME_BYTES`
//! of text, names of at most `MAX_NAME_LEN` bytes without control
//! characters), so it stays a few MB in memory and in a snapshot's header;
//! whatever is left out, `complete` says so.

use std::collections::BTreeMap;

use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use super::features::{FeatureHasher, RawFeatures, RawValue};

/// Most names one table keeps.
pub const MAX_NAMES: usize = 1 << 18;
/// Most bytes of name text one table keeps.
pub const MAX_NAME_BYTES: usize = 8 << 20;
/// Longest name kept (a longer one is a value, not a name worth reading).
pub const MAX_NAME_LEN: usize = 256;

/// How a named feature enters the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NameKind {
    /// A number, standardised by the row's statistics.
    Numeric,
    /// A `name=value` indicator, used as it is.
    Categorical,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct FeatureNames {
    /// Row → numeric (and boolean) feature names hashed there.
    numeric: BTreeMap<u32, Vec<String>>,
    /// Row → `name=value` indicators hashed there.
    categorical: BTreeMap<u32, Vec<String>>,
    /// False once a name was left out because of a bound.
    complete: bool,
    #[serde(skip)]
    len: usize,
    #[serde(skip)]
    bytes: usize,
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
    #[serde(default)]
    numeric: BTreeMap<u32, Vec<String>>,
    #[serde(default)]
    categorical: BTreeMap<u32, Vec<String>>,
    #[serde(default = "yes")]
    complete: bool,
}

fn yes() -> bool {
    true
}

impl From<Stored> for FeatureNames {
    fn from(stored: Stored) -> Self {
        let all = || stored.numeric.values().chain(stored.categorical.values());
        let len = all().map(Vec::len).sum();
        let bytes = all().flatten().map(String::len).sum();
        Self {
            numeric: stored.numeric,
            categorical: stored.categorical,
            complete: stored.complete,
            len,
            bytes,
            seen: FxHashSet::default(),
        }
    }
}

/// Equal when the same names are known on the same rows.
impl PartialEq for FeatureNames {
    fn eq(&self, other: &Self) -> bool {
        self.numeric == other.numeric
            && self.categorical == other.categorical
            && self.complete == other.complete
    }
}

impl Default for FeatureNames {
    fn default() -> Self {
        Self {
            numeric: BTreeMap::new(),
            categorical: BTreeMap::new(),
            complete: true,
            len: 0,
            bytes: 0,
            seen: FxHashSet::default(),
        }
    }
}

impl FeatureNames {
    /// Notes that the feature with hash `key` (its `FeatureHasher` key)
    /// goes to `row` and is called `name()`; `name` runs only the first
    /// time `key` is seen. For tables filled by noting: a loaded table
    /// takes more names through `merge`.
    #[inline]
    pub fn note(&mut self, key: u64, row: u32, kind: NameKind, name: impl FnOnce() -> String) {
        if self.seen.contains(&key) {
            return;
        }
        if self.len >= MAX_NAMES {
            self.complete = false;
            return;
        }
        self.seen.insert(key);
        // Distinct keys of one kind are distinct names, so no duplicate
        // check is needed here.
        self.push(row, kind, name());
    }

    /// Adds a name, or leaves it out (and says so) past a bound.
    fn push(&mut self, row: u32, kind: NameKind, name: String) {
        if self.len >= MAX_NAMES
            || self.bytes + name.len() > MAX_NAME_BYTES
            || name.len() > MAX_NAME_LEN
            || name.chars().any(char::is_control)
        {
            self.complete = false;
            return;
        }
        self.len += 1;
        self.bytes += name.len();
        self.map_mut(kind).entry(row).or_default().push(name);
    }

    fn map(&self, kind: NameKind) -> &BTreeMap<u32, Vec<String>> {
        match kind {
            NameKind::Numeric => &self.numeric,
            NameKind::Categorical => &self.categorical,
        }
    }

    fn map_mut(&mut self, kind: NameKind) -> &mut BTreeMap<u32, Vec<String>> {
        match kind {
            NameKind::Numeric => &mut self.numeric,
            NameKind::Categorical => &mut self.categorical,
        }
    }

    /// Notes every feature of a parsed JSON feature set (hashed by
    /// `FeatureHasher::hash` into the same rows).
    pub fn note_features(&mut self, hasher: &FeatureHasher, raw: &RawFeatures<'_>) {
        match raw {
            RawFeatures::Named(pairs) => {
                for (name, value) in pairs {
                    let name_hash = FeatureHasher::name_hash(name);
                    match value {
                        RawValue::Text(text) => {
                            let key = FeatureHasher::categorical_key(name_hash, text);
                            self.note(key, hasher.row_of(key), NameKind::Categorical, || {
                                format!("{name}={text}")
                            });
                        }
                        _ => self.note(
                            name_hash,
                            hasher.row_of(name_hash),
                            NameKind::Numeric,
                            || name.to_string(),
                        ),
                    }
                }
            }
            RawFeatures::Dense(values) => {
                for i in 0..values.len() {
                    let name = i.to_string();
                    let key = FeatureHasher::name_hash(&name);
                    self.note(key, hasher.row_of(key), NameKind::Numeric, || name);
                }
            }
        }
    }

    /// Adds `other`'s names that this table lacks (a model trained further
    /// keeps what its starting snapshot knew).
    pub fn merge(&mut self, other: FeatureNames) {
        if self.is_empty() {
            let complete = self.complete;
            *self = other;
            self.complete &= complete;
            return;
        }
        self.complete &= other.complete;
        for kind in [NameKind::Numeric, NameKind::Categorical] {
            let have: FxHashSet<(u32, String)> = self
                .map(kind)
                .iter()
                .flat_map(|(row, names)| names.iter().map(|n| (*row, n.clone())))
                .collect();
            for (row, names) in other.map(kind) {
                for name in names {
                    if !have.contains(&(*row, name.clone())) {
                        self.push(*row, kind, name.clone());
                    }
                }
            }
        }
    }

    /// The names known for `row`, numeric first.
    pub fn get(&self, row: u32) -> impl Iterator<Item = (&str, NameKind)> {
        [NameKind::Numeric, NameKind::Categorical]
            .into_iter()
            .flat_map(move |kind| {
                self.map(kind)
                    .get(&row)
                    .into_iter()
                    .flatten()
                    .map(move |n| (n.as_str(), kind))
            })
    }

    /// Every known name with its row and kind: numeric ones by row, then
    /// categorical ones by row.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str, NameKind)> {
        [NameKind::Numeric, NameKind::Categorical]
            .into_iter()
            .flat_map(move |kind| {
                self.map(kind).iter().flat_map(move |(row, names)| {
                    names.iter().map(move |n| (*row, n.as_str(), kind))
                })
            })
    }

    /// Names known (a collision counts each of its names).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// False when names were left out because of a bound.
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Rows holding two or more names.
    pub fn collisions(&self) -> usize {
        let mut per_row: BTreeMap<u32, usize> = BTreeMap::new();
        for (row, _, _) in self.iter() {
            *per_row.entry(row).or_default() += 1;
        }
        per_row.values().filter(|n| **n > 1).count()
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

    fn at(names: &FeatureNames, row: u32) -> Vec<(&str, NameKind)> {
        names.get(row).collect()
    }

    #[test]
    fn names_land_on_the_rows_the_hasher_uses() {
        let hasher = FeatureHasher::new(18);
        let names = noted(r#"{"price": 3.5, "colour": "red", "sale": true}"#, 18);
        assert_eq!(
            at(&names, hasher.numeric("price")),
            [("price", NameKind::Numeric)]
        );
        assert_eq!(
            at(&names, hasher.numeric("sale")),
            [("sale", NameKind::Numeric)]
        );
        assert_eq!(
            at(&names, hasher.categorical("colour", "red")),
            [("colour=red", NameKind::Categorical)]
        );
        assert_eq!(names.len(), 3);
        assert!(names.complete());
        let dense = noted("[1.0, 2.0]", 18);
        assert_eq!(at(&dense, hasher.numeric("1")), [("1", NameKind::Numeric)]);
    }

    #[test]
    fn collisions_keep_every_name_and_repeats_none() {
        // Sixteen rows: collisions are certain among 40 names.
        let mut names = FeatureNames::default();
        let hasher = FeatureHasher::new(4);
        for round in 0..2 {
            for i in 0..40 {
                let json = format!(r#"{{"f{i}": {round}, "c": "v{i}"}}"#);
                let raw: RawFeatures = serde_json::from_str(&json).expect("features");
                names.note_features(&hasher, &raw);
            }
        }
        assert_eq!(names.len(), 80);
        assert!(names.collisions() > 0);
        for i in 0..40 {
            let name = format!("f{i}");
            assert!(
                names
                    .get(hasher.numeric(&name))
                    .any(|(n, k)| n == name && k == NameKind::Numeric),
                "{name}"
            );
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
        merged.merge(back.clone());
        assert_eq!(merged.len(), 3);
        assert_eq!(merged.collisions(), 0);
        let mut empty = FeatureNames::default();
        empty.merge(back);
        assert_eq!(empty, a);
        // A snapshot written before names were kept has none.
        let old: FeatureNames = serde_json::from_str("{}").expect("old form");
        assert!(old.is_empty() && old.complete());
    }

    #[test]
    fn the_bounds_are_kept_and_reported() {
        let mut names = FeatureNames::default();
        for key in 0..(MAX_NAMES as u64 + 10) {
            names.note(key, (key % 1024) as u32, NameKind::Categorical, || {
                format!("n{key}")
            });
        }
        assert_eq!(names.len(), MAX_NAMES);
        assert!(!names.complete());

        let mut names = FeatureNames::default();
        names.note(1, 1, NameKind::Categorical, || {
            "url=".to_owned() + &"x".repeat(300)
        });
        names.note(2, 2, NameKind::Categorical, || "bell=\u{7}".to_owned());
        assert!(names.is_empty() && !names.complete());

        // Bytes: names of 200 bytes stop at MAX_NAME_BYTES.
        let mut names = FeatureNames::default();
        for key in 0..(MAX_NAME_BYTES / 200 + 10) as u64 {
            names.note(key, 0, NameKind::Categorical, || format!("{key:0>200}"));
        }
        assert_eq!(names.len(), MAX_NAME_BYTES / 200);
        assert!(!names.complete());
    }

    #[test]
    fn a_full_table_merging_what_it_has_stays_complete() {
        let mut names = FeatureNames::default();
        for key in 0..MAX_NAMES as u64 {
            names.note(key, (key % 64) as u32, NameKind::Numeric, || {
                format!("n{key}")
            });
        }
        assert!(names.complete());
        let copy = names.clone();
        names.merge(copy);
        assert_eq!(names.len(), MAX_NAMES);
        assert!(names.complete());
    }
}
