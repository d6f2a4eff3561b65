//! Who sends feedback, and how fast they may: `FeedbackSources`, built
//! once from `[[sources]]` and each model's `[models.guard]`.
//!
//! - With `[[sources]]` configured, every feedback request must present
//!   one of their tokens (`authenticate`); the examples' source is that
//!   entry's name, and its `rate`/`burst` limit it over all models.
//! - Without, sources are self-declared (whatever the request says), and
//!   each model whose guard is enabled with a `rate` limits each source
//!   separately, in a bounded table (`SourceTable`).
//!
//! Limits count examples: a batch of n costs n, all or nothing
//! (`charge`). A charge is given back when dropped uncommitted, so a
//! request refused after it paid (its log append failed) has not used the
//! quota. The files: `bucket.rs` (governor's GCRA over our own bounded,
//! refundable state), `table.rs` (the self-declared table),
//! `credentials.rs` (tokens, compared in constant time). HTTP concerns
//! (the header, status codes) are `http::feedback`'s and `http::sender`'s.

mod bucket;
mod credentials;
mod table;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use bucket::{Buckets, Shortfall};
pub use credentials::Credential;
pub use table::{SourceTable, TableRefusal, Taken};

use arc_swap::ArcSwap;

use crate::config::{Config, ModelConfig, RateLimit};

/// The server's view of feedback senders, shared by request threads.
#[derive(Debug)]
pub struct FeedbackSources {
    /// Empty: sources are self-declared.
    credentials: Vec<Arc<Credential>>,
    /// The served models' part, replaced whole when a model is added or
    /// deleted at runtime.
    models: ArcSwap<HashMap<Arc<str>, Arc<ModelSources>>>,
}

#[derive(Debug)]
struct ModelSources {
    name: Arc<str>,
    /// Self-declared sources' limits; `None` when the guard is off or its
    /// `rate` is 0 (or when `[[sources]]` are configured: then every
    /// source is a credential).
    table: Option<SourceTable>,
    unauthorized: AtomicU64,
    /// Examples each credential's limit refused here (by its index).
    refused: Box<[AtomicU64]>,
}

/// A request's examples were refused by a source's limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RateRefusal {
    /// The source whose limit refused: a `[[sources]]` name, a tracked
    /// self-declared name, or `other`.
    pub source: Arc<str>,
    pub limit: RateLimit,
    pub shortfall: Shortfall,
}

/// What a request paid; given back when dropped without `commit`.
#[must_use = "dropping a charge gives it back"]
#[derive(Debug)]
pub struct Charge<'a> {
    paid: Paid<'a>,
}

#[derive(Debug)]
enum Paid<'a> {
    Nothing,
    Credential(&'a Buckets, u32),
    Table(Arc<ModelSources>, Vec<Taken>),
}

/// One row of `eddy_feedback_rate_limited_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    pub model: Arc<str>,
    pub source: Arc<str>,
    pub examples: u64,
}

impl FeedbackSources {
    /// Builds the credentials and each model's table from a validated
    /// config.
    pub fn new(config: &Config) -> Self {
        let credentials: Vec<_> = config
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| Arc::new(Credential::new(s, i)))
            .collect();
        let sources = Self {
            credentials,
            models: ArcSwap::default(),
        };
        for m in &config.models {
            sources.add_model(m);
        }
        sources
    }

    /// Adds a model's limits and counters (at start-up, or added at
    /// runtime).
    pub fn add_model(&self, m: &ModelConfig) {
        let self_declared = self.credentials.is_empty();
        let added = Arc::new(ModelSources {
            name: m.name.as_str().into(),
            table: RateLimit::new(m.guard.rate, m.guard.burst)
                .filter(|_| self_declared && m.guard.enabled)
                .map(|limit| SourceTable::new(limit, m.guard.max_sources)),
            unauthorized: AtomicU64::new(0),
            refused: self.credentials.iter().map(|_| AtomicU64::new(0)).collect(),
        });
        self.models.rcu(|current| {
            let mut next = (**current).clone();
            next.insert(Arc::clone(&added.name), Arc::clone(&added));
            next
        });
    }

    /// Forgets a deleted model (its metrics series go with it).
    pub fn remove_model(&self, name: &str) {
        self.models.rcu(|current| {
            let mut next = (**current).clone();
            next.remove(name);
            next
        });
    }

    /// Whether feedback needs a token (`[[sources]]` are configured).
    pub fn requires_token(&self) -> bool {
        !self.credentials.is_empty()
    }

    /// The credential whose token `presented` is.
    pub fn authenticate(&self, presented: &[u8]) -> Option<Arc<Credential>> {
        credentials::find(&self.credentials, presented).cloned()
    }

    /// Counts a feedback request refused for its credentials (models not
    /// configured are not counted: their names come from clients).
    pub fn count_unauthorized(&self, model: &str) {
        if let Some(m) = self.model(model) {
            m.unauthorized.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Charges a request's examples to their sources' limits: `sender`'s
    /// when it presented a credential, else each self-declared source's
    /// in `model`'s table (`groups`: source and example count, `None` for
    /// examples without a source). All or nothing.
    pub fn charge<'a>(
        &'a self,
        model: &str,
        sender: Option<&'a Credential>,
        groups: &[(Option<&str>, u32)],
    ) -> Result<Charge<'a>, RateRefusal> {
        let nothing = Charge {
            paid: Paid::Nothing,
        };
        let Some(m) = self.model(model) else {
            return Ok(nothing);
        };
        if let Some(sender) = sender {
            let Some(bucket) = &sender.bucket else {
                return Ok(nothing);
            };
            let n: u32 = groups.iter().map(|(_, n)| *n).fold(0, u32::saturating_add);
            return match bucket.take(0, n) {
                Ok(()) => Ok(Charge {
                    paid: Paid::Credential(bucket, n),
                }),
                Err(shortfall) => {
                    if let Some(c) = m.refused.get(sender.index) {
                        c.fetch_add(u64::from(n), Ordering::Relaxed);
                    }
                    Err(RateRefusal {
                        source: Arc::clone(&sender.name),
                        limit: bucket.limit(),
                        shortfall,
                    })
                }
            };
        }
        let Some(table) = &m.table else {
            return Ok(nothing);
        };
        match table.take(groups) {
            Ok(taken) => Ok(Charge {
                paid: Paid::Table(Arc::clone(&m), taken),
            }),
            Err(TableRefusal { source, shortfall }) => Err(RateRefusal {
                source,
                limit: table.limit(),
                shortfall,
            }),
        }
    }

    /// Self-declared names `model` tracks now (`None`: no table).
    pub fn tracked(&self, model: &str) -> Option<usize> {
        self.model(model)?.table.as_ref().map(SourceTable::tracked)
    }

    /// Examples refused by rate limits, by model and source (only sources
    /// with any).
    pub fn rate_limited(&self) -> Vec<RateLimited> {
        let mut rows = Vec::new();
        for m in self.models.load().values() {
            for c in &self.credentials {
                let examples = m
                    .refused
                    .get(c.index)
                    .map_or(0, |n| n.load(Ordering::Relaxed));
                if examples > 0 {
                    rows.push(RateLimited {
                        model: Arc::clone(&m.name),
                        source: Arc::clone(&c.name),
                        examples,
                    });
                }
            }
            if let Some(table) = &m.table {
                for (source, examples) in table.refused() {
                    rows.push(RateLimited {
                        model: Arc::clone(&m.name),
                        source,
                        examples,
                    });
                }
            }
        }
        rows
    }

    /// Feedback requests refused for their credentials, by model.
    pub fn unauthorized(&self) -> Vec<(Arc<str>, u64)> {
        self.models
            .load()
            .values()
            .map(|m| (Arc::clone(&m.name), m.unauthorized.load(Ordering::Relaxed)))
            .collect()
    }

    fn model(&self, name: &str) -> Option<Arc<ModelSources>> {
        self.models.load().get(name).cloned()
    }
}

