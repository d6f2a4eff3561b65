//! `ShuffleBuffer`: releases a stream's examples in random order while
//! holding at most a given number of them and a given number of bytes
//! (wide rows fill the byte bound first), so shuffling a file of any size
//! costs bounded memory. The order depends on the seed of the random
//! source alone; each example comes out exactly once.

use std::mem::size_of;

use rand::Rng;

use crate::learn::{Example, Feature};

pub struct ShuffleBuffer {
    items: Vec<Example>,
    bytes: usize,
    max_items: usize,
    max_bytes: usize,
}

/// Memory an example holds: the struct and its features.
fn footprint(e: &Example) -> usize {
    size_of::<Example>() + e.features.features.capacity() * size_of::<Feature>()
}

impl ShuffleBuffer {
    /// `max_items` 0 is file order (nothing is held).
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            items: Vec::new(),
            bytes: 0,
            max_items,
            max_bytes,
        }
    }

    /// Takes `e`; hands `out` whatever leaves the buffer (nothing while it
    /// fills, then one random example per arrival, more when a wide
    /// arrival pushes the buffer over its byte bound).
    pub fn push(&mut self, e: Example, rng: &mut impl Rng, mut out: impl FnMut(Example)) {
        let size = footprint(&e);
        if self.items.len() < self.max_items && self.bytes + size <= self.max_bytes {
            self.bytes += size;
            self.items.push(e);
            return;
        }
        if self.items.is_empty() {
            out(e);
            return;
        }
        let i = rng.random_range(0..self.items.len());
        let old = std::mem::replace(&mut self.items[i], e);
        self.bytes = self.bytes + size - footprint(&old);
        out(old);
        while self.bytes > self.max_bytes && self.items.len() > 1 {
            let j = rng.random_range(0..self.items.len());
            let x = self.items.swap_remove(j);
            self.bytes -= footprint(&x);
            out(x);
        }
    }

    /// Hands `out` everything still held, in random order.
    pub fn drain(&mut self, rng: &mut impl Rng, mut out: impl FnMut(Example)) {
        while !self.items.is_empty() {
            let i = rng.random_range(0..self.items.len());
            let x = self.items.swap_remove(i);
            self.bytes -= footprint(&x);
            out(x);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes held now (by `footprint`).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::learn::{FeatureVec, Target};

    fn example(id: usize, width: usize) -> Example {
        let features = (0..width)
            .map(|k| Feature {
                index: k as u32,
                value: id as f64,
                numeric: true,
            })
            .collect();
        Example {
            features: FeatureVec { features },
            target: Target::Class(0),
        }
    }

    /// Runs `n` examples of `width` features through a buffer; the ids in
    /// the order they came out, and the most the buffer held.
    fn run(n: usize, width: usize, buffer: &mut ShuffleBuffer, seed: u64) -> (Vec<usize>, usize) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut order = Vec::new();
        let mut most = 0;
        for id in 0..n {
            buffer.push(example(id, width), &mut rng, |e| {
                order.push(e.features.features[0].value as usize)
            });
            most = most.max(buffer.bytes());
        }
        buffer.drain(&mut rng, |e| {
            order.push(e.features.features[0].value as usize)
        });
        (order, most)
    }

    #[test]
    fn every_example_comes_out_once_in_an_order_set_by_the_seed() {
        let (a, _) = run(1000, 3, &mut ShuffleBuffer::new(100, usize::MAX), 7);
        let (b, _) = run(1000, 3, &mut ShuffleBuffer::new(100, usize::MAX), 7);
        let (c, _) = run(1000, 3, &mut ShuffleBuffer::new(100, usize::MAX), 8);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, (0..1000).collect::<Vec<_>>(), "shuffled");
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn wide_rows_are_bounded_by_bytes_and_zero_items_is_file_order() {
        let cap = 50 * footprint(&example(0, 100));
        let mut buffer = ShuffleBuffer::new(10_000, cap);
        let (order, most) = run(2000, 100, &mut buffer, 1);
        assert!(most <= cap, "{most} > {cap}");
        assert_eq!(order.len(), 2000);
        assert!(buffer.is_empty() && buffer.bytes() == 0);
        let (order, _) = run(50, 3, &mut ShuffleBuffer::new(0, usize::MAX), 1);
        assert_eq!(order, (0..50).collect::<Vec<_>>());
    }
}
