//! `SourceTable`: one model's rate limits for self-declared sources (no
//! `[[sources]]` configured), bounded whatever names clients invent.
//!
//! The table has `guard.max_sources` entries, each a name with its own
//! bucket, plus one shared `other` bucket. A name that has an entry uses
//! it. A new name takes a free entry while there is one; once all are
//! taken, it takes the place of the least recently used entry if that
//! entry's bucket has refilled completely (then it is in the very state a
//! fresh entry starts in, so nothing is forgotten by evicting it);
//! otherwise it shares `other`. So memory is bounded, a client inventing a
//! name per request holds at most the table's entries and then shares
//! `other` with every other new name, and an honest source that arrives
//! later gets an entry as soon as one falls idle (at the latest its
//! bucket's refill time, `burst / rate`, after the least recently used
//! entry was last used).
//!
//! Examples without a source are counted under `unknown`; a source that
//! calls itself `other` shares the `other` bucket (its label would be
//! ambiguous otherwise). Examples refused by the limit are counted per
//! entry for `eddy_feedback_rate_limited_total`; an evicted entry's count
//! moves to `other`, so the label values stay those of the table and the
//! family's total never goes down.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, MonotonicClock};

use crate::config::RateLimit;
use crate::serving::monitor::{OTHER_SOURCE, UNKNOWN_SOURCE};

use super::bucket::{Buckets, Shortfall};

#[derive(Debug)]
pub struct SourceTable<C: Clock = MonotonicClock> {
    /// Slots `0..capacity` are entries, slot `capacity` is `other`.
    buckets: Buckets<C>,
    capacity: usize,
    entries: Mutex<Entries>,
}

/// The entries' bookkeeping; the mutex orders every use of a slot, so a
/// slot is never renamed between a take and its refund check.
#[derive(Debug)]
struct Entries {
    index: HashMap<Arc<str>, usize>,
    slots: Vec<Slot>,
    /// Use stamp to slot, least recently used first.
    order: BTreeMap<u64, usize>,
    next_stamp: u64,
    /// Refused examples of names that share, or shared, `other`.
    other_refused: u64,
}

#[derive(Debug)]
struct Slot {
    name: Arc<str>,
    stamp: u64,
    /// Bumped when the slot is given to another name: a refund for the
    /// old name must not credit the new one.
    generation: u64,
    refused: u64,
}

/// Examples taken from one slot, to give back if the request fails later.
#[derive(Debug, Clone, Copy)]
pub struct Taken {
    slot: usize,
    generation: u64,
    examples: u32,
}

/// A refusal: the label of the source (entry or `other`) whose bucket
/// refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRefusal {
    pub source: Arc<str>,
    pub shortfall: Shortfall,
}

impl SourceTable<MonotonicClock> {
    pub fn new(limit: RateLimit, capacity: usize) -> Self {
        Self::with_clock(limit, capacity, MonotonicClock)
    }
}

