//! `LabelSanity`: which source's labels does the live model suddenly
//! contradict far more than everyone else's?
//!
//! An example is *contradicted* when the live model, scoring it before it
//! is learned, is confidently sure of another answer: it gives the label a
//! probability of at most `1 - confidence` (classification), or its error
//! is more than twice the `confidence` quantile of its recent errors
//! (regression; a decayed `LogHistogram` of the errors on examples from
//! sources in good standing).
//!
//! **The recent period is shared.** It is the last `window` examples from
//! all sources together, and a source's recent rate is its contradiction
//! rate among its own examples in it. Every source is therefore measured
//! over the same stretch of time: after an abrupt concept drift every
//! source's rate rises at once, whatever its volume, and none stands out.
//! (Windows of each source's own last N examples would not line up: a
//! busy source's window would hold only post-drift examples while a quiet
//! one's still held the old concept, and the busy one would be flagged.)
//!
//! A source is **flagged** when, over the recent period, all of:
//! - some other source qualifies as a reference: in good standing, with
//!   `MIN_RECENT` examples in the period (and, when the judged source has
//!   a normal rate, a normal rate of its own). With nobody to compare
//!   with, a rise is the world changing, never grounds to quarantine;
//! - its rate is at least `factor` times the reference rate: the larger
//!   of the upper median of the reference sources' rates (robust: a busy
//!   source, say a flood the live model has started to agree with, cannot
//!   set it) and the one-sided 99% Wilson upper bound of their pooled rate
//!   (few examples never look clean);
//! - once it has a normal rate (`window / 4` of its counted examples have
//!   left the recent period; decayed over `4 * window` of them), its rate
//!   is also `factor` times that rate's upper bound;
//! - a one-sided exact binomial test of its contradictions against the
//!   larger of those reference rates rejects at level `alpha`;
//! - **the same holds at the same moments** (`blocks.rs`): each of its
//!   blocks of the period (`window / 20` consecutive examples) is compared
//!   with the reference sources' examples in the same block or, where
//!   they sent none, in their nearest blocks before and after it (within
//!   three blocks; before it alone at the head of the period, until the
//!   others send again); its rate there is `factor` times the upper
//!   bound of theirs, and the binomial test against that bound rejects at
//!   `alpha`. Examples side by side with theirs count at once, the others
//!   once they span three blocks. A source that would itself
//!   be flagged against the others is no reference here (two names of one
//!   liar, alternating in a burst). Over the whole period, a source that
//!   posts large batches in turn holds other stretches of the stream than
//!   the others do, and the live model is confidently wrong in runs, more
//!   in some stretches than in others: true labels would look like lies.
//!
//! It is **cleared** when the reference sources hold an eighth of the
//! recent period (while it still sends nearly all the traffic, the others
//! are too few to vouch for it), its rate is within `sqrt(factor)` of
//! what the others' surely is (the lower of their median and the lower
//! Wilson bound of their pooled rate), and its excess over that is not
//! significant even at `CLEAR_ALPHA`. While flagged its examples still
//! count toward its recent rate (so it can clear) but not toward its
//! normal rate, nor does it serve as anyone's reference, so an attacker
//! can teach the detector neither that contradiction is normal for itself
//! nor for everyone.
//!
//! Limits: the comparison is between sources, so a majority of sources
//! lying together, or one source against one other once both have a
//! normal rate, is undecidable here; and a flood so heavy that the live
//! model agrees with it before `MIN_RECENT` of its examples are scored
//! (about 20 times the honest traffic, unthrottled, on Elec2) is never
//! contradicted. The influence limits of the serving layer are the
//! defence there.
//!
//! Sources are tracked by name in a table of at most `max_sources`; the
//! rest share `OTHER_SOURCE`, and examples without a source are one source,
//! `UNKNOWN_SOURCE` (the monitor's names). Memory: 4 bytes per example of
//! the recent period (and at most 12 more in `TimeBlocks`, when every
//! example of a block has its own source) plus about `SOURCE_BYTES` and the name per source.
//!
//! The caller should observe the examples that passed the feature checks
//! (schema, outliers), flagged sources' included, and decides from the
//! verdict what to hold.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use statrs::distribution::{Binomial, DiscreteCDF};

use super::blocks::TimeBlocks;
use super::histogram::LogHistogram;
use crate::config::LabelConfig;
use crate::learn::Scored;

/// The name examples without a source are tracked under.
pub const UNKNOWN_SOURCE: &str = "unknown";
/// Where sources beyond `max_sources` are folded.
pub const OTHER_SOURCE: &str = "other";

/// Examples a source needs in the recent period to be flagged, cleared,
/// or compared with.
pub const MIN_RECENT: u64 = 20;
/// A flagged source is cleared only when its excess over the others' is
/// not significant even at this level.
const CLEAR_ALPHA: f64 = 0.05;
/// z of the one-sided 99% Wilson bounds on reference rates.
const REFERENCE_Z: f64 = 2.326_347_874_040_841;
/// A regression error beyond this many `confidence` quantiles contradicts.
const ERROR_FACTOR: f64 = 2.0;
/// Errors the regression quantile remembers, and needs before judging.
const ERROR_MEMORY: f64 = 8192.0;
const ERROR_WARMUP: f64 = 200.0;

