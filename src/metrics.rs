//! Metrics: every metric family eddy exports, declared here and nowhere
//! else, in Prometheus text (OpenMetrics) exposition at `GET /metrics` on
//! the admin listener.
//!
//! Names start with `eddy_`, use base units (seconds) and counters end in
//! `_total` (the encoder appends it). Request-path metrics are live
//! instruments updated by handlers; per-model state that already exists as
//! atomics (queue depth, examples trained, versions, snapshots) is read at
//! scrape time by `ModelCollector`, so the trainer needs no metric handles.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::persist::wal::LogStats;
use crate::serving::sources::FeedbackSources;
use crate::serving::{ModelRuntime, Registry as Models};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub model: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuarantineLabels {
    pub model: String,
    pub reason: String,
    pub source: String,
}

/// Labels are static strings so that counting a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The matched route template (`/v1/models/{model}/predict`), or
    /// `unmatched`: bounded, whatever clients send.
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// One model's request-path instruments, resolved once so a request does
/// not hash and allocate label sets.
#[derive(Debug, Clone)]
pub struct ModelInstruments {
    pub predictions: Counter,
    pub feedback_accepted: Counter,
    pub feedback_joined: Counter,
    pub feedback_delay: Histogram,
}

/// The live instruments, shared by handlers.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Live models' instruments (swapped when a model is added or
    /// deleted at runtime, read without locks by requests).
    per_model: ArcSwap<std::collections::HashMap<Arc<str>, Arc<ModelInstruments>>>,
    /// The label sets of `feedback_rejected` and `join_misses` in use, so
    /// a deleted model's series can be removed.
    reasons: Mutex<HashSet<ReasonLabels>>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: HistogramFamily<RouteLabel>,
    pub predictions: Family<ModelLabel, Counter>,
    pub feedback_accepted: Family<ModelLabel, Counter>,
    pub feedback_joined: Family<ModelLabel, Counter>,
    pub feedback_rejected: Family<ReasonLabels, Counter>,
    pub join_misses: Family<ReasonLabels, Counter>,
    pub feedback_delay: HistogramFamily<ModelLabel>,
    /// Connection-level families of both listeners.
    pub listeners: ListenerFamilies,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn delay_histogram() -> Histogram {
    // 10 ms to about 2.8 hours: labels arrive late.
    Histogram::new(exponential_buckets(0.01, 2.0, 20))
}

/// Registers a counter family.
fn counters<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, Counter>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::default();
    registry.register(name, help, family.clone());
    family
}

/// Registers a histogram family measured in seconds.
fn histograms<L>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    make: fn() -> Histogram,
) -> HistogramFamily<L>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::new_with_constructor(make);
    registry.register_with_unit(name, help, Unit::Seconds, family.clone());
    family
}

impl Metrics {
    /// Registers every family; `models` feed the scrape-time collector.
    pub fn new(models: Arc<ArcSwap<Models>>) -> Self {
        let mut registry = Registry::with_prefix("eddy");
        let http_requests = counters(
            &mut registry,
            "http_requests",
            "HTTP requests answered, by route, method and status",
        );
        let http_duration = histograms(
            &mut registry,
            "http_request_duration",
            "Time to answer an HTTP request, by route",
            latency_histogram,
        );
        let predictions = counters(
            &mut registry,
            "predictions",
            "Predictions made (each instance of a batch counts)",
        );
        let feedback_accepted = counters(
            &mut registry,
            "feedback_accepted",
            "Labelled examples accepted onto the training queue",
        );
        let feedback_joined = counters(
            &mut registry,
            "feedback_joined",
            "Accepted examples whose features were joined from a prediction_id",
        );
        let feedback_rejected = counters(
            &mut registry,
            "feedback_rejected_requests",
            "Feedback requests refused, by error code (nothing of a refused request is accepted)",
        );
        let join_misses = counters(
            &mut registry,
            "feedback_join_misses",
            "prediction_ids that could not be joined: unknown, expired, already_labelled, label_in_flight or duplicate_prediction_id",
        );
        let feedback_delay = histograms(
            &mut registry,
            "feedback_delay",
            "Time from a prediction to its label, for feedback joined by prediction_id",
            delay_histogram,
        );
        let names: Vec<Arc<str>> = models.load().iter().map(|m| m.name.clone()).collect();
        let listeners = ListenerFamilies::register(&mut registry);
        registry.register_collector(Box::new(ModelCollector { models }));
        let metrics = Self {
            registry,
            per_model: ArcSwap::default(),
            reasons: Mutex::default(),
            http_requests,
            http_duration,
            predictions,
            feedback_accepted,
            feedback_joined,
            feedback_rejected,
            join_misses,
            feedback_delay,
            listeners,
        };
        for name in names {
            metrics.add_model(&name);
        }
        metrics
    }

