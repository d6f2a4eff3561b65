//! What the monitor shows operators: rolling quality of the live and
//! last-good versions and of each source (bounded by `max_sources`).

use super::*;

/// Rolling quality of one version (or one source) as users see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Quality {
    pub examples: u64,
    #[serde(flatten)]
    pub figures: Figures,
}

impl Quality {
    pub fn of(s: &Scores, task: TaskKind) -> Self {
        Self {
            examples: s.n,
            figures: s.figures(task),
        }
    }

    /// The figures by name, for metrics.
    pub fn figures(&self) -> Vec<(&'static str, f64)> {
        self.figures.named()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SourceReport {
    pub source: String,
    /// Labelled examples from it since start-up.
    pub examples: u64,
    /// Live quality on its last `window` examples.
    pub live: Quality,
    pub blamed: bool,
}

/// What the monitor shows operators (model info, metrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MonitorReport {
    pub enabled: bool,
    pub last_good_version: Option<u64>,
    /// Being scored for promotion.
    pub candidate_version: Option<u64>,
    /// Rolling quality over the last `window` trusted labelled examples
    /// (every example when no source is trusted): the live versions, and
    /// last-good on the same examples.
    pub live: Quality,
    pub baseline: Quality,
    pub sources: Vec<SourceReport>,
    pub blamed_sources: Vec<String>,
    /// Labelled examples left before another rollback may happen.
    pub cooldown_left: u64,
    /// Windows promotion has waited because last-good scores far below
    /// what earned it (the data changed; see `Monitor::settled`).
    pub unsettled_windows: u64,
    /// The replay buffer's size and evictions (metrics; not in model info).
    #[serde(skip)]
    pub replay: ReplayUsage,
}

/// Two consecutive blocks of scores: the last complete one and the one
/// filling. Reports show the complete one (the filling one at first).
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub(super) struct Rolling {
    pub(super) current: Scores,
    pub(super) previous: Scores,
}

impl Rolling {
    /// Adds one; returns true when a block completed.
    pub(super) fn add(&mut self, s: Scored, block: u64) -> bool {
        self.current.add_scored(s);
        if self.current.n >= block {
            self.previous = std::mem::take(&mut self.current);
            true
        } else {
            false
        }
    }

    pub(super) fn shown(&self) -> &Scores {
        if self.previous.n > 0 {
            &self.previous
        } else {
            &self.current
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct SourceTable {
    pub(super) index: HashMap<Arc<str>, usize>,
    pub(super) rows: Vec<(Arc<str>, Rolling, u64)>,
    /// The last source looked up (examples of a batch share theirs).
    pub(super) last: Option<(Option<Arc<str>>, usize)>,
}

impl SourceTable {
    pub(super) fn add(&mut self, source: Option<&Arc<str>>, s: Scored, block: u64, max: usize) {
        let cached = self.last.as_ref().and_then(|(src, i)| {
            let same = match (src, source) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            same.then_some(*i)
        });
        let i = match cached {
            Some(i) => i,
            None => {
                let i = self.slot(source, max);
                self.last = Some((source.cloned(), i));
                i
            }
        };
        let row = &mut self.rows[i];
        row.1.add(s, block);
        row.2 += 1;
    }

    /// The row of `source`, made if there is room (else `other`).
    pub(super) fn slot(&mut self, source: Option<&Arc<str>>, max: usize) -> usize {
        let name = source.map_or(UNKNOWN_SOURCE, |s| s.as_ref());
        match self.index.get(name) {
            Some(&i) => i,
            None => {
                let key: Arc<str> = if self.rows.len() < max {
                    source.cloned().unwrap_or_else(|| UNKNOWN_SOURCE.into())
                } else {
                    OTHER_SOURCE.into()
                };
                match self.index.get(&key) {
                    Some(&i) => i,
                    None => {
                        self.rows.push((key.clone(), Rolling::default(), 0));
                        self.index.insert(key, self.rows.len() - 1);
                        self.rows.len() - 1
                    }
                }
            }
        }
    }
}
impl Monitor {
    pub fn report(&self) -> MonitorReport {
        MonitorReport {
            enabled: true,
            last_good_version: Some(self.last_good.version),
            candidate_version: self.candidate.as_ref().map(|c| c.checkpoint.version),
            live: Quality::of(self.rolling_live.shown(), self.task),
            baseline: Quality::of(self.rolling_base.shown(), self.task),
            sources: self
                .sources
                .rows
                .iter()
                .map(|(name, rolling, examples)| SourceReport {
                    source: name.to_string(),
                    examples: *examples,
                    live: Quality::of(rolling.shown(), self.task),
                    blamed: self.blamed.contains(name.as_ref()),
                })
                .collect(),
            blamed_sources: self.blamed.iter().cloned().collect(),
            cooldown_left: self.cooldown_left,
            unsettled_windows: self.unsettled,
            replay: self.buffer.usage(),
        }
    }
}
