//! Influence limits: no single source fills more than `max_share` of the
//! last `active_examples` examples the trainer learns (the monitor judges
//! windows of that order), while two or more sources are active. A source
//! that sent more than `max_share` of the recent examples is held to that
//! share of what is learned: its excess waits, oldest first, and is learned
//! as its share allows; beyond `wait_capacity` waiting examples the oldest
//! is quarantined (reason `influence`). Sources within their share never
//! wait, so a flood does not slow honest feedback down.
//!
//! A source is active while it sent any of the last `active_examples`
//! examples screened; unattributed feedback counts as one source. With one
//! active source (a deployment with one client) nothing is limited.
//!
//! The limit is on sliding windows rather than on each minibatch so that
//! sources that send in turns (a batch each) are not held up. Sources are
//! the guard's interned ids (`SourceId`), so counting costs no string
//! comparison.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::config::InfluenceConfig;

use super::super::queue::Feedback;

/// A source as the guard counts it: an index into its bounded table of
/// names (see `Guard::source_id`).
pub type SourceId = u32;

/// Counts per source over a sliding window of examples.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Window {
    ring: VecDeque<SourceId>,
    counts: Vec<u32>,
    /// Sources with a count above zero.
    present: usize,
}

impl Window {
    fn push(&mut self, source: SourceId, size: usize) {
        let i = source as usize;
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        if self.counts[i] == 0 {
            self.present += 1;
        }
        self.counts[i] += 1;
        self.ring.push_back(source);
        while self.ring.len() > size {
            if let Some(old) = self.ring.pop_front() {
                let c = &mut self.counts[old as usize];
                *c -= 1;
                if *c == 0 {
                    self.present -= 1;
                }
            }
        }
    }

    fn count(&self, source: SourceId) -> u32 {
        self.counts.get(source as usize).copied().unwrap_or(0)
    }
}

/// The state of the limits (kept in snapshots).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Influence {
    max_share: f64,
    window: usize,
    wait_capacity: usize,
    /// Sources of the last `window` examples screened.
    arrivals: Window,
    /// Sources of the last `window` examples learned.
    learned: Window,
    /// Examples waiting for their source's share, oldest first. Snapshots
    /// keep their positions (`waiting_positions`); a restart reads them
    /// back from the log.
    #[serde(skip)]
    waiting: VecDeque<(SourceId, Feedback)>,
}

impl Influence {
    pub fn new(config: &InfluenceConfig) -> Self {
        Self {
            max_share: config.max_share,
            window: config.active_examples.min(usize::MAX as u64) as usize,
            wait_capacity: config.wait_capacity,
            arrivals: Window::default(),
            learned: Window::default(),
            waiting: VecDeque::new(),
        }
    }

    /// Notes that an example of `source` arrived (whatever becomes of it).
    pub fn arrive(&mut self, source: SourceId) {
        self.arrivals.push(source, self.window);
    }

    /// Sources that sent any of the last `window` examples.
    pub fn active(&self) -> usize {
        self.arrivals.present
    }

    /// Whether one more example of `source` may be learned now. A source
    /// that sent at most `max_share` of the recent examples always may (so
    /// honest sources never wait for a flooding one); one that sent more
    /// may have at most `max_share` of any `window` consecutive examples
    /// learned (so a burst of that size passes whole, and a flood is held
    /// to its share of every monitor window of that length).
    pub fn allows(&self, source: SourceId) -> bool {
        if self.max_share >= 1.0 || self.active() < 2 {
            return true;
        }
        let arrived = self.arrivals.count(source);
        if f64::from(arrived) <= self.max_share * self.arrivals.ring.len() as f64 {
            return true;
        }
        let mine = self.learned.count(source);
        f64::from(mine + 1) <= self.max_share * self.window as f64
    }

    /// Notes that an example of `source` is learned.
    pub fn learned(&mut self, source: SourceId) {
        self.learned.push(source, self.window);
    }

    /// Puts `fb` in the waiting line; returns the oldest waiting examples
    /// pushed out of it (to quarantine).
    pub fn wait(&mut self, source: SourceId, fb: Feedback) -> Vec<Feedback> {
        self.waiting.push_back((source, fb));
        let over = self.waiting.len().saturating_sub(self.wait_capacity);
        self.waiting.drain(..over).map(|(_, fb)| fb).collect()
    }

