//! A feature vector as the network's inputs: `(row, value)` pairs in the
//! model's hashed row space.
//!
//! A numeric feature gives its standardised value, clipped, and a 1 on
//! its quantile bin: the standardised value through a logistic CDF (close
//! to the normal one), cut into `bins` equal parts, so that each bin holds
//! about the same share of a roughly normal feature. The bin is hashed
//! with its feature's row into a row of its own. A categorical or 0/1
//! feature gives its value; zeros are skipped.
//!
//! An example with at most `crosses` numeric inputs (a low-dimensional
//! stream, where a local 2-D boundary is likely and the pairs are few)
//! also gives, for every pair of them, a 1 on the pair's cell in each of
//! `cross_tilings` grids of `cross_bins` x `cross_bins` quantile bins,
//! each grid shifted by a fraction of a bin (tile coding): the network
//! gets the grid cell directly, and the overlapping grids draw a boundary
//! finer than one grid's cells while each cell still sees many examples.
//! With more numeric inputs the pairs would crowd out the inputs (measured:
//! Elec2 loses 0.4 to 1.3 points), so such examples are left as they were.

use super::{MAX_CROSSES, MlpConfig};
use crate::learn::features::FeatureVec;
use crate::learn::linear::Params;

/// Calls `each(row, value)` for every non-zero input of `x`.
#[inline]
pub(super) fn for_each_input(
    p: &Params,
    x: &FeatureVec,
    config: &MlpConfig,
    mut each: impl FnMut(usize, f32),
) {
    let mask = (p.weights.rows() - 1) as u64;
    let clip = config.clip as f32;
    let (bins, crosses, cross_bins) = (config.bins, config.crosses, config.cross_bins);
    // The first `crosses` numeric inputs: (row, cell bin) each.
    let mut crossed = [(0u32, 0f32); MAX_CROSSES as usize];
    let mut n_numeric = 0;
    for f in &x.features {
        if f.numeric {
            let z = p
                .scaler
                .at(f.index as usize, 0)
                .standardise(f.value)
                .clamp(-clip, clip);
            if z != 0.0 {
                each(f.index as usize, z);
            }
            if bins > 0 {
                each(bin_row(f.index, bin_of(z, bins), mask), 1.0);
            }
            if n_numeric < crosses as usize {
                crossed[n_numeric] = (f.index, z);
            }
            n_numeric += 1;
        } else {
            let v = f.value as f32;
            if v != 0.0 {
                each(f.index as usize, v);
            }
        }
    }
    if n_numeric > crosses as usize {
        return;
    }
    let crossed = &crossed[..n_numeric];
    let tilings = config.cross_tilings;
    for t in 0..tilings {
        let shift = t as f32 / tilings as f32;
        for (i, &(ra, za)) in crossed.iter().enumerate() {
            let ba = tile_of(za, cross_bins, shift) + t * (cross_bins + 1);
            for &(rb, zb) in &crossed[i + 1..] {
                let bb = tile_of(zb, cross_bins, shift);
                each(cell_row((ra, ba), (rb, bb), mask), 1.0);
            }
        }
    }
}

/// The quantile bin of a standardised value: `1.702 z` through the
/// logistic function is within 0.01 of the normal CDF.
#[inline]
fn bin_of(z: f32, bins: u32) -> u32 {
    let q = 1.0 / (1.0 + (-1.702 * z).exp());
    ((q * bins as f32) as u32).min(bins - 1)
}

/// The row of bin `bin` of the feature at `row`: a fixed mix of both,
/// folded into the row space like the feature hasher's rows.
#[inline]
fn bin_row(row: u32, bin: u32, mask: u64) -> usize {
    (mix((u64::from(row) << 32 | u64::from(bin)) ^ 0x6564_6479_6269_6e73) & mask) as usize // "eddybins"
}

/// The tile of a standardised value in a grid of `bins` quantile bins
/// shifted by `shift` of a bin (`0..=bins`).
#[inline]
fn tile_of(z: f32, bins: u32, shift: f32) -> u32 {
    let q = 1.0 / (1.0 + (-1.702 * z).exp());
    ((q * bins as f32 + shift) as u32).min(bins)
}

/// The row of the grid cell of two crossed inputs, each `(row, bin)`:
/// the same whichever of the two comes first.
#[inline]
fn cell_row(a: (u32, u32), b: (u32, u32), mask: u64) -> usize {
    let (lo, hi) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    let k = mix((u64::from(lo.0) << 32 | u64::from(hi.0)) ^ 0x6564_6479_6772_6964); // "eddygrid"
    mix(k ^ (u64::from(lo.1) << 32 | u64::from(hi.1))) as usize & mask as usize
}

/// SplitMix64's finaliser: every input bit moves every output bit.
#[inline]
fn mix(mut k: u64) -> u64 {
    k = (k ^ (k >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    k = (k ^ (k >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    k ^ (k >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_split_a_normal_feature_evenly_and_saturate() {
        assert_eq!(bin_of(0.0, 16), 8);
        assert_eq!(bin_of(-1e6, 16), 0);
        assert_eq!(bin_of(1e6, 16), 15);
        // Quartiles of a standard normal: -0.674, 0, 0.674.
        assert_eq!(
            [
                bin_of(-0.7, 4),
                bin_of(-0.6, 4),
                bin_of(0.6, 4),
                bin_of(0.7, 4)
            ],
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn bin_rows_differ_by_bin_and_feature() {
        let mask = (1 << 16) - 1;
        let rows: std::collections::HashSet<usize> = (0..16)
            .flat_map(|b| [bin_row(7, b, mask), bin_row(8, b, mask)])
            .collect();
        assert_eq!(rows.len(), 32);
    }
}