impl Charge<'_> {
    /// The request was accepted: keep what it paid.
    pub fn commit(mut self) {
        self.paid = Paid::Nothing;
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.paid, Paid::Nothing) {
            Paid::Nothing => {}
            Paid::Credential(bucket, n) => bucket.refund(0, n),
            Paid::Table(m, taken) => {
                if let Some(table) = &m.table {
                    table.refund(&taken);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(toml: &str) -> FeedbackSources {
        FeedbackSources::new(&Config::from_toml_over_default(toml).expect("valid"))
    }

    #[test]
    fn a_credential_limits_its_source_over_all_models_and_a_drop_refunds() {
        let s = sources(
            "[[sources]]\nname = \"crm\"\ntoken = \"t1\"\nrate = 1.0\nburst = 3\n\
             [[models]]\nname = \"a\"\ntask = \"binary\"\n[models.guard]\nrate = 100.0\n\
             [[models]]\nname = \"b\"\ntask = \"binary\"\n",
        );
        assert!(s.requires_token());
        let crm = s.authenticate(b"t1").expect("known token");
        assert!(s.authenticate(b"t2").is_none());
        // With credentials there is no self-declared table.
        assert_eq!(s.tracked("a"), None);
        s.charge("a", Some(&crm), &[(Some("crm"), 2)])
            .expect("fits")
            .commit();
        // Dropped without commit: given back.
        drop(
            s.charge("b", Some(&crm), &[(Some("crm"), 1)])
                .expect("fits"),
        );
        s.charge("b", Some(&crm), &[(Some("crm"), 1)])
            .expect("the refunded example")
            .commit();
        let refusal = s
            .charge("b", Some(&crm), &[(Some("crm"), 1)])
            .expect_err("3 examples used over both models");
        assert_eq!(refusal.source.as_ref(), "crm");
        assert!(matches!(refusal.shortfall, Shortfall::Wait(_)));
        let rows = s.rate_limited();
        assert_eq!(
            rows,
            [RateLimited {
                model: "b".into(),
                source: "crm".into(),
                examples: 1
            }]
        );
    }

    #[test]
    fn self_declared_limits_apply_per_model_and_only_with_the_guard_on() {
        let s = sources(
            "[[models]]\nname = \"a\"\ntask = \"binary\"\n[models.guard]\nrate = 1.0\nburst = 2\nmax_sources = 4\n\
             [[models]]\nname = \"b\"\ntask = \"binary\"\n[models.guard]\nenabled = false\nrate = 1.0\n\
             [[models]]\nname = \"c\"\ntask = \"binary\"\n",
        );
        assert!(!s.requires_token());
        s.charge("a", None, &[(Some("x"), 2)])
            .expect("fits")
            .commit();
        assert!(s.charge("a", None, &[(Some("x"), 1)]).is_err());
        assert_eq!(s.tracked("a"), Some(1));
        for model in ["b", "c", "unknown-model"] {
            s.charge(model, None, &[(Some("x"), 1000)])
                .expect("no limit")
                .commit();
            assert_eq!(s.tracked(model), None);
        }
        s.count_unauthorized("a");
        s.count_unauthorized("not-a-model");
        let mut counts: Vec<_> = s
            .unauthorized()
            .into_iter()
            .map(|(m, n)| (m.to_string(), n))
            .collect();
        counts.sort();
        assert_eq!(counts, [("a".into(), 1), ("b".into(), 0), ("c".into(), 0)]);
    }
}
