//! `[models.guard]` (the checks feedback passes before the trainer learns
//! it; see `serving::guard`). `[[sources]]` is `sources.rs`'s.

use serde::{Deserialize, Serialize};

use super::{Error, MAX_BOUND, yes};

/// `[models.guard]`: the ingestion guard of one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Distinct sources tracked (rates, statistics, metrics); the rest
    /// fold into `other`.
    #[serde(default = "default_guard_sources")]
    pub max_sources: usize,
    /// Examples per second each self-declared source may send to this
    /// model (sources without a `[[sources]]` entry); 0: unlimited.
    #[serde(default)]
    pub rate: f64,
    /// Examples a self-declared source may send at once above `rate`; 0:
    /// one second's worth.
    #[serde(default)]
    pub burst: u32,
    /// What an example with a feature that `features` does not declare
    /// gets: `allow` it, or `refuse` it (quarantined, reason `schema`).
    /// Only checked when `features` declares any.
    #[serde(default)]
    pub unknown_features: UnknownFeatures,
    /// Declared features (the schema); empty: no schema checks.
    #[serde(default)]
    pub features: Vec<DeclaredFeature>,
    #[serde(default)]
    pub outliers: OutlierConfig,
    #[serde(default)]
    pub labels: LabelConfig,
    #[serde(default)]
    pub influence: InfluenceConfig,
    #[serde(default)]
    pub quarantine: QuarantineConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFeatures {
    #[default]
    Allow,
    Refuse,
}

/// One declared feature of `[[models.guard.features]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredFeature {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: DeclaredKind,
    /// Smallest and largest allowed value of a numeric feature.
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    /// Allowed values of a categorical feature; empty: any.
    #[serde(default)]
    pub categories: Vec<String>,
    /// An example without it violates the schema.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeclaredKind {
    Numeric,
    Categorical,
    Boolean,
}

/// `[models.guard.outliers]`: the streaming anomaly score of each
/// example's numeric features against what the model has learned.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How far beyond a feature's own normal spread (its calibrated
    /// extreme) a value must lie to be an outlier, as a factor.
    #[serde(default = "default_outlier_threshold")]
    pub threshold: f64,
    /// Values a feature must have had before its values are judged.
    #[serde(default = "default_outlier_warmup")]
    pub warmup: u64,
    /// Numeric features (hashed rows) tracked; later ones are not judged.
    #[serde(default = "default_outlier_features")]
    pub max_features: usize,
}

/// `[models.guard.labels]`: label sanity, per source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A label is contradicted when the live model gives it at most `1 -
    /// confidence` (classification), or its error is more than twice what
    /// this share of the live model's recent errors reach (regression).
    /// 0.75 rather than 0.9: a linear model on a noisy stream is rarely 90%
    /// sure (on Elec2, for 31% of examples), so at 0.9 a flood of inverted
    /// labels is hardly ever contradicted before the live model has
    /// learned enough of it to agree (`examples/guard_calibration.rs`).
    #[serde(default = "default_label_confidence")]
    pub confidence: f64,
    /// A source is flagged when its recent contradiction rate is this many
    /// times the other sources' and, once it has one, its own normal rate
    /// (and significantly higher).
    #[serde(default = "default_label_factor")]
    pub factor: f64,
    /// The recent period: the last this many examples of all sources
    /// together. Each source's recent rate is over its own examples in it,
    /// so every source is measured over the same stretch of time (a concept
    /// drift raises them all at once, whatever their volumes). Memory: 4
    /// bytes per example, up to 16 when the examples of a stretch come
    /// from many distinct sources.
    #[serde(default = "default_label_window")]
    pub window: u64,
    /// Significance level of the comparison.
    #[serde(default = "default_label_alpha")]
    pub alpha: f64,
}

/// `[models.guard.influence]`: the share of training one source may have.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluenceConfig {
    /// Largest share of a minibatch (and so of a monitor window) one
    /// source may fill while two or more sources are active; 1: no limit.
    #[serde(default = "default_max_share")]
    pub max_share: f64,
    /// A source is active while it sent any of the last this many
    /// examples.
    #[serde(default = "default_active_examples")]
    pub active_examples: u64,
    /// Examples waiting for their share; beyond it the oldest waiting is
    /// quarantined (reason `influence`).
    #[serde(default = "default_wait_capacity")]
    pub wait_capacity: usize,
}

/// `[models.guard.quarantine]`: the bounded store of held examples.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineConfig {
    /// Examples kept; beyond it the oldest is dropped (counted).
    #[serde(default = "default_quarantine_capacity")]
    pub capacity: usize,
    /// And at most this many bytes of them.
    #[serde(default = "default_quarantine_bytes")]
    pub max_bytes: usize,
}

