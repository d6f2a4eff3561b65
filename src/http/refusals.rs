//! `Refusals`: one listener's account of what it refused before a handler
//! answered (connection limit, timeouts, oversized or broken bodies,
//! overload) and of the protocol errors hyper ended connections for.
//!
//! Every event is counted (`eddy_http_refusals_total`,
//! `eddy_http_protocol_errors_total`); the log gets at most one line per
//! `LOG_EVERY` per listener, saying how many events it stands for, so a
//! flood of hostile connections cannot flood the log too. The metric names
//! live in `metrics`; what to refuse is decided by `admission` and
//! `listener`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::{ListenerInstruments, ProtocolError, Refusal};

/// The most often a listener logs refusals.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Cheap to clone: the connection tasks and the request stage share it.
#[derive(Debug, Clone)]
pub struct Refusals(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    instruments: ListenerInstruments,
    /// Reference point of `logged_ms`.
    started: Instant,
    /// When the last line was logged (ms after `started`, plus one so that
    /// zero means never).
    logged_ms: AtomicU64,
    /// Events since the last line.
    unlogged: AtomicU64,
}

impl Refusals {
    pub fn new(instruments: ListenerInstruments) -> Self {
        Self(Arc::new(Inner {
            instruments,
            started: Instant::now(),
            logged_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }))
    }

    /// `public` or `admin`.
    pub fn listener(&self) -> &'static str {
        self.0.instruments.listener
    }

    pub fn instruments(&self) -> &ListenerInstruments {
        &self.0.instruments
    }

    /// Counts a refusal and logs it, rate-limited.
    pub fn refuse(&self, refusal: Refusal) {
        self.0.instruments.refused(refusal);
        if self.may_log() {
            let others = self.0.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                listener = self.listener(),
                reason = refusal.as_str(),
                others,
                "refused (at most one line per 10 s; others counted in eddy_http_refusals_total)"
            );
        }
    }

    /// Counts a connection hyper ended for a protocol error, rate-limited
    /// in the log like refusals.
    pub fn protocol_error(&self, kind: ProtocolError, error: &dyn std::fmt::Display) {
        self.0.instruments.protocol_error(kind);
        // A client gone mid-message (or a TCP health check) is ordinary.
        if kind == ProtocolError::Incomplete {
            tracing::debug!(listener = self.listener(), %error, "connection closed mid-message");
            return;
        }
        if self.may_log() {
            let others = self.0.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(listener = self.listener(), kind = kind.as_str(), %error, others, "http protocol error; connection closed (at most one line per 10 s; others counted in eddy_http_protocol_errors_total)");
        }
    }

    /// Whether this event may be logged; if not it is counted as unlogged.
    fn may_log(&self) -> bool {
        let now = self.0.started.elapsed().as_millis() as u64 + 1;
        let last = self.0.logged_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        // One thread wins the right to log; the others count themselves.
        if due
            && self
                .0
                .logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return true;
        }
        self.0.unlogged.fetch_add(1, Ordering::Relaxed);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn every_refusal_is_counted_but_few_are_logged() {
        let metrics = Metrics::new(Default::default());
        let refusals = Refusals::new(metrics.listeners.instruments("public"));
        for _ in 0..1000 {
            refusals.refuse(Refusal::BodyTimeout);
        }
        refusals.refuse(Refusal::Overloaded);
        assert_eq!(refusals.instruments().refusals(Refusal::BodyTimeout), 1000);
        assert_eq!(refusals.instruments().refusals(Refusal::Overloaded), 1);
        // The first was logged; the rest, inside the interval, were not.
        assert_eq!(refusals.0.unlogged.load(Ordering::Relaxed), 1000);
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains(
                "eddy_http_refusals_total{listener=\"public\",reason=\"body_timeout\"} 1000"
            ),
            "{text}"
        );
    }
}
