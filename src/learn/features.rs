//! Feature hashing: named numeric, categorical and boolean values become a
//! sparse vector of `(index, value)` pairs in a space of `2^hash_bits` rows.
//!
//! The hash is xxh3 with fixed seeds, so an index depends only on the
//! feature's name (and value, for categorical features) and `hash_bits`:
//! never on the process, the platform or the crate version. Saved weights
//! depend on that. This module owns the JSON shape of a feature set too
//! (`RawFeatures`), because the HTTP API and the JSON Lines reader of batch
//! training accept exactly the same shape; request envelopes stay in `http`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the hash of a feature's name. Changing it invalidates every saved model.
const NAME_SEED: u64 = 0x6564_6479_6e61_6d65; // "eddyname"
/// Seed of the hash of a categorical feature's value.
const VALUE_SEED: u64 = 0x6564_6479_7661_6c75; // "eddyvalu"

/// Largest magnitude of a numeric feature value: beyond it a value is
/// refused like a non-finite one. Far above any real measurement (and
/// epoch nanoseconds), far below where a feature's running statistics
/// (sums of squares, in f64) would overflow and poison the model.
pub const MAX_MAGNITUDE: f64 = 1e30;

/// Smallest and largest `hash_bits` a model may use.
pub const MIN_HASH_BITS: u8 = 4;
pub const MAX_HASH_BITS: u8 = 26;

/// One hashed feature.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Feature {
    /// Row of the weight matrix, in `0..2^hash_bits`.
    pub index: u32,
    /// The value on its raw scale, kept in f64 so that large offsets
    /// (epoch timestamps, ordinal dates) keep their resolution until they
    /// are standardised.
    pub value: f64,
    /// Numeric features are standardised by the model; indicator features
    /// (`name=value` strings) are used as they are.
    pub numeric: bool,
}

/// A hashed, sparse feature vector ready for the model.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeatureVec {
    pub features: Vec<Feature>,
}

impl FeatureVec {
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// What the features cost on the heap: `len` features as one
    /// allocation (see `allocation_cost`). Computed from the length, not
    /// the capacity, so the same features cost the same wherever they
    /// came from (a request or the feedback log): byte budgets that must
    /// replay exactly depend on it.
    pub fn heap_bytes(&self) -> usize {
        allocation_cost(self.features.len() * std::mem::size_of::<Feature>())
    }

    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }
}

/// What an allocation of `bytes` costs in resident memory, allocator
/// included: the allocator (mimalloc in the server) rounds a small
/// request up to one of four size classes per power of two (at most 25%
/// more), packed together in pages; a large one (above 128 KiB) gets
/// its own span, of which only the pages written become resident.
/// Measured, not assumed: `benches/wide_attack.sh` compares resident
/// memory with the bytes the join cache and the replay buffer account
/// (README, memory).
pub fn allocation_cost(bytes: usize) -> usize {
    const LARGE: usize = 128 << 10;
    const PAGE: usize = 4 << 10;
    if bytes == 0 {
        0
    } else if bytes > LARGE {
        bytes.div_ceil(PAGE) * PAGE
    } else if bytes <= 64 {
        bytes.div_ceil(8) * 8
    } else {
        // Four classes per power of two: a step of a quarter of the
        // power of two below `bytes`.
        let step = 1usize << (usize::BITS - 1 - (bytes - 1).leading_zeros() - 2);
        bytes.div_ceil(step) * step
    }
}

/// Maps feature names (and categorical values) to rows.
#[derive(Debug, Clone, Copy)]
pub struct FeatureHasher {
    mask: u32,
    /// Most features one example may have (`features.max_per_example`
    /// in the server; no limit for batch work).
    max_per_example: usize,
}

impl FeatureHasher {
    /// `bits` must lie in `MIN_HASH_BITS..=MAX_HASH_BITS`; config validation checks it.
    pub fn new(bits: u8) -> Self {
        debug_assert!((MIN_HASH_BITS..=MAX_HASH_BITS).contains(&bits));
        Self {
            mask: (1u32 << bits) - 1,
            max_per_example: usize::MAX,
        }
    }

    /// Refuses feature sets of more than `max` features
    /// (`FeatureError::TooMany`) before hashing anything.
    pub fn with_max_per_example(self, max: usize) -> Self {
        Self {
            max_per_example: max,
            ..self
        }
    }

    pub fn rows(&self) -> usize {
        self.mask as usize + 1
    }

    pub fn numeric(&self, name: &str) -> u32 {
        self.row_of(Self::name_hash(name))
    }

    /// The row of a feature's 64-bit key (`name_hash` for a numeric
    /// feature, `categorical_key` for a categorical one).
    #[inline]
    pub fn row_of(&self, key: u64) -> u32 {
        fold(key) & self.mask
    }