fn default_guard_sources() -> usize {
    1000
}
fn default_outlier_threshold() -> f64 {
    4.0
}
fn default_outlier_warmup() -> u64 {
    500
}
fn default_outlier_features() -> usize {
    1024
}
fn default_label_confidence() -> f64 {
    0.75
}
fn default_label_factor() -> f64 {
    3.0
}
fn default_label_window() -> u64 {
    2000
}
fn default_label_alpha() -> f64 {
    1e-4
}
fn default_max_share() -> f64 {
    0.5
}
fn default_active_examples() -> u64 {
    2000
}
fn default_wait_capacity() -> usize {
    10_000
}
fn default_quarantine_capacity() -> usize {
    100_000
}
fn default_quarantine_bytes() -> usize {
    64 << 20
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_sources: default_guard_sources(),
            rate: 0.0,
            burst: 0,
            unknown_features: UnknownFeatures::default(),
            features: Vec::new(),
            outliers: OutlierConfig::default(),
            labels: LabelConfig::default(),
            influence: InfluenceConfig::default(),
            quarantine: QuarantineConfig::default(),
        }
    }
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: default_outlier_threshold(),
            warmup: default_outlier_warmup(),
            max_features: default_outlier_features(),
        }
    }
}

impl Default for LabelConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            confidence: default_label_confidence(),
            factor: default_label_factor(),
            window: default_label_window(),
            alpha: default_label_alpha(),
        }
    }
}

impl Default for InfluenceConfig {
    fn default() -> Self {
        Self {
            max_share: default_max_share(),
            active_examples: default_active_examples(),
            wait_capacity: default_wait_capacity(),
        }
    }
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        Self {
            capacity: default_quarantine_capacity(),
            max_bytes: default_quarantine_bytes(),
        }
    }
}

/// A rate limit's values are usable: a finite rate, not negative.
pub(super) fn validate_rate(rate: f64, key: &str) -> Result<(), Error> {
    if !(rate.is_finite() && rate >= 0.0) {
        return Err(Error::Invalid {
            key: key.to_owned(),
            message: "must be a finite number of examples per second, 0 or more (0: unlimited)"
                .into(),
        });
    }
    Ok(())
}

impl GuardConfig {
    pub(super) fn validate(&self, key: &dyn Fn(&str) -> String) -> Result<(), Error> {
        let invalid = |k: &str, message: String| Error::Invalid {
            key: key(&format!("guard.{k}")),
            message,
        };
        if !(1..=MAX_BOUND).contains(&self.max_sources) {
            return Err(invalid(
                "max_sources",
                format!("must lie in 1..={MAX_BOUND}"),
            ));
        }
        validate_rate(self.rate, &key("guard.rate"))?;
        let mut names = std::collections::HashSet::new();
        for (i, f) in self.features.iter().enumerate() {
            let at = |k: &str| format!("features[{i}].{k}");
            if f.name.is_empty() {
                return Err(invalid(&at("name"), "must not be empty".into()));
            }
            if !names.insert(f.name.as_str()) {
                return Err(invalid(
                    &at("name"),
                    format!("`{}` is declared twice", f.name),
                ));
            }
            let numeric = f.kind == DeclaredKind::Numeric;
            for (k, v) in [("min", f.min), ("max", f.max)] {
                if let Some(v) = v {
                    if !numeric {
                        return Err(invalid(&at(k), "only a numeric feature has a range".into()));
                    }
                    if !v.is_finite() {
                        return Err(invalid(&at(k), "must be a finite number".into()));
                    }
                }
            }
            if let (Some(lo), Some(hi)) = (f.min, f.max)
                && lo > hi
            {
                return Err(invalid(&at("min"), format!("{lo} is above max ({hi})")));
            }
            if !f.categories.is_empty() && f.kind != DeclaredKind::Categorical {
                return Err(invalid(
                    &at("categories"),
                    "only a categorical feature has categories".into(),
                ));
            }
        }
        let o = &self.outliers;
        if !(o.threshold.is_finite() && o.threshold > 1.0) {
            return Err(invalid(
                "outliers.threshold",
                "must be a number above 1".into(),
            ));
        }
        if !(1..=MAX_BOUND).contains(&o.max_features) {
            return Err(invalid(
                "outliers.max_features",
                format!("must lie in 1..={MAX_BOUND}"),
            ));
        }
        let l = &self.labels;
        if !(l.confidence > 0.5 && l.confidence < 1.0) {
            return Err(invalid(
                "labels.confidence",
                "must lie strictly between 0.5 and 1".into(),
            ));
        }
        if !(l.factor.is_finite() && l.factor > 1.0) {
            return Err(invalid("labels.factor", "must be a number above 1".into()));
        }
        if !(10..=MAX_BOUND as u64).contains(&l.window) {
            return Err(invalid(
                "labels.window",
                format!("must lie in 10..={MAX_BOUND}"),
            ));
        }
        if !(l.alpha > 0.0 && l.alpha < 1.0) {
            return Err(invalid(
                "labels.alpha",
                "must lie strictly between 0 and 1".into(),
            ));
        }
        let n = &self.influence;
        if !(n.max_share > 0.0 && n.max_share <= 1.0) {
            return Err(invalid(
                "influence.max_share",
                "must lie in (0, 1] (1: no limit)".into(),
            ));
        }
        if !(1..=MAX_BOUND as u64).contains(&n.active_examples) {
            return Err(invalid(
                "influence.active_examples",
                format!("must lie in 1..={MAX_BOUND}"),
            ));
        }
        if n.wait_capacity > MAX_BOUND {
            return Err(invalid(
                "influence.wait_capacity",
                format!("must be at most {MAX_BOUND}"),
            ));
        }
        let q = &self.quarantine;
        if q.capacity > MAX_BOUND {
            return Err(invalid(
                "quarantine.capacity",
                format!("must be at most {MAX_BOUND}"),
            ));
        }
        Ok(())
    }
}
