//! `TimeBlocks`: label sanity's recent period cut into consecutive blocks
//! of arrival order, with each source's examples and contradictions per
//! block, so that a source can be compared with the others **at the same
//! moments** rather than over the whole period.
//!
//! Why: how often the live model is confidently wrong changes along a
//! stream (a stretch of Elec2 the model has not caught up with yet), and
//! examples close in time share that difficulty. A source that posts its
//! feedback in large batches, taking turns with the others, holds its own
//! stretches of the stream, so over the period its rate can differ from
//! theirs by far more than a binomial test allows, although every label
//! is true. Within a block, everyone meets the same stretch. A source with
//! few examples in blocks the others also sent to has little aligned
//! evidence, and is not flagged on it.
//!
//! Memory: one `Tally` (12 bytes) per source per block, at most one per
//! example of the recent period, and a few bytes per block.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Examples and contradictions of one source in one block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Tally {
    slot: u32,
    examples: u32,
    contradicted: u32,
    /// Offsets in the block of the source's first and last example there
    /// (as pushed: eviction from the oldest block leaves them be).
    first: u32,
    last: u32,
}

/// One block: the tallies of the sources that sent to it, by slot (at
/// most `width` of them: a block is `width` consecutive examples).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Block {
    tallies: Vec<Tally>,
    examples: u32,
}

/// Evidence on one source from some of its blocks: its examples and
/// contradictions there, the contradictions expected at the reference
/// sources' rate of each block, and the variance of that expectation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Part {
    /// The source's blocks these come from.
    pub blocks: u64,
    pub examples: u64,
    pub contradicted: u64,
    pub expected: f64,
    pub variance: f64,
}

impl Part {
    /// The two parts' evidence together.
    pub fn with(self, other: Part) -> Part {
        Part {
            blocks: self.blocks + other.blocks,
            examples: self.examples + other.examples,
            contradicted: self.contradicted + other.contradicted,
            expected: self.expected + other.expected,
            variance: self.variance + other.variance,
        }
    }

    /// The references' rate over these blocks (weighted by the source's
    /// examples in each), and its standard error.
    pub fn rate(&self) -> (f64, f64) {
        let n = self.examples.max(1) as f64;
        (self.expected / n, self.variance.sqrt() / n)
    }
}

/// The evidence on one source aligned in time with the reference sources:
/// from its blocks the references also sent to (`side_by_side`), and from
/// its blocks they did not, compared with the nearest blocks they sent to
/// on both sides, at most `MAX_DISTANCE` blocks away (`neighbours`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Aligned {
    pub side_by_side: Part,
    pub neighbours: Part,
}

/// See the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeBlocks {
    width: u64,
    /// The block of arrival index `i` is `i / width`; `blocks[0]` is block
    /// `first`.
    first: u64,
    blocks: VecDeque<Block>,
}

/// Pseudo-examples at the period's pooled reference rate added to each
/// block's references, so that a block where they sent a few examples
/// does not claim a rate near 0 or 1.
const PRIOR_WEIGHT: f64 = 10.0;

/// A block the references did not send to is compared with theirs at most
/// this many blocks before and after it (both needed); farther is not the
/// same moment.
pub const MAX_DISTANCE: usize = 3;

impl TimeBlocks {
    pub fn new(width: u64) -> Self {
        Self {
            width: width.max(1),
            first: 0,
            blocks: VecDeque::new(),
        }
    }

    /// Counts the example with arrival index `index` (consecutive from
    /// one call to the next).
    pub fn push(&mut self, index: u64, slot: u32, contradicted: bool) {
        let id = index / self.width;
        if self.blocks.is_empty() {
            self.first = id;
        }
        while self.first + (self.blocks.len() as u64) <= id {
            self.blocks.push_back(Block::default());
        }
        let Some(block) = self.blocks.back_mut() else {
            return;
        };
        block.examples += 1;
        // Below `width`, which fits a u32 (the window does).
        let offset = (index % self.width) as u32;
        match block.tallies.binary_search_by_key(&slot, |t| t.slot) {
            Ok(i) => {
                let t = &mut block.tallies[i];
                t.examples += 1;
                t.contradicted += u32::from(contradicted);
                t.last = offset;
            }
            Err(i) => block.tallies.insert(
                i,
                Tally {
                    slot,
                    examples: 1,
                    contradicted: u32::from(contradicted),
                    first: offset,
                    last: offset,
                },
            ),
        }
    }

