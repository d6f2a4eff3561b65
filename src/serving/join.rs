//! `JoinCache`: recent predictions remembered per model, so feedback can
//! name a `prediction_id` instead of repeating the features (delayed labels).
//!
//! Bounded two ways: at most `capacity` entries (the oldest go first) and a
//! time to live. Entries are kept in issue order, so eviction by age and
//! by count both pop from the front. A labelled entry keeps a tombstone
//! until it ages out so a second label is told 409 rather than 404.
//!
//! Ids are 28 hex digits: issue time in milliseconds since the epoch (12),
//! a per-process random nonce (8) and a per-process sequence (8). Carrying
//! the time lets a lookup that misses say whether the id expired or was
//! never known, without remembering expired ids.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::learn::FeatureVec;

/// A prediction waiting for its label.
#[derive(Debug, Clone)]
pub struct PendingPrediction {
    pub features: FeatureVec,
    /// The version that made the prediction.
    pub version: u64,
    pub predicted_at: SystemTime,
}

/// Why a `prediction_id` cannot be labelled.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    #[error(
        "prediction_id is unknown to this model (never issued by it, or evicted to stay within join.capacity)"
    )]
    Unknown,
    #[error("prediction_id has expired (older than join.ttl_s)")]
    Expired,
    #[error("prediction_id has already been labelled")]
    AlreadyLabelled,
}

#[derive(Debug)]
pub struct JoinCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<u128, Entry>,
    /// Keys in issue order; exactly the keys of `map`.
    order: VecDeque<(u128, Instant)>,
}

#[derive(Debug)]
struct Entry {
    issued: Instant,
    /// `None` once labelled.
    pending: Option<PendingPrediction>,
}

/// A locked view used to check and then claim several ids at once, so a
/// batch is all-or-nothing.
pub struct JoinBatch<'a> {
    cache: &'a JoinCache,
    inner: MutexGuard<'a, Inner>,
}

impl JoinCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Remembers a prediction and returns its new id.
    pub fn insert(&self, pending: PendingPrediction) -> String {
        let (key, id) = new_id(pending.predicted_at);
        let now = Instant::now();
        if self.capacity == 0 {
            return id;
        }
        let mut inner = self.lock();
        inner.evict(now, self.ttl, self.capacity - 1);
        inner.order.push_back((key, now));
        inner.map.insert(
            key,
            Entry {
                issued: now,
                pending: Some(pending),
            },
        );
        id
    }

    /// Entries still remembered (expired ones are dropped first).
    pub fn len(&self) -> usize {
        let mut inner = self.lock();
        inner.evict(Instant::now(), self.ttl, self.capacity);
        inner.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Locks the cache for a check-then-claim over several ids.
    pub fn batch(&self) -> JoinBatch<'_> {
        let mut inner = self.lock();
        inner.evict(Instant::now(), self.ttl, self.capacity);
        JoinBatch { cache: self, inner }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation leaves map and order consistent before it can
        // panic (allocation aside), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Drops expired entries and the oldest ones beyond `keep`.
    fn evict(&mut self, now: Instant, ttl: Duration, keep: usize) {
        while let Some(&(key, issued)) = self.order.front() {
            if self.order.len() > keep || now.duration_since(issued) > ttl {
                self.order.pop_front();
                self.map.remove(&key);
            } else {
                break;
            }
        }
    }
}

impl JoinBatch<'_> {
    /// Whether `id` could be claimed now. Claims nothing.
    pub fn check(&self, id: &str) -> Result<(), JoinError> {
        let key = parse_id(id).ok_or(JoinError::Unknown)?;
        match self.inner.map.get(&key) {
            Some(e) if e.issued.elapsed() > self.cache.ttl => Err(JoinError::Expired),
            Some(Entry {
                pending: Some(_), ..
            }) => Ok(()),
            Some(Entry { pending: None, .. }) => Err(JoinError::AlreadyLabelled),
            None => {
                let age = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .saturating_sub(Duration::from_millis((key >> 64) as u64));
                if age > self.cache.ttl {
                    Err(JoinError::Expired)
                } else {
                    Err(JoinError::Unknown)
                }
            }
        }
    }

    /// Takes the prediction and leaves a tombstone. Call `check` first.
    pub fn claim(&mut self, id: &str) -> Result<PendingPrediction, JoinError> {
        self.check(id)?;
        let key = parse_id(id).ok_or(JoinError::Unknown)?;
        self.inner
            .map
            .get_mut(&key)
            .and_then(|e| e.pending.take())
            .ok_or(JoinError::Unknown)
    }
}

/// The per-process part of ids: a random nonce and a sequence.
fn new_id(at: SystemTime) -> (u128, String) {
    static NONCE: OnceLock<u32> = OnceLock::new();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nonce = *NONCE.get_or_init(rand::random::<u32>);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) as u32;
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
        & 0xffff_ffff_ffff;
    let key = (u128::from(ms) << 64) | (u128::from(nonce) << 32) | u128::from(seq);
    let mut id = String::with_capacity(28);
    // Writing to a String cannot fail.
    let _ = write!(id, "{ms:012x}{nonce:08x}{seq:08x}");
    (key, id)
}

fn parse_id(id: &str) -> Option<u128> {
    if id.len() != 28 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let ms = u64::from_str_radix(&id[..12], 16).ok()?;
    let rest = u64::from_str_radix(&id[12..], 16).ok()?;
    Some((u128::from(ms) << 64) | u128::from(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> PendingPrediction {
        PendingPrediction {
            features: FeatureVec::default(),
            version: 3,
            predicted_at: SystemTime::now(),
        }
    }

    #[test]
    fn an_id_is_claimed_once() {
        let cache = JoinCache::new(Duration::from_secs(60), 10);
        let id = cache.insert(pending());
        assert_eq!(id.len(), 28);
        let mut b = cache.batch();
        assert_eq!(b.check(&id), Ok(()));
        assert_eq!(b.claim(&id).unwrap().version, 3);
        assert_eq!(b.check(&id), Err(JoinError::AlreadyLabelled));
        assert_eq!(b.check("zz"), Err(JoinError::Unknown));
        assert_eq!(
            b.check(&"0".repeat(28)),
            Err(JoinError::Expired),
            "issued in 1970"
        );
    }

    #[test]
    fn capacity_evicts_the_oldest() {
        let cache = JoinCache::new(Duration::from_secs(60), 3);
        let ids: Vec<String> = (0..5).map(|_| cache.insert(pending())).collect();
        assert_eq!(cache.len(), 3);
        let b = cache.batch();
        assert_eq!(b.check(&ids[0]), Err(JoinError::Unknown));
        assert_eq!(b.check(&ids[4]), Ok(()));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = JoinCache::new(Duration::from_millis(1), 10);
        let id = cache.insert(pending());
        let deadline = Instant::now() + Duration::from_secs(5);
        // Within the first millisecond the id may read as unknown: its
        // issue time is kept to the millisecond.
        while cache.batch().check(&id) != Err(JoinError::Expired) {
            assert!(Instant::now() < deadline, "entry never expired");
            std::thread::yield_now();
        }
        assert!(cache.is_empty());
    }
}
