//! Which examples of an archived feedback log were never learned for good:
//! those the ingestion guard quarantined (or took out when their source
//! was blamed) and an operator did not release. `eddy train --data <log
//! dir>` skips them, so retraining from a log learns what the server
//! learned, not what it kept away.
//!
//! The log says it in its own records: a `Quarantine` step lists the
//! positions and reasons decided in the step before it, and `Release` /
//! `Drop` steps carry the operator's selection. They are applied in log
//! order; a selection by source needs the sources of the quarantined
//! examples, read in a second pass only when some selection names one.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::persist::wal::{LogError, read_dir};
use crate::serving::guard::{Reason, Selector};
use crate::serving::log_record::{self, Record};
use crate::serving::trainer::Step;

/// What the guard's records say about the log's examples.
enum Decision {
    Quarantined(Vec<(u64, Reason)>),
    Released(Selector),
}

/// The positions in `dir`'s log that were quarantined and not released.
/// Records that cannot be read are passed over here (the reader that
/// yields the examples reports them).
pub fn kept_out(dir: &Path) -> Result<HashSet<u64>, LogError> {
    let mut decisions = Vec::new();
    for record in read_dir(dir)? {
        let Ok((position, bytes)) = record else {
            continue;
        };
        if let Ok(Record::Step(step)) = log_record::decode(&bytes, position) {
            match step.step {
                Step::Quarantine { entries } => decisions.push(Decision::Quarantined(entries)),
                Step::Release { selector } => decisions.push(Decision::Released(selector)),
                _ => {}
            }
        }
    }
    let by_source = decisions
        .iter()
        .any(|d| matches!(d, Decision::Released(s) if s.source.is_some()));
    let mut sources: HashMap<u64, Option<Arc<str>>> = HashMap::new();
    if by_source {
        let wanted: HashSet<u64> = decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Quarantined(entries) => Some(entries.iter().map(|(p, _)| *p)),
                Decision::Released(_) => None,
            })
            .flatten()
            .collect();
        for record in read_dir(dir)? {
            let Ok((position, bytes)) = record else {
                continue;
            };
            if wanted.contains(&position)
                && let Ok(Record::Feedback(fb, _)) = log_record::decode(&bytes, position)
            {
                sources.insert(position, fb.source.clone());
            }
        }
    }
    let mut held: HashMap<u64, Reason> = HashMap::new();
    for decision in decisions {
        match decision {
            Decision::Quarantined(entries) => held.extend(entries),
            Decision::Released(selector) => {
                held.retain(|position, reason| {
                    let matches = selector
                        .ids
                        .as_ref()
                        .is_none_or(|ids| ids.binary_search(position).is_ok())
                        && selector.reason.is_none_or(|r| r == *reason)
                        && selector.source.as_deref().is_none_or(|s| {
                            sources.get(position).and_then(|s| s.as_deref()) == Some(s)
                        });
                    !matches
                });
            }
        }
    }
    Ok(held.into_keys().collect())
}
