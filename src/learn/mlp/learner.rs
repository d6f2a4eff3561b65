//! `NetLearner`: the trainer's side of the network, its update state
//! (`NetState`, saved in snapshots) and the step on one example.
//!
//! The step is RMSprop-shaped with a constant rate: each weight moves by
//! `learning_rate * g / sqrt(s)`, `s` a running mean of squared gradients
//! (started at the first gradient seen, so the first step is not
//! `1 / sqrt(1 - decay)` times too long). The dense layers keep `s` per
//! weight; the two hashed tables (embedding and wide weights) per row,
//! over the row's gradient, which costs one float per row instead of one
//! per weight and keeps a rare row's step as long as a frequent one's.

use super::inputs::for_each_input;
use super::net::{Net, add_scaled};
use crate::learn::blocked::{BLOCK_ROWS, Blocked};
use crate::learn::features::FeatureVec;
use crate::learn::label::{Target, TaskKind};
use crate::learn::linear::{Params, sigmoid, softmax};

/// Decay of the running mean of squared gradients.
const DECAY: f32 = 0.99;
const EPS: f32 = 1e-8;

/// What the update keeps besides the weights: never published, saved in
/// snapshots with the learner.
#[derive(Debug, Clone)]
pub struct NetState {
    /// Per embedding row, `2^embedding_bits x 1`.
    pub embedding: Blocked<f32>,
    /// Per wide (linear) row, `2^hash_bits x 1`.
    pub wide: Blocked<f32>,
    pub hidden_bias: Vec<f32>,
    /// `outputs x hidden`.
    pub output: Vec<f32>,
    /// Per output intercept.
    pub bias: Vec<f32>,
    /// Examples learned.
    pub steps: u64,
}

impl NetState {
    pub fn new(net: &Net, wide_rows: usize, outputs: usize) -> Self {
        Self {
            embedding: Blocked::filled_in(net.embedding.rows(), 1, BLOCK_ROWS, 0.0),
            wide: Blocked::filled_in(wide_rows, 1, BLOCK_ROWS, 0.0),
            hidden_bias: vec![0.0; net.hidden()],
            output: vec![0.0; outputs * net.hidden()],
            bias: vec![0.0; outputs],
            steps: 0,
        }
    }

    /// True when the shapes fit `net` and a wide table of `wide_rows`.
    pub fn fits(&self, net: &Net, wide_rows: usize, outputs: usize) -> bool {
        self.embedding.rows() == net.embedding.rows()
            && self.wide.rows() == wide_rows
            && self.hidden_bias.len() == net.hidden()
            && self.output.len() == outputs * net.hidden()
            && self.bias.len() == outputs
    }
}

/// The network's update state plus scratch for one example.
#[derive(Debug, Clone)]
pub struct NetLearner {
    state: NetState,
    inputs: Vec<(usize, f32)>,
    hidden: Vec<f32>,
    delta: Vec<f32>,
    grad: Vec<f32>,
}

impl NetLearner {
    pub fn new(state: NetState) -> Self {
        Self {
            inputs: Vec::new(),
            hidden: vec![0.0; state.hidden_bias.len()],
            delta: vec![0.0; state.hidden_bias.len()],
            grad: vec![0.0; state.bias.len()],
            state,
        }
    }

    pub fn state(&self) -> &NetState {
        &self.state
    }

    /// One step on one example; `p.net` must be the network this state
    /// belongs to (the caller, `Learner`, only builds one that way).
    pub fn learn_one(&mut self, p: &mut Params, x: &FeatureVec, y: Target) {
        for f in &x.features {
            if f.numeric {
                p.scaler.row_mut(f.index as usize)[0].push(f.value);
            }
        }
        let Some(net) = p.net.as_ref() else {
            return;
        };
        let lr = net.config.learning_rate as f32;
        self.inputs.clear();
        let inputs = &mut self.inputs;
        for_each_input(p, x, &net.config, |r, v| inputs.push((r, v)));
        // Forward, keeping the activations.
        let (hidden, z) = (&mut self.hidden, &mut self.grad);
        hidden.copy_from_slice(&net.hidden_bias);
        z.copy_from_slice(&p.bias);
        for &(r, v) in self.inputs.iter() {
            add_scaled(hidden, net.embedding.row_slice(net.row(r)), v);
            add_scaled(z, p.weights.row_slice(r), v);
        }
        for h in hidden.iter_mut() {
            *h = h.max(0.0);
        }
        net.add_output(hidden, z);
        // z becomes the loss gradient with respect to each output.
        match (p.space.kind(), y) {
            (TaskKind::Binary, Target::Class(c)) => z[0] = sigmoid(z[0]) - c as f32,
            (TaskKind::Multiclass, Target::Class(c)) => {
                softmax(z);
                z[c] -= 1.0;
            }
            (TaskKind::Regression, Target::Value(v)) => {
                p.target.push(v);
                let (mean, sd) = p.target_scale();
                z[0] -= ((v - mean) / sd) as f32;
            }
            _ => return,
        }
        if !z.iter().all(|g| g.is_finite()) {
            return;
        }
        let st = &mut self.state;
        st.steps += 1;
        let Some(net) = p.net.as_mut() else {
            return;
        };
        let h_len = hidden.len();
        // Output layer and the error it sends back to each hidden unit
        // (through the weights as they were, before this step).
        self.delta.iter_mut().for_each(|d| *d = 0.0);
        for (k, g) in z.iter().enumerate() {
            let w = &mut net.output[k * h_len..(k + 1) * h_len];
            let s = &mut st.output[k * h_len..(k + 1) * h_len];
            for j in 0..h_len {
                self.delta[j] += g * w[j];
                rms_step(&mut w[j], &mut s[j], g * hidden[j], lr);
            }
            rms_step(&mut p.bias[k], &mut st.bias[k], *g, lr);
        }
        let mut delta_sq = 0.0;
        for (d, h) in self.delta.iter_mut().zip(hidden.iter()) {
            if *h <= 0.0 {
                *d = 0.0;
            }
            delta_sq += *d * *d;
        }
        for (j, d) in self.delta.iter().enumerate() {
            rms_step(&mut net.hidden_bias[j], &mut st.hidden_bias[j], *d, lr);
        }
        let delta_ms = delta_sq / h_len as f32;
        let g_ms = z.iter().map(|g| g * g).sum::<f32>() / z.len() as f32;
        for &(r, v) in self.inputs.iter() {
            if delta_ms > 0.0 {
                let e = net.row(r);
                let rate = row_rate(&mut st.embedding.row_slice_mut(e)[0], v * v * delta_ms, lr);
                add_scaled(net.embedding.row_slice_mut(e), &self.delta, -rate * v);
            }
            let rate = row_rate(&mut st.wide.row_slice_mut(r)[0], v * v * g_ms, lr);
            add_scaled(p.weights.row_slice_mut(r), z, -rate * v);
        }
    }
}

/// Updates a running mean of squared gradients with `g2` and returns the
/// step per unit of gradient.
#[inline]
fn row_rate(s: &mut f32, g2: f32, lr: f32) -> f32 {
    *s = if *s == 0.0 {
        g2
    } else {
        DECAY * *s + (1.0 - DECAY) * g2
    };
    lr / (s.sqrt() + EPS)
}

#[inline]
fn rms_step(w: &mut f32, s: &mut f32, g: f32, lr: f32) {
    let rate = row_rate(s, g * g, lr);
    *w -= rate * g;
}
