//! Models added at runtime (`PUT /admin/models/{model}`): their tables are
//! kept in `<storage.dir>/.models.json` (a JSON array of `[[models]]`
//! tables, written atomically), read back at start-up after the
//! configuration file, and shown by `eddy config` marked
//! `added_at_runtime = true`. A model table given over HTTP is read and
//! checked exactly as the file's are, with errors naming the key
//! (`models[NAME].training.minibatch_size`).

use std::path::PathBuf;

use super::{Config, Error, ModelConfig};

/// The file under `storage.dir`.
pub const RUNTIME_MODELS_FILE: &str = ".models.json";

impl Config {
    /// Where the models added at runtime are kept.
    pub fn runtime_models_path(&self) -> PathBuf {
        self.storage.dir.join(RUNTIME_MODELS_FILE)
    }

    /// Adds the models kept in the storage directory (if any) after the
    /// file's, marked `added_at_runtime`, and checks the whole again. A
    /// name defined both ways is an error: the operator must remove one.
    pub fn with_runtime_models(mut self) -> Result<Self, Error> {
        let path = self.runtime_models_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self),
            Err(source) => return Err(Error::Read { path, source }),
        };
        let tables: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| Error::Invalid {
                key: path.display().to_string(),
                message: e.to_string(),
            })?;
        for mut table in tables {
            // The file says so itself; the HTTP body may not.
            if let Some(object) = table.as_object_mut() {
                object.remove("added_at_runtime");
            }
            let name = table
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_owned();
            if self.models.iter().any(|m| m.name == name) {
                return Err(Error::Invalid {
                    key: format!("models[{name}]"),
                    message: format!(
                        "defined in the configuration file and added at runtime ({}); remove one",
                        path.display()
                    ),
                });
            }
            let model = model_from_json(&name, table)?;
            self.models.push(model);
        }
        self.validate()?;
        Ok(self)
    }

    /// `self` with `model` added at runtime, checked as a whole.
    pub fn adding(&self, model: ModelConfig) -> Result<Config, Error> {
        let mut next = self.clone();
        next.models.push(model);
        next.validate()?;
        Ok(next)
    }

    /// The tables of the models added at runtime, as the file keeps them.
    pub fn runtime_models_json(&self) -> Vec<u8> {
        let added: Vec<&ModelConfig> = self.models.iter().filter(|m| m.added_at_runtime).collect();
        let mut out = serde_json::to_vec_pretty(&added).unwrap_or_else(|_| b"[]".to_vec());
        out.push(b'\n');
        out
    }
}

