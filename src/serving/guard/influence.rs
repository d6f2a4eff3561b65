//! Influence limits: a source that suddenly sends more than `max_share` of
//! the feedback is held to `max_share` of any `active_examples`
//! consecutive examples the trainer learns (the monitor judges windows of
//! that order), while two or more sources are active. Its excess waits,
//! oldest first, and is learned as its share allows; beyond
//! `wait_capacity` waiting examples (or `WAIT_MAX_BYTES`) the oldest is
//! quarantined (reason `influence`). Sources within their share never
//! wait, so a flood does not slow honest feedback down.
//!
//! *Suddenly*: a source is held only while its share of the last
//! `active_examples` arrivals is above `max_share` and at least `SURGE`
//! times its share of the last `HISTORY` x `active_examples` arrivals. A
//! deployment whose sources have always been uneven (one big client, a
//! few small ones) is never throttled; a flood is held back while it is
//! new, which is when label sanity and the monitor judge it, and a source
//! that keeps its larger share for long enough becomes the new normal.
//!
//! A source is active while it sent at least `MIN_ACTIVE` and a
//! `MIN_ACTIVE_SHARE` of the last `active_examples` examples screened (a
//! trickle from a second client does not count); unattributed feedback
//! counts as one source. With one active source nothing is limited.
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

/// The long history, in windows of `active_examples` arrivals.
pub const HISTORY: usize = 10;
/// How many times its long-run share a source's recent share must be to
/// count as a surge.
pub const SURGE: f64 = 2.0;
/// What makes a source active: this many of the window's arrivals...
pub const MIN_ACTIVE: u32 = 20;
/// ...and this share of them.
pub const MIN_ACTIVE_SHARE: f64 = 0.02;
/// Bytes the waiting line may hold (features plus a fixed allowance per
/// example, the quarantine's cost formula); beyond it the oldest waiting
/// example is quarantined.
pub const WAIT_MAX_BYTES: usize = 64 << 20;

/// Counts per source over a sliding window of examples.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Window {
    ring: VecDeque<SourceId>,
    counts: Vec<u32>,
    /// Sources whose count is at least `busy` (kept as counts move).
    present: usize,
    busy: u32,
}

impl Window {
    fn new(busy: u32) -> Self {
        Self {
            busy: busy.max(1),
            ..Self::default()
        }
    }

    fn push(&mut self, source: SourceId, size: usize) {
        let i = source as usize;
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        if self.counts[i] == self.busy {
            self.present += 1;
        }
        self.ring.push_back(source);
        while self.ring.len() > size {
            if let Some(old) = self.ring.pop_front() {
                let c = &mut self.counts[old as usize];
                if *c == self.busy {
                    self.present -= 1;
                }
                *c -= 1;
            }
        }
    }

