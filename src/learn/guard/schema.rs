//! `Schema`: the declared features of `[[models.guard.features]]`, and the
//! check of one raw feature set against them.
//!
//! Types are JSON types, because that is what decides how eddy learns a
//! value: a number is a numeric feature (one weight, scaled by the
//! value), a string a categorical one (one weight per `name=value`), and
//! `true`/`false` a numeric 1/0.
//! - `numeric`: a number, within `min`/`max` (inclusive) when given.
//! - `categorical`: a string, one of `categories` when given. A number is
//!   refused: eddy would learn it as a numeric feature, not as a
//!   category, so `3` and `"3"` are different features (send `"3"`).
//! - `boolean`: `true` or `false`. Numbers are refused too (declare a 0/1
//!   feature as numeric with `min = 0`, `max = 1`).
//!
//! The array form `[1, 2, 3]` names its features "0", "1", ... . With no
//! declared features the check does nothing.

use std::fmt::{self, Write};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{DeclaredFeature, DeclaredKind, UnknownFeatures};
use crate::learn::{RawFeatures, RawValue};

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Schema {
    features: Vec<DeclaredFeature>,
    /// Name to index in `features`.
    by_name: FxHashMap<String, usize>,
    /// Indices (in `features`) of the required features.
    required: Vec<usize>,
    unknown: UnknownFeatures,
}

/// How a feature set breaks the schema: the first problem found, named by
/// feature.
#[derive(Debug, Clone, PartialEq, Error, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Violation {
    #[error("feature `{feature}` is required but missing")]
    Missing { feature: String },
    #[error("feature `{feature}` must be {}, got {got}", expected_text(*.expected))]
    WrongType {
        feature: String,
        expected: DeclaredKind,
        got: JsonKind,
    },
    #[error("feature `{feature}` is {value}, below its minimum {min}")]
    BelowMin {
        feature: String,
        value: f64,
        min: f64,
    },
    #[error("feature `{feature}` is {value}, above its maximum {max}")]
    AboveMax {
        feature: String,
        value: f64,
        max: f64,
    },
    #[error("feature `{feature}` is \"{value}\", not one of its {count} declared categories")]
    UnknownCategory {
        feature: String,
        value: String,
        count: usize,
    },
    #[error("feature `{feature}` is not declared, and unknown features are refused")]
    Undeclared { feature: String },
}

/// The JSON type a value arrived as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonKind {
    Number,
    String,
    Boolean,
    Null,
    Nested,
}

impl Schema {
    pub fn new(features: &[DeclaredFeature], unknown: UnknownFeatures) -> Self {
        let by_name = features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        let required = features
            .iter()
            .enumerate()
            .filter(|(_, f)| f.required)
            .map(|(i, _)| i)
            .collect();
        Self {
            features: features.to_vec(),
            by_name,
            required,
            unknown,
        }
    }

    /// Whether any feature is declared (else `check` accepts everything).
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Checks `raw` against the declared features.
    pub fn check(&self, raw: &RawFeatures<'_>) -> Result<(), Violation> {
        if self.features.is_empty() {
            return Ok(());
        }
        let mut seen = vec![false; self.required.len()];
        let mut visit = |name: &str, value: &RawValue<'_>| -> Result<(), Violation> {
            let Some(&i) = self.by_name.get(name) else {
                return match self.unknown {
                    UnknownFeatures::Allow => Ok(()),
                    UnknownFeatures::Refuse => Err(Violation::Undeclared {
                        feature: name.to_owned(),
                    }),
                };
            };
            if let Ok(r) = self.required.binary_search(&i) {
                seen[r] = true;
            }
            check_value(&self.features[i], value)
        };
        match raw {
            RawFeatures::Named(pairs) => {
                for (name, value) in pairs {
                    visit(name, value)?;
                }
            }
            RawFeatures::Dense(values) => {
                let mut name = String::new();
                for (i, v) in values.iter().enumerate() {
                    name.clear();
                    // Writing to a String cannot fail.
                    let _ = write!(name, "{i}");
                    visit(&name, &RawValue::Number(*v))?;
                }
            }
        }
        match seen.iter().position(|s| !s) {
            Some(r) => Err(Violation::Missing {
                feature: self.features[self.required[r]].name.clone(),
            }),
            None => Ok(()),
        }
    }
}

fn check_value(declared: &DeclaredFeature, value: &RawValue<'_>) -> Result<(), Violation> {
    let wrong = || Violation::WrongType {
        feature: declared.name.clone(),
        expected: declared.kind,
        got: JsonKind::of(value),
    };
    match (declared.kind, value) {
        (DeclaredKind::Numeric, RawValue::Number(v)) => {
            if let Some(min) = declared.min
                && *v < min
            {
                return Err(Violation::BelowMin {
                    feature: declared.name.clone(),
                    value: *v,
                    min,
                });
            }
            if let Some(max) = declared.max
                && *v > max
            {
                return Err(Violation::AboveMax {
                    feature: declared.name.clone(),
                    value: *v,
                    max,
                });
            }
            Ok(())
        }
        (DeclaredKind::Categorical, RawValue::Text(s)) => {
            if declared.categories.is_empty() || declared.categories.iter().any(|c| c == s) {
                Ok(())
            } else {
                Err(Violation::UnknownCategory {
                    feature: declared.name.clone(),
                    value: s.to_string(),
                    count: declared.categories.len(),
                })
            }
        }
        (DeclaredKind::Boolean, RawValue::Bool(_)) => Ok(()),
        _ => Err(wrong()),
    }
}

impl JsonKind {
    fn of(value: &RawValue<'_>) -> Self {
        match value {
            RawValue::Number(_) => Self::Number,
            RawValue::Text(_) => Self::String,
            RawValue::Bool(_) => Self::Boolean,
            RawValue::Null => Self::Null,
            RawValue::Nested => Self::Nested,
        }
    }
}

