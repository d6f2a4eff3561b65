//! The ingestion guard's trainer side: every example the trainer takes is
//! screened before the monitor scores it and the learner learns it, and
//! what fails a check goes to quarantine with the check's reason instead.
//!
//! In order, for each new example of a minibatch (log order):
//! 1. `schema`: the declared features were checked when the example was
//!    accepted (the names exist only there); a violation travels with it.
//! 2. `outlier`: its numeric features against what the model has learned
//!    (`learn::guard::OutlierDetector`, per-feature calibrated); only
//!    examples that are learned teach the detector.
//! 3. `label`: whether the live model contradicts its label with very high
//!    confidence, counted per source (`learn::guard::LabelSanity`); the
//!    examples of a flagged source are quarantined, its waiting ones too.
//! 4. `influence`: its source's share of what is learned (`influence`);
//!    the excess waits and, beyond the waiting line, is quarantined.
//!
//! Examples from sources the monitor blamed after a rollback are
//! quarantined too (reason `blamed`), so everything not learned is in one
//! place, and an operator's release after a readmission is one call.
//!
//! The guard is part of the trainer's deterministic state: it reads the
//! examples in log order, the scores they were given on acceptance and the
//! versions the trainer published, never a clock of its own or a random
//! number. Its decisions are logged after each step as a `Quarantine`
//! record (checked again on replay; read by `eddy train` over an archived
//! log to skip what was kept out), and release and drop are steps.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::GuardConfig;
use crate::learn::Scored;
use crate::learn::guard::labels::LabelSanityV1;
use crate::learn::guard::{Evidence, FlagChange, LabelSanity, Outlier, OutlierDetector};

use super::queue::Feedback;
use super::store::ModelVersion;

mod influence;
mod names;
mod quarantine;
mod report;

pub use influence::{Influence, SourceId};
pub use names::SourceNames;
pub use quarantine::{Held, Page, Quarantine, Selector};
pub use report::{GuardReport, QuarantineCount};

/// Longest detail kept with a quarantined example, in bytes.
const MAX_DETAIL_BYTES: usize = 256;

/// Why an example is in quarantine.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    Schema,
    Outlier,
    Label,
    Influence,
    Blamed,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Schema,
        Reason::Outlier,
        Reason::Label,
        Reason::Influence,
        Reason::Blamed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Schema => "schema",
            Reason::Outlier => "outlier",
            Reason::Label => "label",
            Reason::Influence => "influence",
            Reason::Blamed => "blamed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A change in the guard's judgement of a source, for the event log.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Label sanity flagged a source: its examples are quarantined.
    Flagged {
        evidence: Evidence,
        quarantined_waiting: usize,
    },
    /// Its rate came back: its examples are learned again.
    Cleared { evidence: Evidence },
    /// The quarantine was full: this many of its oldest examples went.
    Evicted { count: u64 },
}

/// The guard of one model.
pub struct Guard {
    config: GuardConfig,
    outliers: OutlierDetector,
    labels: LabelSanity,
    influence: Influence,
    quarantine: Quarantine,
    /// Decisions of the step being taken, in order: its `Quarantine`
    /// record.
    decided: Vec<(u64, Reason)>,
    notices: Vec<Notice>,
    totals: Totals,
}

/// Counts since the model began (kept in snapshots).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Quarantined, by reason and (bounded) source.
    pub quarantined: BTreeMap<(Reason, String), u64>,
    pub released: u64,
    pub dropped: u64,
    /// Examples that waited for their source's share.
    pub waited: u64,
    /// The names sources are counted under (at most `max_sources` of
    /// their own).
    pub sources: SourceNames,
}

/// What a snapshot keeps of a guard (`Guard::state`, `Guard::restore`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuardState {
    outliers: OutlierDetector,
    labels: LabelSanity,
    influence: Influence,
    /// Positions of the waiting examples (read back from the log).
    pub waiting: Vec<u64>,
    quarantine: Quarantine,
    totals: Totals,
    /// `fingerprint` of the configuration that made this state.
    pub config: u64,
}