    pub fn categorical(&self, name: &str, value: &str) -> u32 {
        self.categorical_in(Self::name_hash(name), value)
    }

    /// The hash of a feature name, for callers that see the same names
    /// again and again (CSV columns) and hash each only once.
    pub fn name_hash(name: &str) -> u64 {
        xxh3_64_with_seed(name.as_bytes(), NAME_SEED)
    }

    /// `categorical` with the name already hashed by `name_hash`.
    pub fn categorical_in(&self, name_hash: u64, value: &str) -> u32 {
        self.row_of(Self::categorical_key(name_hash, value))
    }

    /// The 64-bit key of a categorical feature, before it is folded into
    /// a row: what tells `name=value` features apart where rows collide.
    #[inline]
    pub fn categorical_key(name_hash: u64, value: &str) -> u64 {
        xxh3_64_with_seed(value.as_bytes(), name_hash ^ VALUE_SEED)
    }

    /// Hashes a parsed feature set; rejects an empty set.
    #[inline]
    pub fn hash(&self, raw: &RawFeatures<'_>) -> Result<FeatureVec, FeatureError> {
        self.hash_into(raw, Vec::new())
    }

    /// `hash` into `features`, a buffer to reuse (whatever it holds is
    /// dropped; its room is kept).
    pub fn hash_into(
        &self,
        raw: &RawFeatures<'_>,
        mut features: Vec<Feature>,
    ) -> Result<FeatureVec, FeatureError> {
        if raw.len() > self.max_per_example {
            return Err(FeatureError::TooMany {
                count: raw.len(),
                max: self.max_per_example,
            });
        }
        features.clear();
        features.reserve(raw.len());
        match raw {
            RawFeatures::Named(pairs) => {
                for (name, value) in pairs {
                    features.push(self.one(name, value)?);
                }
            }
            RawFeatures::Dense(values) => {
                let mut buf = itoa_buf();
                for (i, v) in values.iter().enumerate() {
                    let name = itoa(&mut buf, i);
                    features.push(self.one(name, &RawValue::Number(*v))?);
                }
            }
        }
        if features.is_empty() {
            return Err(FeatureError::Empty);
        }
        Ok(FeatureVec { features })
    }

    fn one(&self, name: &str, value: &RawValue<'_>) -> Result<Feature, FeatureError> {
        match value {
            RawValue::Number(x) => {
                if !x.is_finite() {
                    return Err(FeatureError::NonFinite(name.to_owned()));
                }
                if x.abs() > MAX_MAGNITUDE {
                    return Err(FeatureError::TooLarge(name.to_owned()));
                }
                Ok(Feature {
                    index: self.numeric(name),
                    value: *x,
                    numeric: true,
                })
            }
            RawValue::Bool(b) => Ok(Feature {
                index: self.numeric(name),
                value: if *b { 1.0 } else { 0.0 },
                numeric: true,
            }),
            RawValue::Text(s) => Ok(Feature {
                index: self.categorical(name, s),
                value: 1.0,
                numeric: false,
            }),
            RawValue::Null => Err(FeatureError::Unsupported {
                name: name.to_owned(),
                kind: "null",
            }),
            RawValue::Nested => Err(FeatureError::Unsupported {
                name: name.to_owned(),
                kind: "a nested array or object",
            }),
        }
    }
}

/// Folds a 64-bit hash so every bit of it reaches the low bits kept by the mask.
fn fold(h: u64) -> u32 {
    (h ^ (h >> 32)) as u32
}

fn itoa_buf() -> String {
    String::with_capacity(20)
}

fn itoa(buf: &mut String, i: usize) -> &str {
    use std::fmt::Write;
    buf.clear();
    // Writing to a String cannot fail.
    let _ = write!(buf, "{i}");
    buf.as_str()
}

/// Why a feature set was refused.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum FeatureError {
    #[error("features are empty")]
    Empty,
    #[error("feature `{0}` is not a finite number")]
    NonFinite(String),
    #[error(
        "feature `{0}` is beyond ±1e30 (no measurement is that large; the running statistics would overflow)"
    )]
    TooLarge(String),
    #[error("feature `{name}` is {kind}; values must be numbers, strings or booleans")]
    Unsupported { name: String, kind: &'static str },
    #[error("{count} features, more than features.max_per_example ({max})")]
    TooMany { count: usize, max: usize },
}

