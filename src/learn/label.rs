//! Tasks and labels: which outputs a model has, how a JSON label maps to a
//! training target, and how an output index is named in responses.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::{Serialize, Serializer};
use thiserror::Error;

use super::linear::MAX_TARGET;

/// The `task` config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Binary,
    Multiclass,
    Regression,
}

/// What a model predicts, with its class names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSpace {
    kind: TaskKind,
    /// Binary without names: empty, and labels are 0/1 or false/true.
    classes: Vec<String>,
}

/// A training target.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, Serialize)]
pub enum Target {
    /// Index of the class (binary: 1 is the positive class).
    Class(usize),
    Value(f64),
}

impl Target {
    /// The class index, for classification targets.
    pub fn class(&self) -> Option<usize> {
        match *self {
            Target::Class(c) => Some(c),
            Target::Value(_) => None,
        }
    }
}

/// The label of a prediction, as it is written in JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LabelOut<'a> {
    /// Binary without class names: 0 or 1.
    Bit(u8),
    Name(&'a str),
}

impl Serialize for LabelOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LabelOut::Bit(b) => s.serialize_u8(*b),
            LabelOut::Name(n) => s.serialize_str(n),
        }
    }
}

/// Why a label was refused.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LabelError {
    #[error("label {0} is not a known class (expected one of {1})")]
    UnknownClass(String, String),
    #[error("label has the wrong type: {0}")]
    WrongType(String),
    #[error("label out of range: {0}")]
    OutOfRange(String),
}

/// Why a label space cannot be built from config.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SpaceError {
    #[error("multiclass needs at least two `classes`")]
    TooFewClasses,
    #[error("binary takes no classes or exactly two, got {0}")]
    BinaryClasses(usize),
    #[error("regression takes no classes")]
    RegressionClasses,
    #[error("class `{0}` appears twice")]
    Duplicate(String),
}

impl LabelSpace {
    pub fn new(kind: TaskKind, classes: Vec<String>) -> Result<Self, SpaceError> {
        match kind {
            TaskKind::Binary if !(classes.is_empty() || classes.len() == 2) => {
                return Err(SpaceError::BinaryClasses(classes.len()));
            }
            TaskKind::Multiclass if classes.len() < 2 => return Err(SpaceError::TooFewClasses),
            TaskKind::Regression if !classes.is_empty() => {
                return Err(SpaceError::RegressionClasses);
            }
            _ => {}
        }
        for (i, c) in classes.iter().enumerate() {
            if classes[..i].contains(c) {
                return Err(SpaceError::Duplicate(c.clone()));
            }
        }
        Ok(Self { kind, classes })
    }

    pub fn kind(&self) -> TaskKind {
        self.kind
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Number of model outputs: one logit for binary, one per class for
    /// multiclass, one value for regression.
    pub fn outputs(&self) -> usize {
        match self.kind {
            TaskKind::Multiclass => self.classes.len(),
            _ => 1,
        }
    }

    /// Whether `target` belongs to this space (a class index in range, or a
    /// finite value for regression): for targets read back from elsewhere.
    pub fn check(&self, target: Target) -> Result<(), String> {
        match (self.kind, target) {
            (TaskKind::Regression, Target::Value(v)) if v.is_finite() => Ok(()),
            (TaskKind::Binary | TaskKind::Multiclass, Target::Class(c)) if c < self.n_classes() => {
                Ok(())
            }
            _ => Err(format!(
                "target {target:?} does not fit a {:?} model",
                self.kind
            )),
        }
    }

    /// Number of probabilities a prediction reports (0 for regression).
    pub fn n_classes(&self) -> usize {
        match self.kind {
            TaskKind::Binary => 2,
            TaskKind::Multiclass => self.classes.len(),
            TaskKind::Regression => 0,
        }
    }

    /// The name of class `k` as a probability key.
    pub fn class_key(&self, k: usize) -> &str {
        match (self.kind, self.classes.is_empty()) {
            (TaskKind::Binary, true) => ["0", "1"][k],
            _ => &self.classes[k],
        }
    }

    pub fn label_out(&self, k: usize) -> LabelOut<'_> {
        match (self.kind, self.classes.is_empty()) {
            (TaskKind::Binary, true) => LabelOut::Bit(k as u8),
            _ => LabelOut::Name(&self.classes[k]),
        }
    }