/// Blocks (of consecutive examples) per recent period, for comparing
/// sources at the same moments.
const BLOCKS_PER_WINDOW: u64 = 20;

/// Examples a source sent to blocks the references did not (it posts
/// large batches in turn) count only once they span this many blocks: the live model's confident errors come in runs (a
/// stretch of Elec2 it has not caught up with), and a batch that starts in
/// such a run is not a liar.
const NEIGHBOUR_BLOCKS: u64 = 3;

/// Approximate memory of one tracked source besides its name.
pub const SOURCE_BYTES: usize =
    std::mem::size_of::<Source>() + std::mem::size_of::<(String, u32)>() + 32;

/// See the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelSanity {
    factor: f64,
    alpha: f64,
    window: usize,
    max_sources: usize,
    /// Log loss at and above which a label is contradicted.
    contradiction_loss: f64,
    confidence: f64,
    /// Source name to its index in `sources`.
    index: BTreeMap<String, u32>,
    sources: Vec<Source>,
    /// The recent period, oldest first: one `Entry` per example.
    recent: VecDeque<Entry>,
    /// Regression only: the live model's absolute errors.
    errors: LogHistogram,
    /// Examples observed, all sources: the next one's arrival index.
    seen: u64,
    /// The recent period by blocks of arrival.
    blocks: TimeBlocks,
}

/// `LabelSanity` as the guard's state format 1 saved it (before `seen`
/// and `blocks`), read to carry an older snapshot's guard state over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabelSanityV1 {
    factor: f64,
    alpha: f64,
    window: usize,
    max_sources: usize,
    contradiction_loss: f64,
    confidence: f64,
    index: BTreeMap<String, u32>,
    sources: Vec<Source>,
    recent: VecDeque<Entry>,
    errors: LogHistogram,
}

impl From<LabelSanityV1> for LabelSanity {
    fn from(v: LabelSanityV1) -> Self {
        let seen = v.recent.len() as u64;
        let blocks = TimeBlocks::rebuild(
            block_width(v.window as u64),
            seen.saturating_sub(1),
            v.recent
                .iter()
                .map(|e| (e.0 & !(CONTRADICTED | COUNTED), e.0 & CONTRADICTED != 0)),
        );
        Self {
            factor: v.factor,
            alpha: v.alpha,
            window: v.window,
            max_sources: v.max_sources,
            contradiction_loss: v.contradiction_loss,
            confidence: v.confidence,
            index: v.index,
            sources: v.sources,
            recent: v.recent,
            errors: v.errors,
            seen,
            blocks,
        }
    }
}

impl LabelSanity {
    /// This state as format 1 saved it (for tests of reading it back).
    pub fn to_v1(&self) -> LabelSanityV1 {
        LabelSanityV1 {
            factor: self.factor,
            alpha: self.alpha,
            window: self.window,
            max_sources: self.max_sources,
            contradiction_loss: self.contradiction_loss,
            confidence: self.confidence,
            index: self.index.clone(),
            sources: self.sources.clone(),
            recent: self.recent.clone(),
            errors: self.errors.clone(),
        }
    }
}

/// One example of the recent period: the source's index, whether it was
/// contradicted, and whether it counts (its source was not flagged).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Entry(u32);

const CONTRADICTED: u32 = 1 << 31;
const COUNTED: u32 = 1 << 30;

/// The sources one source is compared with.
#[derive(Debug, Clone, Copy)]
struct Others {
    sources: usize,
    examples: u64,
    /// Their pooled rate, the upper median of their rates, and the rate
    /// a source is flagged against.
    rate: f64,
    median: f64,
    reference: f64,
    /// The lower confidence bound of their pooled rate.
    lower: f64,
}

/// What is known of one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Source {
    name: String,
    examples: u64,
    /// Its examples in the recent period, and the contradicted ones.
    recent: u64,
    recent_contradicted: u64,
    /// Decayed totals of its counted examples older than the recent period.
    normal: f64,
    normal_contradicted: f64,
    flagged: bool,
}

/// The outcome of observing one example.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelVerdict {
    /// The live model contradicts this example's label.
    pub contradicted: bool,
    /// Its source is flagged, after this example.
    pub flagged: bool,
    /// The source was flagged or cleared by this example.
    pub change: Option<FlagChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum FlagChange {
    Flagged(Evidence),
    Cleared(Evidence),
}

/// Why a source was flagged or cleared, for the event an operator reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// The tracked name (`UNKNOWN_SOURCE`, `OTHER_SOURCE` when folded).
    pub source: String,
    pub recent_examples: u64,
    pub recent_contradicted: u64,
    pub recent_rate: f64,
    /// The reference sources' pooled recent rate, their examples and
    /// their number.
    pub others_rate: f64,
    pub others_examples: u64,
    pub others_sources: usize,
    /// The rate the source was compared with (see `LabelSanity`).
    pub reference_rate: f64,
    /// The source's own normal rate, once it has one.
    pub normal_rate: Option<f64>,
    /// One-sided binomial p-value against the reference rate (flagging).
    pub p_value: Option<f64>,
    /// Flagging: its examples and contradictions in blocks of the period
    /// the reference sources also sent to, and the upper bound of their
    /// rate there (see `LabelSanity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aligned_examples: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aligned_contradicted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aligned_reference_rate: Option<f64>,
}