/// A feature set as it arrives in JSON: an object of name -> value, or an
/// array of numbers named "0", "1", ... Keys borrow from the input when they
/// hold no escapes, so parsing a request allocates little.
#[derive(Debug, Clone, PartialEq)]
pub enum RawFeatures<'a> {
    Named(Vec<(Cow<'a, str>, RawValue<'a>)>),
    Dense(Vec<f64>),
}

impl RawFeatures<'_> {
    pub fn len(&self) -> usize {
        match self {
            RawFeatures::Named(p) => p.len(),
            RawFeatures::Dense(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One value of a feature object. `Null` and `Nested` are kept (not parse
/// errors) so that the refusal names the feature.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue<'a> {
    Number(f64),
    Text(Cow<'a, str>),
    Bool(bool),
    Null,
    Nested,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawFeatures<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FeaturesVisitor(std::marker::PhantomData))
    }
}

struct FeaturesVisitor<'a>(std::marker::PhantomData<&'a ()>);

/// Up to this many names, a repeated one is found by comparing with each.
const DUPLICATE_SCAN: usize = 32;

impl<'de: 'a, 'a> Visitor<'de> for FeaturesVisitor<'a> {
    type Value = RawFeatures<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(
            "an object of feature name to number, string or boolean, or an array of numbers",
        )
    }

    /// A name given twice is refused: each copy would count (past the
    /// per-value bounds), and JSON parsers disagree on which one wins.
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut pairs: Vec<(Cow<'a, str>, RawValue<'a>)> =
            Vec::with_capacity(map.size_hint().unwrap_or(8));
        // Few names are compared one by one; many through a set.
        let mut names: Option<std::collections::HashSet<Cow<'a, str>>> = None;
        while let Some(key) = map.next_key::<CowStr<'a>>()? {
            let repeated = if pairs.len() < DUPLICATE_SCAN {
                pairs.iter().any(|(k, _)| *k == key.0)
            } else {
                let set =
                    names.get_or_insert_with(|| pairs.iter().map(|(k, _)| k.clone()).collect());
                !set.insert(key.0.clone())
            };
            if repeated {
                return Err(de::Error::custom(format_args!(
                    "feature {:?} is given more than once",
                    key.0
                )));
            }
            let value = map.next_value::<RawValue<'a>>()?;
            pairs.push((key.0, value));
        }
        Ok(RawFeatures::Named(pairs))
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(8));
        while let Some(v) = seq.next_element::<DenseValue>()? {
            values.push(v.0);
        }
        Ok(RawFeatures::Dense(values))
    }
}

