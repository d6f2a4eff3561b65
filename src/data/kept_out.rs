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

use crate::learn::guard::labels::UNKNOWN_SOURCE;
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
                            sources
                                .get(position)
                                .map(|s| s.as_deref().unwrap_or(UNKNOWN_SOURCE))
                                == Some(s)
                        });
                    !matches
                });
            }
        }
    }
    Ok(held.into_keys().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{Feature, FeatureVec, Target};
    use crate::persist::wal::{Append, FeedbackLog, Fsync, LocalLog, LogOptions, RecordBatch};
    use crate::serving::queue::Feedback;
    use crate::serving::trainer::StepRecord;

    fn example(source: &str) -> Vec<u8> {
        let x = FeatureVec {
            features: vec![Feature {
                index: 1,
                value: 2.0,
                numeric: true,
            }],
        };
        log_record::encode(
            &Feedback::labelled(x, Target::Class(0), Some(source.into())),
            None,
        )
    }

    fn step(step: Step) -> Vec<u8> {
        log_record::encode_step(&StepRecord {
            step,
            at_us: 0,
            versions: Vec::new(),
        })
    }

    /// Positions 0-5 are examples (sources a, b, a, b, a, b); the guard
    /// quarantines 1, 2, 3 and 4; an operator releases b's, then drops 2.
    #[test]
    fn quarantined_examples_not_released_are_kept_out() {
        let dir = tempfile::tempdir().expect("dir");
        let options = LogOptions {
            fsync: Fsync::Never,
            fsync_interval: std::time::Duration::from_millis(100),
            segment_bytes: 1 << 20,
            repair: false,
            archive_dir: None,
        };
        let (log, _) = LocalLog::open(dir.path(), options, 0).expect("opens");
        let mut records: Vec<Vec<u8>> = (0..6).map(|i| example(["a", "b"][i % 2])).collect();
        records.push(step(Step::Quarantine {
            entries: vec![(1, Reason::Outlier), (2, Reason::Label), (3, Reason::Label)],
        }));
        records.push(step(Step::Quarantine {
            entries: vec![(4, Reason::Influence)],
        }));
        records.push(step(Step::Release {
            selector: Selector {
                source: Some("b".into()),
                ..Selector::default()
            },
        }));
        records.push(step(Step::Drop {
            selector: Selector {
                ids: Some(vec![2]),
                ..Selector::default()
            },
        }));
        let mut batch = RecordBatch::of(&records);
        log.append(Append::new(&mut batch), &mut |_| {})
            .expect("appends");
        drop(log);
        let mut out: Vec<u64> = kept_out(dir.path()).expect("reads").into_iter().collect();
        out.sort_unstable();
        assert_eq!(
            out,
            [2, 4],
            "1 and 3 are b's, released; 2 dropped, 4 never released"
        );
    }
}