    fn share(&self, source: SourceId) -> f64 {
        f64::from(self.count(source)) / self.ring.len().max(1) as f64
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
    /// Sources of the last `window` examples screened (`present`: the
    /// active ones).
    arrivals: Window,
    /// Sources of the last `HISTORY` x `window` examples screened.
    history: Window,
    /// Sources of the last `window` examples learned.
    learned: Window,
    /// Bytes of the waiting examples (`Held::cost`'s formula).
    waiting_bytes: usize,
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
            arrivals: Window::new(Self::busy(config.active_examples)),
            history: Window::new(1),
            learned: Window::new(1),
            waiting_bytes: 0,
            waiting: VecDeque::new(),
        }
    }

    /// Arrivals in a window of `window` that make a source active.
    fn busy(window: u64) -> u32 {
        let share = (MIN_ACTIVE_SHARE * window as f64).ceil() as u32;
        MIN_ACTIVE
            .max(share)
            .min(window.clamp(1, u64::from(u32::MAX)) as u32)
    }

    /// Notes that an example of `source` arrived (whatever becomes of it).
    pub fn arrive(&mut self, source: SourceId) {
        self.arrivals.push(source, self.window);
        self.history
            .push(source, self.window.saturating_mul(HISTORY));
    }

    /// Active sources (see the module doc).
    pub fn active(&self) -> usize {
        self.arrivals.present
    }

    /// Whether `source` is surging: more than `max_share` of the recent
    /// arrivals, and `SURGE` times its long-run share.
    pub fn surging(&self, source: SourceId) -> bool {
        let recent = self.arrivals.share(source);
        recent > self.max_share && recent > SURGE * self.history.share(source)
    }

    /// Whether one more example of `source` may be learned now. A source
    /// that sent at most `max_share` of the recent examples always may (so
    /// honest sources never wait for a flooding one); one that sent more
    /// may have at most `max_share` of any `window` consecutive examples
    /// learned (so a burst of that size passes whole, and a flood is held
    /// to its share of every monitor window of that length).
    pub fn allows(&self, source: SourceId) -> bool {
        if self.max_share >= 1.0 || self.active() < 2 || !self.surging(source) {
            return true;
        }
        let mine = self.learned.count(source);
        f64::from(mine + 1) <= self.max_share * self.window as f64
    }

    /// Whether `source` counts nowhere: in no window, nothing waiting.
    pub fn idle(&self, source: SourceId) -> bool {
        self.arrivals.count(source) == 0
            && self.history.count(source) == 0
            && self.learned.count(source) == 0
            && !self.waiting.iter().any(|(s, _)| *s == source)
    }

    /// Notes that an example of `source` is learned.
    pub fn learned(&mut self, source: SourceId) {
        self.learned.push(source, self.window);
    }

    /// Puts `fb` in the waiting line; returns the oldest waiting examples
    /// pushed out of it (to quarantine).
    pub fn wait(&mut self, source: SourceId, fb: Feedback) -> Vec<Feedback> {
        self.waiting_bytes += cost(&fb);
        self.waiting.push_back((source, fb));
        let mut out = Vec::new();
        while self.waiting.len() > self.wait_capacity || self.waiting_bytes > WAIT_MAX_BYTES {
            let Some((_, old)) = self.waiting.pop_front() else {
                break;
            };
            self.waiting_bytes -= cost(&old);
            out.push(old);
        }
        out
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
        for fb in out.iter().chain(&refused) {
            self.waiting_bytes -= cost(fb);
        }
        (out, refused)
    }

    /// Removes and returns the waiting examples of `source`.
    pub fn take_waiting(&mut self, source: SourceId) -> Vec<Feedback> {
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(s, _)| *s == source);
        self.waiting = kept.into();
        let taken: Vec<Feedback> = taken.into_iter().map(|(_, fb)| fb).collect();
        for fb in &taken {
            self.waiting_bytes -= cost(fb);
        }
        taken
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn waiting_positions(&self) -> Vec<u64> {
        self.waiting.iter().map(|(_, fb)| fb.position).collect()
    }

    /// The smallest log position among the waiting examples.
    pub fn oldest_waiting(&self) -> Option<u64> {
        self.waiting.iter().map(|(_, fb)| fb.position).min()
    }

    /// Puts back an example that was waiting when the state was saved.
    pub fn restore_waiting(&mut self, source: SourceId, fb: Feedback) {
        self.waiting_bytes += cost(&fb);
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

/// What a waiting example is charged: a fixed formula, so a replay
/// pushes out exactly what the live run did.
fn cost(fb: &Feedback) -> usize {
    256 + fb.features.heap_bytes()
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
            Some("b") => 2,
            Some("c") => 3,
            Some("d") => 4,
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

    /// A second source sending one example in 60 is not active: the main
    /// one is never held (a health check must not stop learning).
    #[test]
    fn a_trickle_from_a_second_source_does_not_throttle_the_first() {
        let mut l = limits(0.5, 100, 10);
        for p in 0..5000 {
            let source = if p % 60 == 0 { "a" } else { "only" };
            assert!(offer(&mut l, fb(source, p)).0, "example {p} waited");
        }
    }

    /// Sources that have always been uneven are the normal: none waits.
    #[test]
    fn a_steady_uneven_pair_is_not_throttled() {
        let mut l = limits(0.5, 100, 10);
        for p in 0..5000u64 {
            let source = if p % 10 < 7 { "flood" } else { "honest" };
            assert!(offer(&mut l, fb(source, p)).0, "example {p} waited");
        }
    }

    #[test]
    fn a_surging_source_is_held_to_its_share_and_the_excess_waits_then_overflows() {
        let mut l = limits(0.5, 300, 20);
        // The normal: one honest source.
        for p in 0..3000u64 {
            assert!(offer(&mut l, fb("honest", p)).0);
        }
        let (mut honest, mut flood, mut overflowed) = (0, 0, 0);
        for p in 3000..3600u64 {
            // Then five from the flooder for every honest one.
            let source = if p % 6 == 0 { "honest" } else { "flood" };
            let (ok, out) = offer(&mut l, fb(source, p));
            match (ok, source) {
                (true, "honest") => honest += 1,
                (true, _) => flood += 1,
                (false, "honest") => panic!("an honest example waited"),
                (false, _) => {}
            }
            overflowed += out.len();
            flood += l.release(|_| false).0.len();
        }
        assert_eq!(honest, 100, "honest examples never wait");
        let share = l.shares().find(|(s, _)| *s == 1).map(|(_, v)| v);
        assert!(share.is_some_and(|v| v <= 0.5 + 1e-9), "{share:?}");
        // Before the flooder is active (20 of the window) it is not held.
        assert!(flood <= 150 + 20, "the flood learned {flood} of 500");
        assert!(overflowed > 0);
        assert!(l.waiting() <= 20);
    }

    #[test]
    fn waiting_examples_go_once_the_other_source_falls_silent() {
        let mut l = limits(0.5, 300, 1000);
        for p in 0..3000u64 {
            let source = ["a", "b", "c", "d"][p as usize % 4];
            offer(&mut l, fb(source, p));
        }
        let mut waited = 0;
        for p in 3000..3400 {
            if !offer(&mut l, fb("a", p)).0 {
                waited += 1;
            }
        }
        assert!(waited > 0);
        // "b" is no longer active: "a" is alone, everything goes.
        let released = l.release(|_| false).0;
        assert_eq!(released.len(), waited);
        assert!(released.windows(2).all(|w| w[0].position < w[1].position));
        assert_eq!(l.waiting(), 0);
    }
}
