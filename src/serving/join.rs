//! `JoinCache`: recent predictions remembered per model, so feedback can
//! name a `prediction_id` instead of repeating the features (delayed labels).
//!
//! A ring of `capacity` slots indexed by a per-model sequence number: an
//! insert overwrites the oldest slot, a lookup goes straight to its slot and
//! checks the whole id, so neither hashes nor scans. Entries older than the
//! time to live are refused and, being oldest, are the next overwritten;
//! memory is bounded by `capacity` either way. A labelled entry keeps a
//! tombstone until overwritten, so a second label is told 409, not 404.
//!
//! Ids are 28 hex digits: issue time in milliseconds since the epoch (12), a
//! random per-model nonce (8) and the per-model sequence (8). The nonce
//! keeps ids of different models and processes apart; carrying the time
//! lets a lookup that misses say whether the id expired or was never known.

use std::fmt::Write;
use std::sync::{Mutex, MutexGuard};
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
    /// Sequence numbers run in `0..wrap`, a multiple of `capacity`, so the
    /// slot `seq % capacity` always holds the oldest entry when reused.
    wrap: u64,
    nonce: u32,
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    /// Grows to `capacity`, then slot `seq % capacity` is reused.
    slots: Vec<Slot>,
    /// Sequence number of the next insert, in `0..wrap`.
    next: u64,
}

#[derive(Debug)]
struct Slot {
    key: Key,
    issued: Instant,
    /// `None` once labelled.
    pending: Option<PendingPrediction>,
}

/// A parsed id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    ms: u64,
    nonce: u32,
    seq: u32,
}

/// A locked view used to check and then claim several ids at once, so a
/// batch is all-or-nothing. Every check uses the same `now`, so an entry
/// cannot expire between its check and its claim.
pub struct JoinBatch<'a> {
    cache: &'a JoinCache,
    ring: MutexGuard<'a, Ring>,
    now: Instant,
    now_ms: u64,
}

/// A checked, claimable id: its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim(usize);