impl<C: Clock> SourceTable<C> {
    pub fn with_clock(limit: RateLimit, capacity: usize, clock: C) -> Self {
        let capacity = capacity.max(1);
        Self {
            buckets: Buckets::with_clock(limit, capacity + 1, clock),
            capacity,
            entries: Mutex::new(Entries {
                index: HashMap::new(),
                slots: Vec::new(),
                order: BTreeMap::new(),
                next_stamp: 0,
                other_refused: 0,
            }),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.buckets.limit()
    }

    /// Charges a request: `groups` are its sources (`None`: no source)
    /// with their example counts. All are taken or none: on a refusal what
    /// was taken for the request's other groups is given back, and the
    /// request's examples are counted as refused under the refusing label.
    pub fn take(&self, groups: &[(Option<&str>, u32)]) -> Result<Vec<Taken>, TableRefusal> {
        let total: u64 = groups.iter().map(|(_, n)| u64::from(*n)).sum();
        let mut entries = self.lock();
        let mut taken: Vec<Taken> = Vec::with_capacity(groups.len());
        for &(name, n) in groups {
            // Each group is placed and charged before the next is placed,
            // so a slot this request just charged is never full, and never
            // evicted for the request's next name.
            let slot = self.place(&mut entries, name.unwrap_or(UNKNOWN_SOURCE));
            match self.buckets.take(slot, n) {
                Ok(()) => taken.push(Taken {
                    slot,
                    generation: entries.generation(slot),
                    examples: n,
                }),
                Err(shortfall) => {
                    // Groups folded into one slot (`other`) are one charge:
                    // beyond its burst together they can never pass.
                    let same: u32 = taken
                        .iter()
                        .filter(|t| t.slot == slot)
                        .map(|t| t.examples)
                        .fold(n, u32::saturating_add);
                    let burst = self.limit().burst;
                    let shortfall = if same > burst {
                        Shortfall::ExceedsBurst { burst }
                    } else {
                        shortfall
                    };
                    for t in &taken {
                        self.buckets.refund(t.slot, t.examples);
                    }
                    let source = entries.count_refused(slot, total);
                    return Err(TableRefusal { source, shortfall });
                }
            }
        }
        Ok(taken)
    }

    /// Gives back what a request took (it was refused after it paid).
    pub fn refund(&self, taken: &[Taken]) {
        let entries = self.lock();
        for t in taken {
            if entries.generation(t.slot) == t.generation {
                self.buckets.refund(t.slot, t.examples);
            }
        }
    }

    /// Names with an entry now (`other` not counted).
    pub fn tracked(&self) -> usize {
        self.lock().slots.len()
    }

    /// Refused examples by label: each entry with any, then `other`.
    pub fn refused(&self) -> Vec<(Arc<str>, u64)> {
        let entries = self.lock();
        let mut out: Vec<(Arc<str>, u64)> = entries
            .slots
            .iter()
            .filter(|s| s.refused > 0)
            .map(|s| (Arc::clone(&s.name), s.refused))
            .collect();
        if entries.other_refused > 0 {
            out.push((OTHER_SOURCE.into(), entries.other_refused));
        }
        out
    }

    /// The slot `name` is charged to, making or taking over an entry when
    /// it may (see the module doc).
    fn place(&self, entries: &mut Entries, name: &str) -> usize {
        let other = self.capacity;
        if name == OTHER_SOURCE {
            return other;
        }
        if let Some(&slot) = entries.index.get(name) {
            entries.touch(slot);
            return slot;
        }
        let name: Arc<str> = name.into();
        if entries.slots.len() < self.capacity {
            let slot = entries.slots.len();
            entries.slots.push(Slot {
                name: Arc::clone(&name),
                stamp: 0,
                generation: 0,
                refused: 0,
            });
            entries.index.insert(name, slot);
            entries.touch(slot);
            return slot;
        }
        let Some((_, &lru)) = entries.order.first_key_value() else {
            return other;
        };
        if !self.buckets.is_full(lru) {
            return other;
        }
        self.buckets.reset(lru);
        let slot = &mut entries.slots[lru];
        let old = std::mem::replace(&mut slot.name, Arc::clone(&name));
        slot.generation += 1;
        let moved = std::mem::take(&mut slot.refused);
        entries.other_refused += moved;
        entries.index.remove(&old);
        entries.index.insert(name, lru);
        entries.touch(lru);
        lru
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The bookkeeping stays consistent between statements (no call in
        // it panics), so a poisoned lock's data is still sound.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Entries {
    fn touch(&mut self, slot: usize) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some(s) = self.slots.get_mut(slot) {
            self.order.remove(&s.stamp);
            s.stamp = stamp;
            self.order.insert(stamp, slot);
        }
    }

    /// `other` (past the entries) is never renamed: generation 0.
    fn generation(&self, slot: usize) -> u64 {
        self.slots.get(slot).map_or(0, |s| s.generation)
    }

    /// Counts `n` refused examples under `slot`'s label; returns it.
    fn count_refused(&mut self, slot: usize, n: u64) -> Arc<str> {
        match self.slots.get_mut(slot) {
            Some(s) => {
                s.refused += n;
                Arc::clone(&s.name)
            }
            None => {
                self.other_refused += n;
                OTHER_SOURCE.into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn table(
        rate: f64,
        burst: u32,
        capacity: usize,
    ) -> (SourceTable<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::new(rate, burst).expect("limited");
        (
            SourceTable::with_clock(limit, capacity, clock.clone()),
            clock,
        )
    }

    fn refused_source(r: Result<Vec<Taken>, TableRefusal>) -> String {
        r.expect_err("refused").source.to_string()
    }

    #[test]
    fn each_tracked_name_has_its_own_bucket_and_the_rest_share_other() {
        let (t, _clock) = table(1.0, 3, 2);
        t.take(&[(Some("a"), 3)]).expect("a's burst");
        t.take(&[(Some("b"), 3)]).expect("b's own burst");
        assert_eq!(refused_source(t.take(&[(Some("a"), 1)])), "a");
        // The table is full and neither entry has refilled: new names share
        // one bucket, however many there are.
        t.take(&[(Some("c"), 2)]).expect("c in other");
        t.take(&[(Some("d"), 1)]).expect("d in other");
        assert_eq!(refused_source(t.take(&[(Some("e"), 1)])), "other");
        assert_eq!(t.tracked(), 2);
        let refused: Vec<_> = t
            .refused()
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        assert_eq!(refused, [("a".to_string(), 1), ("other".to_string(), 1)]);
    }

    #[test]
    fn an_idle_entry_is_taken_over_and_its_count_moves_to_other() {
        let (t, clock) = table(10.0, 2, 2);
        t.take(&[(Some("a"), 2)]).expect("fits");
        let _ = t.take(&[(Some("a"), 1)]);
        t.take(&[(Some("b"), 1)]).expect("fits");
        // `a` is the least recently used; at 10/s its two examples refill
        // in 200 ms, `b`'s one in 100 ms.
        clock.advance(Duration::from_millis(150));
        t.take(&[(Some("late"), 2)])
            .expect("late shares other, not yet an entry");
        clock.advance(Duration::from_millis(60));
        t.take(&[(Some("honest"), 2)])
            .expect("honest takes a's place, with a full bucket");
        assert_eq!(refused_source(t.take(&[(Some("honest"), 1)])), "honest");
        let refused: Vec<_> = t
            .refused()
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        assert_eq!(
            refused,
            [("honest".to_string(), 1), ("other".to_string(), 1)],
            "a's refusal is now under other"
        );
        // `a` comes back as a new name: `b` is idle, so it takes b's entry.
        t.take(&[(Some("a"), 2)]).expect("a again, fresh");
        assert_eq!(t.tracked(), 2);
    }

    #[test]
    fn a_request_is_charged_whole_or_not_at_all() {
        let (t, _clock) = table(1.0, 3, 4);
        t.take(&[(Some("b"), 3)]).expect("b empties its bucket");
        let r = t.take(&[(Some("a"), 2), (None, 1), (Some("b"), 1)]);
        assert_eq!(refused_source(r), "b");
        // Nothing of the refused request stayed charged to a or unknown.
        t.take(&[(Some("a"), 3), (None, 3)]).expect("full buckets");
        // A refund after acceptance gives the examples back.
        let (t, _clock) = table(1.0, 3, 4);
        let taken = t.take(&[(Some("a"), 3)]).expect("fits");
        t.refund(&taken);
        t.take(&[(Some("a"), 3)]).expect("refunded");
    }

    #[test]
    fn too_many_examples_for_the_burst_is_named_as_such() {
        let (t, _clock) = table(1.0, 3, 1);
        let e = t.take(&[(Some("a"), 4)]).expect_err("never fits");
        assert_eq!(e.shortfall, Shortfall::ExceedsBurst { burst: 3 });
        t.take(&[(Some("a"), 1)]).expect("a holds the only entry");
        // Names sharing `other` are one charge: together beyond its burst
        // they can never pass (422), not "retry later" (429).
        let e = t
            .take(&[(Some("x"), 2), (Some("y"), 2)])
            .expect_err("other holds 3");
        assert_eq!(e.source.as_ref(), "other");
        assert_eq!(e.shortfall, Shortfall::ExceedsBurst { burst: 3 });
        // A source calling itself `other` shares it.
        t.take(&[(Some("other"), 3)]).expect("other's burst");
        assert_eq!(refused_source(t.take(&[(Some("z"), 1)])), "other");
    }

    #[test]
    fn a_flood_of_new_names_stays_bounded() {
        let (t, clock) = table(1000.0, 5, 50);
        for round in 0..100u32 {
            let names: Vec<String> = (0..1000).map(|i| format!("n{round}-{i}")).collect();
            for chunk in names.chunks(10) {
                let groups: Vec<_> = chunk.iter().map(|n| (Some(n.as_str()), 1)).collect();
                let _ = t.take(&groups);
            }
            clock.advance(Duration::from_millis(3));
        }
        assert!(t.tracked() <= 50);
        assert!(t.refused().len() <= 51);
        // After the flood an honest name is tracked under its own limit.
        clock.advance(Duration::from_millis(10));
        t.take(&[(Some("honest"), 5)]).expect("its own full burst");
        assert_eq!(refused_source(t.take(&[(Some("honest"), 1)])), "honest");
    }
}