    /// Creates the request-path instruments of a model (at start-up, or
    /// added at runtime).
    pub fn add_model(&self, name: &Arc<str>) {
        let label = ModelLabel {
            model: name.to_string(),
        };
        let instruments = Arc::new(ModelInstruments {
            predictions: self.predictions.get_or_create(&label).clone(),
            feedback_accepted: self.feedback_accepted.get_or_create(&label).clone(),
            feedback_joined: self.feedback_joined.get_or_create(&label).clone(),
            feedback_delay: self.feedback_delay.get_or_create(&label).clone(),
        });
        self.per_model.rcu(|current| {
            let mut next = (**current).clone();
            next.insert(name.clone(), Arc::clone(&instruments));
            next
        });
    }

    /// Removes every series of a deleted model, so metrics stay bounded
    /// by the live models. (Its scrape-time series go with it from the
    /// registry of models.)
    pub fn remove_model(&self, name: &str) {
        let mut reasons = self.reasons.lock().unwrap_or_else(PoisonError::into_inner);
        self.per_model.rcu(|current| {
            let mut next = (**current).clone();
            next.remove(name);
            next
        });
        let label = ModelLabel {
            model: name.to_owned(),
        };
        self.predictions.remove(&label);
        self.feedback_accepted.remove(&label);
        self.feedback_joined.remove(&label);
        self.feedback_delay.remove(&label);
        reasons.retain(|r| {
            if r.model != name {
                return true;
            }
            self.feedback_rejected.remove(r);
            self.join_misses.remove(r);
            false
        });
    }

    /// Exports `sources`' counters (rate-limited examples, unauthorized
    /// requests), read at scrape time.
    pub fn register_sources(&mut self, sources: Arc<FeedbackSources>) {
        self.registry
            .register_collector(Box::new(SourcesCollector { sources }));
    }

    /// The instruments of a configured model.
    pub fn model(&self, name: &str) -> Option<Arc<ModelInstruments>> {
        self.per_model.load().get(name).cloned()
    }

    /// Counts one in `family` for a live model's reason, under the lock
    /// `remove_model` takes, so a deleted model's series never comes back.
    fn count_reason(&self, family: &Family<ReasonLabels, Counter>, model: &str, reason: &str) {
        let mut reasons = self.reasons.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.per_model.load().contains_key(model) {
            return;
        }
        let labels = ReasonLabels {
            model: model.to_owned(),
            reason: reason.to_owned(),
        };
        family.get_or_create(&labels).inc();
        if !reasons.contains(&labels) {
            reasons.insert(labels);
        }
    }

    /// Counts a refused feedback request (of a live model).
    pub fn feedback_refused(&self, model: &str, code: &str) {
        self.count_reason(&self.feedback_rejected, model, code);
    }

    /// Counts a prediction_id that could not be joined (of a live model).
    pub fn join_missed(&self, model: &str, reason: &str) {
        self.count_reason(&self.join_misses, model, reason);
    }

