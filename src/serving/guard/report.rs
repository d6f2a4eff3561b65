//! `GuardReport`: the guard's decisions as `GET /v1/models/{model}` shows
//! them beside the monitor's, and as the metrics read them at scrape time.

use serde::Serialize;

use super::{Guard, Reason};

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct GuardReport {
    pub enabled: bool,
    /// Examples in quarantine now, their bytes, and how many the bounds
    /// pushed out since the model began.
    pub quarantined: usize,
    pub quarantine_bytes: usize,
    pub quarantine_evicted: u64,
    /// Examples quarantined since the model began, by reason and source.
    pub quarantined_total: Vec<QuarantineCount>,
    pub released_total: u64,
    pub dropped_total: u64,
    /// Examples waiting for their source's share, and all that ever waited.
    pub waiting: usize,
    pub waited_total: u64,
    /// Sources that sent any of the last `influence.active_examples`.
    pub active_sources: usize,
    /// Sources label sanity flags now.
    pub flagged_sources: Vec<String>,
    /// Per source: label sanity's rates and the share of what is learned.
    pub sources: Vec<SourceGuard>,
    /// Numeric features the outlier detector tracks.
    pub outlier_features: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QuarantineCount {
    pub reason: Reason,
    pub source: String,
    pub examples: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SourceGuard {
    pub source: String,
    /// Its share of the last `influence.active_examples` learned.
    pub share: Option<f64>,
    pub flagged: bool,
    pub recent_contradiction_rate: Option<f64>,
    pub normal_contradiction_rate: Option<f64>,
}

impl GuardReport {
    pub(super) fn of(guard: &Guard) -> Self {
        let mut sources: Vec<SourceGuard> = guard
            .labels
            .report()
            .into_iter()
            .map(|s| SourceGuard {
                share: None,
                flagged: s.flagged,
                recent_contradiction_rate: s.recent_rate,
                normal_contradiction_rate: s.normal_rate,
                source: s.source,
            })
            .collect();
        for (source, share) in guard.influence.shares() {
            let name = guard.totals.sources.name(source).to_owned();
            match sources.iter_mut().find(|s| s.source == name) {
                Some(s) => s.share = Some(share),
                None => sources.push(SourceGuard {
                    source: name,
                    share: Some(share),
                    flagged: false,
                    recent_contradiction_rate: None,
                    normal_contradiction_rate: None,
                }),
            }
        }
        sources.sort_by(|a, b| a.source.cmp(&b.source));
        GuardReport {
            enabled: true,
            quarantined: guard.quarantine.len(),
            quarantine_bytes: guard.quarantine.bytes(),
            quarantine_evicted: guard.quarantine.evicted(),
            quarantined_total: guard
                .totals
                .quarantined
                .iter()
                .map(|((reason, source), n)| QuarantineCount {
                    reason: *reason,
                    source: source.clone(),
                    examples: *n,
                })
                .collect(),
            released_total: guard.totals.released,
            dropped_total: guard.totals.dropped,
            waiting: guard.influence.waiting(),
            waited_total: guard.totals.waited,
            active_sources: guard.influence.active(),
            flagged_sources: sources
                .iter()
                .filter(|s| s.flagged)
                .map(|s| s.source.clone())
                .collect(),
            sources,
            outlier_features: guard.outliers.tracked(),
        }
    }
}
