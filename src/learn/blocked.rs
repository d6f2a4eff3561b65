//! `Blocked<T>`: a matrix of `rows x cols` split into fixed-size row blocks,
//! each behind an `Arc`, so that a published model version and the
//! trainer's working copy share every block the trainer has not touched
//! since the last publish (copy-on-write).
//!
//! Cloning is cheap (one `Arc` per block). Writing a row copies its block
//! once if a published version still holds it. The set of blocks written
//! since `take_touched` is tracked, which is what a version delta needs.
//!
//! Memory follows use: every block still holding only the fill value (the
//! value the matrix was built with, zero for weights) is the same shared
//! `fill` block, so a matrix nobody has written costs one block, and a
//! written row allocates its block then (the copy-on-write above). Reads
//! never branch on it. `to_sparse` / `from_sparse` carry only the allocated
//! blocks, which is how snapshots store them.

use std::sync::Arc;

use ndarray::{Array2, ArrayView1, ArrayViewMut1};

/// Rows per block: 1024 rows of one f32 weight is 4 KiB, so copying the
/// blocks that a minibatch of a few dozen features touched stays far below
/// copying the whole matrix.
pub const BLOCK_ROWS: usize = 1024;

#[derive(Debug, Clone)]
pub struct Blocked<T> {
    rows: usize,
    cols: usize,
    /// log2 of the rows per block (`BLOCK_ROWS` unless built `*_in`).
    shift: u32,
    blocks: Vec<Arc<Array2<T>>>,
    /// The block every unwritten (full-size) block shares: `block_rows`
    /// rows of the fill value.
    fill: Arc<Array2<T>>,
    /// The fill value (what an unwritten row holds).
    value: T,
    /// Blocks written since the last `take_touched`. Not shared with clones'
    /// meaning: a clone starts with the same flags.
    touched: Vec<bool>,
}

impl<T: Clone + Default + PartialEq> Blocked<T> {
    pub fn new(rows: usize, cols: usize) -> Self {
        Self::filled(rows, cols, T::default())
    }

    pub fn filled(rows: usize, cols: usize, value: T) -> Self {
        Self::filled_in(rows, cols, BLOCK_ROWS, value)
    }

    /// `filled` with `block_rows` rows per block (a power of two): wide
    /// rows (a network's embeddings) want smaller blocks, so that a
    /// publish copies about as many bytes per touched row as the linear
    /// weights do.
    pub fn filled_in(rows: usize, cols: usize, block_rows: usize, value: T) -> Self {
        debug_assert!(block_rows.is_power_of_two());
        let n = rows.div_ceil(block_rows);
        let fill = Arc::new(Array2::from_elem((block_rows, cols), value.clone()));
        let blocks = (0..n)
            .map(|b| {
                let len = block_rows.min(rows - b * block_rows);
                if len == block_rows {
                    fill.clone()
                } else {
                    // A short last block is its own (small) allocation.
                    Arc::new(Array2::from_elem((len, cols), value.clone()))
                }
            })
            .collect();
        Self {
            rows,
            cols,
            shift: block_rows.trailing_zeros(),
            blocks,
            fill,
            value,
            touched: vec![false; n],
        }
    }

    /// Builds from a row-major vector of `rows * cols` values.
    pub fn from_vec(rows: usize, cols: usize, values: Vec<T>) -> Option<Self> {
        Self::from_vec_in(rows, cols, BLOCK_ROWS, values)
    }

    /// `from_vec` with `block_rows` rows per block (see `filled_in`).
    pub fn from_vec_in(
        rows: usize,
        cols: usize,
        block_rows: usize,
        values: Vec<T>,
    ) -> Option<Self> {
        if values.len() != rows * cols {
            return None;
        }
        let mut out = Self::filled_in(rows, cols, block_rows, T::default());
        if cols == 0 {
            return Some(out);
        }
        let shift = out.shift;
        for (b, block) in out.blocks.iter_mut().enumerate() {
            let start = (b << shift) * cols;
            let len = block.nrows() * cols;
            let slice = &values[start..start + len];
            if slice.iter().any(|v| *v != out.value) {
                *block = Arc::new(Array2::from_shape_vec((len / cols, cols), slice.to_vec()).ok()?);
            }
        }
        Some(out)
    }