    /// Takes out the oldest example counted, which had arrival index
    /// `index`, source `slot`, and was `contradicted` or not.
    pub fn evict(&mut self, index: u64, slot: u32, contradicted: bool) {
        debug_assert_eq!(index / self.width, self.first, "evicting out of order");
        if index / self.width != self.first {
            return;
        }
        let Some(block) = self.blocks.front_mut() else {
            return;
        };
        let found = block.tallies.binary_search_by_key(&slot, |t| t.slot);
        debug_assert!(found.is_ok(), "evicting a source the block does not hold");
        if let Ok(i) = found {
            let t = &mut block.tallies[i];
            t.examples -= 1;
            t.contradicted -= u32::from(contradicted);
            if t.examples == 0 {
                block.tallies.remove(i);
            }
            block.examples -= 1;
        }
        if block.examples == 0 {
            self.blocks.pop_front();
            self.first += 1;
        }
    }

    /// Source `slot`'s evidence aligned with the sources `is_reference`
    /// accepts; `pooled` is their rate over the whole period (the prior of
    /// each block's rate). Blocks compared with the same reference blocks
    /// share their error, so the variance is summed by reference blocks.
    pub fn aligned(&self, slot: u32, pooled: f64, is_reference: impl Fn(u32) -> bool) -> Aligned {
        // Per block: the references' examples, contradictions, and the
        // span of offsets they sent in.
        let refs: Vec<(u64, u64, u32, u32)> = self
            .blocks
            .iter()
            .map(|b| {
                b.tallies.iter().filter(|t| is_reference(t.slot)).fold(
                    (0, 0, u32::MAX, 0),
                    |(n, k, first, last), t| {
                        (
                            n + u64::from(t.examples),
                            k + u64::from(t.contradicted),
                            first.min(t.first),
                            last.max(t.last),
                        )
                    },
                )
            })
            .collect();
        // Own blocks compared with the same reference blocks, in a row:
        // their counts, and that reference's rate and weight.
        struct Group {
            key: (usize, usize, bool),
            own: Part,
            rate: f64,
            weight: f64,
        }
        let mut groups: Vec<Group> = Vec::new();
        for (j, block) in self.blocks.iter().enumerate() {
            let Ok(own) = block.tallies.binary_search_by_key(&slot, |t| t.slot) else {
                continue;
            };
            let own = block.tallies[own];
            let Some((first, last)) = reference_blocks(&refs, j) else {
                continue;
            };
            let (n, k) = if first == last {
                (refs[first].0, refs[first].1)
            } else {
                (refs[first].0 + refs[last].0, refs[first].1 + refs[last].1)
            };
            // Side by side: in the same block, and interleaved with the
            // references there (a block where one batch ends and the next
            // begins holds two stretches one after the other).
            let interleaved =
                first == j && last == j && refs[j].2 < own.last && own.first < refs[j].3;
            let counts = Part {
                blocks: 1,
                examples: u64::from(own.examples),
                contradicted: u64::from(own.contradicted),
                ..Part::default()
            };
            match groups.last_mut() {
                Some(g) if g.key == (first, last, interleaved) => g.own = g.own.with(counts),
                _ => {
                    let weight = n as f64 + PRIOR_WEIGHT;
                    groups.push(Group {
                        key: (first, last, interleaved),
                        own: counts,
                        rate: (k as f64 + PRIOR_WEIGHT * pooled) / weight,
                        weight,
                    });
                }
            }
        }
        let mut aligned = Aligned::default();
        for g in groups {
            let part = if g.key.2 {
                &mut aligned.side_by_side
            } else {
                &mut aligned.neighbours
            };
            let m = g.own.examples as f64;
            *part = part.with(Part {
                expected: m * g.rate,
                variance: m * m * g.rate * (1.0 - g.rate) / g.weight,
                ..g.own
            });
        }
        aligned
    }

    /// Rebuilds the blocks of a period whose entries are `(slot,
    /// contradicted)`, oldest first, the last having arrival index
    /// `last`.
    pub fn rebuild(
        width: u64,
        last: u64,
        entries: impl ExactSizeIterator<Item = (u32, bool)>,
    ) -> Self {
        let mut blocks = Self::new(width);
        let start = (last + 1).saturating_sub(entries.len() as u64);
        for (i, (slot, contradicted)) in entries.enumerate() {
            blocks.push(start + i as u64, slot, contradicted);
        }
        blocks
    }

