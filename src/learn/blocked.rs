//! `Blocked<T>`: a matrix of `rows x cols` split into fixed-size row blocks,
//! each behind an `Arc`, so that a published model version and the
//! trainer's working copy share every block the trainer has not touched
//! since the last publish (copy-on-write).
//!
//! Cloning is cheap (one `Arc` per block). Writing a row copies its block
//! once if a published version still holds it. The set of blocks written
//! since `take_touched` is tracked, which is what a version delta needs.

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
    blocks: Vec<Arc<Array2<T>>>,
    /// Blocks written since the last `take_touched`. Not shared with clones'
    /// meaning: a clone starts with the same flags.
    touched: Vec<bool>,
}

impl<T: Clone + Default> Blocked<T> {
    pub fn new(rows: usize, cols: usize) -> Self {
        Self::filled(rows, cols, T::default())
    }

    pub fn filled(rows: usize, cols: usize, value: T) -> Self {
        let n = rows.div_ceil(BLOCK_ROWS);
        let blocks = (0..n)
            .map(|b| {
                let len = BLOCK_ROWS.min(rows - b * BLOCK_ROWS);
                Arc::new(Array2::from_elem((len, cols), value.clone()))
            })
            .collect();
        Self {
            rows,
            cols,
            blocks,
            touched: vec![false; n],
        }
    }

    /// Builds from a row-major vector of `rows * cols` values.
    pub fn from_vec(rows: usize, cols: usize, values: Vec<T>) -> Option<Self> {
        if values.len() != rows * cols {
            return None;
        }
        let mut out = Self::new(rows, cols);
        if cols == 0 {
            return Some(out);
        }
        for (b, block) in out.blocks.iter_mut().enumerate() {
            let start = b * BLOCK_ROWS * cols;
            let len = block.nrows() * cols;
            let slice = values[start..start + len].to_vec();
            *block = Arc::new(Array2::from_shape_vec((len / cols, cols), slice).ok()?);
        }
        Some(out)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    #[inline]
    pub fn row(&self, r: usize) -> ArrayView1<'_, T> {
        self.blocks[r / BLOCK_ROWS].row(r % BLOCK_ROWS)
    }

    /// One element (the predict path: no view built).
    #[inline]
    pub fn at(&self, r: usize, c: usize) -> &T {
        &self.blocks[r / BLOCK_ROWS][(r % BLOCK_ROWS, c)]
    }

    /// The row as a slice (blocks are contiguous, row-major).
    #[inline]
    pub fn row_slice(&self, r: usize) -> &[T] {
        let block = &self.blocks[r / BLOCK_ROWS];
        let start = (r % BLOCK_ROWS) * self.cols;
        // Blocks are built row-major by `filled` and `from_vec` and never
        // reshaped, so their memory is one contiguous run.
        &block
            .as_slice_memory_order()
            .expect("blocks are contiguous")[start..start + self.cols]
    }

    /// The row for writing as a slice; copies its block first if a clone
    /// shares it.
    #[inline]
    pub fn row_slice_mut(&mut self, r: usize) -> &mut [T] {
        let b = r / BLOCK_ROWS;
        self.touched[b] = true;
        let start = (r % BLOCK_ROWS) * self.cols;
        let cols = self.cols;
        &mut Arc::make_mut(&mut self.blocks[b])
            .as_slice_memory_order_mut()
            .expect("blocks are contiguous")[start..start + cols]
    }

    /// The row for writing; copies its block first if a clone shares it.
    #[inline]
    pub fn row_mut(&mut self, r: usize) -> ArrayViewMut1<'_, T> {
        let b = r / BLOCK_ROWS;
        self.touched[b] = true;
        Arc::make_mut(&mut self.blocks[b]).row_mut(r % BLOCK_ROWS)
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

    /// Number of blocks this value holds alone (not shared with any clone).
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
    fn vec_round_trip_with_partial_last_block() {
        let rows = BLOCK_ROWS + 3;
        let values: Vec<f32> = (0..rows * 2).map(|i| i as f32).collect();
        let b = Blocked::from_vec(rows, 2, values.clone()).unwrap();
        assert_eq!(b.row(BLOCK_ROWS + 2)[1], ((BLOCK_ROWS + 2) * 2 + 1) as f32);
        assert_eq!(b.to_vec(), values);
        assert!(Blocked::<f32>::from_vec(rows, 2, vec![0.0; 3]).is_none());
    }
}