    /// Builds from the allocated blocks only (`to_sparse`'s output): block
    /// `indices[i]` holds the `i`-th run of `block_rows * cols` values in
    /// `values` (the short last block, if listed, fewer); every other block
    /// holds `value`. `None` if the parts do not fit the shape.
    pub fn from_sparse(
        rows: usize,
        cols: usize,
        block_rows: usize,
        value: T,
        indices: &[u32],
        values: &[T],
    ) -> Option<Self> {
        if !block_rows.is_power_of_two() {
            return None;
        }
        let mut out = Self::filled_in(rows, cols, block_rows, value);
        let mut at = 0usize;
        let mut previous: Option<usize> = None;
        for &b in indices {
            let b = b as usize;
            // Strictly increasing, so each block is given once.
            if b >= out.blocks.len() || previous.is_some_and(|p| p >= b) {
                return None;
            }
            previous = Some(b);
            let len = block_rows.min(rows - b * block_rows) * cols;
            let slice = values.get(at..at.checked_add(len)?)?;
            at += len;
            if slice.iter().all(|v| *v == out.value) && len == block_rows * cols {
                continue;
            }
            out.blocks[b] =
                Arc::new(Array2::from_shape_vec((len / cols.max(1), cols), slice.to_vec()).ok()?);
        }
        (at == values.len()).then_some(out)
    }

    /// The allocated blocks (those not sharing the fill block) by index,
    /// and their values concatenated row-major: what `from_sparse` reads.
    pub fn to_sparse(&self) -> (Vec<u32>, Vec<T>) {
        let mut indices = Vec::new();
        let mut values = Vec::new();
        for (b, block) in self.blocks.iter().enumerate() {
            if !Arc::ptr_eq(block, &self.fill) {
                indices.push(b as u32);
                values.extend(block.iter().cloned());
            }
        }
        (indices, values)
    }