    /// Takes the waiting examples whose share now allows them, oldest
    /// first, marking each learned, and those of sources `blocked` says
    /// must not be learned; the others keep waiting in order.
    pub fn release(
        &mut self,
        blocked: impl Fn(SourceId) -> bool,
    ) -> (Vec<Feedback>, Vec<Feedback>) {
        let (mut out, mut refused) = (Vec::new(), Vec::new());
        if self.waiting.is_empty() {
            return (out, refused);
        }
        let mut still = VecDeque::with_capacity(self.waiting.len());
        while let Some((source, fb)) = self.waiting.pop_front() {
            if blocked(source) {
                refused.push(fb);
            } else if self.allows(source) {
                self.learned(source);
                out.push(fb);
            } else {
                still.push_back((source, fb));
            }
        }
        self.waiting = still;
        (out, refused)
    }

    /// Removes and returns the waiting examples of `source`.
    pub fn take_waiting(&mut self, source: SourceId) -> Vec<Feedback> {
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(s, _)| *s == source);
        self.waiting = kept.into();
        taken.into_iter().map(|(_, fb)| fb).collect()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn waiting_positions(&self) -> Vec<u64> {
        self.waiting.iter().map(|(_, fb)| fb.position).collect()
    }

    /// Puts back an example that was waiting when the state was saved.
    pub fn restore_waiting(&mut self, source: SourceId, fb: Feedback) {
        self.waiting.push_back((source, fb));
    }

    /// Each source's share of the learned window.
    pub fn shares(&self) -> impl Iterator<Item = (SourceId, f64)> + '_ {
        let n = self.learned.ring.len().max(1) as f64;
        self.learned
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(move |(s, c)| (s as SourceId, f64::from(*c) / n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{Feature, FeatureVec, Target};

    fn fb(source: &str, position: u64) -> Feedback {
        let x = FeatureVec {
            features: vec![Feature {
                index: 0,
                value: 1.0,
                numeric: true,
            }],
        };
        let mut fb = Feedback::labelled(x, Target::Class(0), Some(source.into()));
        fb.position = position;
        fb
    }

    fn limits(max_share: f64, window: u64, wait: usize) -> Influence {
        Influence::new(&InfluenceConfig {
            max_share,
            active_examples: window,
            wait_capacity: wait,
        })
    }

    /// Screens `fb` as the guard does: learned if allowed, else waits.
    fn id(fb: &Feedback) -> SourceId {
        match fb.source.as_deref() {
            Some("flood") | Some("a") => 1,
            _ => 0,
        }
    }

    fn offer(l: &mut Influence, fb: Feedback) -> (bool, Vec<Feedback>) {
        let key = id(&fb);
        l.arrive(key);
        if l.allows(key) {
            l.learned(key);
            (true, Vec::new())
        } else {
            (false, l.wait(key, fb))
        }
    }

    #[test]
    fn one_source_alone_is_never_limited() {
        let mut l = limits(0.5, 100, 10);
        for p in 0..1000 {
            assert!(offer(&mut l, fb("only", p)).0);
        }
        assert_eq!(l.waiting(), 0);
    }

    #[test]
    fn a_flooding_source_is_held_to_its_share_and_the_excess_waits_then_overflows() {
        let mut l = limits(0.5, 100, 20);
        let mut learned = std::collections::BTreeMap::<&str, usize>::new();
        let mut overflowed = 0;
        for p in 0..900u64 {
            // Five from the flooder for every one from the honest source.
            let source = if p % 6 == 0 { "honest" } else { "flood" };
            let (ok, out) = offer(&mut l, fb(source, p));
            if ok {
                *learned.entry(source).or_default() += 1;
            }
            overflowed += out.len();
            for fb in l.release(|_| false).0 {
                assert_eq!(fb.source.as_deref(), Some("flood"));
                *learned.entry("flood").or_default() += 1;
            }
        }
        let share = l.shares().find(|(s, _)| *s == 1).map(|(_, v)| v);
        assert!(share.is_some_and(|v| v <= 0.5 + 1e-9), "{share:?}");
        assert_eq!(learned["honest"], 150, "honest examples never wait");
        assert!(overflowed > 0);
        assert!(l.waiting() <= 20);
    }

    #[test]
    fn waiting_examples_go_once_the_other_source_falls_silent() {
        let mut l = limits(0.5, 10, 100);
        offer(&mut l, fb("b", 0));
        let mut waited = 0;
        for p in 1..=20 {
            if !offer(&mut l, fb("a", p)).0 {
                waited += 1;
            }
        }
        assert!(waited > 0);
        // "b" has left the arrival window: "a" is alone, everything goes.
        let released = l.release(|_| false).0;
        assert_eq!(released.len(), waited);
        assert!(released.windows(2).all(|w| w[0].position < w[1].position));
        assert_eq!(l.waiting(), 0);
    }
}
