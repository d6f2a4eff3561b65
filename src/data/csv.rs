//! CSV rows to examples. The header names the features; the label column
//! (`--label`, default `label`) is the target. A cell that parses as a
//! number is a numeric feature, any other non-empty cell a categorical
//! one (`column=value`, as a JSON string feature would be), and an empty
//! cell is a missing feature. Column names are hashed once, not per row.

use csv::StringRecord;

use crate::learn::names::NameKind;
use crate::learn::{
    Example, Feature, FeatureHasher, FeatureNames, FeatureVec, LabelSpace, RawLabel,
};

/// How a file's columns become features.
#[derive(Debug, Clone)]
pub struct CsvSchema {
    label: usize,
    columns: Vec<Column>,
}

#[derive(Debug, Clone)]
struct Column {
    position: usize,
    name: String,
    /// The row a numeric value of this column goes to.
    numeric: u32,
    name_hash: u64,
}

impl CsvSchema {
    /// Reads the header; `Err` says what is wrong with it.
    pub fn new(header: &StringRecord, label: &str, hasher: &FeatureHasher) -> Result<Self, String> {
        let names: Vec<&str> = header.iter().map(str::trim).collect();
        let label_at = names.iter().position(|n| *n == label).ok_or_else(|| {
            format!(
                "no label column `{label}` in the header (columns: {names:?}); name it with --label"
            )
        })?;
        if let Some(dup) = names
            .iter()
            .enumerate()
            .find(|(i, n)| names[..*i].contains(n))
        {
            return Err(format!("the header names column `{}` twice", dup.1));
        }
        let columns = names
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != label_at)
            .map(|(position, name)| Column {
                position,
                name: (*name).to_owned(),
                numeric: hasher.numeric(name),
                name_hash: FeatureHasher::name_hash(name),
            })
            .collect();
        Ok(Self {
            label: label_at,
            columns,
        })
    }

    pub fn width(&self) -> usize {
        self.columns.len() + 1
    }

    /// One data row; `Err` says what is wrong with it. The feature names
    /// of a valid row are noted in `names` when given.
    pub fn example(
        &self,
        record: &StringRecord,
        hasher: &FeatureHasher,
        space: &LabelSpace,
        names: Option<&mut FeatureNames>,
    ) -> Result<Example, String> {
        if record.len() != self.width() {
            return Err(format!(
                "{} fields where the header has {}",
                record.len(),
                self.width()
            ));
        }
        let label = record.get(self.label).unwrap_or("").trim();
        let target = space
            .target(&parse_label(label))
            .map_err(|e| format!("label {label:?}: {e}"))?;
        let mut features = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            let cell = record.get(c.position).unwrap_or("").trim();
            if cell.is_empty() {
                continue;
            }
            match cell.parse::<f64>() {
                Ok(x) if x.is_finite() => features.push(Feature {
                    index: c.numeric,
                    value: x,
                    numeric: true,
                }),
                Ok(_) => return Err(format!("column {}: {cell:?} is not finite", c.position + 1)),
                Err(_) => features.push(Feature {
                    index: hasher.categorical_in(c.name_hash, cell),
                    value: 1.0,
                    numeric: false,
                }),
            }
        }
        if features.is_empty() {
            return Err("no features (every cell but the label is empty)".into());
        }
        if let Some(names) = names {
            self.note_names(record, &features, hasher, names);
        }
        Ok(Example {
            features: FeatureVec { features },
            target,
        })
    }

    /// Notes the names of a valid row's features: the non-empty cells, in
    /// column order, one feature each.
    fn note_names(
        &self,
        record: &StringRecord,
        features: &[Feature],
        hasher: &FeatureHasher,
        names: &mut FeatureNames,
    ) {
        let cells = self
            .columns
            .iter()
            .map(|c| (c, record.get(c.position).unwrap_or("").trim()))
            .filter(|(_, cell)| !cell.is_empty());
        for ((c, cell), f) in cells.zip(features) {
            if f.numeric {
                names.note(c.name_hash, f.index, NameKind::Numeric, || c.name.clone());
            } else {
                let key = FeatureHasher::categorical_key(c.name_hash, cell);
                names.note(key, hasher.row_of(key), NameKind::Categorical, || {
                    format!("{}={cell}", c.name)
                });
            }
        }
    }
}

/// A label cell as JSON would have given it.
fn parse_label(cell: &str) -> RawLabel<'_> {
    match cell {
        "true" => RawLabel::Bool(true),
        "false" => RawLabel::Bool(false),
        _ => {
            if let Ok(i) = cell.parse::<i64>() {
                RawLabel::Int(i)
            } else if let Ok(f) = cell.parse::<f64>() {
                RawLabel::Float(f)
            } else {
                RawLabel::Str(cell.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{RawFeatures, TaskKind};

    #[test]
    fn rows_hash_exactly_as_the_json_form_does() {
        let hasher = FeatureHasher::new(18);
        let space = LabelSpace::new(TaskKind::Binary, vec![]).unwrap();
        let header = StringRecord::from(vec!["price", "label", "colour", "gap"]);
        let schema = CsvSchema::new(&header, "label", &hasher).unwrap();
        let row = StringRecord::from(vec![" 0.5", "1 ", "red", ""]);
        let e = schema.example(&row, &hasher, &space, None).unwrap();
        let raw: RawFeatures = serde_json::from_str(r#"{"price": 0.5, "colour": "red"}"#).unwrap();
        assert_eq!(e.features, hasher.hash(&raw).unwrap());
        assert_eq!(e.target, crate::learn::Target::Class(1));

        let bad =
            |cells: Vec<&str>| schema.example(&StringRecord::from(cells), &hasher, &space, None);
        assert!(bad(vec!["0.5", "1"]).unwrap_err().contains("fields"));
        assert!(
            bad(vec!["0.5", "7", "red", ""])
                .unwrap_err()
                .contains("label")
        );
        assert!(
            bad(vec!["inf", "1", "red", ""])
                .unwrap_err()
                .contains("not finite")
        );
        assert!(
            bad(vec!["", "1", "", ""])
                .unwrap_err()
                .contains("no features")
        );
        let no_label = CsvSchema::new(&header, "y", &hasher).unwrap_err();
        assert!(no_label.contains("--label"), "{no_label}");
    }

    #[test]
    fn names_are_noted_as_the_json_form_notes_them_and_only_for_valid_rows() {
        let hasher = FeatureHasher::new(18);
        let space = LabelSpace::new(TaskKind::Binary, vec![]).unwrap();
        let header = StringRecord::from(vec!["price", "label", "colour", "gap"]);
        let schema = CsvSchema::new(&header, "label", &hasher).unwrap();
        let mut names = FeatureNames::default();
        let row = StringRecord::from(vec![" 0.5", "1", " red ", ""]);
        schema
            .example(&row, &hasher, &space, Some(&mut names))
            .unwrap();
        let mut json = FeatureNames::default();
        let raw: RawFeatures = serde_json::from_str(r#"{"price": 0.5, "colour": "red"}"#).unwrap();
        json.note_features(&hasher, &raw);
        assert_eq!(names, json);
        assert_eq!(
            names
                .get(hasher.categorical("colour", "red"))
                .collect::<Vec<_>>(),
            [("colour=red", NameKind::Categorical)]
        );
        // A row that fails (non-finite price) notes nothing, not even its colour.
        let bad = StringRecord::from(vec!["inf", "1", "blue", ""]);
        assert!(
            schema
                .example(&bad, &hasher, &space, Some(&mut names))
                .is_err()
        );
        assert_eq!(names, json);
    }
}
