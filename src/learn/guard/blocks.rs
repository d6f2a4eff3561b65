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
//! Memory: one `Tally` per source per block, at most one per example of
//! the recent period.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Examples and contradictions of one source in one block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Tally {
    slot: u32,
    examples: u32,
    contradicted: u32,
}

/// One block: the tallies of the sources that sent to it, by slot (at
/// most `width` of them: a block is `width` consecutive examples).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Block {
    tallies: Vec<Tally>,
    examples: u32,
}

/// The evidence on one source aligned in time with the reference sources:
/// its examples and contradictions in blocks where at least one reference
/// source also sent, and the contradictions expected there at the
/// references' rate of each block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aligned {
    pub examples: u64,
    pub contradicted: u64,
    /// Of `examples`, those in blocks the references sent to as well
    /// (the rest are compared with the nearest blocks they sent to).
    pub side_by_side: u64,
    /// The references' rate, block by block, weighted by the source's
    /// examples in each block.
    pub rate: f64,
    /// The standard error of `rate` (the references' per-block counts
    /// are finite samples too).
    pub std_error: f64,
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
/// block's references, so that a block where they sent one or two
/// examples does not claim a rate of 0 or 1.
const PRIOR_WEIGHT: f64 = 2.0;

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
        match block.tallies.binary_search_by_key(&slot, |t| t.slot) {
            Ok(i) => {
                let t = &mut block.tallies[i];
                t.examples += 1;
                t.contradicted += u32::from(contradicted);
            }
            Err(i) => block.tallies.insert(
                i,
                Tally {
                    slot,
                    examples: 1,
                    contradicted: u32::from(contradicted),
                },
            ),
        }
    }

    /// Takes out the oldest example counted, which had arrival index
    /// `index`, source `slot`, and was `contradicted` or not.
    pub fn evict(&mut self, index: u64, slot: u32, contradicted: bool) {
        if index / self.width != self.first {
            return;
        }
        let Some(block) = self.blocks.front_mut() else {
            return;
        };
        if let Ok(i) = block.tallies.binary_search_by_key(&slot, |t| t.slot) {
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
    /// each block's rate). Each of the source's blocks is compared with
    /// the references in the same block or, where none sent to it, in the
    /// nearest blocks that have some (both sides when equally near): for a
    /// source posting large batches in turn, the batches just before and
    /// after its own.
    pub fn aligned(&self, slot: u32, pooled: f64, is_reference: impl Fn(u32) -> bool) -> Aligned {
        let refs: Vec<(u64, u64)> = self
            .blocks
            .iter()
            .map(|b| {
                b.tallies
                    .iter()
                    .filter(|t| is_reference(t.slot))
                    .fold((0, 0), |(n, k), t| {
                        (n + u64::from(t.examples), k + u64::from(t.contradicted))
                    })
            })
            .collect();
        let (mut n, mut k, mut side_by_side) = (0u64, 0u64, 0u64);
        let (mut expected, mut variance) = (0.0f64, 0.0f64);
        for (j, block) in self.blocks.iter().enumerate() {
            let Ok(own) = block.tallies.binary_search_by_key(&slot, |t| t.slot) else {
                continue;
            };
            let own = block.tallies[own];
            let Some((ref_n, ref_k)) = nearest(&refs, j) else {
                continue;
            };
            let weight = ref_n as f64 + PRIOR_WEIGHT;
            let rate = (ref_k as f64 + PRIOR_WEIGHT * pooled) / weight;
            let m = f64::from(own.examples);
            n += u64::from(own.examples);
            k += u64::from(own.contradicted);
            if refs[j].0 > 0 {
                side_by_side += u64::from(own.examples);
            }
            expected += m * rate;
            variance += m * m * rate * (1.0 - rate) / weight;
        }
        let nf = n.max(1) as f64;
        Aligned {
            examples: n,
            contradicted: k,
            side_by_side,
            rate: expected / nf,
            std_error: variance.sqrt() / nf,
        }
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

    /// A placeholder for a restored state saved without blocks: empty,
    /// so the owner rebuilds it from its recent period.
    pub fn unbuilt() -> Self {
        Self::new(0)
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

    pub fn width(&self) -> u64 {
        self.width
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
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

/// The reference counts of block `j`, or of the nearest blocks with any
/// (both sides pooled when equally near); `None` when no block has any.
fn nearest(refs: &[(u64, u64)], j: usize) -> Option<(u64, u64)> {
    for d in 0..refs.len() {
        let before = j.checked_sub(d).and_then(|i| refs.get(i)).copied();
        let after = if d == 0 {
            None
        } else {
            refs.get(j + d).copied()
        };
        let (n, k) = [before, after]
            .into_iter()
            .flatten()
            .fold((0, 0), |(n, k), (a, b)| (n + a, k + b));
        if n > 0 {
            return Some((n, k));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_block_is_compared_with_the_nearest_references() {
        let mut b = TimeBlocks::new(10);
        // Block 0: source 0 alone, all contradicted.
        for i in 0..10 {
            b.push(i, 0, true);
        }
        // Block 1: sources 0 and 1 interleaved; 0 contradicted half the
        // time, 1 never.
        for i in 10..20 {
            b.push(i, (i % 2) as u32, i % 4 == 0);
        }
        // Block 0 has no reference: it is compared with block 1's.
        let a = b.aligned(0, 0.0, |s| s == 1);
        assert_eq!((a.examples, a.contradicted), (15, 12));
        // The reference's rate: 0 of 5, pulled towards the pooled prior
        // 0.0, stays 0.
        assert_eq!(a.rate, 0.0);
        let none = b.aligned(0, 0.1, |_| false);
        assert_eq!(none.examples, 0);
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
        assert_eq!(b, rebuilt);
        assert_eq!(
            b.blocks.iter().map(|x| x.examples).sum::<u32>(),
            window as u32
        );
    }
}