/// One row of `LabelSanity::report`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceLabels {
    pub source: String,
    pub examples: u64,
    pub recent_examples: u64,
    pub recent_rate: Option<f64>,
    pub normal_rate: Option<f64>,
    pub flagged: bool,
}

impl LabelSanity {
    pub fn new(config: &LabelConfig, max_sources: usize) -> Self {
        Self {
            factor: config.factor,
            alpha: config.alpha,
            // Config validation bounds `window` by MAX_BOUND (2^28).
            window: usize::try_from(config.window).unwrap_or(usize::MAX),
            max_sources: max_sources.max(1),
            contradiction_loss: -(1.0 - config.confidence).ln(),
            confidence: config.confidence,
            index: BTreeMap::new(),
            sources: Vec::new(),
            recent: VecDeque::new(),
            errors: LogHistogram::default(),
            seen: 0,
            blocks: TimeBlocks::new(block_width(config.window)),
        }
    }

    /// Counts one scored example of `source` (`None`: unattributed) and
    /// says whether the source is flagged now.
    pub fn observe(&mut self, source: Option<&str>, scored: &Scored) -> LabelVerdict {
        let slot = self.slot(source);
        let contradicted = self.contradicts(scored);
        let s = &mut self.sources[slot as usize];
        let counted = !s.flagged;
        s.examples += 1;
        s.recent += 1;
        s.recent_contradicted += u64::from(contradicted);
        if counted && let Scored::Value { abs_err, .. } = scored {
            self.errors
                .add(*abs_err, LogHistogram::growth_for_memory(ERROR_MEMORY));
        }
        let mut bits = slot;
        if contradicted {
            bits |= CONTRADICTED;
        }
        if counted {
            bits |= COUNTED;
        }
        self.recent.push_back(Entry(bits));
        self.blocks.push(self.seen, slot, contradicted);
        self.seen += 1;
        if self.recent.len() > self.window
            && let Some(old) = self.recent.pop_front()
        {
            self.evict(old);
        }
        let change = self.reconsider(slot);
        LabelVerdict {
            contradicted,
            flagged: self.sources[slot as usize].flagged,
            change,
        }
    }

    /// Whether `source`'s examples are flagged (sources never seen are
    /// not, unless the table is full and `other` is).
    pub fn is_flagged(&self, source: Option<&str>) -> bool {
        self.find(source)
            .is_some_and(|i| self.sources[i as usize].flagged)
    }

    /// Clears `source` by hand (an operator vouched for it); `false` if
    /// it was not flagged. Its next examples are judged afresh.
    pub fn clear(&mut self, source: Option<&str>) -> bool {
        match self.find(source) {
            Some(i) if self.sources[i as usize].flagged => {
                // The operator vouches for its recent labels: their
                // contradictions no longer count, so its next example is
                // judged on what comes after, not flagged again at once.
                for e in self.recent.iter_mut() {
                    if e.0 & !(CONTRADICTED | COUNTED) == i && e.0 & CONTRADICTED != 0 {
                        e.0 &= !CONTRADICTED;
                    }
                }
                self.blocks.forget_contradictions(i);
                let s = &mut self.sources[i as usize];
                s.recent_contradicted = 0;
                s.flagged = false;
                true
            }
            _ => false,
        }
    }

    /// Every tracked source, in the order first seen.
    pub fn report(&self) -> Vec<SourceLabels> {
        self.sources
            .iter()
            .map(|s| SourceLabels {
                source: s.name.clone(),
                examples: s.examples,
                recent_examples: s.recent,
                recent_rate: (s.recent > 0).then(|| s.recent_contradicted as f64 / s.recent as f64),
                normal_rate: self.normal_rate(s),
                flagged: s.flagged,
            })
            .collect()
    }

