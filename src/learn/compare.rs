//! Paired comparison of two model versions on the same labelled examples:
//! the statistics behind "is the live model worse than the last good one?".
//!
//! Classification compares accuracy with an exact one-sided McNemar test
//! on the discordant pairs (examples exactly one of the two got right);
//! regression compares per-example losses with a one-sided paired t-test.
//! A window is judged once, at its end, so testing repeatedly does not
//! inflate false alarms: the caller feeds non-overlapping windows.

use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, StudentsT};

use super::eval::Scored;
use super::label::TaskKind;

/// When a live version counts as degraded against its baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DegradationRule {
    /// Accuracy points (classification), or relative loss increase
    /// (regression), the live version may lose before it counts.
    pub tolerance: f64,
    /// Paired examples needed before any verdict.
    pub min_samples: u64,
    /// Significance level of the one-sided test.
    pub alpha: f64,
}

/// Accumulates one window of paired scores.
///
/// Streams are autocorrelated (Elec2 is half-hourly: neighbouring examples
/// are nearly the same), so single examples are not independent and a test
/// that counts them as such is overconfident: on clean Elec2 it flags
/// "significant" differences between two sound versions again and again.
/// With `block > 1` the tests therefore run on the means of consecutive
/// blocks of `block` examples (the batch-means method of simulation output
/// analysis), and they test the tolerance itself: "worse by more than
/// `tolerance`" is the hypothesis, a one-sided t-test of the block mean
/// differences against that margin (a non-inferiority test), rather than
/// "worse at all" plus a point estimate over the margin. With `block = 1`
/// (independent examples) accuracy uses the exact McNemar test. A trailing
/// partial block counts toward the totals but not the test.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairedWindow {
    pub n: u64,
    block: u64,
    live_correct: u64,
    base_correct: u64,
    /// Live right, baseline wrong.
    live_only: u64,
    /// Baseline right, live wrong.
    base_only: u64,
    live_loss: f64,
    base_loss: f64,
    /// The block being filled: examples, and correct and loss totals.
    cur_n: u64,
    cur_correct_diff: i64,
    cur_loss_diff: f64,
    cur_live_correct: u64,
    cur_base_correct: u64,
    cur_live_loss: f64,
    cur_base_loss: f64,
    /// Per block, each side's error rate and mean loss: its quality as a
    /// sample of block means (for unpaired comparisons across windows).
    live_block_err: LossSample,
    base_block_err: LossSample,
    live_block_loss: LossSample,
    base_block_loss: LossSample,
    /// Complete blocks, and those each version won on accuracy.
    blocks: u64,
    live_blocks: u64,
    base_blocks: u64,
    /// Sums of the block mean loss difference (live - baseline) and its square.
    diff: f64,
    diff_sq: f64,
    /// Sums of the block accuracy difference (baseline - live) and its square.
    acc_diff: f64,
    acc_diff_sq: f64,
}

impl Default for PairedWindow {
    fn default() -> Self {
        Self::with_block(1)
    }
}

/// The outcome of judging a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Fewer than `min_samples` paired examples.
    Insufficient,
    /// Not worse by more than the tolerance, or not significantly.
    Fine { p_value: f64 },
    /// Worse by more than the tolerance, significantly.
    Degraded { p_value: f64 },
}

impl PairedWindow {
    /// An empty window whose tests use blocks of `block` examples.
    pub fn with_block(block: u64) -> Self {
        Self {
            n: 0,
            block: block.max(1),
            live_correct: 0,
            base_correct: 0,
            live_only: 0,
            base_only: 0,
            live_loss: 0.0,
            base_loss: 0.0,
            cur_n: 0,
            cur_correct_diff: 0,
            cur_loss_diff: 0.0,
            cur_live_correct: 0,
            cur_base_correct: 0,
            cur_live_loss: 0.0,
            cur_base_loss: 0.0,
            live_block_err: LossSample::default(),
            base_block_err: LossSample::default(),
            live_block_loss: LossSample::default(),
            base_block_loss: LossSample::default(),
            blocks: 0,
            live_blocks: 0,
            base_blocks: 0,
            diff: 0.0,
            diff_sq: 0.0,
            acc_diff: 0.0,
            acc_diff_sq: 0.0,
        }
    }