    /// The exposition in OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Why a listener refused a connection or a request before a handler
/// answered it. A fixed set, so the label stays bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` open: the new connection was closed at once.
    ConnectionLimit,
    /// The request head did not arrive within `header_read_timeout_ms`.
    HeaderTimeout,
    /// The body did not arrive within `body_read_timeout_ms` (408).
    BodyTimeout,
    /// The body (declared or read) was over `max_body_bytes` (413).
    PayloadTooLarge,
    /// The body could not be decoded, e.g. a malformed chunk (400).
    MalformedBody,
    /// `max_concurrency` requests in flight (503 `overloaded`).
    Overloaded,
    /// The handler ran past `request_timeout_ms` (503 `timeout`).
    Timeout,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::ConnectionLimit,
        Refusal::HeaderTimeout,
        Refusal::BodyTimeout,
        Refusal::PayloadTooLarge,
        Refusal::MalformedBody,
        Refusal::Overloaded,
        Refusal::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::PayloadTooLarge => "payload_too_large",
            Refusal::MalformedBody => "malformed_body",
            Refusal::Overloaded => "overloaded",
            Refusal::Timeout => "timeout",
        }
    }
}

/// A connection hyper ended because of what the client sent, before any
/// handler saw a request: hyper answered (400, 414, 431) or closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A request head hyper could not parse (400): bad `Content-Length`,
    /// a NUL or other invalid byte in a header, a bad request line.
    Malformed,
    /// A head over hyper's limits: too many or too large headers (431), a
    /// URI too long (414).
    TooLarge,
    /// The client closed or reset the connection in the middle of a
    /// message.
    Incomplete,
    /// Anything else hyper reported on the connection.
    Other,
}

impl ProtocolError {
    pub const ALL: [ProtocolError; 4] = [
        ProtocolError::Malformed,
        ProtocolError::TooLarge,
        ProtocolError::Incomplete,
        ProtocolError::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolError::Malformed => "malformed",
            ProtocolError::TooLarge => "too_large",
            ProtocolError::Incomplete => "incomplete",
            ProtocolError::Other => "other",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `public` or `admin`.
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub listener: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolErrorLabels {
    pub listener: &'static str,
    pub kind: &'static str,
}

/// The connection-level families, labelled by listener.
#[derive(Debug, Clone)]
pub struct ListenerFamilies {
    refusals: Family<RefusalLabels, Counter>,
    protocol_errors: Family<ProtocolErrorLabels, Counter>,
    connections: Family<ListenerLabel, Gauge>,
    idle_closed: Family<ListenerLabel, Counter>,
    feedback_lane: Family<ListenerLabel, Counter>,
}

/// One listener's instruments, resolved once so that counting allocates
/// and hashes nothing.
#[derive(Debug, Clone)]
pub struct ListenerInstruments {
    pub listener: &'static str,
    refusals: [Counter; Refusal::ALL.len()],
    protocol_errors: [Counter; ProtocolError::ALL.len()],
    /// Connections open now (TLS handshakes included).
    pub connections: Gauge,
    /// Keep-alive connections closed after `idle_timeout_ms`.
    pub idle_closed: Counter,
    /// Connections served on the feedback I/O threads
    /// (`http::listener::lane`).
    pub feedback_lane: Counter,
}

impl ListenerFamilies {
    fn register(registry: &mut Registry) -> Self {
        let refusals = counters(
            registry,
            "http_refusals",
            "Connections and requests a listener refused before a handler answered, by listener and reason",
        );
        let protocol_errors = counters(
            registry,
            "http_protocol_errors",
            "Connections ended by an HTTP protocol error (hyper answered 400, 414 or 431, or closed), by listener and kind",
        );
        let connections = Family::default();
        registry.register(
            "http_connections",
            "Open connections, by listener",
            connections.clone(),
        );
        let idle_closed = counters(
            registry,
            "http_idle_closed",
            "Keep-alive connections closed after idle_timeout_ms, by listener",
        );
        let feedback_lane = counters(
            registry,
            "http_feedback_lane_connections",
            "Connections whose first request posted feedback, served on the feedback I/O threads (server.feedback_io_threads), by listener",
        );
        Self {
            refusals,
            protocol_errors,
            connections,
            idle_closed,
            feedback_lane,
        }
    }

    /// The instruments of one listener (`public` or `admin`).
    pub fn instruments(&self, listener: &'static str) -> ListenerInstruments {
        ListenerInstruments {
            listener,
            refusals: Refusal::ALL.map(|r| {
                self.refusals
                    .get_or_create(&RefusalLabels {
                        listener,
                        reason: r.as_str(),
                    })
                    .clone()
            }),
            protocol_errors: ProtocolError::ALL.map(|k| {
                self.protocol_errors
                    .get_or_create(&ProtocolErrorLabels {
                        listener,
                        kind: k.as_str(),
                    })
                    .clone()
            }),
            connections: self
                .connections
                .get_or_create(&ListenerLabel { listener })
                .clone(),
            idle_closed: self
                .idle_closed
                .get_or_create(&ListenerLabel { listener })
                .clone(),
            feedback_lane: self
                .feedback_lane
                .get_or_create(&ListenerLabel { listener })
                .clone(),
        }
    }
}

impl ListenerInstruments {
    pub fn refused(&self, refusal: Refusal) {
        self.refusals[refusal as usize].inc();
    }

    pub fn refusals(&self, refusal: Refusal) -> u64 {
        self.refusals[refusal as usize].get()
    }

    pub fn protocol_error(&self, kind: ProtocolError) {
        self.protocol_errors[kind as usize].inc();
    }
}

/// Converts OpenMetrics text to the classic Prometheus text format (0.0.4),
/// for clients that do not ask for OpenMetrics (and for `promtool check
/// metrics`): a counter family is named with its `_total` suffix in `HELP`
/// and `TYPE`, and the `UNIT` and `EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_with_total() {
        let om = "# HELP eddy_predictions Predictions made.\n# TYPE eddy_predictions counter\n\
                  eddy_predictions_total{model=\"m\"} 3\n# HELP eddy_model_age Age.\n# TYPE eddy_model_age gauge\n\
                  # UNIT eddy_model_age seconds\neddy_model_age{model=\"m\"} 1.5\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP eddy_predictions_total Predictions made.\n# TYPE eddy_predictions_total counter\n\
             eddy_predictions_total{model=\"m\"} 3\n# HELP eddy_model_age Age.\n# TYPE eddy_model_age gauge\n\
             eddy_model_age{model=\"m\"} 1.5\n"
        );
    }
}