    /// What the detector holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.recent.capacity() * std::mem::size_of::<Entry>()
            + self.sources.capacity() * std::mem::size_of::<Source>()
            + self
                .sources
                .iter()
                .map(|s| 2 * s.name.capacity() + 32 + std::mem::size_of::<(String, u32)>())
                .sum::<usize>()
            + self.errors.heap_bytes()
            + self.blocks.heap_bytes()
    }

    fn contradicts(&self, scored: &Scored) -> bool {
        match *scored {
            Scored::Class { log_loss, .. } => log_loss >= self.contradiction_loss,
            Scored::Value { abs_err, .. } => {
                self.errors.count() >= ERROR_WARMUP
                    && self
                        .errors
                        .quantile(self.confidence)
                        .is_some_and(|q| abs_err > ERROR_FACTOR * q)
            }
        }
    }

    /// Takes the oldest example out of the recent period; if it counted,
    /// it joins its source's normal rate.
    fn evict(&mut self, old: Entry) {
        let contradicted = old.0 & CONTRADICTED != 0;
        let counted = old.0 & COUNTED != 0;
        let keep = 1.0 - 1.0 / self.normal_memory();
        let slot = old.0 & !(CONTRADICTED | COUNTED);
        // `seen` counts the example just added; the period now holds the
        // last `window` of them.
        let index = self.seen - 1 - self.window as u64;
        self.blocks.evict(index, slot, contradicted);
        let s = &mut self.sources[slot as usize];
        s.recent -= 1;
        s.recent_contradicted -= u64::from(contradicted);
        if counted {
            s.normal = s.normal * keep + 1.0;
            s.normal_contradicted =
                s.normal_contradicted * keep + f64::from(u8::from(contradicted));
        }
    }

    /// Flags or clears source `slot` on the evidence of the recent period.
    fn reconsider(&mut self, slot: u32) -> Option<FlagChange> {
        let s = &self.sources[slot as usize];
        if s.recent < MIN_RECENT {
            return None;
        }
        let rate = s.recent_contradicted as f64 / s.recent as f64;
        let normal_ref = self
            .normal_rate(s)
            .map(|_| wilson(s.normal_contradicted, s.normal, REFERENCE_Z));
        if s.flagged {
            // Clearing needs evidence too: near what the others' rate
            // surely is (the lower of their median and the lower bound of
            // their pooled rate: thin evidence never clears), and no longer
            // significantly above it even at a loose level.
            // While it still sends nearly all the traffic, the others'
            // examples are too few (and too few distinct moments) to vouch
            // for it: a stretch where the live model is confidently wrong
            // makes inverted labels look no worse than true ones.
            let others = self.others(slot)?;
            let floor = others.median.min(others.lower);
            if others.examples < self.clear_min_others()
                || rate > self.factor.sqrt() * floor
                || binomial_tail(s.recent_contradicted, s.recent, floor) <= CLEAR_ALPHA
            {
                return None;
            }
            let evidence = self.evidence(
                slot,
                Others {
                    reference: floor,
                    ..others
                },
                None,
            );
            self.sources[slot as usize].flagged = false;
            return Some(FlagChange::Cleared(evidence));
        }
        // Cheap tests first: most examples stop here.
        if s.recent_contradicted == 0 || normal_ref.is_some_and(|n| rate < self.factor * n) {
            return None;
        }
        let others = self.others(slot)?;
        let reference = normal_ref.map_or(others.reference, |n| n.max(others.reference));
        if rate < self.factor * reference {
            return None;
        }
        let p_value = binomial_tail(s.recent_contradicted, s.recent, reference);
        if p_value > self.alpha {
            return None;
        }
        // The same at the same moments: each block against the references'
        // examples in it, or in the nearest blocks they sent to. A source
        // that would itself be flagged against the others is nobody's
        // reference here: within a burst, a second name of the same liar
        // would otherwise set the bar.
        let established = self.normal_rate(s).is_some();
        let suspect = self.factor * others.reference;
        let aligned = self.blocks.aligned(slot, others.rate, |o| {
            let r = &self.sources[o as usize];
            self.is_reference(o, slot, established)
                && (r.recent_contradicted as f64) < suspect * r.recent as f64
        });
        // Neighbours count only over three of its blocks: the model's
        // confident errors come in runs, and a batch that starts in one is
        // not a liar.
        let mut part = aligned.side_by_side;
        if aligned.neighbours.blocks >= NEIGHBOUR_BLOCKS {
            part = part.with(aligned.neighbours);
        }
        let (rate_there, std_error) = part.rate();
        let aligned_reference = (rate_there + REFERENCE_Z * std_error).min(1.0);
        let (n, k) = (part.examples, part.contradicted);
        if n < MIN_RECENT
            || (k as f64) < self.factor * rate_there * n as f64
            || binomial_tail(k, n, aligned_reference) > self.alpha
        {
            return None;
        }
        let mut evidence = self.evidence(slot, others, Some(p_value));
        evidence.aligned_examples = Some(n);
        evidence.aligned_contradicted = Some(k);
        evidence.aligned_reference_rate = Some(aligned_reference);
        self.sources[slot as usize].flagged = true;
        Some(FlagChange::Flagged(evidence))
    }

    /// Whether source `i` can serve as a reference for source `slot`
    /// (which has a normal rate or not): see `others`.
    fn is_reference(&self, i: u32, slot: u32, established: bool) -> bool {
        let o = &self.sources[i as usize];
        i != slot
            && !o.flagged
            && o.recent >= MIN_RECENT
            && !(established && self.normal_rate(o).is_none())
    }

    /// What source `slot` is compared with, or `None` when no other
    /// source qualifies. The reference sources are the others in good
    /// standing with `MIN_RECENT` recent examples (and, when `slot` has a
    /// normal rate, a normal rate of their own: a newcomer that poisoned
    /// the live model cannot make an established source look bad by
    /// comparison). The reference rate is the larger of the upper median
    /// of their rates (robust: one busy source cannot set it) and the
    /// upper confidence bound of their pooled rate (few examples never
    /// look clean).
    fn others(&self, slot: u32) -> Option<Others> {
        let established = self.normal_rate(&self.sources[slot as usize]).is_some();
        let mut rates = Vec::new();
        let (mut n, mut k) = (0u64, 0u64);
        for (i, o) in self.sources.iter().enumerate() {
            if !self.is_reference(i as u32, slot, established) {
                continue;
            }
            rates.push(o.recent_contradicted as f64 / o.recent as f64);
            n += o.recent;
            k += o.recent_contradicted;
        }
        if rates.is_empty() {
            return None;
        }
        let mid = rates.len() / 2;
        let sources = rates.len();
        let (_, median, _) = rates.select_nth_unstable_by(mid, f64::total_cmp);
        let median = *median;
        Some(Others {
            sources,
            examples: n,
            rate: k as f64 / n as f64,
            median,
            reference: median.max(wilson(k as f64, n as f64, REFERENCE_Z)),
            lower: wilson(k as f64, n as f64, -REFERENCE_Z),
        })
    }

    fn evidence(&self, slot: u32, others: Others, p_value: Option<f64>) -> Evidence {
        let s = &self.sources[slot as usize];
        Evidence {
            source: s.name.clone(),
            recent_examples: s.recent,
            recent_contradicted: s.recent_contradicted,
            recent_rate: s.recent_contradicted as f64 / s.recent.max(1) as f64,
            others_rate: others.rate,
            others_examples: others.examples,
            others_sources: others.sources,
            reference_rate: others.reference,
            normal_rate: self.normal_rate(s),
            p_value,
            aligned_examples: None,
            aligned_contradicted: None,
            aligned_reference_rate: None,
        }
    }

    /// A source's normal rate, once `normal_min` examples have left its
    /// recent period.
    fn normal_rate(&self, s: &Source) -> Option<f64> {
        (s.normal >= self.normal_min()).then(|| s.normal_contradicted / s.normal)
    }

    /// Examples the reference sources must have in the recent period
    /// before a flagged source can be cleared: an eighth of it.
    fn clear_min_others(&self) -> u64 {
        (self.window as u64 / 8).max(MIN_RECENT)
    }

    /// Examples (of the source's own) its normal rate remembers.
    fn normal_memory(&self) -> f64 {
        4.0 * self.window as f64
    }

    /// Examples a source's normal rate needs before it is used.
    fn normal_min(&self) -> f64 {
        (self.window as f64 / 4.0).max(MIN_RECENT as f64)
    }

    /// The first tracked source (never `other` or `unknown`) with no
    /// example in the recent period and no flag: free to reuse.
    fn idle_slot(&self) -> Option<u32> {
        self.sources
            .iter()
            .position(|s| {
                s.recent == 0 && !s.flagged && s.name != OTHER_SOURCE && s.name != UNKNOWN_SOURCE
            })
            .map(|i| i as u32)
    }

    fn find(&self, source: Option<&str>) -> Option<u32> {
        let name = source.unwrap_or(UNKNOWN_SOURCE);
        self.index
            .get(name)
            .or_else(|| {
                (self.sources.len() >= self.max_sources)
                    .then(|| self.index.get(OTHER_SOURCE))
                    .flatten()
            })
            .copied()
    }

    /// The index of `source`, made if there is room (else `other`).
    fn slot(&mut self, source: Option<&str>) -> u32 {
        if let Some(&i) = self.index.get(source.unwrap_or(UNKNOWN_SOURCE)) {
            return i;
        }
        if self.sources.len() >= self.max_sources
            && let Some(i) = self.idle_slot()
        {
            // A full table gives the slot of a source with nothing in the
            // recent period (and not flagged) to the newcomer, so names
            // invented once cannot keep later sources out of the table.
            let name = source.unwrap_or(UNKNOWN_SOURCE).to_owned();
            let old = std::mem::replace(&mut self.sources[i as usize], Source::named(&name));
            self.index.remove(&old.name);
            self.index.insert(name, i);
            return i;
        }
        let name = if self.sources.len() < self.max_sources {
            source.unwrap_or(UNKNOWN_SOURCE)
        } else {
            OTHER_SOURCE
        };
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        // At most max_sources + 1 entries, and max_sources is at most
        // config::MAX_BOUND (2^28): the index fits below the flag bits.
        let i = self.sources.len() as u32;
        self.index.insert(name.to_owned(), i);
        self.sources.push(Source::named(name));
        i
    }
}