/// The models of `config` added at runtime as commented TOML (what
/// `eddy config` prints after the configuration): empty without any.
pub fn runtime_models_comment(config: &Config) -> Result<String, toml::ser::Error> {
    #[derive(serde::Serialize)]
    struct Models<'a> {
        models: Vec<&'a ModelConfig>,
    }
    let models: Vec<&ModelConfig> = config
        .models
        .iter()
        .filter(|m| m.added_at_runtime)
        .collect();
    if models.is_empty() {
        return Ok(String::new());
    }
    let text = toml::to_string(&Models { models })?;
    let mut out = format!(
        "\n# Models added at runtime (PUT /admin/models/{{model}}), kept in {}:\n",
        config.runtime_models_path().display()
    );
    for line in text.lines() {
        out.push_str(if line.is_empty() { "#" } else { "# " });
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// Reads one model's table from JSON (`name` from the route, which the
/// table may repeat but not contradict), with the file's defaults and
/// checks of types; errors name the key under `models[NAME]`.
pub fn model_from_json(name: &str, mut table: serde_json::Value) -> Result<ModelConfig, Error> {
    let key = |path: &str| {
        format!(
            "models[{name}]{}",
            if path == "." {
                String::new()
            } else {
                format!(".{path}")
            }
        )
    };
    // What the file can hold (TOML integers are i64): the table must be
    // one an operator could move into the configuration file.
    if let Some(path) = too_large(&table, String::new()) {
        return Err(Error::Invalid {
            key: key(&path),
            message: format!("at most {} (what the configuration file holds)", i64::MAX),
        });
    }
    let Some(object) = table.as_object_mut() else {
        return Err(Error::Invalid {
            key: key("."),
            message: "must be a JSON object of the keys a [[models]] table holds".into(),
        });
    };
    match object.get("name") {
        None => {
            object.insert("name".into(), name.into());
        }
        Some(given) if given.as_str() == Some(name) => {}
        Some(_) => {
            return Err(Error::Invalid {
                key: key("name"),
                message: format!("must be the name in the path ({name}) when given"),
            });
        }
    }
    if object.contains_key("added_at_runtime") {
        return Err(Error::Invalid {
            key: key("added_at_runtime"),
            message: "is set by eddy, not given".into(),
        });
    }
    let mut model: ModelConfig = serde_path_to_error::deserialize(table).map_err(|e| {
        let path = e.path().to_string();
        Error::Invalid {
            key: key(&path),
            message: e.into_inner().to_string(),
        }
    })?;
    model.added_at_runtime = true;
    Ok(model)
}

/// Where deleted models' directories go, under `storage.dir`.
pub const ARCHIVE_DIR: &str = ".deleted";

/// The path of the first integer above `i64::MAX` in `value`.
fn too_large(value: &serde_json::Value, at: String) -> Option<String> {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_owned()
        } else {
            format!("{at}.{k}")
        }
    };
    match value {
        serde_json::Value::Number(n) => n
            .as_u64()
            .is_some_and(|n| n > i64::MAX as u64)
            .then_some(at),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| too_large(v, format!("{at}[{i}]"))),
        serde_json::Value::Object(fields) => fields.iter().find_map(|(k, v)| too_large(v, join(k))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_from_json_is_read_and_checked_as_the_file_is() {
        let base = Config::builtin().unwrap();
        let m =
            model_from_json("t1", serde_json::json!({"task": "binary", "hash_bits": 12})).unwrap();
        assert!(m.added_at_runtime);
        assert_eq!(
            (
                m.name.as_str(),
                m.hash_bits,
                m.training.minibatch_size.get()
            ),
            ("t1", 12, 32)
        );
        let added = base.adding(m).unwrap();
        assert_eq!(added.models.len(), 2);
        // Errors name the key.
        let e = model_from_json(
            "t1",
            serde_json::json!({"task": "binary", "training": {"minibatch_size": "x"}}),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("models[t1].training.minibatch_size"),
            "{e}"
        );
        let e =
            model_from_json("t1", serde_json::json!({"task": "binary", "nope": 1})).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e =
            model_from_json("t1", serde_json::json!({"task": "binary", "name": "t2"})).unwrap_err();
        assert!(e.to_string().starts_with("models[t1].name"), "{e}");
        let e = model_from_json(
            "t1",
            serde_json::json!({"task": "binary", "mlp": {"seed": u64::MAX}}),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("models[t1].mlp.seed"), "{e}");
        let e = model_from_json("t1", serde_json::json!([1])).unwrap_err();
        assert!(e.to_string().starts_with("models[t1]"), "{e}");
        let bad =
            model_from_json("t1", serde_json::json!({"task": "binary", "hash_bits": 40})).unwrap();
        let e = base.adding(bad).unwrap_err();
        assert!(e.to_string().starts_with("models[t1].hash_bits"), "{e}");
        let classes: Vec<String> = (0..40_000).map(|i| format!("c{i}")).collect();
        let wide = model_from_json(
            "t1",
            serde_json::json!({"task": "multiclass", "classes": classes}),
        )
        .unwrap();
        let e = base.adding(wide).unwrap_err();
        assert!(e.to_string().starts_with("models[t1].classes"), "{e}");
        let dots = model_from_json("..", serde_json::json!({"task": "binary"})).unwrap();
        assert!(
            base.adding(dots)
                .unwrap_err()
                .to_string()
                .contains("must not start with '.'")
        );
    }

    #[test]
    fn runtime_models_come_back_marked_and_may_not_shadow_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::builtin().unwrap();
        config.storage.dir = tmp.path().to_owned();
        let m = model_from_json("t1", serde_json::json!({"task": "regression"})).unwrap();
        let added = config.adding(m).unwrap();
        std::fs::write(added.runtime_models_path(), added.runtime_models_json()).unwrap();
        let back = config.clone().with_runtime_models().unwrap();
        assert_eq!(back.models.len(), 2);
        assert!(back.models[1].added_at_runtime && !back.models[0].added_at_runtime);
        let printed = runtime_models_comment(&back).unwrap();
        assert!(
            printed.contains("# name = \"t1\"") && printed.contains("# added_at_runtime = true"),
            "{printed}"
        );
        assert!(
            printed.lines().all(|l| l.is_empty() || l.starts_with('#')),
            "{printed}"
        );
        assert!(runtime_models_comment(&config).unwrap().is_empty());
        // The file's model of the same name wins nothing: start-up stops.
        let demo = model_from_json("demo", serde_json::json!({"task": "binary"})).unwrap();
        let mut twice = config.clone();
        twice.models.push(demo);
        std::fs::write(config.runtime_models_path(), twice.runtime_models_json()).unwrap();
        let e = config.with_runtime_models().unwrap_err();
        assert!(e.to_string().contains("models[demo]"), "{e}");
    }
}
