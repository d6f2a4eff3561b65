//! `Clock`: where the trainer and the monitor read the time. Every
//! time-based decision they make (publish coalescing, the gate's time
//! budget and hold, snapshot and promotion-snapshot intervals, report
//! cadence) reads an injected clock, so tests, `eddy eval --monitor` and
//! log replay can run the default configuration deterministically with a
//! `ManualClock`, while the server runs on `SystemClock`.
//!
//! Readings are durations since the Unix epoch. `SystemClock` takes the
//! wall time once at start and advances it with the monotonic clock, so
//! intervals never run backwards within a process and readings stay
//! comparable across restarts (for times a log records). Waiting for
//! feedback (`max_wait_ms`, the shutdown grace) is not a decision and uses
//! the runtime's timers.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + Debug {
    /// The time now, as a duration since the Unix epoch.
    fn now(&self) -> Duration;
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// Wall time at start, advanced by the monotonic clock.
#[derive(Debug)]
pub struct SystemClock {
    origin: Duration,
    started: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self {
            origin: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            started: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin + self.started.elapsed()
    }
}

/// A clock that moves only when told to (tests, in-process drivers, replay).
#[derive(Debug, Default)]
pub struct ManualClock {
    micros: AtomicU64,
}

impl ManualClock {
    pub fn at(t: Duration) -> Self {
        let c = Self::default();
        c.set(t);
        c
    }

    pub fn set(&self, t: Duration) {
        self.micros.store(
            t.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Release,
        );
    }

    pub fn advance(&self, by: Duration) {
        self.micros.fetch_add(
            by.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::AcqRel,
        );
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::at(Duration::from_secs(5));
        assert_eq!(c.now(), Duration::from_secs(5));
        assert_eq!(c.now(), Duration::from_secs(5));
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now(), Duration::from_millis(6500));
        let s = SystemClock::default();
        let (a, b) = (s.now(), s.now());
        assert!(b >= a && a > Duration::from_secs(1_600_000_000));
    }
}
