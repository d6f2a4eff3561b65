//! `Quarantine`: the bounded store of examples the guard kept from the
//! trainer, with why and from whom, until an operator releases them into
//! training or drops them.
//!
//! Examples are keyed by their feedback-log position (unique per example)
//! and evicted oldest position first when the store is over `capacity`
//! examples or `max_bytes`; evictions are counted. An example's cost is a
//! fixed formula of its features and texts (`Held::cost`), so a replay
//! after a crash evicts exactly what the live run did. The store travels
//! in the trainer's snapshot state, and every change to it is a step or a
//! record in the model's log, so replay reaches the same contents.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::QuarantineConfig;
use crate::learn::features::allocation_cost;
use crate::learn::guard::labels::UNKNOWN_SOURCE;

use super::super::queue::Feedback;
use super::Reason;

/// An example in quarantine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    pub fb: Feedback,
    pub reason: Reason,
    /// What the check found (the feature and value, the rate), for people.
    pub detail: String,
    /// The trainer's clock when it was quarantined, in microseconds.
    pub at_us: u64,
}

impl Held {
    /// What the store charges for this example: its features, its texts,
    /// and a fixed allowance for the rest (counted, not measured, so the
    /// same example costs the same in every process).
    pub fn cost(&self) -> usize {
        const ENTRY: usize = 256;
        ENTRY
            + self.fb.features.heap_bytes()
            + allocation_cost(self.detail.len())
            + self
                .fb
                .source
                .as_ref()
                .map_or(0, |s| allocation_cost(s.len()))
    }
}

/// Which quarantined examples an operator's release or drop applies to:
/// the ones matching every given part (`ids` are log positions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    pub ids: Option<Vec<u64>>,
    pub reason: Option<Reason>,
    pub source: Option<String>,
}

impl Selector {
    /// Whether anything narrows it (an operator must say what they mean:
    /// releasing everything takes `all`).
    pub fn is_narrowed(&self) -> bool {
        self.ids.is_some() || self.reason.is_some() || self.source.is_some()
    }

    pub fn matches(&self, position: u64, held: &Held) -> bool {
        self.ids
            .as_ref()
            .is_none_or(|ids| ids.binary_search(&position).is_ok())
            && self.reason.is_none_or(|r| r == held.reason)
            && self.source.as_deref().is_none_or(|s| {
                // Unattributed examples are the source `unknown`.
                held.fb.source.as_deref().unwrap_or(UNKNOWN_SOURCE) == s
            })
    }

    /// Sorted, deduplicated ids (what `matches` searches).
    pub fn normalized(mut self) -> Self {
        if let Some(ids) = &mut self.ids {
            ids.sort_unstable();
            ids.dedup();
        }
        self
    }
}

/// What the store holds, and what it has let go.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quarantine {
    entries: BTreeMap<u64, Held>,
    bytes: usize,
    /// Examples evicted to stay within the bounds.
    evicted: u64,
    capacity: usize,
    max_bytes: usize,
}

/// One page of a listing.
pub struct Page<'a> {
    pub examples: Vec<(u64, &'a Held)>,
    /// Matching examples in all.
    pub total: usize,
    /// Where the next page starts (`after`), if there is one.
    pub next: Option<u64>,
}

impl Quarantine {
    pub fn new(config: &QuarantineConfig) -> Self {
        Self {
            entries: BTreeMap::new(),
            bytes: 0,
            evicted: 0,
            capacity: config.capacity,
            max_bytes: config.max_bytes,
        }
    }

    /// Takes on the bounds of `config` (a restart with a new
    /// configuration), evicting what no longer fits.
    pub fn reconfigure(&mut self, config: &QuarantineConfig) {
        self.capacity = config.capacity;
        self.max_bytes = config.max_bytes;
        self.evict();
    }

    /// Keeps `held`; returns how many older examples it pushed out.
    pub fn hold(&mut self, held: Held) -> u64 {
        let position = held.fb.position;
        self.bytes += held.cost();
        if let Some(old) = self.entries.insert(position, held) {
            self.bytes -= old.cost();
        }
        self.evict()
    }

    fn evict(&mut self) -> u64 {
        let mut evicted = 0;
        while self.entries.len() > self.capacity || self.bytes > self.max_bytes {
            let Some((_, old)) = self.entries.pop_first() else {
                break;
            };
            self.bytes -= old.cost();
            evicted += 1;
        }
        self.evicted += evicted;
        evicted
    }