impl Source {
    /// A source met for the first time.
    fn named(name: &str) -> Self {
        Source {
            name: name.to_owned(),
            examples: 0,
            recent: 0,
            recent_contradicted: 0,
            normal: 0.0,
            normal_contradicted: 0.0,
            flagged: false,
        }
    }
}

/// Examples per block of the recent period (`blocks.rs`).
fn block_width(window: u64) -> u64 {
    (window / BLOCKS_PER_WINDOW).max(MIN_RECENT)
}

/// One-sided confidence bound on a rate of `k` in `n` (Wilson score
/// interval; upper for `z > 0`, lower for `z < 0`): closed form, and
/// meaningful for small or zero counts.
fn wilson(k: f64, n: f64, z: f64) -> f64 {
    if n <= 0.0 {
        return if z > 0.0 { 1.0 } else { 0.0 };
    }
    let z2 = z * z;
    let p = k / n;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre + spread) / (1.0 + z2 / n)).clamp(0.0, 1.0)
}

/// P(X >= k) for X ~ Binomial(n, p).
fn binomial_tail(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    match Binomial::new(p.clamp(0.0, 1.0), n) {
        Ok(b) => b.sf(k - 1),
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn config() -> LabelConfig {
        LabelConfig::default()
    }

    /// A classification score whose label the model contradicts (or not).
    fn scored(contradicted: bool) -> Scored {
        if contradicted {
            Scored::class(false, 0.05)
        } else {
            Scored::class(true, 0.8)
        }
    }

    /// Feeds `n` examples; `pick(i, rng)` gives each one's source and
    /// whether it is contradicted. Returns every change with its index.
    fn feed(
        l: &mut LabelSanity,
        n: usize,
        seed: u64,
        mut pick: impl FnMut(usize, &mut rand::rngs::StdRng) -> (Option<String>, bool),
    ) -> Vec<(usize, FlagChange)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut changes = Vec::new();
        for i in 0..n {
            let (source, contradicted) = pick(i, &mut rng);
            let v = l.observe(source.as_deref(), &scored(contradicted));
            assert_eq!(v.contradicted, contradicted);
            if let Some(c) = v.change {
                changes.push((i, c));
            }
        }
        changes
    }

    fn honest(i: usize, rng: &mut rand::rngs::StdRng) -> (Option<String>, bool) {
        (Some(format!("h{}", i % 4)), rng.random_bool(0.06))
    }

    #[test]
    fn the_threshold_is_the_configured_confidence() {
        let l = LabelSanity::new(&config(), 10);
        assert!(l.contradicts(&Scored::class(false, 0.25)));
        assert!(!l.contradicts(&Scored::class(false, 0.26)));
        assert!(!l.contradicts(&Scored::class(true, 0.9)));
    }

    #[test]
    fn a_source_whose_labels_turn_contradicted_is_flagged_and_the_others_never() {
        let mut l = LabelSanity::new(&config(), 100);
        let mut changes = feed(&mut l, 20_000, 1, honest);
        assert!(changes.is_empty(), "{changes:?}");
        // A newcomer sends two examples for each honest one, 45% contradicted.
        let mut attacker_sent = 0;
        changes = feed(&mut l, 6000, 2, |i, rng| {
            if i % 3 == 0 {
                honest(i / 3, rng)
            } else {
                attacker_sent += 1;
                (Some("attacker".into()), rng.random_bool(0.45))
            }
        });
        let (at, FlagChange::Flagged(e)) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!(e.source, "attacker");
        assert!(*at < 300, "flagged after {at} examples");
        assert_eq!(e.normal_rate, None, "a newcomer has no normal rate");
        assert!(e.p_value.is_some_and(|p| p <= 1e-4), "{e:?}");
        assert_eq!(
            changes.len(),
            1,
            "the honest are never flagged: {changes:?}"
        );
        assert!(l.is_flagged(Some("attacker")));
        assert!(!l.is_flagged(Some("h0")) && !l.is_flagged(None));
        assert_eq!(attacker_sent, 4000);
        let report = l.report();
        let row = report
            .iter()
            .find(|r| r.source == "attacker")
            .expect("tracked");
        assert!(row.flagged && row.examples == 4000);
        assert!(row.recent_rate.is_some_and(|r| r > 0.35), "{row:?}");
    }

    #[test]
    fn with_no_other_source_a_rise_is_never_flagged() {
        let mut l = LabelSanity::new(&config(), 10);
        let changes = feed(&mut l, 20_000, 3, |i, rng| {
            (None, rng.random_bool(if i < 10_000 { 0.05 } else { 0.6 }))
        });
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn a_drift_that_hits_every_source_flags_none_whatever_their_volumes() {
        let mut l = LabelSanity::new(&config(), 10);
        // 70% of the traffic from one source, the rest from three; every
        // rate jumps from 5% to 40% at once, and back.
        let changes = feed(&mut l, 60_000, 4, |i, rng| {
            let source = if i % 10 < 7 {
                "busy".to_owned()
            } else {
                format!("q{}", i % 3)
            };
            let rate = if (20_000..40_000).contains(&i) {
                0.4
            } else {
                0.05
            };
            (Some(source), rng.random_bool(rate))
        });
        assert!(changes.is_empty(), "{changes:?}");
    }

    /// Whether the live model is confidently wrong at example `i` of a
    /// stream with runs of errors: 6% of the time, and in a run of `run`
    /// examples every 1,500 (a stretch it has not caught up with), 90%.
    fn in_a_run(i: usize, run: usize, rng: &mut rand::rngs::StdRng) -> bool {
        rng.random_bool(if i % 1500 < run { 0.9 } else { 0.06 })
    }

    #[test]
    fn honest_sources_posting_large_batches_in_turn_are_not_flagged_for_a_hard_stretch() {
        for run in [40] {
            for batch in [100, 120, 150, 180, 350, 500, 1000] {
                let mut l = LabelSanity::new(&config(), 10);
                let changes = feed(&mut l, 40_000, 11, |i, rng| {
                    (Some(format!("h{}", (i / batch) % 4)), in_a_run(i, run, rng))
                });
                assert!(
                    changes.is_empty(),
                    "runs of {run}, batches of {batch}: {changes:?}"
                );
            }
        }
        // Row by row, a run hits every source at once: nobody stands out.
        let mut l = LabelSanity::new(&config(), 10);
        let changes = feed(&mut l, 40_000, 11, |i, rng| {
            (Some(format!("h{}", i % 4)), in_a_run(i, 40, rng))
        });
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn a_liar_posting_large_batches_in_turn_is_flagged_and_the_honest_never() {
        let mut l = LabelSanity::new(&config(), 10);
        // Four honest sources post batches of 500 in turn; after 20,000
        // examples a liar follows each honest batch with one of its own,
        // 45% contradicted.
        let mut changes = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let mut liar_sent = 0;
        let mut flagged_after = None;
        for b in 0..80 {
            for j in 0..500 {
                let i = b * 500 + j;
                let v = l.observe(
                    Some(&format!("h{}", b % 4)),
                    &scored(in_a_run(i, 40, &mut rng)),
                );
                changes.extend(v.change);
            }
            if b >= 40 {
                for _ in 0..500 {
                    liar_sent += 1;
                    let v = l.observe(Some("liar"), &scored(rng.random_bool(0.45)));
                    if v.change.is_some() && flagged_after.is_none() {
                        flagged_after = Some(liar_sent);
                    }
                    changes.extend(v.change);
                }
            }
        }
        let Some(FlagChange::Flagged(e)) = changes.first() else {
            panic!("{changes:?}")
        };
        assert_eq!(e.source, "liar", "{changes:?}");
        assert!(
            flagged_after.is_some_and(|n| n <= 3 * block_width(config().window)),
            "flagged after {flagged_after:?} of its examples"
        );
        assert!(
            changes.iter().all(|c| match c {
                FlagChange::Flagged(e) | FlagChange::Cleared(e) => e.source == "liar",
            }),
            "{changes:?}"
        );
        assert!(l.is_flagged(Some("liar")));
    }

    #[test]
    fn two_names_of_one_liar_alternating_in_a_burst_are_flagged() {
        // Four honest sources; every 2,000 examples a burst of 400 (on a
        // block boundary) alternates names a and b, 45% contradicted:
        // inside the burst each name is the other's only company, and is
        // no reference for it.
        let mut l = LabelSanity::new(&config(), 10);
        feed(&mut l, 20_000, 13, honest);
        let changes = feed(&mut l, 20_000, 14, |i, rng| {
            if i % 2000 < 400 {
                (Some(["a", "b"][i % 2].into()), rng.random_bool(0.45))
            } else {
                honest(i, rng)
            }
        });
        let flagged: Vec<&str> = changes
            .iter()
            .filter_map(|(_, c)| match c {
                FlagChange::Flagged(e) => Some(e.source.as_str()),
                FlagChange::Cleared(_) => None,
            })
            .collect();
        assert!(
            flagged.contains(&"a") && flagged.contains(&"b"),
            "{changes:?}"
        );
        assert!(
            flagged.iter().all(|s| *s == "a" || *s == "b"),
            "{changes:?}"
        );
        // Both within their first burst.
        assert!(changes.iter().take(2).all(|(i, _)| *i < 400), "{changes:?}");
    }

    #[test]
    fn honest_sources_are_not_flagged_against_a_flood_that_agrees_with_a_poisoned_model() {
        // The live model now agrees with a flood (never contradicted) and
        // contradicts the honest sources four times as often as before.
        let poisoned = |i: usize, rng: &mut rand::rngs::StdRng, honest_sources: usize| {
            if i.is_multiple_of(6) {
                let h = (i / 6) % honest_sources;
                (Some(format!("h{h}")), rng.random_bool(0.25))
            } else {
                (Some("flood".into()), false)
            }
        };
        // Several honest sources: the flood cannot set their reference.
        let mut l = LabelSanity::new(&config(), 10);
        feed(&mut l, 20_000, 5, honest);
        let changes = feed(&mut l, 20_000, 6, |i, rng| poisoned(i, rng, 4));
        assert!(changes.is_empty(), "{changes:?}");
        // One established source: a newcomer is no reference for it until
        // it has a normal rate of its own (past that, one source against
        // one is undecidable, and influence limits are the defence).
        let mut l = LabelSanity::new(&config(), 10);
        feed(&mut l, 20_000, 5, |_, rng| {
            (Some("h0".into()), rng.random_bool(0.06))
        });
        let changes = feed(&mut l, 2000, 6, |i, rng| poisoned(i, rng, 1));
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn a_flagged_source_still_flooding_is_not_cleared_on_thin_evidence() {
        let mut l = LabelSanity::new(&config(), 10);
        feed(&mut l, 20_000, 15, honest);
        // A flood 20 times the honest traffic, flagged at once...
        let changes = feed(&mut l, 2000, 16, |i, rng| {
            if i % 21 == 0 {
                honest(i / 21, rng)
            } else {
                (Some("flood".into()), rng.random_bool(0.5))
            }
        });
        assert!(
            matches!(&changes[..], [(_, FlagChange::Flagged(_))]),
            "{changes:?}"
        );
        // ...then a stretch where the model contradicts everyone alike:
        // the honest examples in the recent period are too few to vouch.
        let changes = feed(&mut l, 20_000, 17, |i, rng| {
            if i % 21 == 0 {
                (Some(format!("h{}", (i / 21) % 4)), rng.random_bool(0.3))
            } else {
                (Some("flood".into()), rng.random_bool(0.3))
            }
        });
        assert!(changes.is_empty(), "{changes:?}");
        assert!(l.is_flagged(Some("flood")));
    }

    #[test]
    fn a_flagged_source_clears_once_its_rate_is_back_and_never_teaches_its_normal_rate() {
        let mut l = LabelSanity::new(&config(), 10);
        feed(&mut l, 20_000, 7, |i, rng| {
            (Some(format!("s{}", i % 5)), rng.random_bool(0.05))
        });
        let before = l.report()[4].normal_rate.expect("established");
        // s4 turns bad for a while.
        let changes = feed(&mut l, 10_000, 8, |i, rng| {
            let s = i % 5;
            (
                Some(format!("s{s}")),
                rng.random_bool(if s == 4 { 0.5 } else { 0.05 }),
            )
        });
        assert!(
            matches!(&changes[..], [(_, FlagChange::Flagged(e))] if e.source == "s4" && e.normal_rate.is_some()),
            "{changes:?}"
        );
        // Its contradicted examples while flagged did not become normal.
        let during = l.report()[4].normal_rate.expect("established");
        assert!(during < before + 0.05, "normal rate {before} -> {during}");
        // It behaves again: cleared once its recent examples show it.
        let changes = feed(&mut l, 10_000, 9, |i, rng| {
            (Some(format!("s{}", i % 5)), rng.random_bool(0.05))
        });
        assert!(
            matches!(&changes[..], [(i, FlagChange::Cleared(e))] if e.source == "s4" && *i > 1000),
            "{changes:?}"
        );
        assert!(!l.is_flagged(Some("s4")));
    }

    #[test]
    fn an_operator_can_clear_a_source() {
        let mut l = LabelSanity::new(&config(), 10);
        feed(&mut l, 8000, 10, |i, rng| {
            if i % 2 == 0 {
                honest(i / 2, rng)
            } else {
                (Some("bad".into()), rng.random_bool(0.5))
            }
        });
        assert!(l.is_flagged(Some("bad")));
        assert!(l.clear(Some("bad")));
        assert!(!l.is_flagged(Some("bad")));
        // Its next clean example does not bring the flag straight back.
        let v = l.observe(Some("bad"), &scored(false));
        assert!(!v.flagged && v.change.is_none(), "{v:?}");
        assert!(!l.clear(Some("bad")), "already clear");
        assert!(!l.clear(Some("never seen")));
    }

    #[test]
    fn sources_beyond_the_table_share_other_and_memory_stays_bounded() {
        let mut l = LabelSanity::new(&config(), 10);
        feed(&mut l, 100_000, 11, |i, _| (Some(format!("s{i}")), false));
        let report = l.report();
        assert_eq!(report.len(), 11, "ten names and `other`");
        assert_eq!(report[10].source, OTHER_SOURCE);
        assert!(report[10].examples > 0);
        // Names invented once leave the table when they leave the recent
        // period: a source that comes later gets a slot of its own.
        feed(&mut l, 2500, 12, |_, _| (Some("late".into()), false));
        assert!(
            l.report().iter().any(|r| r.source == "late"),
            "{:?}",
            l.report()
        );
        assert!(l.recent.len() <= 2000);
        assert!(l.heap_bytes() < 64 << 10, "{}", l.heap_bytes());
        l.observe(None, &scored(false));
        assert_eq!(l.report().len(), 11, "unattributed folds too once full");
        let mut fresh = LabelSanity::new(&config(), 10);
        fresh.observe(None, &scored(false));
        assert_eq!(fresh.report()[0].source, UNKNOWN_SOURCE);
    }

    #[test]
    fn regression_errors_far_beyond_the_usual_contradict() {
        let mut l = LabelSanity::new(&config(), 10);
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let mut contradicted = 0;
        for _ in 0..5000 {
            let err: f64 = rng.random_range(-1.0..1.0);
            contradicted += usize::from(l.observe(None, &Scored::value(err)).contradicted);
        }
        assert!(
            contradicted < 50,
            "{contradicted} usual errors contradicted"
        );
        assert!(l.observe(None, &Scored::value(10.0)).contradicted);
        assert!(!l.observe(None, &Scored::value(0.9)).contradicted);
    }

    #[test]
    fn a_restored_state_continues_bit_for_bit() {
        let mut l = LabelSanity::new(&config(), 10);
        feed(&mut l, 5000, 13, honest);
        let bytes = postcard::to_stdvec(&l).expect("encode");
        let mut back: LabelSanity = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, l);
        let a = feed(&mut l, 3000, 14, |i, rng| {
            if i % 2 == 0 {
                honest(i, rng)
            } else {
                (Some("x".into()), rng.random_bool(0.5))
            }
        });
        let b = feed(&mut back, 3000, 14, |i, rng| {
            if i % 2 == 0 {
                honest(i, rng)
            } else {
                (Some("x".into()), rng.random_bool(0.5))
            }
        });
        assert_eq!(a, b);
        assert_eq!(back, l);
    }
}
