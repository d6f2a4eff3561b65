//! The `train`, `eval` and `snapshot` commands: configuration in, figures
//! out (text on a terminal, or one JSON object with `--json`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::cli::{DataArgs, EvalArgs, ExportFormat, SnapshotCommand, TrainArgs};
use crate::config::{Config, ModelConfig};
use crate::data::{Input, ReadOptions};
use crate::learn::{FeatureNames, Learner};
use crate::persist::DirLock;

use super::progress::Progress;
use super::{EvalOptions, Report, TrainOptions, evaluate, snapshot, train};

/// The bytes of one pass over `inputs`, if every one is a file.
fn total_bytes(inputs: &[Input]) -> Option<u64> {
    inputs.iter().map(Input::size).sum()
}

fn model_and_inputs(
    args: &DataArgs,
) -> anyhow::Result<(Config, ModelConfig, Vec<Input>, ReadOptions)> {
    let config = Config::load(args.config.as_deref(), std::env::vars())?;
    let model = config
        .models
        .iter()
        .find(|m| m.name == args.model)
        .cloned()
        .with_context(|| {
            let names: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
            format!(
                "no model named `{}` in the configuration (models: {names:?})",
                args.model
            )
        })?;
    let inputs: Vec<Input> = args.data.iter().map(|p| Input::parse(p)).collect();
    let read = ReadOptions {
        format: args.format,
        label: args.label.clone(),
        skip_bad_rows: args.skip_bad_rows,
        ..ReadOptions::default()
    };
    Ok((config, model, inputs, read))
}

fn fresh(model: &ModelConfig) -> anyhow::Result<Learner> {
    let space = Arc::new(model.label_space()?);
    Ok(Learner::new(model.fresh_params(space), model.optimizer))
}

pub fn train_command(args: TrainArgs) -> anyhow::Result<()> {
    let (config, model, inputs, read) = model_and_inputs(&args.data)?;
    let reads_twice = args.epochs > 1 || args.holdout > 0.0;
    if reads_twice && inputs.contains(&Input::Stdin) {
        anyhow::bail!("stdin can be read once: --epochs above 1 and --holdout need files");
    }
    if !(0.0..1.0).contains(&args.holdout) {
        anyhow::bail!("--holdout must lie in [0, 1)");
    }
    let (mut learner, mut names, origin) = match &args.init {
        Some(path) => {
            let start = snapshot::load_for(&model, path)?;
            (
                start.learner,
                Arc::unwrap_or_clone(start.names),
                Some(start.origin),
            )
        }
        None => (fresh(&model)?, FeatureNames::default(), None),
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| config.storage.model_dir(&model.name));
    // Taken before training, not just around the write: a directory a
    // server (or another `eddy train`) owns should fail the command at
    // once, not after the whole training run.
    let lock = DirLock::acquire(&out, "eddy train --out")?;
    let options = TrainOptions {
        epochs: args.epochs.max(1),
        shuffle_buffer: args.shuffle_buffer,
        shuffle_bytes: args.shuffle_buffer_mb.saturating_mul(1 << 20),
        holdout: args.holdout,
        seed: args.seed,
        read,
    };
    let mut progress = Progress::new(total_bytes(&inputs));
    let mut current = 0;
    let trained = train(&mut learner, &inputs, &options, |epoch, rows, bytes| {
        if epoch != current {
            current = epoch;
            progress.restart();
        }
        progress.tick(&format!("epoch {}", epoch + 1), rows, bytes);
    });
    progress.done();
    let mut trained = trained?;
    let quality: BTreeMap<String, f64> = trained
        .holdout
        .iter()
        .flat_map(Report::named)
        .map(|(name, v)| (format!("holdout_{name}"), v))
        .collect();
    names.merge(std::mem::take(&mut trained.read.names));
    let writing = std::time::Instant::now();
    let file = snapshot::write_trained(
        &config.storage,
        &model,
        &learner,
        &lock,
        snapshot::Provenance {
            examples_trained: trained.examples,
            quality,
            names,
            started_from: origin.and_then(|o| o.version_in(&out)),
        },
    )?;
    let write_seconds = writing.elapsed().as_secs_f64();
    drop(lock);
    for bad in &trained.read.bad {
        eprintln!("skipped {}:{}: {}", bad.file, bad.line, bad.message);
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "trained": trained,
                "snapshot": file,
                "snapshot_write_seconds": write_seconds,
            })
        );
    } else {
        println!(
            "trained {} examples ({} rows x {} epochs) in {:.2} s, {:.0} rows/s (learning alone {:.2} s, {:.0} rows/s); {} bad rows skipped",
            trained.examples,
            trained.rows,
            trained.epochs,
            trained.seconds,
            trained.rows_per_second,
            trained.learning_seconds,
            trained.learning_rows_per_second,
            trained.read.bad_rows
        );
        if let Some(h) = &trained.holdout {
            println!("holdout:\n{}", h.text());
        }
        println!(
            "snapshot v{} written to {} in {:.2} s",
            file.version,
            file.path.display(),
            write_seconds
        );
    }
    Ok(())
}

pub fn eval_command(args: EvalArgs) -> anyhow::Result<()> {
    let (config, model, inputs, read) = model_and_inputs(&args.data)?;
    let source: PathBuf = args
        .snapshot
        .clone()
        .unwrap_or_else(|| config.storage.model_dir(&model.name));
    let mut learner = match snapshot::load_for(&model, &source) {
        Ok(start) => start.learner,
        Err(e) if args.snapshot.is_none() && args.prequential => {
            tracing::debug!(error = %e, "no snapshot: prequential from a fresh model");
            fresh(&model)?
        }
        Err(e) => return Err(e),
    };
    let options = EvalOptions {
        prequential: args.prequential,
        every: args.every,
        read,
    };
    let mut progress = Progress::new(total_bytes(&inputs));
    let evaluation = if args.monitor {
        super::evaluate_monitored(&model, learner, &inputs, &options, |rows, bytes| {
            progress.tick("eval", rows, bytes)
        })
    } else {
        evaluate(&mut learner, &inputs, &options, |rows, bytes| {
            progress.tick("eval", rows, bytes)
        })
    };
    progress.done();
    let evaluation = evaluation?;
    if let Some(path) = &args.plot {
        super::plot::rolling(path, &evaluation, options.every, args.prequential)?;
        eprintln!("chart written to {}", path.display());
    }
    for bad in &evaluation.read.bad {
        eprintln!("skipped {}:{}: {}", bad.file, bad.line, bad.message);
    }
    if args.json {
        let mut out = serde_json::to_value(&evaluation.report)?;
        if let Some(o) = out.as_object_mut()
            && !evaluation.markers.is_empty()
        {
            o.insert("markers".into(), serde_json::to_value(&evaluation.markers)?);
        }
        println!("{out}");
    } else {
        for m in &evaluation.markers {
            println!("row {:>10}: {:?}: {}", m.row, m.kind, m.reason);
        }
        print!("{}", evaluation.report.text());
        if !evaluation.rolling.is_empty() {
            println!(
                "rolling {} (every {} rows):",
                evaluation.rolling_metric, options.every
            );
            for p in &evaluation.rolling {
                println!("  {:>10} {:.4}", p.row, p.value);
            }
        }
    }
    Ok(())
}

pub fn snapshot_command(command: SnapshotCommand) -> anyhow::Result<()> {
    let value = match command {
        SnapshotCommand::Inspect { path } => snapshot::inspect(&path)?,
        SnapshotCommand::Export {
            path,
            format: ExportFormat::Json,
        } => snapshot::export_json(&path)?,
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}