    /// Removes and returns the examples `selector` matches, oldest first.
    pub fn take(&mut self, selector: &Selector) -> Vec<Held> {
        let positions: Vec<u64> = match &selector.ids {
            // A few ids: look them up rather than scan everything.
            Some(ids) => ids
                .iter()
                .copied()
                .filter(|p| self.entries.get(p).is_some_and(|h| selector.matches(*p, h)))
                .collect(),
            None => self
                .entries
                .iter()
                .filter(|(p, h)| selector.matches(**p, h))
                .map(|(p, _)| *p)
                .collect(),
        };
        positions
            .into_iter()
            .filter_map(|p| {
                let held = self.entries.remove(&p)?;
                self.bytes -= held.cost();
                Some(held)
            })
            .collect()
    }

    /// Up to `limit` matching examples after position `after`, oldest first.
    pub fn page(&self, selector: &Selector, after: Option<u64>, limit: usize) -> Page<'_> {
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut matching = self
            .entries
            .range((from, std::ops::Bound::Unbounded))
            .filter(|(p, h)| selector.matches(**p, h));
        let examples: Vec<(u64, &Held)> = matching
            .by_ref()
            .take(limit)
            .map(|(p, h)| (*p, h))
            .collect();
        let more = matching.next().is_some();
        let total = self
            .entries
            .iter()
            .filter(|(p, h)| selector.matches(**p, h))
            .count();
        Page {
            next: more.then(|| examples.last().map(|(p, _)| *p)).flatten(),
            examples,
            total,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Examples held per reason and source.
    pub fn counts(&self) -> BTreeMap<(Reason, Option<Arc<str>>), u64> {
        let mut out = BTreeMap::new();
        for h in self.entries.values() {
            *out.entry((h.reason, h.fb.source.clone())).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{Feature, FeatureVec, Target};

    fn held(position: u64, reason: Reason, source: &str, width: usize) -> Held {
        let features = FeatureVec {
            features: (0..width)
                .map(|i| Feature {
                    index: i as u32,
                    value: 1.0,
                    numeric: true,
                })
                .collect(),
        };
        let mut fb = Feedback::labelled(features, Target::Class(1), Some(source.into()));
        fb.position = position;
        Held {
            fb,
            reason,
            detail: format!("example {position}"),
            at_us: position,
        }
    }

    fn store(capacity: usize, max_bytes: usize) -> Quarantine {
        Quarantine::new(&QuarantineConfig {
            capacity,
            max_bytes,
        })
    }

    #[test]
    fn the_oldest_positions_go_first_when_over_count_or_bytes() {
        let mut q = store(3, usize::MAX);
        for p in [5, 1, 9, 3] {
            q.hold(held(p, Reason::Outlier, "a", 2));
        }
        let kept: Vec<u64> = q
            .page(&Selector::default(), None, 10)
            .examples
            .iter()
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(kept, [3, 5, 9]);
        assert_eq!(q.evicted(), 1);

        let one = held(0, Reason::Outlier, "a", 100).cost();
        let mut q = store(1000, one * 2);
        for p in 0..5 {
            q.hold(held(p, Reason::Label, "b", 100));
        }
        assert_eq!(q.len(), 2);
        assert_eq!(q.bytes(), one * 2);
        assert_eq!(q.evicted(), 3);
    }

    #[test]
    fn take_and_page_filter_by_ids_reason_and_source() {
        let mut q = store(100, usize::MAX);
        for p in 0..10 {
            let (reason, source) = if p % 2 == 0 {
                (Reason::Outlier, "a")
            } else {
                (Reason::Label, "b")
            };
            q.hold(held(p, reason, source, 1));
        }
        let by_reason = Selector {
            reason: Some(Reason::Label),
            ..Selector::default()
        };
        let page = q.page(&by_reason, None, 2);
        assert_eq!(page.total, 5);
        assert_eq!(
            page.examples.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            [1, 3]
        );
        assert_eq!(page.next, Some(3));
        let page = q.page(&by_reason, page.next, 10);
        assert_eq!(
            page.examples.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            [5, 7, 9]
        );
        assert_eq!(page.next, None);

        let ids = Selector {
            ids: Some(vec![8, 2, 3, 2]),
            source: Some("a".into()),
            ..Selector::default()
        }
        .normalized();
        let taken: Vec<u64> = q.take(&ids).iter().map(|h| h.fb.position).collect();
        assert_eq!(taken, [2, 8], "3 is b's, so not taken");
        assert_eq!(q.len(), 8);
        let before = q.bytes();
        let rest = q.take(&by_reason);
        assert_eq!(rest.len(), 5);
        assert!(q.bytes() < before);
        assert_eq!(q.counts().values().sum::<u64>(), 3);
    }
}