    /// One classification example scored by both versions.
    pub fn add_class(
        &mut self,
        live_correct: bool,
        base_correct: bool,
        live_loss: f64,
        base_loss: f64,
    ) {
        self.live_correct += u64::from(live_correct);
        self.base_correct += u64::from(base_correct);
        self.live_only += u64::from(live_correct && !base_correct);
        self.base_only += u64::from(base_correct && !live_correct);
        self.cur_correct_diff += i64::from(live_correct) - i64::from(base_correct);
        self.cur_live_correct += u64::from(live_correct);
        self.cur_base_correct += u64::from(base_correct);
        self.add_losses(live_loss, base_loss);
    }

    /// One regression example scored by both versions (e.g. squared error).
    pub fn add_loss(&mut self, live_loss: f64, base_loss: f64) {
        self.add_losses(live_loss, base_loss);
    }

    /// One example scored by both versions, whatever the task.
    pub fn add(&mut self, live: Scored, base: Scored) {
        match (live, base) {
            (
                Scored::Class {
                    correct: lc,
                    log_loss: ll,
                },
                Scored::Class {
                    correct: bc,
                    log_loss: bl,
                },
            ) => self.add_class(lc, bc, ll, bl),
            _ => self.add_loss(live.loss(), base.loss()),
        }
    }

    /// Judges with the test that fits the task: accuracy (McNemar) for
    /// classification, mean loss (paired t-test) for regression.
    pub fn judge(&self, rule: &DegradationRule, task: TaskKind) -> Verdict {
        match task {
            TaskKind::Regression => self.judge_loss(rule),
            TaskKind::Binary | TaskKind::Multiclass => self.judge_accuracy(rule),
        }
    }

    /// `judge` for rolling back versions already served: a classifier
    /// that is less accurate than the baseline but lower in mean log
    /// loss, the loss it learns by, is not degraded. That is a learner
    /// tracking the stream more closely and more noisily (a fast rate on
    /// an autocorrelated stream), not one bad data moved: poisoned or
    /// broken inputs raise both. Only here, not at the gate or for
    /// promotion: labels made noisy on purpose pull a candidate's
    /// probabilities towards 1/2, which can beat an overconfident
    /// last-good's log loss by a hair, and the gate's accuracy test is
    /// what keeps such a candidate from being published.
    pub fn judge_rollback(&self, rule: &DegradationRule, task: TaskKind) -> Verdict {
        match self.judge(rule, task) {
            Verdict::Degraded { p_value }
                if task != TaskKind::Regression
                    && self.live_mean_loss() < self.base_mean_loss() =>
            {
                Verdict::Fine { p_value }
            }
            v => v,
        }
    }

    /// Whether the live side was at least as good as the baseline over
    /// this window (the promotion criterion).
    pub fn live_at_least_as_good(&self, task: TaskKind) -> bool {
        match task {
            TaskKind::Regression => self.live_mean_loss() <= self.base_mean_loss(),
            TaskKind::Binary | TaskKind::Multiclass => self.live_accuracy() >= self.base_accuracy(),
        }
    }