/// Identifies a guard configuration: a state is only continued, and a log
/// only replayed exactly, under the configuration that made them.
pub fn fingerprint(config: &GuardConfig) -> u64 {
    let mut text = serde_json::to_vec(config).unwrap_or_default();
    // The detectors' rules are part of what made a state: a release that
    // changes them gets another fingerprint, so a log its predecessor
    // wrote is learned afresh rather than replayed against decisions the
    // new rules would not take.
    text.extend_from_slice(DETECTORS.as_bytes());
    let hash = blake3::hash(&text);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// The detectors' rules, for `fingerprint`: changed whenever a decision
/// the same examples would get changes.
const DETECTORS: &str = "detectors 2: label sanity by time blocks";

/// The first byte of an encoded `GuardState`: a later release that changes
/// the state bumps it and still reads this one (or starts fresh).
/// 2: label sanity keeps its period by blocks of arrival.
const STATE_FORMAT: u8 = 2;

/// `GuardState` as format 1 saved it: label sanity without its blocks.
#[derive(Serialize, Deserialize)]
struct GuardStateV1 {
    outliers: OutlierDetector,
    labels: LabelSanityV1,
    influence: Influence,
    waiting: Vec<u64>,
    quarantine: Quarantine,
    totals: Totals,
    config: u64,
}

impl From<GuardStateV1> for GuardState {
    fn from(v: GuardStateV1) -> Self {
        // Its fingerprint was taken without `DETECTORS`, so it never
        // matches now: the detectors start afresh, the quarantine, totals
        // and names are kept, and the log after it is learned afresh.
        GuardState {
            outliers: v.outliers,
            labels: v.labels.into(),
            influence: v.influence,
            waiting: v.waiting,
            quarantine: v.quarantine,
            totals: v.totals,
            config: v.config,
        }
    }
}

impl GuardState {
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = vec![STATE_FORMAT];
        out.extend(postcard::to_stdvec(self).map_err(|e| e.to_string())?);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes.split_first() {
            Some((&STATE_FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
            Some((1, rest)) => postcard::from_bytes::<GuardStateV1>(rest)
                .map(GuardState::from)
                .map_err(|e| e.to_string()),
            Some((other, _)) => Err(format!("guard state of format {other}, unknown here")),
            None => Err("empty guard state".into()),
        }
    }
}

impl Guard {
    pub fn new(config: &GuardConfig) -> Self {
        Self {
            outliers: OutlierDetector::new(&config.outliers),
            labels: LabelSanity::new(&config.labels, config.max_sources),
            influence: Influence::new(&config.influence),
            quarantine: Quarantine::new(&config.quarantine),
            config: config.clone(),
            decided: Vec::new(),
            notices: Vec::new(),
            totals: Totals::default(),
        }
    }

    /// A guard continuing `state` (its waiting examples come back through
    /// `restore_waiting`).
    ///
    /// Under the configuration that saved it the whole state comes back.
    /// Under another (`fingerprint` differs) the detectors and limits start
    /// afresh with the new settings, which they hold inside; the quarantine,
    /// the totals and the source names are kept. Replay is then not exact
    /// (see `app`), and the waiting examples are learned afresh.
    pub fn restore(config: &GuardConfig, state: GuardState) -> Self {
        let mut quarantine = state.quarantine;
        quarantine.reconfigure(&config.quarantine);
        let mut guard = Self::new(config);
        if state.config == fingerprint(config) {
            guard.outliers = state.outliers;
            guard.labels = state.labels;
            guard.influence = state.influence;
        }
        guard.quarantine = quarantine;
        guard.totals = state.totals;
        guard
    }

    pub fn restore_waiting(&mut self, fb: Feedback) {
        let id = self.source_id(&fb.source);
        self.influence.restore_waiting(id, fb);
    }

    pub fn state(&self) -> GuardState {
        GuardState {
            outliers: self.outliers.clone(),
            labels: self.labels.clone(),
            influence: self.influence.clone(),
            waiting: self.influence.waiting_positions(),
            quarantine: self.quarantine.clone(),
            totals: self.totals.clone(),
            config: fingerprint(&self.config),
        }
    }

    /// Screens a minibatch: on return `batch` holds what to learn now
    /// (waiting examples whose share allows them first, then the new ones
    /// that passed), and the rest is quarantined or waiting. `at_us` is the
    /// trainer's clock.
    pub fn screen(
        &mut self,
        batch: &mut Vec<Feedback>,
        live: &ModelVersion,
        at_us: u64,
        blamed: &dyn Fn(&str) -> bool,
    ) {
        let mut learn = Vec::with_capacity(batch.len());
        let (labels, sources) = (&self.labels, &self.totals.sources);
        let (released, flagged) = self
            .influence
            .release(|id| labels.is_flagged(Some(sources.name(id))));
        for fb in flagged {
            self.hold(
                fb,
                Reason::Label,
                "its source is flagged by label sanity".into(),
                at_us,
            );
        }
        learn.extend(released);
        for fb in batch.drain(..) {
            let id = self.source_id(&fb.source);
            self.influence.arrive(id);
            if let Some(source) = fb.source.as_deref().filter(|s| blamed(s)) {
                // Kept out before any detector learns from it.
                let detail = format!(
                    "its source {source:?} is blamed for a rollback (readmit it, then release these)"
                );
                self.hold(fb, Reason::Blamed, detail, at_us);
                continue;
            }
            if let Some(violation) = &fb.schema {
                let detail = violation.to_string();
                self.hold(fb, Reason::Schema, detail, at_us);
                continue;
            }
            if self.config.outliers.enabled
                && let Some(outlier) = self.outliers.judge(&fb.features)
            {
                let detail = outlier_detail(&outlier, self.config.outliers.threshold);
                self.hold(fb, Reason::Outlier, detail, at_us);
                continue;
            }
            if self.config.labels.enabled {
                let scored = live_score(&fb, live);
                let verdict = self
                    .labels
                    .observe(Some(self.totals.sources.name(id)), &scored);
                if let Some(change) = verdict.change {
                    self.note_label_change(change, id, at_us);
                }
                if verdict.flagged {
                    self.hold(
                        fb,
                        Reason::Label,
                        "its source is flagged by label sanity".into(),
                        at_us,
                    );
                    continue;
                }
            }
            if self.influence.allows(id) {
                self.influence.learned(id);
                learn.push(fb);
            } else {
                self.totals.waited += 1;
                for old in self.influence.wait(id, fb) {
                    let detail = format!(
                        "waited for its source's share (influence.max_share {}) beyond influence.wait_capacity ({})",
                        self.config.influence.max_share, self.config.influence.wait_capacity
                    );
                    self.hold(old, Reason::Influence, detail, at_us);
                }
            }
        }
        if self.config.outliers.enabled {
            for fb in &learn {
                self.outliers.learn(&fb.features);
            }
        }
        *batch = learn;
    }

    fn note_label_change(&mut self, change: FlagChange, source: SourceId, at_us: u64) {
        match change {
            FlagChange::Flagged(evidence) => {
                let waiting = self.influence.take_waiting(source);
                let quarantined_waiting = waiting.len();
                for fb in waiting {
                    self.hold(
                        fb,
                        Reason::Label,
                        "its source was flagged by label sanity while it waited for its share"
                            .into(),
                        at_us,
                    );
                }
                self.notices.push(Notice::Flagged {
                    evidence,
                    quarantined_waiting,
                });
            }
            FlagChange::Cleared(evidence) => self.notices.push(Notice::Cleared { evidence }),
        }
    }

    /// An operator's word that `source`'s labels are sound: label sanity
    /// stops flagging it (until its rate rises again). Whether it was
    /// flagged.
    pub fn clear_source(&mut self, source: &str) -> bool {
        self.labels.clear(Some(source))
    }

    /// Quarantines `fb` (a blamed source's example, or one a check failed).
    pub fn hold(&mut self, fb: Feedback, reason: Reason, mut detail: String, at_us: u64) {
        // Details quote client values (a schema violation names the
        // value): bounded, so one request cannot fill the quarantine.
        if detail.len() > MAX_DETAIL_BYTES {
            let mut end = MAX_DETAIL_BYTES;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
            detail.push('…');
        }
        let id = self.source_id(&fb.source);
        let source = self.totals.sources.name(id).to_owned();
        *self.totals.quarantined.entry((reason, source)).or_default() += 1;
        self.decided.push((fb.position, reason));
        let before = self.quarantine.evicted();
        self.quarantine.hold(Held {
            fb,
            reason,
            detail,
            at_us,
        });
        // One event when the quarantine first overflows, then one per
        // decade and per 100,000 evicted: a flood must not push the
        // events that name it out of the event log.
        let after = self.quarantine.evicted();
        let mark = |n: u64| (n.checked_ilog10().unwrap_or(0).min(5), n / 100_000);
        if after > before && (before == 0 || mark(before) != mark(after)) {
            self.notices.push(Notice::Evicted { count: after });
        }
    }

    /// Takes the examples `selector` matches out of quarantine, for
    /// training; they teach the outlier detector (an operator vouched for
    /// them).
    pub fn release(&mut self, selector: &Selector) -> Vec<Feedback> {
        let out: Vec<Feedback> = self
            .quarantine
            .take(selector)
            .into_iter()
            .map(|h| h.fb)
            .collect();
        for fb in &out {
            self.outliers.learn(&fb.features);
            let id = self.source_id(&fb.source);
            self.influence.learned(id);
        }
        self.totals.released += out.len() as u64;
        out
    }

    /// Drops the examples `selector` matches; returns how many.
    pub fn drop_held(&mut self, selector: &Selector) -> usize {
        let n = self.quarantine.take(selector).len();
        self.totals.dropped += n as u64;
        n
    }

    /// The decisions since the last call, in order.
    pub fn take_decided(&mut self) -> Vec<(u64, Reason)> {
        std::mem::take(&mut self.decided)
    }

    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    pub fn quarantine(&self) -> &Quarantine {
        &self.quarantine
    }

    pub fn waiting(&self) -> usize {
        self.influence.waiting()
    }

    /// The smallest log position the guard's waiting examples need.
    pub fn oldest_waiting(&self) -> Option<u64> {
        self.influence.oldest_waiting()
    }

    /// The id a source is counted under (see `SourceNames`).
    fn source_id(&mut self, source: &Option<Arc<str>>) -> SourceId {
        let (influence, labels) = (&self.influence, &self.labels);
        self.totals
            .sources
            .id(source, self.config.max_sources, |id, name| {
                influence.idle(id) && !labels.is_flagged(Some(name))
            })
    }

    pub fn report(&self) -> GuardReport {
        GuardReport::of(self)
    }
}

/// What an operator reads about an outlier.
fn outlier_detail(o: &Outlier, threshold: f64) -> String {
    format!(
        "numeric feature at row {}: value {} lies {:.1} times its calibrated extreme ({}) from its centre ({}); guard.outliers.threshold is {threshold}",
        o.row, o.value, o.score, o.extreme, o.centre
    )
}

/// The live model's score of `fb`: the one taken on acceptance, else now.
fn live_score(fb: &Feedback, live: &ModelVersion) -> Scored {
    match fb.scored {
        Some(s) => s.live,
        None => live.params.score(&fb.features, fb.target),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{Feature, FeatureVec, LabelSpace, Params, Target, TaskKind};
    use crate::serving::store::ModelStore;

    fn example(v: f64, position: u64) -> Feedback {
        let x = FeatureVec {
            features: vec![Feature {
                index: 3,
                value: v,
                numeric: true,
            }],
        };
        let mut fb = Feedback::labelled(x, Target::Class(usize::from(v > 0.5)), Some("s".into()));
        fb.position = position;
        fb
    }

    /// A state comes back whole under the configuration that saved it;
    /// under another the detectors start afresh with the new settings and
    /// the quarantine is kept.
    #[test]
    fn a_changed_configuration_restarts_the_detectors_and_keeps_the_quarantine() {
        let config = GuardConfig::default();
        let mut guard = Guard::new(&config);
        let space = std::sync::Arc::new(LabelSpace::new(TaskKind::Binary, vec![]).expect("space"));
        let store = ModelStore::new(Params::new(space, 8));
        let live = store.live();
        let mut batch: Vec<Feedback> = (0..2000)
            .map(|i| example((i % 100) as f64 / 100.0, i))
            .collect();
        guard.screen(&mut batch, &live, 0, &|_| false);
        let mut odd = vec![example(1e6, 2000)];
        guard.screen(&mut odd, &live, 0, &|_| false);
        assert!(odd.is_empty(), "1e6 is an outlier");
        assert_eq!(guard.quarantine().len(), 1);
        let state = guard.state();
        let bytes = state.encode().expect("encodes");

        let same = Guard::restore(&config, GuardState::decode(&bytes).expect("decodes"));
        assert_eq!(same.report().outlier_features, 1);
        assert_eq!(same.quarantine().len(), 1);

        let mut other = config.clone();
        other.outliers.threshold = 50.0;
        let fresh = Guard::restore(&other, GuardState::decode(&bytes).expect("decodes"));
        assert_eq!(
            fresh.report().outlier_features,
            0,
            "the detector starts afresh"
        );
        assert_eq!(fresh.quarantine().len(), 1, "the quarantine is kept");
        assert_ne!(fingerprint(&config), fingerprint(&other));

        // A state saved by the previous release (format 1: label sanity
        // without its blocks) still reads, and counts as made under other
        // rules: the detectors start afresh, the quarantine is kept.
        let v1 = GuardStateV1 {
            outliers: state.outliers.clone(),
            labels: state.labels.to_v1(),
            influence: state.influence.clone(),
            waiting: state.waiting.clone(),
            quarantine: state.quarantine.clone(),
            totals: state.totals.clone(),
            config: 7,
        };
        let mut old = vec![1u8];
        old.extend(postcard::to_stdvec(&v1).expect("encodes"));
        let read = GuardState::decode(&old).expect("format 1 reads");
        assert_ne!(read.config, fingerprint(&config));
        let restored = Guard::restore(&config, read);
        assert_eq!(restored.report().outlier_features, 0);
        assert_eq!(restored.quarantine().len(), 1, "the quarantine is kept");
        assert!(
            GuardState::decode(&[9, 0]).is_err(),
            "a newer format is refused"
        );
    }
}
