//! CSV rows to examples. The header names the features; the label column
//! (`--label`, default `label`) is the target. A cell that parses as a
//! number is a numeric feature, any other non-empty cell a categorical
//! one (`column=value`, as a JSON string feature would be), and an empty
//! cell is a missing feature. Column names are hashed once, not per row.

use csv::{ByteRecord, StringRecord};

use crate::learn::names::NameKind;
use crate::learn::{
    Example, Feature, FeatureHasher, FeatureNames, FeatureVec, LabelSpace, RawLabel,
};

/// How a file's columns become features.
#[derive(Debug, Clone)]
pub struct CsvSchema {
    label: usize,
    /// The feature columns, in file order.
    columns: Vec<Column>,
}

#[derive(Debug, Clone)]
struct Column {
    position: usize,
    name: String,
    /// The row a numeric value of this column goes to.
    numeric: u32,
    name_hash: u64,
    /// Whether this column's numeric name was noted already (it is the
    /// same for every row, so it is noted once, not looked up per row).
    noted: bool,
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
                noted: false,
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

    /// One data row; `Err` says what is wrong with it. Cells are trimmed
    /// of whitespace (`str::trim`). The feature names of a valid row are
    /// noted in `names` when given: always the same table for one schema,
    /// which notes each numeric column's name once. `features` is a buffer to fill (whatever it
    /// holds is dropped; its room is reused).
    pub fn example(
        &mut self,
        record: &ByteRecord,
        hasher: &FeatureHasher,
        space: &LabelSpace,
        names: Option<&mut FeatureNames>,
        mut features: Vec<Feature>,
    ) -> Result<Example, String> {
        if record.len() != self.width() {
            return Err(format!(
                "{} fields where the header has {}",
                record.len(),
                self.width()
            ));
        }
        let label = text(trim(record.get(self.label).unwrap_or(b"")), self.label)?;
        let target = space
            .target(&parse_label(label))
            .map_err(|e| format!("label {label:?}: {e}"))?;
        features.clear();
        features.reserve(self.columns.len());
        for (c, cell) in self.cells(record) {
            match fast_float2::parse::<f64, _>(cell) {
                Ok(x) if x.is_finite() => features.push(Feature {
                    index: c.numeric,
                    value: x,
                    numeric: true,
                }),
                Ok(_) => {
                    return Err(format!(
                        "column {}: {:?} is not finite",
                        c.position + 1,
                        String::from_utf8_lossy(cell)
                    ));
                }
                Err(_) => features.push(Feature {
                    index: hasher.categorical_in(c.name_hash, text(cell, c.position)?),
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

    /// The non-empty feature cells of a row of the right width, trimmed,
    /// with their columns, in file order.
    fn cells<'r>(&self, record: &'r ByteRecord) -> impl Iterator<Item = (&Column, &'r [u8])> {
        let label = self.label;
        record
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != label)
            .zip(&self.columns)
            .map(|((_, cell), c)| (c, trim(cell)))
            .filter(|(_, cell)| !cell.is_empty())
    }

    /// Notes the names of a valid row's features (one per non-empty cell,
    /// in column order): a categorical one per row, a numeric one per
    /// column.
    fn note_names(
        &mut self,
        record: &ByteRecord,
        features: &[Feature],
        hasher: &FeatureHasher,
        names: &mut FeatureNames,
    ) {
        // The usual row once every column was seen as a number: nothing new.
        if self.columns.iter().all(|c| c.noted) && features.iter().all(|f| f.numeric) {
            return;
        }
        let mut first_numeric = Vec::new();
        for ((c, cell), f) in self.cells(record).zip(features) {
            if f.numeric {
                if !c.noted {
                    names.note(c.name_hash, f.index, NameKind::Numeric, || c.name.clone());
                    first_numeric.push(c.position);
                }
            } else if let Ok(cell) = std::str::from_utf8(cell) {
                let key = FeatureHasher::categorical_key(c.name_hash, cell);
                names.note(key, hasher.row_of(key), NameKind::Categorical, || {
                    format!("{}={cell}", c.name)
                });
            }
        }
        for c in &mut self.columns {
            c.noted |= first_numeric.contains(&c.position);
        }
    }
}

/// A cell without the whitespace around it, as `str::trim` removes it: a
/// byte scan for ASCII whitespace, and Unicode whitespace (a no-break
/// space from a spreadsheet export, a vertical tab) when an edge byte
/// could be one.
fn trim(cell: &[u8]) -> &[u8] {
    let cell = cell.trim_ascii();
    let unusual = |b: &u8| *b >= 0x80 || *b == 0x0b;
    if (cell.first().is_some_and(unusual) || cell.last().is_some_and(unusual))
        && let Ok(text) = std::str::from_utf8(cell)
    {
        return text.trim().as_bytes();
    }
    cell
}

/// A cell as text; `Err` names its column (1-based) when it is not UTF-8.
fn text(cell: &[u8], position: usize) -> Result<&str, String> {
    std::str::from_utf8(cell).map_err(|_| format!("column {}: not valid UTF-8", position + 1))
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

    /// A binary label space and the schema of `price,label,colour,gap`.
    fn fixture() -> (FeatureHasher, LabelSpace, StringRecord, CsvSchema) {
        let hasher = FeatureHasher::new(18);
        let space = LabelSpace::new(TaskKind::Binary, vec![]).unwrap();
        let header = StringRecord::from(vec!["price", "label", "colour", "gap"]);
        let schema = CsvSchema::new(&header, "label", &hasher).unwrap();
        (hasher, space, header, schema)
    }

    #[test]
    fn rows_hash_exactly_as_the_json_form_does() {
        let (hasher, space, header, mut schema) = fixture();
        let row = ByteRecord::from(vec![" 0.5", "1 ", "red", ""]);
        let e = schema
            .example(&row, &hasher, &space, None, Vec::new())
            .unwrap();
        let raw: RawFeatures = serde_json::from_str(r#"{"price": 0.5, "colour": "red"}"#).unwrap();
        assert_eq!(e.features, hasher.hash(&raw).unwrap());
        assert_eq!(e.target, crate::learn::Target::Class(1));

        let mut bad = |cells: Vec<&str>| {
            schema.example(&ByteRecord::from(cells), &hasher, &space, None, Vec::new())
        };
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
        // Numbers are read from the bytes; a text cell must be UTF-8.
        let latin1 = ByteRecord::from(vec![&b"0.5"[..], b"1", b"caf\xe9", b""]);
        let err = schema
            .example(&latin1, &hasher, &space, None, Vec::new())
            .unwrap_err();
        assert!(err.contains("column 3: not valid UTF-8"), "{err}");
        // Whitespace around a cell is not part of it, Unicode included (a
        // no-break space from a spreadsheet export).
        let padded = ByteRecord::from(vec!["0.5\u{a0}", "\u{a0}1\u{3000}", "\u{b}red ", ""]);
        let trimmed = schema
            .example(&padded, &hasher, &space, None, Vec::new())
            .unwrap();
        assert_eq!(trimmed, e);
        // A reused buffer holds exactly this row's features.
        let reused = vec![
            Feature {
                index: 9,
                value: 9.0,
                numeric: true
            };
            5
        ];
        let again = schema.example(&row, &hasher, &space, None, reused).unwrap();
        assert_eq!(again.features, e.features);
        let no_label = CsvSchema::new(&header, "y", &hasher).unwrap_err();
        assert!(no_label.contains("--label"), "{no_label}");
    }

    #[test]
    fn names_are_noted_as_the_json_form_notes_them_and_only_for_valid_rows() {
        let (hasher, space, header, mut schema) = fixture();
        let mut names = FeatureNames::default();
        let row = ByteRecord::from(vec![" 0.5", "1", " red ", ""]);
        schema
            .example(&row, &hasher, &space, Some(&mut names), Vec::new())
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
        let bad = ByteRecord::from(vec!["inf", "1", "blue", ""]);
        assert!(
            schema
                .example(&bad, &hasher, &space, Some(&mut names), Vec::new())
                .is_err()
        );
        assert_eq!(names, json);

        // A column first seen empty, or as a category, is noted once it
        // holds a number; a category seen after the numbers are known too.
        let mut later = FeatureNames::default();
        let mut schema = CsvSchema::new(&header, "label", &hasher).unwrap();
        for cells in [
            vec!["", "1", "red", ""],
            vec!["cheap", "0", "", ""],
            vec!["0.5", "1", "", "3"],
            vec!["0.5", "1", "blue", "3"],
        ] {
            schema
                .example(
                    &ByteRecord::from(cells),
                    &hasher,
                    &space,
                    Some(&mut later),
                    Vec::new(),
                )
                .unwrap();
        }
        let known: Vec<&str> = later.iter().map(|(_, name, _)| name).collect();
        for name in ["colour=red", "price=cheap", "price", "gap", "colour=blue"] {
            assert!(known.contains(&name), "{name} in {known:?}");
        }
    }
}
