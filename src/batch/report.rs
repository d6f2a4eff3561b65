//! `Report`: the figures `eddy eval` prints and `--json` writes by name:
//! `accuracy`, `log_loss` and `confusion` for classification; `mae`,
//! `rmse` and `r2` for regression; `rows` always.

use serde::Serialize;

use crate::learn::linear::Moments;
use crate::learn::{Figures, LabelSpace, Output, Scores, Target, TaskKind};

#[derive(Debug, Clone)]
pub struct Tally {
    task: TaskKind,
    classes: Vec<String>,
    scores: Scores,
    /// `confusion[actual][predicted]`.
    confusion: Vec<Vec<u64>>,
    targets: Moments,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub rows: u64,
    /// Accuracy and log loss, or MAE and RMSE, by name.
    #[serde(flatten)]
    pub figures: Figures,
    /// Rows are actual classes, columns predicted ones, in `classes` order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Confusion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r2: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    pub classes: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}

impl Tally {
    pub fn new(space: &LabelSpace) -> Self {
        let n = space.n_classes();
        Self {
            task: space.kind(),
            classes: (0..n).map(|k| space.class_key(k).to_string()).collect(),
            scores: Scores::default(),
            confusion: vec![vec![0; n]; n],
            targets: Moments::default(),
        }
    }

    pub fn add(&mut self, out: &Output, y: Target) {
        self.scores.add(out, y);
        match y {
            Target::Class(c) => {
                if let (Some(p), Some(row)) = (out.argmax(), self.confusion.get_mut(c))
                    && let Some(cell) = row.get_mut(p)
                {
                    *cell += 1;
                }
            }
            Target::Value(v) => self.targets.push(v),
        }
    }

    pub fn rows(&self) -> u64 {
        self.scores.n
    }

    pub fn report(&self) -> Report {
        let f = self.scores.figures(self.task);
        let classification = self.task != TaskKind::Regression;
        let r2 = f.rmse.and_then(|rmse| {
            // 1 - SSE / SST, with SST = n * variance of the targets.
            let sse = rmse.powi(2) * self.scores.n as f64;
            let sst = self.targets.m2;
            (sst > 0.0).then(|| 1.0 - sse / sst)
        });
        Report {
            rows: self.scores.n,
            figures: f,
            confusion: classification.then(|| Confusion {
                classes: self.classes.clone(),
                counts: self.confusion.clone(),
            }),
            r2,
        }
    }
}

impl Report {
    /// The present figures as `(name, value)`: `Figures::named`, then R2.
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        let mut named = self.figures.named();
        named.extend(self.r2.map(|r2| ("r2", r2)));
        named
    }

    /// The headline figure: accuracy, or MAE.
    pub fn headline(&self) -> (&'static str, f64) {
        match (self.figures.accuracy, self.figures.mae) {
            (Some(a), _) => ("accuracy", a),
            (None, Some(m)) => ("mae", m),
            _ => ("rows", self.rows as f64),
        }
    }

    /// A plain-text rendering for terminals.
    pub fn text(&self) -> String {
        let mut out = format!("rows       {}\n", self.rows);
        for (name, v) in self.named() {
            out.push_str(&format!("{name:<10} {v:.6}\n"));
        }
        if let Some(c) = &self.confusion {
            out.push_str("confusion  (rows: actual, columns: predicted)\n");
            out.push_str(&format!("{:>12}", ""));
            for k in &c.classes {
                out.push_str(&format!(" {k:>10}"));
            }
            out.push('\n');
            for (k, row) in c.classes.iter().zip(&c.counts) {
                out.push_str(&format!("{k:>12}"));
                for n in row {
                    out.push_str(&format!(" {n:>10}"));
                }
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_and_r2_match_hand_computation() {
        let space = LabelSpace::new(TaskKind::Binary, vec![]).unwrap();
        let mut t = Tally::new(&space);
        t.add(&Output::Probabilities(vec![0.2, 0.8]), Target::Class(1));
        t.add(&Output::Probabilities(vec![0.6, 0.4]), Target::Class(1));
        t.add(&Output::Probabilities(vec![0.9, 0.1]), Target::Class(0));
        let r = t.report();
        assert_eq!(r.rows, 3);
        assert_eq!(r.figures.accuracy, Some(2.0 / 3.0));
        assert_eq!(r.confusion.unwrap().counts, vec![vec![1, 0], vec![1, 1]]);

        let space = LabelSpace::new(TaskKind::Regression, vec![]).unwrap();
        let mut t = Tally::new(&space);
        for (pred, y) in [(1.0, 1.0), (2.0, 3.0), (5.0, 5.0)] {
            t.add(&Output::Value(pred), Target::Value(y));
        }
        let r = t.report();
        // SSE = 1, SST = (1-3)^2 + 0 + (5-3)^2 = 8.
        assert!((r.r2.unwrap() - (1.0 - 1.0 / 8.0)).abs() < 1e-12);
        assert!(r.confusion.is_none() && r.figures.accuracy.is_none());
    }
}
