//! Blame: the sources whose labels last-good disputes far more than
//! everyone else's, since last-good (see the rule in the monitor's module doc).

use super::*;

/// Examples a source needs since last-good before it can be blamed.
pub const BLAME_MIN_EXAMPLES: u64 = 30;

/// A source blamed for a degradation.
#[derive(Debug, Clone)]
pub struct Blame {
    pub source: String,
    pub examples: u64,
    pub mean_loss: f64,
    pub reference_loss: f64,
    pub p_value: f64,
}

impl Monitor {
    /// The sources to blame for damage since last-good (see the module doc).
    pub(super) fn blame(&mut self) -> Vec<Blame> {
        self.freshen_since_last_good();
        let start = self.since_last_good();
        let mut groups: HashMap<&str, LossSample> = HashMap::new();
        let mut trusted = LossSample::default();
        let mut all = LossSample::default();
        for e in self.buffer.range(start..) {
            let loss = e.base.loss();
            all.add(loss);
            if e.trusted && !self.trusted.is_empty() {
                trusted.add(loss);
            } else if let Some(s) = e.fb.source.as_deref() {
                groups.entry(s).or_default().add(loss);
            }
        }
        let min = BLAME_MIN_EXAMPLES.min(self.config.min_samples.max(2));
        let mut out: Vec<Blame> = groups
            .into_iter()
            .filter(|(_, g)| g.n >= min)
            .filter_map(|(source, g)| {
                let reference = if self.trusted.is_empty() {
                    all.without(&g)
                } else {
                    trusted
                };
                if reference.n < min {
                    return None;
                }
                let p_value = g.p_above(&reference);
                let far = g.mean() > self.config.blame_factor * reference.mean();
                (far && p_value < self.config.alpha).then(|| Blame {
                    source: source.to_owned(),
                    examples: g.n,
                    mean_loss: g.mean(),
                    reference_loss: reference.mean(),
                    p_value,
                })
            })
            .collect();
        out.sort_by(|a, b| a.source.cmp(&b.source));
        out
    }
}