    /// The figures behind a verdict, for events and logs.
    pub fn figures(&self, task: TaskKind) -> Vec<(&'static str, f64)> {
        let mut f = vec![("examples", self.n as f64)];
        match task {
            TaskKind::Regression => {
                f.push(("live_mean_loss", self.live_mean_loss()));
                f.push(("baseline_mean_loss", self.base_mean_loss()));
            }
            TaskKind::Binary | TaskKind::Multiclass => {
                f.push(("live_accuracy", self.live_accuracy()));
                f.push(("baseline_accuracy", self.base_accuracy()));
                f.push(("live_only_correct", self.live_only as f64));
                f.push(("baseline_only_correct", self.base_only as f64));
                f.push(("blocks", self.blocks as f64));
                f.push(("blocks_live_better", self.live_blocks as f64));
                f.push(("blocks_baseline_better", self.base_blocks as f64));
                f.push(("live_log_loss", self.live_mean_loss()));
                f.push(("baseline_log_loss", self.base_mean_loss()));
            }
        }
        f
    }

    fn add_losses(&mut self, live: f64, base: f64) {
        self.n += 1;
        self.live_loss += live;
        self.base_loss += base;
        self.cur_n += 1;
        self.cur_loss_diff += live - base;
        self.cur_live_loss += live;
        self.cur_base_loss += base;
        if self.cur_n == self.block {
            let b = self.block as f64;
            self.live_block_err
                .add(1.0 - self.cur_live_correct as f64 / b);
            self.base_block_err
                .add(1.0 - self.cur_base_correct as f64 / b);
            self.live_block_loss.add(self.cur_live_loss / b);
            self.base_block_loss.add(self.cur_base_loss / b);
            self.cur_live_correct = 0;
            self.cur_base_correct = 0;
            self.cur_live_loss = 0.0;
            self.cur_base_loss = 0.0;
            self.blocks += 1;
            self.live_blocks += u64::from(self.cur_correct_diff > 0);
            self.base_blocks += u64::from(self.cur_correct_diff < 0);
            let d = self.cur_loss_diff / self.block as f64;
            self.diff += d;
            self.diff_sq += d * d;
            let a = -(self.cur_correct_diff as f64) / self.block as f64;
            self.acc_diff += a;
            self.acc_diff_sq += a * a;
            self.cur_n = 0;
            self.cur_correct_diff = 0;
            self.cur_loss_diff = 0.0;
        }
    }

    /// Complete blocks so far.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The live side's per-block badness (error rate for classification,
    /// mean loss for regression), as a sample.
    pub fn live_blocks_badness(&self, task: TaskKind) -> LossSample {
        match task {
            TaskKind::Regression => self.live_block_loss,
            TaskKind::Binary | TaskKind::Multiclass => self.live_block_err,
        }
    }

    /// The baseline side's per-block badness.
    pub fn base_blocks_badness(&self, task: TaskKind) -> LossSample {
        match task {
            TaskKind::Regression => self.base_block_loss,
            TaskKind::Binary | TaskKind::Multiclass => self.base_block_err,
        }
    }

    pub fn live_accuracy(&self) -> f64 {
        ratio(self.live_correct as f64, self.n)
    }

    pub fn base_accuracy(&self) -> f64 {
        ratio(self.base_correct as f64, self.n)
    }

    pub fn live_mean_loss(&self) -> f64 {
        ratio(self.live_loss, self.n)
    }

    pub fn base_mean_loss(&self) -> f64 {
        ratio(self.base_loss, self.n)
    }

    /// Is the live version worse on accuracy by more than the tolerance?
    /// Blocks: t-test of the block accuracy differences against the
    /// margin. Single examples: exact McNemar (under "equally good" each
    /// discordant pair goes either way with probability 1/2) plus the
    /// point estimate over the margin.
    pub fn judge_accuracy(&self, rule: &DegradationRule) -> Verdict {
        if self.n < rule.min_samples {
            return Verdict::Insufficient;
        }
        let worse_by = self.base_accuracy() - self.live_accuracy();
        if self.block > 1 {
            return self.margin_test(
                self.acc_diff,
                self.acc_diff_sq,
                rule.tolerance,
                worse_by > rule.tolerance,
                rule.alpha,
            );
        }
        let discordant = self.live_only + self.base_only;
        let p_value = if discordant == 0 || self.base_only == 0 {
            1.0
        } else {
            // P(X >= base_only), X ~ Binomial(discordant, 1/2).
            Binomial::new(0.5, discordant).map_or(1.0, |b| b.sf(self.base_only - 1))
        };
        decide(worse_by > rule.tolerance, p_value, rule.alpha)
    }

