//! The rows of `GET /admin/status`, one per model: a full row (the
//! summary, the chart's history and the newest events: the page's card
//! and detail view) or a list row (the summary, rollbacks and the last
//! event's time: one line of the page's table, without the history and
//! events that make a full row heavy). Which answer holds which is
//! `status::status`'s choice.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::learn::{Family, Figures, TaskKind};
use crate::serving::ModelRuntime;
use crate::serving::events::Event;
use crate::serving::history::StatusPoint;

/// Events a full row shows, newest last.
const EVENTS_SHOWN: usize = 30;

/// What both rows say about a model now.
#[derive(Serialize)]
struct Summary<'a> {
    name: &'a str,
    task: TaskKind,
    family: Family,
    version: u64,
    /// `running` or `paused`.
    training: &'static str,
    queue_depth: usize,
    queue_capacity: usize,
    examples_trained: u64,
    last_good_version: Option<u64>,
    monitor_enabled: bool,
    live: Figures,
    baseline: Figures,
    /// Examples in quarantine now.
    quarantined: usize,
}

/// A model's summary, history and newest events.
#[derive(Serialize)]
pub struct FullRow<'a> {
    #[serde(flatten)]
    summary: Summary<'a>,
    /// Oldest first, recorded after `?since=`; a point only when
    /// something changed.
    history: Vec<StatusPoint>,
    /// The newest `EVENTS_SHOWN`, oldest first.
    events: Vec<Event>,
}

/// A model's summary in a list: a few hundred bytes.
#[derive(Serialize)]
pub struct ListRow<'a> {
    #[serde(flatten)]
    summary: Summary<'a>,
    /// Rollbacks since start-up, whatever their cause.
    rollbacks: u64,
    /// When the newest kept event happened (RFC 3339), if there is one.
    last_event_at: Option<String>,
}

/// `m`'s full row, with the history points recorded after `since_ms`.
pub fn full(m: &ModelRuntime, since_ms: u64) -> FullRow<'_> {
    FullRow {
        summary: summary(m),
        history: m.history.points_since(since_ms),
        events: m.events.newest(EVENTS_SHOWN),
    }
}

/// `m`'s list row.
pub fn listed(m: &ModelRuntime) -> ListRow<'_> {
    let stats = &m.stats;
    ListRow {
        summary: summary(m),
        rollbacks: [
            &stats.rollbacks_degraded,
            &stats.rollbacks_gate,
            &stats.rollbacks_operator,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum(),
        // One event cloned under the log's short lock.
        last_event_at: m.events.newest(1).pop().map(|e| e.at),
    }
}

fn summary(m: &ModelRuntime) -> Summary<'_> {
    let report = m.stats.monitor.load();
    Summary {
        name: &m.name,
        task: m.config.task,
        family: m.config.family,
        version: m.store.live().version,
        training: m.stats.training_state(),
        queue_depth: m.queue.depth(),
        queue_capacity: m.queue.capacity(),
        examples_trained: m.stats.examples_trained_total(),
        last_good_version: report.last_good_version,
        monitor_enabled: report.enabled,
        live: report.live.figures,
        baseline: report.baseline.figures,
        quarantined: m.stats.guard.load().quarantined,
    }
}
