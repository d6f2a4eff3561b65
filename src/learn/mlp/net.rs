//! `Net`: the network's published weights (inside `Params::net`) and its
//! forward pass, which predict and the monitor's scoring run.

use super::inputs::for_each_input;
use super::{MAX_HIDDEN, MlpConfig};
use crate::learn::blocked::Blocked;
use crate::learn::eval::Scored;
use crate::learn::features::FeatureVec;
use crate::learn::label::{Target, TaskKind};
use crate::learn::linear::{Output, Params, sigmoid, softmax};

/// Rows per copy-on-write block of the embedding table: 16 rows of 64
/// floats is 4 KiB, what one block of the linear weights holds.
pub const EMBEDDING_BLOCK_ROWS: usize = 16;

/// The network's weights. Cheap to clone: the embedding table is
/// copy-on-write blocks, the dense layers are small.
#[derive(Debug, Clone)]
pub struct Net {
    pub config: MlpConfig,
    /// `2^embedding_bits x hidden`.
    pub embedding: Blocked<f32>,
    pub hidden_bias: Vec<f32>,
    /// `outputs x hidden`, row-major.
    pub output: Vec<f32>,
}

impl Net {
    /// Initial weights from `config.seed` (the model's `hash_bits` caps the
    /// embedding table's rows).
    pub fn new(config: &MlpConfig, hash_bits: u8, outputs: usize) -> Self {
        let mut config = *config;
        config.embedding_bits = config.embedding_bits.min(hash_bits);
        let rows = 1usize << config.embedding_bits;
        let hidden = config.hidden;
        let mut rng = SplitMix(config.seed);
        // Scaled so that a dozen inputs give pre-activations of about
        // 0.3 standard deviations around the bias.
        let embedding: Vec<f32> = (0..rows * hidden).map(|_| rng.uniform(0.1)).collect();
        let limit = 1.0 / (hidden as f32).sqrt();
        let output = (0..outputs * hidden).map(|_| rng.uniform(limit)).collect();
        Self {
            embedding: Blocked::from_vec_in(rows, hidden, EMBEDDING_BLOCK_ROWS, embedding)
                .expect("rows x hidden values"),
            hidden_bias: vec![0.1; hidden],
            output,
            config,
        }
    }

    /// Builds from saved tensors, checking the shapes.
    pub fn from_parts(
        config: MlpConfig,
        embedding: Vec<f32>,
        hidden_bias: Vec<f32>,
        output: Vec<f32>,
        outputs: usize,
    ) -> Option<Self> {
        let rows = 1usize.checked_shl(u32::from(config.embedding_bits))?;
        if hidden_bias.len() != config.hidden || output.len() != outputs * config.hidden {
            return None;
        }
        Some(Self {
            embedding: Blocked::from_vec_in(rows, config.hidden, EMBEDDING_BLOCK_ROWS, embedding)?,
            hidden_bias,
            output,
            config,
        })
    }

    pub fn hidden(&self) -> usize {
        self.config.hidden
    }

    /// The embedding row of a hashed row.
    #[inline]
    pub(super) fn row(&self, r: usize) -> usize {
        r & (self.embedding.rows() - 1)
    }

    /// Hidden activations (after ReLU) into `hidden` and raw outputs
    /// (logits, or the standardised regression value) into `out`.
    #[inline]
    pub(super) fn forward(&self, p: &Params, x: &FeatureVec, hidden: &mut [f32], out: &mut [f32]) {
        hidden.copy_from_slice(&self.hidden_bias);
        out.copy_from_slice(&p.bias);
        for_each_input(p, x, &self.config, |r, v| {
            add_scaled(hidden, self.embedding.row_slice(self.row(r)), v);
            if let [o] = out {
                *o += p.weights.at(r, 0) * v;
            } else {
                add_scaled(out, p.weights.row_slice(r), v);
            }
        });
        relu(hidden);
        self.add_output(hidden, out);
    }

    /// `out += output x hidden`.
    #[inline]
    pub(super) fn add_output(&self, hidden: &[f32], out: &mut [f32]) {
        for (o, w) in out.iter_mut().zip(self.output.chunks_exact(hidden.len())) {
            *o += dot(w, hidden);
        }
    }

    pub fn predict(&self, p: &Params, x: &FeatureVec) -> Output {
        with_buffer(self.hidden(), |hidden| self.predict_with(p, x, hidden))
    }

    fn predict_with(&self, p: &Params, x: &FeatureVec, hidden: &mut [f32]) -> Output {
        let mut z = [0.0f32; 1];
        match p.space.kind() {
            TaskKind::Binary => {
                self.forward(p, x, hidden, &mut z);
                let p1 = sigmoid(z[0]);
                Output::Probabilities(vec![1.0 - p1, p1])
            }
            TaskKind::Regression => {
                self.forward(p, x, hidden, &mut z);
                Output::Value(p.target_value(z[0]))
            }
            TaskKind::Multiclass => {
                let mut z = vec![0.0; p.outputs()];
                self.forward(p, x, hidden, &mut z);
                softmax(&mut z);
                Output::Probabilities(z)
            }
        }
    }

    /// As `Params::score`: without allocating for binary and regression.
    pub fn score(&self, p: &Params, x: &FeatureVec, y: Target) -> Scored {
        with_buffer(self.hidden(), |hidden| {
            p.score_one_output(y, |z| self.forward(p, x, hidden, z))
        })
        .unwrap_or_else(|| Scored::of(&self.predict(p, x), y))
    }
}

/// Runs `f` on a zeroed stack buffer of `len` floats: a small one for the
/// usual widths, so a prediction at the default `hidden` (64) zeroes 512
/// bytes rather than `MAX_HIDDEN`'s 4 KiB.
#[inline]
fn with_buffer<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    const SMALL: usize = 128;
    if len <= SMALL {
        let mut buffer = [0.0f32; SMALL];
        f(&mut buffer[..len])
    } else {
        let mut buffer = [0.0f32; MAX_HIDDEN];
        f(&mut buffer[..len])
    }
}

#[inline]
pub(super) fn add_scaled(acc: &mut [f32], w: &[f32], v: f32) {
    for (a, w) in acc.iter_mut().zip(w) {
        *a += w * v;
    }
}

#[inline]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler keep them in one vector register;
    // the order is fixed, so the result is the same on every run.
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[inline]
fn relu(h: &mut [f32]) {
    for v in h {
        *v = v.max(0.0);
    }
}

/// SplitMix64: a fixed, tiny generator, so the initial weights depend on
/// the seed alone (never on a crate's choice of algorithm).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[-limit, limit)`.
    fn uniform(&mut self, limit: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * limit
    }
}
