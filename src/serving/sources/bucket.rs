//! `Buckets`: a fixed number of rate-limit buckets sharing one limit,
//! counted in examples: governor's GCRA over a state store of our own, so
//! that the state is bounded (a slot per bucket, allocated once) and a
//! charge can be given back when the request it paid for is refused
//! later.
//!
//! GCRA keeps one number per bucket, its theoretical arrival time (TAT):
//! the moment the bucket will be full again. Taking `n` examples moves it
//! `n` examples' worth of time later; a request conforms while the TAT,
//! less the burst's worth of time, is not in the future. So giving back
//! `n` examples is moving the TAT `n` examples earlier, and a bucket whose
//! TAT has passed is full: indistinguishable from a fresh one, which is
//! what makes evicting it (`SourceTable`) lose nothing.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{InsufficientCapacity, Quota, RateLimiter};

use crate::config::RateLimit;

/// Buckets of one limit, `slots` of them, all full at first.
#[derive(Debug)]
pub struct Buckets<C: Clock = MonotonicClock> {
    limiter: RateLimiter<usize, Tats, C, NoOpMiddleware<C::Instant>>,
    /// The same cells the limiter updates, for refunds, resets and trials.
    tats: Tats,
    limit: RateLimit,
    per_example: u64,
}

/// Why a bucket refused examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// Not now: the examples fit after this long.
    Wait(Duration),
    /// Never: more examples than the burst.
    ExceedsBurst { burst: u32 },
}

/// TAT cells by slot, in nanoseconds since the limiter started; `NEVER`:
/// not used since it was made or reset (full).
#[derive(Debug, Clone)]
struct Tats(Arc<[AtomicU64]>);

const NEVER: u64 = u64::MAX;

impl StateStore for Tats {
    type Key = usize;

    fn measure_and_replace<T, F, E>(&self, key: &usize, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // Keys are slots `Buckets` hands out below its length (checked in
        // `Buckets::take`), so the index holds.
        let cell = &self.0[*key];
        let mut current = cell.load(Ordering::Acquire);
        loop {
            let (outcome, next) = f((current != NEVER).then(|| Nanos::new(current)))?;
            match cell.compare_exchange_weak(
                current,
                next.as_u64(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(outcome),
                Err(actual) => current = actual,
            }
        }
    }
}

impl Buckets<MonotonicClock> {
    pub fn new(limit: RateLimit, slots: usize) -> Self {
        Self::with_clock(limit, slots, MonotonicClock)
    }
}

impl<C: Clock> Buckets<C> {
    /// Buckets on a given clock (tests use governor's fake one).
    pub fn with_clock(limit: RateLimit, slots: usize, clock: C) -> Self {
        let per_example = limit.per_example();
        // `RateLimit` never has a zero burst, nor a zero period.
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(per_example)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        let tats = Tats((0..slots.max(1)).map(|_| AtomicU64::new(NEVER)).collect());
        Self {
            limiter: RateLimiter::new(quota, tats.clone(), clock),
            tats,
            limit,
            per_example: u64::try_from(per_example.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    pub fn slots(&self) -> usize {
        self.tats.0.len()
    }

    /// Takes `n` examples from `slot`'s bucket, all or none.
    pub fn take(&self, slot: usize, n: u32) -> Result<(), Shortfall> {
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        assert!(slot < self.slots(), "slot {slot} of {}", self.slots());
        match self.limiter.check_key_n(&slot, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Shortfall::Wait(
                not_until.wait_time_from(self.limiter.clock().now()),
            )),
            Err(InsufficientCapacity(burst)) => Err(Shortfall::ExceedsBurst { burst }),
        }
    }

    /// Gives back `n` examples taken from `slot` (by a request refused
    /// after it paid). Moving the TAT back before now is harmless: a TAT in
    /// the past means a full bucket, whatever its value.
    pub fn refund(&self, slot: usize, n: u32) {
        let back = self.per_example.saturating_mul(u64::from(n));
        if let Some(cell) = self.tats.0.get(slot) {
            // `fetch_update` retries on a concurrent change; a cell that is
            // NEVER was reset meanwhile and owes nothing.
            let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                (tat != NEVER).then(|| tat.saturating_sub(back).min(NEVER - 1))
            });
        }
    }

    /// Whether `slot`'s bucket is full (as a fresh one would be). A trial
    /// take of the whole burst, then the cell put back: callers hold the
    /// lock that orders every use of the slot.
    pub fn is_full(&self, slot: usize) -> bool {
        let Some(cell) = self.tats.0.get(slot) else {
            return false;
        };
        let before = cell.load(Ordering::Acquire);
        if before == NEVER {
            return true;
        }
        let full = self.take(slot, self.limit.burst).is_ok();
        cell.store(before, Ordering::Release);
        full
    }

    /// Makes `slot`'s bucket fresh (its name changed).
    pub fn reset(&self, slot: usize) {
        if let Some(cell) = self.tats.0.get(slot) {
            cell.store(NEVER, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn buckets(
        rate: f64,
        burst: u32,
        slots: usize,
    ) -> (Buckets<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::new(rate, burst).expect("limited");
        (Buckets::with_clock(limit, slots, clock.clone()), clock)
    }

    #[test]
    fn a_bucket_holds_its_burst_then_refills_at_the_rate() {
        let (b, clock) = buckets(10.0, 5, 2);
        assert_eq!(b.take(0, 5), Ok(()));
        let Err(Shortfall::Wait(wait)) = b.take(0, 1) else {
            panic!("an empty bucket refuses");
        };
        assert_eq!(
            wait,
            Duration::from_millis(100),
            "one example's worth at 10/s"
        );
        assert_eq!(b.take(1, 5), Ok(()), "buckets are independent");
        clock.advance(Duration::from_millis(100));
        assert_eq!(b.take(0, 1), Ok(()));
        assert!(b.take(0, 1).is_err());
        // Three examples need three tenths of a second.
        let Err(Shortfall::Wait(wait)) = b.take(0, 3) else {
            panic!("refused");
        };
        assert_eq!(wait, Duration::from_millis(300));
        assert_eq!(b.take(0, 6), Err(Shortfall::ExceedsBurst { burst: 5 }));
    }

    #[test]
    fn a_refund_gives_back_exactly_what_was_taken() {
        let (b, _clock) = buckets(1.0, 4, 1);
        b.take(0, 3).expect("fits");
        b.refund(0, 3);
        assert_eq!(b.take(0, 4), Ok(()), "the whole burst again");
        assert!(b.take(0, 1).is_err());
        b.refund(0, 2);
        assert_eq!(b.take(0, 2), Ok(()));
        assert!(b.take(0, 1).is_err());
    }

    #[test]
    fn full_means_refilled_and_the_trial_changes_nothing() {
        let (b, clock) = buckets(2.0, 4, 1);
        assert!(b.is_full(0), "fresh");
        b.take(0, 1).expect("fits");
        assert!(!b.is_full(0));
        clock.advance(Duration::from_millis(499));
        assert!(!b.is_full(0));
        clock.advance(Duration::from_millis(1));
        assert!(b.is_full(0), "half a second refills one example at 2/s");
        // The trial took nothing: the whole burst is still there.
        assert_eq!(b.take(0, 4), Ok(()));
        assert!(!b.is_full(0));
        b.reset(0);
        assert!(b.is_full(0));
        assert_eq!(b.take(0, 4), Ok(()));
    }
}
