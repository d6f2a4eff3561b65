//! `StatusHistory`: a model's recent quality, version and queue depth as
//! points in time, for the admin status page's chart. A sampler in `app`
//! looks at each model every `admin.status_sample_ms` and records a point
//! only when something changed: a model that never changes keeps one
//! point, a busy one at most `POINTS_KEPT` (about 20 KB).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// Points kept per model: 42 minutes at the default five seconds.
pub const POINTS_KEPT: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StatusPoint {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub version: u64,
    /// The chart's figure (accuracy for classifiers, MAE for regression)
    /// of the live versions' rolling quality and of last-good's on the
    /// same examples (`quality` of `GET /v1/models/{model}`).
    pub live: Option<f32>,
    pub baseline: Option<f32>,
    /// Labelled examples behind `live`.
    pub examples: u64,
    pub queue_depth: usize,
}

impl StatusPoint {
    /// The same state as `other`, whatever the time.
    fn same_state(&self, other: &StatusPoint) -> bool {
        StatusPoint { at_ms: 0, ..*self } == StatusPoint { at_ms: 0, ..*other }
    }
}

#[derive(Debug, Default)]
pub struct StatusHistory {
    /// Oldest first, in time order (the sampler's clock).
    points: Mutex<VecDeque<StatusPoint>>,
}

impl StatusHistory {
    /// Keeps `point` unless it repeats the newest one; returns whether it
    /// was kept.
    pub fn record(&self, point: StatusPoint) -> bool {
        let mut points = self.lock();
        if points.back().is_some_and(|last| last.same_state(&point)) {
            return false;
        }
        if points.len() == POINTS_KEPT {
            points.pop_front();
        }
        points.push_back(point);
        true
    }

    /// The kept points recorded after `since_ms`, oldest first.
    pub fn points_since(&self, since_ms: u64) -> Vec<StatusPoint> {
        let points = self.lock();
        let newer = points.partition_point(|p| p.at_ms <= since_ms);
        points.range(newer..).copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<StatusPoint>> {
        // Each mutation is one push or pop; a poisoned lock leaves it whole.
        self.points.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at_ms: u64, version: u64, accuracy: f64, queue_depth: usize) -> StatusPoint {
        StatusPoint {
            at_ms,
            version,
            live: Some(accuracy as f32),
            baseline: None,
            examples: 10,
            queue_depth,
        }
    }

    #[test]
    fn keeps_changes_only_and_at_most_points_kept() {
        let history = StatusHistory::default();
        assert!(history.record(point(1, 1, 0.5, 0)));
        assert!(!history.record(point(2, 1, 0.5, 0)), "nothing changed");
        assert!(history.record(point(3, 1, 0.5, 4)), "the queue changed");
        assert!(history.record(point(4, 2, 0.5, 4)), "a new version");
        let times = |since| {
            history
                .points_since(since)
                .iter()
                .map(|p| p.at_ms)
                .collect::<Vec<_>>()
        };
        assert_eq!(times(0), [1, 3, 4]);
        assert_eq!(times(1), [3, 4], "only what came after");
        assert_eq!(times(4), [] as [u64; 0]);
        for i in 0..(POINTS_KEPT as u64 + 5) {
            history.record(point(10 + i, 3, i as f64, 0));
        }
        let points = history.points_since(0);
        assert_eq!(points.len(), POINTS_KEPT);
        assert_eq!(points[0].at_ms, 15, "the oldest went first");
        assert_eq!(
            points.last().map(|p| p.at_ms),
            Some(9 + POINTS_KEPT as u64 + 5)
        );
    }
}