impl fmt::Display for JsonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Number => "a number",
            Self::String => "a string",
            Self::Boolean => "a boolean",
            Self::Null => "null",
            Self::Nested => "an array or object",
        })
    }
}

fn expected_text(kind: DeclaredKind) -> &'static str {
    match kind {
        DeclaredKind::Numeric => "a number",
        DeclaredKind::Categorical => "a string (categorical)",
        DeclaredKind::Boolean => "true or false",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(name: &str, kind: DeclaredKind) -> DeclaredFeature {
        DeclaredFeature {
            name: name.to_owned(),
            kind,
            min: None,
            max: None,
            categories: Vec::new(),
            required: false,
        }
    }

    fn schema(unknown: UnknownFeatures) -> Schema {
        Schema::new(
            &[
                DeclaredFeature {
                    min: Some(0.0),
                    max: Some(1000.0),
                    required: true,
                    ..declared("price", DeclaredKind::Numeric)
                },
                DeclaredFeature {
                    categories: vec!["red".into(), "blue".into()],
                    ..declared("colour", DeclaredKind::Categorical)
                },
                declared("city", DeclaredKind::Categorical),
                declared("member", DeclaredKind::Boolean),
                declared("1", DeclaredKind::Numeric),
            ],
            unknown,
        )
    }

    /// Checks `json` against the test schema: `Ok(())` or the violation's
    /// message.
    fn check(unknown: UnknownFeatures, json: &str) -> Result<(), String> {
        let raw: RawFeatures = serde_json::from_str(json).expect("valid json");
        schema(unknown).check(&raw).map_err(|v| v.to_string())
    }

    #[test]
    fn feature_sets_are_checked_against_the_declarations() {
        use UnknownFeatures::{Allow, Refuse};
        let ok = Ok(());
        for (unknown, json, want) in [
            (Allow, r#"{"price": 10}"#, ok),
            (
                Allow,
                r#"{"price": 0, "colour": "red", "city": "Oslo", "member": true}"#,
                ok,
            ),
            (Allow, r#"{"price": 1000, "other": "anything"}"#, ok),
            (Refuse, r#"{"price": 5, "member": false}"#, ok),
            (
                Allow,
                r#"{"colour": "red"}"#,
                Err("feature `price` is required but missing"),
            ),
            (
                Allow,
                r#"{"price": "10"}"#,
                Err("feature `price` must be a number, got a string"),
            ),
            (
                Allow,
                r#"{"price": null}"#,
                Err("feature `price` must be a number, got null"),
            ),
            (
                Allow,
                r#"{"price": -0.5}"#,
                Err("feature `price` is -0.5, below its minimum 0"),
            ),
            (
                Allow,
                r#"{"price": 1e6}"#,
                Err("feature `price` is 1000000, above its maximum 1000"),
            ),
            (
                Allow,
                r#"{"price": 1, "colour": "green"}"#,
                Err("feature `colour` is \"green\", not one of its 2 declared categories"),
            ),
            (
                Allow,
                r#"{"price": 1, "city": 3}"#,
                Err("feature `city` must be a string (categorical), got a number"),
            ),
            (
                Allow,
                r#"{"price": 1, "member": 1}"#,
                Err("feature `member` must be true or false, got a number"),
            ),
            (
                Allow,
                r#"{"price": 1, "member": [true]}"#,
                Err("feature `member` must be true or false, got an array or object"),
            ),
            (
                Refuse,
                r#"{"price": 1, "extra": 2}"#,
                Err("feature `extra` is not declared, and unknown features are refused"),
            ),
        ] {
            assert_eq!(check(unknown, json), want.map_err(str::to_owned), "{json}");
        }
    }

    #[test]
    fn dense_arrays_name_their_features_by_position() {
        let s = Schema::new(
            &[DeclaredFeature {
                max: Some(5.0),
                required: true,
                ..declared("1", DeclaredKind::Numeric)
            }],
            UnknownFeatures::Allow,
        );
        fn raw(json: &str) -> RawFeatures<'_> {
            serde_json::from_str(json).expect("json")
        }
        assert_eq!(s.check(&raw("[100, 2]")), Ok(()));
        assert_eq!(
            s.check(&raw("[0, 9]")),
            Err(Violation::AboveMax {
                feature: "1".into(),
                value: 9.0,
                max: 5.0
            })
        );
        assert_eq!(
            s.check(&raw("[0]")),
            Err(Violation::Missing {
                feature: "1".into()
            })
        );
        let refuse = Schema::new(
            &[declared("0", DeclaredKind::Numeric)],
            UnknownFeatures::Refuse,
        );
        assert_eq!(
            refuse.check(&raw("[1, 2]")),
            Err(Violation::Undeclared {
                feature: "1".into()
            })
        );
    }

    #[test]
    fn no_declared_features_accepts_anything_even_when_unknown_ones_are_refused() {
        let s = Schema::new(&[], UnknownFeatures::Refuse);
        assert!(s.is_empty());
        let raw: RawFeatures = serde_json::from_str(r#"{"x": null, "y": [1]}"#).expect("json");
        assert_eq!(s.check(&raw), Ok(()));
    }

    #[test]
    fn violations_serialise_with_a_problem_tag_for_quarantine_records() {
        let v = Violation::WrongType {
            feature: "price".into(),
            expected: DeclaredKind::Numeric,
            got: JsonKind::String,
        };
        let json = serde_json::to_value(&v).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"problem": "wrong_type", "feature": "price", "expected": "numeric", "got": "string"})
        );
        let back: Violation = serde_json::from_value(json).expect("back");
        assert_eq!(back, v);
    }
}