    /// Blocks holding their own memory (written, or loaded with values
    /// other than the fill value).
    pub fn allocated_blocks(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| !Arc::ptr_eq(b, &self.fill))
            .count()
    }

    /// The rows of the allocated blocks, in order (every other row holds
    /// the fill value).
    pub fn allocated_rows(&self) -> impl Iterator<Item = usize> + '_ {
        let (rows, shift) = (self.rows, self.shift);
        self.blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| !Arc::ptr_eq(b, &self.fill))
            .flat_map(move |(i, _)| (i << shift)..((i + 1) << shift).min(rows))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Rows per block.
    pub fn block_rows(&self) -> usize {
        1 << self.shift
    }

    #[inline]
    fn split(&self, r: usize) -> (usize, usize) {
        (r >> self.shift, r & ((1 << self.shift) - 1))
    }

    #[inline]
    pub fn row(&self, r: usize) -> ArrayView1<'_, T> {
        let (b, i) = self.split(r);
        self.blocks[b].row(i)
    }

    /// One element (the predict path: no view built).
    #[inline]
    pub fn at(&self, r: usize, c: usize) -> &T {
        let (b, i) = self.split(r);
        &self.blocks[b][(i, c)]
    }

    /// The row for writing; copies its block first if a clone shares it.
    #[inline]
    pub fn row_mut(&mut self, r: usize) -> ArrayViewMut1<'_, T> {
        let (b, i) = self.split(r);
        self.touched[b] = true;
        Arc::make_mut(&mut self.blocks[b]).row_mut(i)
    }

    /// One row as a slice (blocks are standard-layout arrays, so each row
    /// is contiguous).
    #[inline]
    pub fn row_slice(&self, r: usize) -> &[T] {
        let (b, i) = self.split(r);
        let cols = self.cols;
        let all = self.blocks[b]
            .as_slice()
            .expect("blocks are built in standard layout");
        &all[i * cols..(i + 1) * cols]
    }

    /// `row_mut` as a slice.
    #[inline]
    pub fn row_slice_mut(&mut self, r: usize) -> &mut [T] {
        let (b, i) = self.split(r);
        self.touched[b] = true;
        let cols = self.cols;
        let all = Arc::make_mut(&mut self.blocks[b])
            .as_slice_mut()
            .expect("blocks are built in standard layout");
        &mut all[i * cols..(i + 1) * cols]
    }

    /// Indices of the blocks written since the last call, and clears them.
    pub fn take_touched(&mut self) -> Vec<usize> {
        let out = self
            .touched
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.then_some(i))
            .collect();
        self.touched.iter_mut().for_each(|t| *t = false);
        out
    }

    /// Number of blocks this value holds alone (not shared with any clone;
    /// the fill block is always shared).
    pub fn unshared_blocks(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| Arc::strong_count(b) == 1)
            .count()
    }

    /// All values, row-major, for snapshots.
    pub fn to_vec(&self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for block in &self.blocks {
            out.extend(block.iter().cloned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_shares_until_written() {
        let mut a: Blocked<f32> = Blocked::new(3 * BLOCK_ROWS + 5, 2);
        let published = a.clone();
        assert_eq!(a.unshared_blocks(), 0);
        a.row_mut(BLOCK_ROWS + 1)[1] = 7.0;
        assert_eq!(a.unshared_blocks(), 1);
        assert_eq!(a.row(BLOCK_ROWS + 1)[1], 7.0);
        assert_eq!(published.row(BLOCK_ROWS + 1)[1], 0.0);
        assert_eq!(a.take_touched(), vec![1]);
        assert!(a.take_touched().is_empty());
    }

    #[test]
    fn small_blocks_copy_only_the_rows_written() {
        let mut a: Blocked<f32> = Blocked::filled_in(100, 4, 16, 1.0);
        let published = a.clone();
        a.row_slice_mut(33)[2] = 5.0;
        assert_eq!((a.unshared_blocks(), a.take_touched()), (1, vec![2]));
        assert_eq!((a.row_slice(33)[2], published.row_slice(33)[2]), (5.0, 1.0));
        assert_eq!(*a.at(33, 2), 5.0);
        let back = Blocked::from_vec_in(100, 4, 16, a.to_vec()).unwrap();
        assert_eq!((back.to_vec(), back.block_rows()), (a.to_vec(), 16));
    }

    #[test]
    fn unwritten_blocks_cost_nothing_and_round_trip_sparse() {
        let mut a: Blocked<f32> = Blocked::new(8 * BLOCK_ROWS + 5, 2);
        // Only the short last block has memory of its own.
        assert_eq!(a.allocated_blocks(), 1);
        let published = a.clone();
        a.row_slice_mut(3 * BLOCK_ROWS + 7)[1] = 2.5;
        assert_eq!(a.allocated_blocks(), 2);
        assert_eq!(published.allocated_blocks(), 1);
        assert_eq!(published.row(3 * BLOCK_ROWS + 7)[1], 0.0);
        assert_eq!(a.row(5 * BLOCK_ROWS)[0], 0.0);
        let (indices, values) = a.to_sparse();
        assert_eq!(indices, vec![3, 8]);
        assert_eq!(values.len(), (BLOCK_ROWS + 5) * 2);
        let back = Blocked::from_sparse(a.rows(), 2, BLOCK_ROWS, 0.0, &indices, &values).unwrap();
        assert_eq!((back.to_vec(), back.allocated_blocks()), (a.to_vec(), 2));
        // A dense vector of mostly zeros shares the fill block too.
        let dense = Blocked::from_vec(a.rows(), 2, a.to_vec()).unwrap();
        assert_eq!(dense.allocated_blocks(), 2);
        // Parts that do not fit are refused, not read past.
        assert!(Blocked::from_sparse(a.rows(), 2, BLOCK_ROWS, 0.0, &[3, 3], &values).is_none());
        assert!(Blocked::from_sparse(a.rows(), 2, BLOCK_ROWS, 0.0, &[9], &values).is_none());
        assert!(Blocked::from_sparse(a.rows(), 2, BLOCK_ROWS, 0.0, &[3], &values).is_none());
        assert!(Blocked::from_sparse(a.rows(), 2, BLOCK_ROWS, 0.0, &[8, 3], &values).is_none());
    }

    #[test]
    fn vec_round_trip_with_partial_last_block() {
        let rows = BLOCK_ROWS + 3;
        let values: Vec<f32> = (0..rows * 2).map(|i| i as f32).collect();
        let b = Blocked::from_vec(rows, 2, values.clone()).unwrap();
        assert_eq!(b.row(BLOCK_ROWS + 2)[1], ((BLOCK_ROWS + 2) * 2 + 1) as f32);
        assert_eq!(b.to_vec(), values);
        assert!(Blocked::<f32>::from_vec(rows, 2, vec![0.0; 3]).is_none());
    }
}