    pub fn target(&self, raw: &RawLabel<'_>) -> Result<Target, LabelError> {
        match self.kind {
            TaskKind::Regression => match raw {
                RawLabel::Int(i) if (*i as f64).abs() <= MAX_TARGET => Ok(Target::Value(*i as f64)),
                RawLabel::Float(f) if f.is_finite() && f.abs() <= MAX_TARGET => {
                    Ok(Target::Value(*f))
                }
                RawLabel::Int(_) | RawLabel::Float(_) => Err(LabelError::OutOfRange(format!(
                    "regression labels must be finite numbers of magnitude at most {MAX_TARGET:e}"
                ))),
                other => Err(LabelError::WrongType(format!(
                    "regression labels are numbers, got {}",
                    other.describe()
                ))),
            },
            TaskKind::Binary if self.classes.is_empty() => match raw {
                RawLabel::Bool(b) => Ok(Target::Class(usize::from(*b))),
                RawLabel::Int(0) => Ok(Target::Class(0)),
                RawLabel::Int(1) => Ok(Target::Class(1)),
                RawLabel::Float(f) if *f == 0.0 || *f == 1.0 => Ok(Target::Class(*f as usize)),
                RawLabel::Int(_) | RawLabel::Float(_) => Err(LabelError::UnknownClass(
                    raw.describe(),
                    "0, 1, false, true".into(),
                )),
                other => Err(LabelError::WrongType(format!(
                    "binary labels are 0/1 or true/false, got {}",
                    other.describe()
                ))),
            },
            _ => {
                let name: Cow<'_, str> = match raw {
                    RawLabel::Str(s) => Cow::Borrowed(s.as_ref()),
                    RawLabel::Int(i) => Cow::Owned(i.to_string()),
                    other => {
                        return Err(LabelError::WrongType(format!(
                            "labels are class names, got {}",
                            other.describe()
                        )));
                    }
                };
                self.classes
                    .iter()
                    .position(|c| *c == name)
                    .map(Target::Class)
                    .ok_or_else(|| {
                        LabelError::UnknownClass(format!("`{name}`"), self.classes.join(", "))
                    })
            }
        }
    }
}

/// A label as it arrives in JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum RawLabel<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    /// null, arrays and objects: kept so the refusal can say what came.
    Other(&'static str),
}

impl RawLabel<'_> {
    fn describe(&self) -> String {
        match self {
            RawLabel::Bool(b) => format!("boolean {b}"),
            RawLabel::Int(i) => format!("number {i}"),
            RawLabel::Float(f) => format!("number {f}"),
            RawLabel::Str(s) => format!("string `{s}`"),
            RawLabel::Other(kind) => (*kind).to_owned(),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawLabel<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawLabel<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a label: number, string or boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RawLabel::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawLabel::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(RawLabel::Float(v as f64), RawLabel::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawLabel::Float(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawLabel::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawLabel::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawLabel::Other("null"))
            }
            fn visit_seq<S: de::SeqAccess<'de>>(self, mut s: S) -> Result<Self::Value, S::Error> {
                while s.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(RawLabel::Other("an array"))
            }
            fn visit_map<M: de::MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                while m.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(RawLabel::Other("an object"))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(space: &LabelSpace, json: &str) -> Result<Target, LabelError> {
        let raw: RawLabel = serde_json::from_str(json).expect("json");
        space.target(&raw)
    }

    #[test]
    fn binary_without_names() {
        let s = LabelSpace::new(TaskKind::Binary, vec![]).unwrap();
        for (json, want) in [("0", 0), ("1", 1), ("true", 1), ("false", 0), ("1.0", 1)] {
            assert_eq!(check(&s, json), Ok(Target::Class(want)), "{json}");
        }
        assert!(matches!(check(&s, "2"), Err(LabelError::UnknownClass(..))));
        assert!(matches!(check(&s, r#""1""#), Err(LabelError::WrongType(_))));
        assert!(matches!(check(&s, "null"), Err(LabelError::WrongType(_))));
        assert_eq!(s.label_out(1), LabelOut::Bit(1));
        assert_eq!(s.class_key(0), "0");
    }

    #[test]
    fn named_classes_accept_names_and_integer_spellings() {
        let s = LabelSpace::new(
            TaskKind::Multiclass,
            vec!["a".into(), "7".into(), "c".into()],
        )
        .unwrap();
        assert_eq!(check(&s, r#""c""#), Ok(Target::Class(2)));
        assert_eq!(check(&s, "7"), Ok(Target::Class(1)));
        assert!(matches!(
            check(&s, r#""z""#),
            Err(LabelError::UnknownClass(..))
        ));
        assert!(matches!(check(&s, "true"), Err(LabelError::WrongType(_))));
        assert!(matches!(check(&s, "[1]"), Err(LabelError::WrongType(_))));
        let b = LabelSpace::new(TaskKind::Binary, vec!["ham".into(), "spam".into()]).unwrap();
        assert_eq!(check(&b, r#""spam""#), Ok(Target::Class(1)));
        assert_eq!(b.label_out(1), LabelOut::Name("spam"));
    }

    #[test]
    fn regression_takes_numbers() {
        let s = LabelSpace::new(TaskKind::Regression, vec![]).unwrap();
        assert_eq!(check(&s, "2.5"), Ok(Target::Value(2.5)));
        assert_eq!(check(&s, "-3"), Ok(Target::Value(-3.0)));
        assert!(matches!(check(&s, r#""2""#), Err(LabelError::WrongType(_))));
        assert!(matches!(check(&s, "1e200"), Err(LabelError::OutOfRange(_))));
    }

    #[test]
    fn bad_spaces_are_refused() {
        assert_eq!(
            LabelSpace::new(TaskKind::Multiclass, vec!["a".into()]),
            Err(SpaceError::TooFewClasses)
        );
        assert_eq!(
            LabelSpace::new(TaskKind::Binary, vec!["a".into()]),
            Err(SpaceError::BinaryClasses(1))
        );
        assert_eq!(
            LabelSpace::new(TaskKind::Multiclass, vec!["a".into(), "a".into()]),
            Err(SpaceError::Duplicate("a".into()))
        );
        assert_eq!(
            LabelSpace::new(TaskKind::Regression, vec!["a".into()]),
            Err(SpaceError::RegressionClasses)
        );
    }
}