/// Feedback credentials and rate limits, read at scrape time: the source
/// label values are those `FeedbackSources` tracks now (configured names,
/// or a self-declared model's table plus `other`), so they stay bounded
/// whatever names clients send.
#[derive(Debug)]
struct SourcesCollector {
    sources: Arc<FeedbackSources>,
}

impl Collector for SourcesCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let limited = self.sources.rate_limited().into_iter().map(|row| {
            let labels = SourceLabels {
                model: row.model.to_string(),
                source: row.source.to_string(),
            };
            (labels, ConstCounter::new(row.examples))
        });
        labelled(
            &mut e,
            "feedback_rate_limited",
            "Feedback examples refused by a source's rate limit (429 rate_limited, 422 exceeds_burst), by model and source: a [[sources]] name, or a self-declared source the model's table tracks (guard.max_sources; the rest, and names evicted from the table, under `other`)",
            MetricType::Counter,
            limited,
        )?;
        let unauthorized = self.sources.unauthorized().into_iter().map(|(model, n)| {
            let labels = ModelLabel {
                model: model.to_string(),
            };
            (labels, ConstCounter::new(n))
        });
        labelled(
            &mut e,
            "feedback_unauthorized",
            "Feedback requests refused with 401 for a missing or unknown bearer token ([[sources]] configured), by model",
            MetricType::Counter,
            unauthorized,
        )
    }
}

/// Per-model state read at scrape time.
#[derive(Debug)]
struct ModelCollector {
    /// The live models, read at each scrape.
    models: Arc<ArcSwap<Models>>,
}