    /// Is the live version worse on mean loss by more than the tolerance
    /// (relative to the baseline's mean loss)? One-sided paired t-test of
    /// the block mean differences against that margin.
    pub fn judge_loss(&self, rule: &DegradationRule) -> Verdict {
        if self.n < rule.min_samples {
            return Verdict::Insufficient;
        }
        let base = self.base_mean_loss();
        let margin = base * rule.tolerance;
        let worse = self.live_mean_loss() > base + margin;
        self.margin_test(self.diff, self.diff_sq, margin, worse, rule.alpha)
    }

    /// t-test that the mean of the block differences (given by their sum
    /// and sum of squares) exceeds `margin`.
    fn margin_test(&self, sum: f64, sum_sq: f64, margin: f64, worse: bool, alpha: f64) -> Verdict {
        if self.blocks < 2 {
            return Verdict::Insufficient;
        }
        let n = self.blocks as f64;
        let mean = sum / n;
        let var = ((sum_sq - n * mean * mean) / (n - 1.0)).max(0.0);
        let excess = mean - margin;
        let p_value = if var == 0.0 {
            if excess > 0.0 { 0.0 } else { 1.0 }
        } else {
            let t = excess / (var / n).sqrt();
            StudentsT::new(0.0, 1.0, n - 1.0).map_or(1.0, |d| d.sf(t))
        };
        decide(worse, p_value, alpha)
    }
}

/// Running count, sum and sum of squares of one group's per-example losses.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossSample {
    pub n: u64,
    sum: f64,
    sum_sq: f64,
}

impl LossSample {
    pub fn add(&mut self, loss: f64) {
        self.n += 1;
        self.sum += loss;
        self.sum_sq += loss * loss;
    }

    pub fn mean(&self) -> f64 {
        ratio(self.sum, self.n)
    }

    /// This sample with a sub-sample of it taken out.
    pub fn without(&self, part: &LossSample) -> LossSample {
        LossSample {
            n: self.n.saturating_sub(part.n),
            sum: self.sum - part.sum,
            sum_sq: (self.sum_sq - part.sum_sq).max(0.0),
        }
    }

    fn variance(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
    }

    /// One-sided Welch t-test that this group's mean loss is above
    /// `other`'s: the p-value (1 when either group has under two examples).
    pub fn p_above(&self, other: &LossSample) -> f64 {
        self.p_above_by(other, 0.0)
    }

    /// One-sided Welch t-test that this group's mean is above `other`'s by
    /// more than `margin`.
    pub fn p_above_by(&self, other: &LossSample, margin: f64) -> f64 {
        if self.n < 2 || other.n < 2 {
            return 1.0;
        }
        let (va, vb) = (
            self.variance() / self.n as f64,
            other.variance() / other.n as f64,
        );
        let diff = self.mean() - other.mean() - margin;
        let se2 = va + vb;
        if se2 == 0.0 {
            return if diff > 0.0 { 0.0 } else { 1.0 };
        }
        let t = diff / se2.sqrt();
        // Welch-Satterthwaite degrees of freedom.
        let df = se2 * se2
            / (va * va / (self.n - 1) as f64 + vb * vb / (other.n - 1) as f64)
                .max(f64::MIN_POSITIVE);
        StudentsT::new(0.0, 1.0, df.max(1.0)).map_or(1.0, |d| d.sf(t))
    }
}

fn decide(worse: bool, p_value: f64, alpha: f64) -> Verdict {
    if worse && p_value < alpha {
        Verdict::Degraded { p_value }
    } else {
        Verdict::Fine { p_value }
    }
}