    /// Forgets every contradiction of source `slot` (an operator vouched
    /// for its recent labels).
    pub fn forget_contradictions(&mut self, slot: u32) {
        for t in self
            .blocks
            .iter_mut()
            .flat_map(|b| b.tallies.iter_mut())
            .filter(|t| t.slot == slot)
        {
            t.contradicted = 0;
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.blocks.capacity() * std::mem::size_of::<Block>()
            + self
                .blocks
                .iter()
                .map(|b| b.tallies.capacity() * std::mem::size_of::<Tally>())
                .sum::<usize>()
    }
}

/// The blocks block `j` is compared with: itself when the references
/// sent to it, else the nearest ones before and after it that they sent
/// to, within `MAX_DISTANCE`; at the head of the period, where no block
/// after it has references yet, the nearest one before it alone. `None`
/// when there is none near enough.
fn reference_blocks(refs: &[(u64, u64, u32, u32)], j: usize) -> Option<(usize, usize)> {
    if refs[j].0 > 0 {
        return Some((j, j));
    }
    let before = (1..=MAX_DISTANCE)
        .filter_map(|d| j.checked_sub(d))
        .find(|&i| refs[i].0 > 0)?;
    let after = (j + 1..refs.len()).find(|&i| refs[i].0 > 0);
    match after {
        Some(i) if i - j <= MAX_DISTANCE => Some((before, i)),
        Some(_) => None,
        None => Some((before, before)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_block_is_compared_with_the_references_beside_it_or_on_both_sides() {
        let mut b = TimeBlocks::new(10);
        // Block 0: source 0 alone, all contradicted: no reference before
        // it, so it does not count.
        for i in 0..10 {
            b.push(i, 0, true);
        }
        // Block 1: sources 0 and 1 interleaved; 0 contradicted 2 of 5.
        for i in 10..20 {
            b.push(i, (i % 2) as u32, i % 4 == 0);
        }
        // Block 2: source 0 alone, 5 of 10: compared with blocks 1 and 3.
        for i in 20..30 {
            b.push(i, 0, i % 2 == 0);
        }
        // Block 3: source 1 alone, never contradicted.
        for i in 30..40 {
            b.push(i, 1, false);
        }
        // Blocks 4 and 5: source 0 alone at the head, all contradicted:
        // no reference after them yet, so compared with block 3 alone.
        for i in 40..60 {
            b.push(i, 0, true);
        }
        let a = b.aligned(0, 0.0, |s| s == 1);
        assert_eq!(
            (a.side_by_side.examples, a.side_by_side.contradicted),
            (5, 2)
        );
        assert_eq!((a.neighbours.examples, a.neighbours.contradicted), (30, 25));
        // The references' rate, 0 contradicted, pulled towards the pooled
        // prior 0.0, stays 0.
        assert_eq!(a.side_by_side.rate().0, 0.0);
        assert_eq!(a.neighbours.rate().0, 0.0);
        let none = b.aligned(0, 0.1, |_| false);
        assert_eq!(none, Aligned::default());
        // Farther than MAX_DISTANCE blocks is not the same moment.
        let mut far = TimeBlocks::new(10);
        for i in 0..10 {
            far.push(i, 1, false);
        }
        for i in 10..(10 + 10 * (MAX_DISTANCE as u64 + 1)) {
            far.push(i, 0, true);
        }
        for i in 0..10 {
            far.push(10 + 10 * (MAX_DISTANCE as u64 + 1) + i, 1, false);
        }
        let a = far.aligned(0, 0.0, |s| s == 1);
        assert_eq!(a.neighbours.examples, 10 * MAX_DISTANCE as u64 - 10);
    }

    #[test]
    fn a_block_where_one_batch_ends_and_the_next_begins_is_not_side_by_side() {
        let mut b = TimeBlocks::new(10);
        // Block 0: source 1 then source 0, one after the other.
        for i in 0..6 {
            b.push(i, 1, false);
        }
        for i in 6..10 {
            b.push(i, 0, true);
        }
        let a = b.aligned(0, 0.0, |s| s == 1);
        assert_eq!(a.side_by_side.examples, 0);
        assert_eq!(a.neighbours.examples, 4);
        // Block 1: interleaved.
        for i in 10..20 {
            b.push(i, (i % 2) as u32, i % 2 == 0);
        }
        let a = b.aligned(0, 0.0, |s| s == 1);
        assert_eq!(a.side_by_side.examples, 5);
    }

    #[test]
    fn eviction_follows_the_period_and_rebuild_matches() {
        let mut b = TimeBlocks::new(4);
        let entries: Vec<(u32, bool)> = (0..30).map(|i| ((i % 3) as u32, i % 5 == 0)).collect();
        let window = 9usize;
        for (i, &(s, c)) in entries.iter().enumerate() {
            b.push(i as u64, s, c);
            if i >= window {
                let old = i - window;
                b.evict(old as u64, entries[old].0, entries[old].1);
            }
        }
        let rebuilt = TimeBlocks::rebuild(4, 29, entries[30 - window..].iter().copied());
        // The same counts (the oldest block's spans may be wider in the
        // live one: eviction leaves them be).
        let counts = |b: &TimeBlocks| -> Vec<Vec<(u32, u32, u32)>> {
            b.blocks
                .iter()
                .map(|x| {
                    x.tallies
                        .iter()
                        .map(|t| (t.slot, t.examples, t.contradicted))
                        .collect()
                })
                .collect()
        };
        assert_eq!(counts(&b), counts(&rebuilt));
        assert_eq!((b.first, b.width), (rebuilt.first, rebuilt.width));
        assert_eq!(
            b.blocks.iter().map(|x| x.examples).sum::<u32>(),
            window as u32
        );
    }
}