impl ModelCollector {
    fn family<M: EncodeMetric>(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        metric_type: MetricType,
        value: impl Fn(&ModelRuntime) -> M,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, unit, metric_type)?;
        for m in self.models.load().iter() {
            let labels = ModelLabel {
                model: m.name.to_string(),
            };
            value(m).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QualityLabels {
    model: String,
    /// `live` or `baseline` (last-good on the same examples).
    version: &'static str,
    metric: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceMetricLabels {
    model: String,
    source: String,
    metric: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    model: String,
    source: String,
}

/// Encodes one family whose rows carry their own label sets.
fn labelled<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    rows: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in rows {
        value.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl ModelCollector {
    /// The safety loop's families: quality, rollbacks, promotions, gate,
    /// blamed sources, trainer latencies.
    fn encode_safety(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let count = |f: fn(&ModelRuntime) -> &std::sync::atomic::AtomicU64| {
            move |m: &ModelRuntime| ConstCounter::new(f(m).load(Ordering::Relaxed))
        };
        let reports: Vec<_> = self
            .models
            .load()
            .iter()
            .map(|m| (m.name.to_string(), m.stats.monitor.load_full()))
            .collect();
        let mut quality = Vec::new();
        let mut sources = Vec::new();
        let mut blamed = Vec::new();
        for (model, report) in &reports {
            for (version, q) in [("live", &report.live), ("baseline", &report.baseline)] {
                for (metric, value) in q.figures() {
                    let labels = QualityLabels {
                        model: model.clone(),
                        version,
                        metric,
                    };
                    quality.push((labels, ConstGauge::new(value)));
                }
            }
            for s in &report.sources {
                for (metric, value) in s.live.figures() {
                    let labels = SourceMetricLabels {
                        model: model.clone(),
                        source: s.source.clone(),
                        metric,
                    };
                    sources.push((labels, ConstGauge::new(value)));
                }
            }
            for source in &report.blamed_sources {
                let labels = SourceLabels {
                    model: model.clone(),
                    source: source.clone(),
                };
                blamed.push((labels, ConstGauge::new(1i64)));
            }
        }
        labelled(
            e,
            "model_quality",
            "Rolling quality over the last monitor window of trusted labelled examples: the live versions (scored before learning) and last-good on the same examples",
            MetricType::Gauge,
            quality,
        )?;
        labelled(
            e,
            "source_quality",
            "Rolling quality of the live versions on each source's last window of examples (sources beyond max_sources fold into `other`)",
            MetricType::Gauge,
            sources,
        )?;
        labelled(
            e,
            "source_blamed",
            "1 for each source blamed for a degradation and excluded from training until readmitted",
            MetricType::Gauge,
            blamed,
        )?;
        let mut rollbacks = Vec::new();
        for m in self.models.load().iter() {
            for (reason, c) in [
                ("degraded", &m.stats.rollbacks_degraded),
                ("gate_refused", &m.stats.rollbacks_gate),
                ("operator", &m.stats.rollbacks_operator),
            ] {
                let labels = ReasonLabels {
                    model: m.name.to_string(),
                    reason: reason.to_owned(),
                };
                rollbacks.push((labels, ConstCounter::new(c.load(Ordering::Relaxed))));
            }
        }
        labelled(
            e,
            "rollbacks",
            "Rollbacks to last-good weights, by reason: degraded (a window showed live worse than last-good), gate_refused (a candidate was refused before publishing), operator",
            MetricType::Counter,
            rollbacks,
        )?;
        self.family(
            e,
            "promotions",
            "Candidate versions promoted to last-good",
            None,
            MetricType::Counter,
            count(|m| &m.stats.promotions),
        )?;
        self.family(
            e,
            "gate_checks",
            "Candidate versions the publish gate scored",
            None,
            MetricType::Counter,
            count(|m| &m.stats.gate_checks),
        )?;
        self.family(
            e,
            "gate_holds",
            "Publishes held back after a candidate first failed the gate",
            None,
            MetricType::Counter,
            count(|m| &m.stats.gate_holds),
        )?;
        self.family(
            e,
            "feedback_excluded",
            "Labelled examples from blamed sources: scored, not trained",
            None,
            MetricType::Counter,
            count(|m| &m.stats.excluded),
        )?;
        self.family(
            e,
            "last_good_version",
            "The version the monitor trusts (0 when the monitor is disabled)",
            None,
            MetricType::Gauge,
            |m| ConstGauge::new(m.stats.monitor.load().last_good_version.unwrap_or(0) as i64),
        )?;
        self.family(
            e,
            "training_step_duration",
            "Time to score and train one minibatch",
            Some(&Unit::Seconds),
            MetricType::Histogram,
            |m| m.stats.timings.step.clone(),
        )?;
        self.family(
            e,
            "publish_duration",
            "Time to publish a version",
            Some(&Unit::Seconds),
            MetricType::Histogram,
            |m| m.stats.timings.publish.clone(),
        )?;
        self.family(
            e,
            "gate_duration",
            "Time the publish gate took to score a candidate",
            Some(&Unit::Seconds),
            MetricType::Histogram,
            |m| m.stats.timings.gate.clone(),
        )?;
        self.family(
            e,
            "snapshot_write_duration",
            "Time to write a snapshot (encode, write, fsync, rename)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
            |m| m.stats.timings.snapshot.clone(),
        )?;
        Ok(())
    }
}

impl ModelCollector {
    /// The ingestion guard's families: quarantine by reason and source
    /// (sources bounded by `guard.max_sources`), releases, drops, waiting
    /// examples and flagged sources.
    fn encode_guard(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reports: Vec<_> = self
            .models
            .load()
            .iter()
            .map(|m| (m.name.to_string(), m.stats.guard.load_full()))
            .filter(|(_, r)| r.enabled)
            .collect();
        let mut quarantined = Vec::new();
        let mut flagged = Vec::new();
        let mut dropped = Vec::new();
        let mut gauges: [Vec<(ModelLabel, ConstGauge<i64>)>; 3] = Default::default();
        let mut released = Vec::new();
        for (model, r) in &reports {
            for q in &r.quarantined_total {
                let labels = QuarantineLabels {
                    model: model.clone(),
                    reason: q.reason.as_str().to_owned(),
                    source: q.source.clone(),
                };
                quarantined.push((labels, ConstCounter::new(q.examples)));
            }
            for source in &r.flagged_sources {
                let labels = SourceLabels {
                    model: model.clone(),
                    source: source.clone(),
                };
                flagged.push((labels, ConstGauge::new(1i64)));
            }
            for (cause, n) in [
                ("operator", r.dropped_total),
                ("evicted", r.quarantine_evicted),
            ] {
                let labels = ReasonLabels {
                    model: model.clone(),
                    reason: cause.to_owned(),
                };
                dropped.push((labels, ConstCounter::new(n)));
            }
            let labels = ModelLabel {
                model: model.clone(),
            };
            released.push((labels.clone(), ConstCounter::new(r.released_total)));
            gauges[0].push((labels.clone(), ConstGauge::new(r.quarantined as i64)));
            gauges[1].push((labels.clone(), ConstGauge::new(r.quarantine_bytes as i64)));
            gauges[2].push((labels, ConstGauge::new(r.waiting as i64)));
        }
        labelled(
            e,
            "quarantine_examples",
            "Feedback examples the ingestion guard quarantined instead of training, by reason (schema, outlier, label, influence, blamed) and source (sources beyond guard.max_sources fold into `other`)",
            MetricType::Counter,
            quarantined,
        )?;
        labelled(
            e,
            "quarantine_released",
            "Quarantined examples an operator released into training",
            MetricType::Counter,
            released,
        )?;
        labelled(
            e,
            "quarantine_dropped",
            "Quarantined examples dropped, by cause: operator, or evicted (the quarantine's bounds)",
            MetricType::Counter,
            dropped,
        )?;
        let [held, bytes, waiting] = gauges;
        labelled(
            e,
            "quarantine_held",
            "Examples in quarantine now",
            MetricType::Gauge,
            held,
        )?;
        labelled(
            e,
            "quarantine_held_bytes",
            "Bytes the quarantined examples are charged (guard.quarantine.max_bytes bounds it)",
            MetricType::Gauge,
            bytes,
        )?;
        labelled(
            e,
            "guard_waiting",
            "Examples waiting for their source's share of training (guard.influence)",
            MetricType::Gauge,
            waiting,
        )?;
        labelled(
            e,
            "source_flagged",
            "1 for each source label sanity flags now (its examples are quarantined)",
            MetricType::Gauge,
            flagged,
        )?;
        Ok(())
    }
}

impl Collector for ModelCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_safety(&mut e)?;
        self.encode_guard(&mut e)?;
        let count = |f: fn(&ModelRuntime) -> u64| move |m: &ModelRuntime| ConstCounter::new(f(m));
        self.family(
            &mut e,
            "queue_depth",
            "Examples waiting for the trainer",
            None,
            MetricType::Gauge,
            |m| ConstGauge::new(m.queue.depth() as i64),
        )?;
        self.family(
            &mut e,
            "queue_capacity",
            "Capacity of the training queue",
            None,
            MetricType::Gauge,
            |m| ConstGauge::new(m.queue.capacity() as i64),
        )?;
        self.family(
            &mut e,
            "examples_trained",
            "Examples the trainer has applied since the model was created",
            None,
            MetricType::Counter,
            count(|m| m.stats.examples_trained_total()),
        )?;
        self.family(
            &mut e,
            "minibatches_trained",
            "Minibatches trained by this process",
            None,
            MetricType::Counter,
            count(|m| m.stats.minibatches_trained.load(Ordering::Relaxed)),
        )?;
        self.family(
            &mut e,
            "publishes",
            "Model versions published by this process",
            None,
            MetricType::Counter,
            count(|m| m.stats.publishes.load(Ordering::Relaxed)),
        )?;
        self.family(
            &mut e,
            "training_panics",
            "Training steps that panicked (a bug; the rest of that minibatch was skipped)",
            None,
            MetricType::Counter,
            count(|m| m.stats.panics.load(Ordering::Relaxed)),
        )?;
        self.family(
            &mut e,
            "snapshot_writes",
            "Snapshots written",
            None,
            MetricType::Counter,
            count(|m| m.stats.snapshots_written.load(Ordering::Relaxed)),
        )?;
        self.family(
            &mut e,
            "snapshot_failures",
            "Snapshots that could not be written",
            None,
            MetricType::Counter,
            count(|m| m.stats.snapshot_failures.load(Ordering::Relaxed)),
        )?;
        self.family(
            &mut e,
            "snapshots_skipped",
            "Damaged snapshot files skipped at start-up",
            None,
            MetricType::Counter,
            count(|m| m.stats.snapshots_skipped.load(Ordering::Relaxed)),
        )?;
        self.family(
            &mut e,
            "feedback_replayed",
            "Examples learned again from the feedback log at start-up",
            None,
            MetricType::Counter,
            count(|m| m.stats.replayed.load(Ordering::Relaxed)),
        )?;
        type LogCounter = fn(&LogStats) -> &std::sync::atomic::AtomicU64;
        let log_counters: [(&str, &str, LogCounter); 6] = [
            (
                "feedback_log_records",
                "Records appended to the feedback log",
                |s| &s.records_appended,
            ),
            (
                "feedback_log_bytes",
                "Bytes appended to the feedback log",
                |s| &s.bytes_appended,
            ),
            (
                "feedback_log_fsyncs",
                "fsyncs of the feedback log (group commit shares one among requests)",
                |s| &s.fsyncs,
            ),
            (
                "feedback_log_write_failures",
                "Appends to the feedback log that failed (disk full, IO error); answered 507",
                |s| &s.write_failures,
            ),
            (
                "feedback_log_fsync_failures",
                "fsyncs of the feedback log that failed; the log then refuses feedback until a restart",
                |s| &s.fsync_failures,
            ),
            (
                "feedback_log_torn_tails",
                "Torn records at the end of the feedback log truncated at start-up (a crash mid-write)",
                |s| &s.torn_tails_truncated,
            ),
        ];
        for (name, help, field) in log_counters {
            self.family(&mut e, name, help, None, MetricType::Counter, move |m| {
                ConstCounter::new(field(m.queue.log().stats()).load(Ordering::Relaxed))
            })?;
        }
        self.family(
            &mut e,
            "feedback_log_failed",
            "1 while the feedback log refuses feedback after a failed fsync (restart to clear)",
            None,
            MetricType::Gauge,
            |m| {
                ConstGauge::new(i64::from(
                    m.queue.log().stats().poisoned.load(Ordering::Relaxed),
                ))
            },
        )?;
        self.family(
            &mut e,
            "training_paused",
            "1 while an operator has paused learning",
            None,
            MetricType::Gauge,
            |m| ConstGauge::new(i64::from(m.stats.paused.load(Ordering::Relaxed))),
        )?;
        self.family(
            &mut e,
            "model_version",
            "The live model version",
            None,
            MetricType::Gauge,
            |m| ConstGauge::new(m.store.live().version as i64),
        )?;
        self.family(
            &mut e,
            "model_age",
            "Time since the live version was published",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            |m| {
                let age = SystemTime::now()
                    .duration_since(m.store.live().published_at)
                    .unwrap_or_default();
                ConstGauge::new(age.as_secs_f64())
            },
        )?;
        self.family(
            &mut e,
            "pending_predictions",
            "Predictions remembered for delayed labels (within the TTL)",
            None,
            MetricType::Gauge,
            |m| ConstGauge::new(m.joins.len() as i64),
        )?;
        self.encode_memory(&mut e)?;
        Ok(())
    }
}

impl ModelCollector {
    /// What the join cache and the replay buffer hold against their byte
    /// budgets, and what they evicted (reason `capacity`: a count bound;
    /// `bytes`: `join.max_bytes` / `monitor.replay_max_bytes`).
    fn encode_memory(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let bytes = Some(&Unit::Bytes);
        self.family(
            e,
            "join_cache",
            "Heap bytes of the features the join cache holds for delayed labels (bounded by join.max_bytes)",
            bytes,
            MetricType::Gauge,
            |m| ConstGauge::new(m.joins.usage().bytes.load(Ordering::Relaxed) as i64),
        )?;
        self.family(
            e,
            "replay_buffer",
            "Bytes of the examples the monitor's replay buffer holds (bounded by monitor.replay_max_bytes)",
            bytes,
            MetricType::Gauge,
            |m| ConstGauge::new(m.stats.monitor.load().replay.bytes as i64),
        )?;
        self.family(
            e,
            "replay_buffer_examples",
            "Examples the monitor's replay buffer holds",
            None,
            MetricType::Gauge,
            |m| ConstGauge::new(m.stats.monitor.load().replay.examples as i64),
        )?;
        let mut joins = Vec::new();
        let mut replay = Vec::new();
        for m in self.models.load().iter() {
            let usage = m.joins.usage();
            let report = m.stats.monitor.load();
            for (reason, join, kept) in [
                (
                    "capacity",
                    &usage.evicted_capacity,
                    report.replay.evicted_capacity,
                ),
                ("bytes", &usage.evicted_bytes, report.replay.evicted_bytes),
            ] {
                let labels = ReasonLabels {
                    model: m.name.to_string(),
                    reason: reason.to_owned(),
                };
                joins.push((
                    labels.clone(),
                    ConstCounter::new(join.load(Ordering::Relaxed)),
                ));
                replay.push((labels, ConstCounter::new(kept)));
            }
        }
        labelled(
            e,
            "join_cache_evictions",
            "Unlabelled predictions the join cache let go before their TTL, by reason: capacity (join.capacity), bytes (join.max_bytes)",
            MetricType::Counter,
            joins,
        )?;
        labelled(
            e,
            "replay_buffer_evictions",
            "Examples the replay buffer let go, by reason: capacity (monitor.replay_capacity), bytes (monitor.replay_max_bytes)",
            MetricType::Counter,
            replay,
        )?;
        Ok(())
    }
}