impl JoinCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        let span = u64::from(u32::MAX) + 1;
        let wrap = if capacity == 0 || capacity as u64 > span {
            span
        } else {
            span / capacity as u64 * capacity as u64
        };
        Self {
            ttl,
            capacity,
            wrap,
            nonce: rand::random::<u32>(),
            inner: Mutex::new(Ring::default()),
        }
    }

    /// Remembers a prediction and returns its new id.
    pub fn insert(&self, pending: PendingPrediction) -> String {
        let ms = epoch_ms(pending.predicted_at);
        let issued = Instant::now();
        let mut ring = self.lock();
        let seq = ring.next as u32;
        ring.next = (ring.next + 1) % self.wrap;
        let key = Key {
            ms,
            nonce: self.nonce,
            seq,
        };
        let old = if self.capacity == 0 {
            None
        } else {
            let slot = Slot {
                key,
                issued,
                pending: Some(pending),
            };
            let i = seq as usize % self.capacity;
            if i < ring.slots.len() {
                Some(std::mem::replace(&mut ring.slots[i], slot))
            } else {
                ring.slots.push(slot);
                None
            }
        };
        drop(ring);
        // The evicted entry's features are freed outside the lock.
        drop(old);
        let mut id = String::with_capacity(28);
        // Writing to a String cannot fail.
        let _ = write!(id, "{:012x}{:08x}{:08x}", key.ms, key.nonce, key.seq);
        id
    }

    /// Predictions issued within the time to live that are still
    /// remembered, labelled or not. Ages grow with distance from the newest
    /// entry, so a binary search finds the first expired one: the lock is
    /// held for O(log capacity).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        let ring = self.lock();
        let n = ring.slots.len();
        // The k-th newest entry (k = 0 is the newest) and its age.
        let age = |k: usize| {
            let seq = (ring.next + self.wrap - 1 - k as u64) % self.wrap;
            now.saturating_duration_since(ring.slots[(seq % self.capacity as u64) as usize].issued)
        };
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if age(mid) > self.ttl {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Locks the cache for a check-then-claim over several ids.
    pub fn batch(&self) -> JoinBatch<'_> {
        JoinBatch {
            cache: self,
            ring: self.lock(),
            now: Instant::now(),
            now_ms: epoch_ms(SystemTime::now()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Every mutation is a single slot write or a push, so a poisoned
        // lock still guards a consistent ring.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl JoinBatch<'_> {
    /// Whether `id` can be claimed; claims nothing.
    pub fn check(&self, id: &str) -> Result<Claim, JoinError> {
        let key = parse_id(id).ok_or(JoinError::Unknown)?;
        let cache = self.cache;
        // Another model's or another process's id is unknown here,
        // whatever its age.
        if key.nonce != cache.nonce || cache.capacity == 0 {
            return Err(JoinError::Unknown);
        }
        let i = key.seq as usize % cache.capacity;
        match self.ring.slots.get(i) {
            Some(slot) if slot.key == key => {
                if self.now.saturating_duration_since(slot.issued) > cache.ttl {
                    Err(JoinError::Expired)
                } else if slot.pending.is_none() {
                    Err(JoinError::AlreadyLabelled)
                } else {
                    Ok(Claim(i))
                }
            }
            // Gone from the ring: say why, from the time the id carries.
            _ if Duration::from_millis(self.now_ms.saturating_sub(key.ms)) > cache.ttl => {
                Err(JoinError::Expired)
            }
            _ => Err(JoinError::Unknown),
        }
    }

    /// Takes a checked prediction, leaving a tombstone. Cannot fail: the
    /// lock has been held since the check.
    /// The prediction a checked claim names, left in place.
    pub fn peek(&self, claim: &Claim) -> Option<&PendingPrediction> {
        self.ring
            .slots
            .get(claim.0)
            .and_then(|s| s.pending.as_ref())
    }

    pub fn claim(&mut self, claim: Claim) -> Option<PendingPrediction> {
        self.ring
            .slots
            .get_mut(claim.0)
            .and_then(|s| s.pending.take())
    }
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64 & 0xffff_ffff_ffff
}

fn parse_id(id: &str) -> Option<Key> {
    if id.len() != 28 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(Key {
        ms: u64::from_str_radix(&id[..12], 16).ok()?,
        nonce: u32::from_str_radix(&id[12..20], 16).ok()?,
        seq: u32::from_str_radix(&id[20..], 16).ok()?,
    })
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
        let claim = b.check(&id).unwrap();
        assert_eq!(b.claim(claim).unwrap().version, 3);
        assert_eq!(b.check(&id), Err(JoinError::AlreadyLabelled));
        assert_eq!(b.check("zz"), Err(JoinError::Unknown));
        let old = format!("{:012x}{:08x}{:08x}", 1u64, cache.nonce, 999u32);
        assert_eq!(b.check(&old), Err(JoinError::Expired), "issued in 1970");
        assert_eq!(
            b.check(&"0".repeat(28)),
            Err(JoinError::Unknown),
            "another nonce"
        );
    }

    #[test]
    fn capacity_evicts_the_oldest() {
        let cache = JoinCache::new(Duration::from_secs(60), 3);
        let ids: Vec<String> = (0..5).map(|_| cache.insert(pending())).collect();
        assert_eq!(cache.len(), 3);
        let b = cache.batch();
        assert_eq!(b.check(&ids[1]), Err(JoinError::Unknown));
        assert!(b.check(&ids[2]).is_ok());
        assert_eq!(b.check(&ids[0]), Err(JoinError::Unknown));
        assert!(b.check(&ids[4]).is_ok());
    }

    #[test]
    fn sequence_wrap_keeps_evicting_the_oldest() {
        let cache = JoinCache::new(Duration::from_secs(60), 3);
        assert_eq!(cache.wrap % 3, 0);
        // Jump to just before the wrap.
        cache.lock().next = cache.wrap - 2;
        let ids: Vec<String> = (0..5).map(|_| cache.insert(pending())).collect();
        assert_eq!(cache.len(), 3);
        let b = cache.batch();
        assert_eq!(b.check(&ids[1]), Err(JoinError::Unknown));
        for id in &ids[2..] {
            assert!(b.check(id).is_ok(), "{id} is among the newest three");
        }
    }

    #[test]
    fn capacity_zero_remembers_nothing() {
        let cache = JoinCache::new(Duration::from_secs(60), 0);
        let id = cache.insert(pending());
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.batch().check(&id), Err(JoinError::Unknown));
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
