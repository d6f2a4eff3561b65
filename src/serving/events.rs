//! `EventLog`: what the safety loop did to a model and why (rollbacks,
//! promotions, gate refusals, blamed sources, pauses), newest last and
//! bounded. The trainer appends; `GET /admin/models/{model}/events` reads.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// Events kept per model; older ones fall off.
pub const EVENTS_KEPT: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Rollback,
    Promotion,
    GateRefused,
    Paused,
    Resumed,
    SourceBlamed,
    SourceReadmitted,
    SnapshotFailed,
    /// Label sanity flagged a source: its examples are quarantined.
    SourceFlagged,
    SourceCleared,
    QuarantineReleased,
    QuarantineDropped,
    /// The quarantine was over its bounds and dropped its oldest.
    QuarantineFull,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub kind: EventKind,
    /// RFC 3339, UTC.
    pub at: String,
    /// The live version after the event (the promoted one for promotions).
    pub version: u64,
    pub reason: String,
    /// The numbers behind the decision (accuracies, losses, p-values,
    /// counts), by name.
    pub figures: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    pub fn new(kind: EventKind, version: u64, reason: impl Into<String>) -> Self {
        Self {
            kind,
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            version,
            reason: reason.into(),
            figures: serde_json::Map::new(),
        }
    }

    /// Adds a figure; non-finite numbers become null (JSON has no NaN).
    pub fn figure(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.figures.insert(name.to_owned(), value.into());
        self
    }
}

#[derive(Debug, Default)]
pub struct EventLog {
    events: Mutex<VecDeque<Event>>,
    /// Events ever pushed (the list keeps the newest `EVENTS_KEPT`).
    total: std::sync::atomic::AtomicU64,
}

impl EventLog {
    pub fn push(&self, event: Event) {
        tracing::info!(kind = ?event.kind, version = event.version, reason = %event.reason, figures = %serde_json::Value::Object(event.figures.clone()), "monitor event");
        let mut events = self.lock();
        events.push_back(event);
        self.total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        while events.len() > EVENTS_KEPT {
            events.pop_front();
        }
    }

    /// Every kept event, oldest first.
    pub fn all(&self) -> Vec<Event> {
        self.lock().iter().cloned().collect()
    }

    /// The newest `n` kept events, oldest first.
    pub fn newest(&self, n: usize) -> Vec<Event> {
        let events = self.lock();
        events
            .iter()
            .skip(events.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Events ever pushed.
    pub fn total(&self) -> u64 {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The kept events pushed after the first `seen` ones.
    pub fn since(&self, seen: u64) -> Vec<Event> {
        let events = self.lock();
        let newer = self.total().saturating_sub(seen) as usize;
        events
            .iter()
            .skip(events.len().saturating_sub(newer))
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
        // Each mutation is one push or pop; a poisoned lock leaves it whole.
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_events_in_order() {
        let log = EventLog::default();
        for v in 0..(EVENTS_KEPT as u64 + 10) {
            log.push(Event::new(EventKind::Promotion, v, "test").figure("x", 1.5));
        }
        let all = log.all();
        assert_eq!(all.len(), EVENTS_KEPT);
        assert_eq!(all.first().map(|e| e.version), Some(10));
        assert_eq!(all.last().map(|e| e.version), Some(EVENTS_KEPT as u64 + 9));
        let json = serde_json::to_value(&all[0]).unwrap();
        assert_eq!(json["kind"], "promotion");
        assert_eq!(json["figures"]["x"], 1.5);
    }
}