fn ratio(total: f64, n: u64) -> f64 {
    if n == 0 { f64::NAN } else { total / n as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: DegradationRule = DegradationRule {
        tolerance: 0.02,
        min_samples: 200,
        alpha: 0.01,
    };

    /// A window where live and baseline agree except for `live_only` and
    /// `base_only` discordant examples.
    fn window(n: u64, both: u64, live_only: u64, base_only: u64) -> PairedWindow {
        let mut w = PairedWindow::default();
        for i in 0..n {
            let (l, b) = if i < both {
                (true, true)
            } else if i < both + live_only {
                (true, false)
            } else if i < both + live_only + base_only {
                (false, true)
            } else {
                (false, false)
            };
            w.add_class(l, b, f64::from(u8::from(!l)), f64::from(u8::from(!b)));
        }
        w
    }

    #[test]
    fn mcnemar_matches_the_exact_binomial_tail() {
        // 2 vs 12 discordant: P(X >= 12 | 14, 1/2) = 106 / 16384.
        let w = window(300, 200, 2, 12);
        let Verdict::Degraded { p_value } = w.judge_accuracy(&RULE) else {
            panic!("{:?}", w.judge_accuracy(&RULE))
        };
        assert!((p_value - 106.0 / 16384.0).abs() < 1e-9, "{p_value}");
    }

    #[test]
    fn a_less_accurate_live_side_with_lower_log_loss_is_not_rolled_back() {
        // 2 vs 40 discordant: worse by 12.7 points, significantly. With
        // the losses that go with it (each wrong answer costing 1) that
        // is a degradation; the same answers with the live side less sure
        // when wrong and surer when right (lower log loss overall) are a
        // noisier learner, not a damaged one, and not rolled back; the
        // gate's test (`judge`) still finds the candidate worse.
        let (live_only, base_only) = (2, 40);
        let window = |live_loss: &dyn Fn(bool) -> f64| {
            let mut w = PairedWindow::default();
            for i in 0..300 {
                let (l, b) = match i {
                    i if i < 200 => (true, true),
                    i if i < 200 + live_only => (true, false),
                    i if i < 200 + live_only + base_only => (false, true),
                    _ => (false, false),
                };
                w.add_class(l, b, live_loss(l), if b { 0.3 } else { 1.5 });
            }
            w
        };
        let same_losses = window(&|right| if right { 0.3 } else { 1.5 });
        let lower_loss = window(&|right| if right { 0.05 } else { 0.8 });
        let degraded = |v: Verdict| matches!(v, Verdict::Degraded { .. });
        assert!(degraded(
            same_losses.judge_rollback(&RULE, TaskKind::Binary)
        ));
        assert!(!degraded(
            lower_loss.judge_rollback(&RULE, TaskKind::Binary)
        ));
        assert!(degraded(lower_loss.judge(&RULE, TaskKind::Binary)));
    }

    #[test]
    fn needs_samples_significance_and_size() {
        assert_eq!(
            window(100, 50, 0, 40).judge_accuracy(&RULE),
            Verdict::Insufficient
        );
        // Worse by 3 points but not significant (8 vs 17 discordant).
        assert!(matches!(
            window(300, 200, 8, 17).judge_accuracy(&RULE),
            Verdict::Fine { .. }
        ));
        // Significant but within the tolerance (1.5 points).
        let w = window(2000, 1500, 0, 30);
        assert!(w.base_accuracy() - w.live_accuracy() < RULE.tolerance);
        assert!(matches!(w.judge_accuracy(&RULE), Verdict::Fine { .. }));
        // Both got worse together (drift): no discordance, no alarm.
        assert!(
            matches!(window(500, 250, 0, 0).judge_accuracy(&RULE), Verdict::Fine { p_value } if p_value == 1.0)
        );
        // Live better: never degraded.
        assert!(matches!(
            window(500, 200, 100, 0).judge_accuracy(&RULE),
            Verdict::Fine { .. }
        ));
    }

    /// With blocks, the test is of the margin itself: a version 10 points
    /// worse in every block is degraded; one whose 3-point deficit comes
    /// from a burst in two blocks (what autocorrelation looks like) is not
    /// shown to exceed a 2-point tolerance, though per example it would.
    #[test]
    fn block_tests_judge_the_margin() {
        let rule = DegradationRule {
            tolerance: 0.02,
            min_samples: 200,
            alpha: 0.01,
        };
        let make = |block: u64, wrong: &dyn Fn(u64) -> bool| {
            let mut w = PairedWindow::with_block(block);
            for i in 0..1000u64 {
                let live = !wrong(i);
                w.add_class(live, true, f64::from(u8::from(!live)), 0.0);
            }
            w
        };
        let spread = make(50, &|i| i % 10 == 0);
        assert_eq!(spread.blocks(), 20);
        assert!(matches!(
            spread.judge_accuracy(&rule),
            Verdict::Degraded { .. }
        ));
        let burst = |i: u64| (100..115).contains(&i) || (600..615).contains(&i);
        let clustered = make(50, &burst);
        assert!(clustered.base_accuracy() - clustered.live_accuracy() > 0.02);
        assert!(matches!(
            clustered.judge_accuracy(&rule),
            Verdict::Fine { .. }
        ));
        assert!(
            matches!(
                make(1, &burst).judge_accuracy(&rule),
                Verdict::Degraded { .. }
            ),
            "per example, the same burst looks significant"
        );
        assert!(matches!(
            make(50, &|_| false).judge_accuracy(&rule),
            Verdict::Fine { .. }
        ));
        assert_eq!(
            PairedWindow::with_block(50).judge_accuracy(&rule),
            Verdict::Insufficient
        );
    }

    #[test]
    fn welch_test_separates_a_high_loss_group() {
        let mut high = LossSample::default();
        let mut low = LossSample::default();
        let mut same = LossSample::default();
        for i in 0..100 {
            let jitter = (i % 5) as f64 * 0.05;
            high.add(1.5 + jitter);
            low.add(0.4 + jitter);
            same.add(0.4 + (4 - i % 5) as f64 * 0.05);
        }
        assert!((high.mean() - 1.6).abs() < 1e-9);
        assert!(high.p_above(&low) < 1e-10);
        assert!(low.p_above(&high) > 0.99);
        assert!(same.p_above(&low) > 0.1);
        assert_eq!(LossSample::default().p_above(&low), 1.0);
    }

    #[test]
    fn paired_loss_test_flags_a_consistent_increase() {
        let mut worse = PairedWindow::default();
        let mut noisy = PairedWindow::default();
        for i in 0..400 {
            let base = 1.0 + (i % 7) as f64 * 0.1;
            worse.add_loss(base * 1.2, base);
            // Same means, differences that cancel.
            noisy.add_loss(base + if i % 2 == 0 { 0.3 } else { -0.3 }, base);
        }
        assert!(matches!(worse.judge_loss(&RULE), Verdict::Degraded { .. }));
        assert!(matches!(noisy.judge_loss(&RULE), Verdict::Fine { .. }));
    }

    /// Under no difference, windows judged once each raise false alarms at
    /// about the nominal rate or less (the exact test is conservative).
    #[test]
    fn false_alarms_stay_below_alpha_on_equal_models() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let windows = 2000;
        let mut alarms = 0;
        for _ in 0..windows {
            let mut w = PairedWindow::default();
            for _ in 0..1000 {
                let l = rng.random_bool(0.8);
                let b = rng.random_bool(0.8);
                w.add_class(l, b, 0.0, 0.0);
            }
            let rule = DegradationRule {
                tolerance: 0.0,
                ..RULE
            };
            alarms += usize::from(matches!(w.judge_accuracy(&rule), Verdict::Degraded { .. }));
        }
        assert!(
            alarms as f64 / windows as f64 <= RULE.alpha * 1.5,
            "{alarms} alarms in {windows}"
        );
    }
}