/// A string that borrows from the input when it can.
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = CowStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawValue<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, string or boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RawValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawValue::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawValue::Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawValue::Number(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawValue::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawValue::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(RawValue::Text(Cow::Owned(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawValue::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawValue::Null)
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(RawValue::Nested)
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(RawValue::Nested)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// An element of the array form: numbers only.
struct DenseValue(f64);

impl<'de> Deserialize<'de> for DenseValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DenseValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number (the array form of features holds numbers only)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(DenseValue(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(DenseValue(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(DenseValue(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(json: &str) -> Result<FeatureVec, FeatureError> {
        let raw: RawFeatures = serde_json::from_str(json).expect("valid json");
        FeatureHasher::new(18).hash(&raw)
    }

    #[test]
    fn a_name_given_twice_is_refused_however_many_names() {
        for n in [2usize, 40, 200] {
            let mut names: Vec<String> = (0..n).map(|i| format!("\"f{i}\": {i}")).collect();
            names.push("\"f1\": 9".into());
            let json = format!("{{{}}}", names.join(", "));
            let err = serde_json::from_str::<RawFeatures>(&json)
                .err()
                .unwrap_or_else(|| panic!("{n} names and a repeat accepted"));
            assert!(
                err.to_string().contains("\"f1\" is given more than once"),
                "{err}"
            );
            names.pop();
            let json = format!("{{{}}}", names.join(", "));
            assert!(
                serde_json::from_str::<RawFeatures>(&json).is_ok(),
                "{n} distinct names"
            );
        }
    }

    #[test]
    fn a_feature_set_wider_than_the_cap_is_refused_before_hashing() {
        let h = FeatureHasher::new(8).with_max_per_example(3);
        let ok: RawFeatures = serde_json::from_str(r#"{"a": 1, "b": 2, "c": 3}"#).unwrap();
        assert_eq!(h.hash(&ok).unwrap().len(), 3);
        let wide: RawFeatures =
            serde_json::from_str(r#"{"a": 1, "b": 2, "c": 3, "d": 4}"#).unwrap();
        assert_eq!(
            h.hash(&wide),
            Err(FeatureError::TooMany { count: 4, max: 3 })
        );
        let dense: RawFeatures = serde_json::from_str("[1, 2, 3, 4]").unwrap();
        assert_eq!(
            h.hash(&dense),
            Err(FeatureError::TooMany { count: 4, max: 3 })
        );
        // Batch work has no cap.
        assert_eq!(FeatureHasher::new(8).hash(&wide).unwrap().len(), 4);
    }

    #[test]
    fn allocation_cost_rounds_up_to_the_allocators_classes() {
        for (bytes, cost) in [
            (0, 0),
            (1, 8),
            (16, 16),
            (64, 64),
            (65, 80),
            (128, 128),
            (129, 160),
            (1000, 1024),
            (1025, 1280),
            (128 << 10, 128 << 10),
            ((128 << 10) + 1, 132 << 10),
            (160_000, 163_840),
            (1_600_000, 1_601_536),
        ] {
            assert_eq!(allocation_cost(bytes), cost, "{bytes} bytes");
            assert!(allocation_cost(bytes) >= bytes);
        }
        let v = FeatureVec {
            features: vec![
                Feature {
                    index: 0,
                    value: 1.0,
                    numeric: true
                };
                10
            ],
        };
        assert_eq!(v.heap_bytes(), allocation_cost(10 * 16));
    }

    #[test]
    fn indices_are_stable_across_builds() {
        // These numbers are part of the snapshot format: if this test fails,
        // saved models no longer load with the same meaning.
        let h = FeatureHasher::new(18);
        assert_eq!(h.numeric("nswprice"), h.numeric("nswprice"));
        let expected = (fold(xxh3_64_with_seed(b"nswprice", NAME_SEED))) & ((1 << 18) - 1);
        assert_eq!(h.numeric("nswprice"), expected);
        assert_eq!(h.numeric("nswprice"), 20751);
        assert_eq!(h.categorical("colour", "red"), 246929);
    }

    #[test]
    fn value_kinds_map_to_features() {
        let v = hash(r#"{"a": 2.5, "b": "red", "c": true, "d": false, "e": 3}"#).unwrap();
        let h = FeatureHasher::new(18);
        assert_eq!(
            v.features,
            vec![
                Feature {
                    index: h.numeric("a"),
                    value: 2.5,
                    numeric: true
                },
                Feature {
                    index: h.categorical("b", "red"),
                    value: 1.0,
                    numeric: false
                },
                Feature {
                    index: h.numeric("c"),
                    value: 1.0,
                    numeric: true
                },
                Feature {
                    index: h.numeric("d"),
                    value: 0.0,
                    numeric: true
                },
                Feature {
                    index: h.numeric("e"),
                    value: 3.0,
                    numeric: true
                },
            ]
        );
    }

    #[test]
    fn dense_array_is_named_by_position() {
        let dense = hash("[1.0, 2.0]").unwrap();
        let named = hash(r#"{"0": 1.0, "1": 2.0}"#).unwrap();
        assert_eq!(dense, named);
    }

    #[test]
    fn categorical_values_differ() {
        let h = FeatureHasher::new(18);
        assert_ne!(
            h.categorical("colour", "red"),
            h.categorical("colour", "blue")
        );
        assert_ne!(h.categorical("a", "bc"), h.categorical("ab", "c"));
    }

    #[test]
    fn refusals_name_the_feature() {
        assert_eq!(hash("{}"), Err(FeatureError::Empty));
        assert_eq!(hash("[]"), Err(FeatureError::Empty));
        assert!(
            matches!(hash(r#"{"x": null}"#), Err(FeatureError::Unsupported { name, .. }) if name == "x")
        );
        assert!(
            matches!(hash(r#"{"x": [1]}"#), Err(FeatureError::Unsupported { name, .. }) if name == "x")
        );
        assert!(
            matches!(hash(r#"{"x": {"y": 1}}"#), Err(FeatureError::Unsupported { name, .. }) if name == "x")
        );
        assert!(
            hash(r#"{"x": 1e30, "y": -1e30}"#).is_ok(),
            "at the bound: accepted"
        );
        assert_eq!(
            hash(r#"{"x": 1.7e308}"#),
            Err(FeatureError::TooLarge("x".into())),
            "beyond it a value would overflow the running statistics"
        );
        assert_eq!(hash("[1, -1e31]"), Err(FeatureError::TooLarge("1".into())));
        let raw = RawFeatures::Named(vec![("x".into(), RawValue::Number(f64::INFINITY))]);
        assert_eq!(
            FeatureHasher::new(18).hash(&raw),
            Err(FeatureError::NonFinite("x".into()))
        );
        assert!(serde_json::from_str::<RawFeatures>(r#"[1, "a"]"#).is_err());
        assert!(serde_json::from_str::<RawFeatures>("3").is_err());
    }
}
