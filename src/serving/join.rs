//! `JoinCache`: recent predictions remembered per model, so feedback can
//! name a `prediction_id` instead of repeating the features (delayed labels).
//!
//! A ring of `capacity` slots indexed by a per-model sequence number: an
//! insert overwrites the oldest slot, a lookup goes straight to its slot and
//! checks the whole id, so neither hashes nor scans. Entries older than the
//! time to live are refused and, being oldest, are the next overwritten.
//! A labelled entry keeps a tombstone until overwritten, so a second label
//! is told 409, not 404.
//!
//! Memory is bounded twice: by `capacity` entries and by `max_bytes` of
//! features (their heap cost, allocator rounding included, see
//! `FeatureVec::heap_bytes`). An insert that takes the held bytes over
//! `max_bytes` evicts the features of the oldest entries until it fits,
//! leaving a tombstone that answers 404 `unknown_prediction_id` with a
//! message naming `join.max_bytes`. Eviction walks a cursor from the
//! oldest entry that may still hold features, so it costs O(1) amortised.
//!
//! Ids are 28 hex digits: issue time in milliseconds since the epoch (12), a
//! random per-model nonce (8) and the per-model sequence (8). The nonce
//! keeps ids of different models and processes apart; carrying the time
//! lets a lookup that misses say whether the id expired or was never known.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
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
        "prediction_id is unknown to this model (never issued by it, or evicted to stay within join.capacity or join.max_bytes)"
    )]
    Unknown,
    #[error(
        "prediction_id was evicted to keep the join cache within join.max_bytes; send the features with the label instead"
    )]
    Evicted,
    #[error("prediction_id has expired (older than join.ttl_s)")]
    Expired,
    #[error("prediction_id has already been labelled")]
    AlreadyLabelled,
}

/// What the cache holds and has let go, for metrics; written under the
/// lock, read without it.
#[derive(Debug, Default)]
pub struct JoinUsage {
    /// Heap bytes of the features held.
    pub bytes: AtomicU64,
    /// Unlabelled, unexpired entries overwritten by newer ones
    /// (`join.capacity`).
    pub evicted_capacity: AtomicU64,
    /// Entries whose features were dropped to stay within `join.max_bytes`.
    pub evicted_bytes: AtomicU64,
}

#[derive(Debug)]
pub struct JoinCache {
    ttl: Duration,
    capacity: usize,
    max_bytes: usize,
    /// Sequence numbers run in `0..wrap`, a multiple of `capacity`, so the
    /// slot `seq % capacity` always holds the oldest entry when reused.
    wrap: u64,
    nonce: u32,
    inner: Mutex<Ring>,
    usage: JoinUsage,
}

#[derive(Debug, Default)]
struct Ring {
    /// Grows to `capacity`, then slot `seq % capacity` is reused.
    slots: Vec<Slot>,
    /// Sequence number of the next insert, in `0..wrap`.
    next: u64,
    /// The newest `held` entries may still hold features; older ones do
    /// not (labelled, evicted or overwritten). The eviction cursor.
    held: usize,
    /// Heap bytes of the features held (the sum of `Held::Pending` costs).
    bytes: usize,
}

#[derive(Debug)]
struct Slot {
    key: Key,
    issued: Instant,
    held: Held,
}

#[derive(Debug)]
enum Held {
    /// Waiting for its label, with what its features cost.
    Pending(PendingPrediction, usize),
    Labelled,
    /// Features dropped to stay within `max_bytes`.
    Evicted,
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
    /// A cache of at most `capacity` predictions holding at most
    /// `max_bytes` of features.
    pub fn new(ttl: Duration, capacity: usize, max_bytes: usize) -> Self {
        let span = u64::from(u32::MAX) + 1;
        let wrap = if capacity == 0 || capacity as u64 > span {
            span
        } else {
            span / capacity as u64 * capacity as u64
        };
        Self {
            ttl,
            capacity,
            max_bytes,
            wrap,
            nonce: rand::random::<u32>(),
            inner: Mutex::new(Ring::default()),
            usage: JoinUsage::default(),
        }
    }

    /// Bytes held and evictions so far.
    pub fn usage(&self) -> &JoinUsage {
        &self.usage
    }

    /// Remembers a prediction and returns its new id.
    pub fn insert(&self, pending: PendingPrediction) -> String {
        let ms = epoch_ms(pending.predicted_at);
        let issued = Instant::now();
        // What the features cost as they are held: their own allocation.
        let cost = crate::learn::features::allocation_cost(
            pending.features.features.capacity() * std::mem::size_of::<crate::learn::Feature>(),
        );
        let mut ring = self.lock();
        let seq = ring.next as u32;
        ring.next = (ring.next + 1) % self.wrap;
        let key = Key {
            ms,
            nonce: self.nonce,
            seq,
        };
        let mut freed = Vec::new();
        if self.capacity > 0 {
            let slot = Slot {
                key,
                issued,
                held: Held::Pending(pending, cost),
            };
            ring.bytes += cost;
            ring.held = (ring.held + 1).min(self.capacity);
            let i = seq as usize % self.capacity;
            if i < ring.slots.len() {
                let old = std::mem::replace(&mut ring.slots[i], slot);
                if let Held::Pending(p, cost) = old.held {
                    ring.bytes -= cost;
                    if issued.saturating_duration_since(old.issued) <= self.ttl {
                        self.usage.evicted_capacity.fetch_add(1, Ordering::Relaxed);
                    }
                    freed.push(p);
                }
            } else {
                ring.slots.push(slot);
            }
            self.evict_for_bytes(&mut ring, &mut freed);
        }
        self.usage.bytes.store(ring.bytes as u64, Ordering::Relaxed);
        drop(ring);
        // Evicted features are freed outside the lock.
        drop(freed);
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

    /// Drops the features of the oldest entries until the held bytes fit
    /// `max_bytes` (the newest too, if it alone does not fit).
    fn evict_for_bytes(&self, ring: &mut Ring, freed: &mut Vec<PendingPrediction>) {
        while ring.bytes > self.max_bytes && ring.held > 0 {
            let seq = (ring.next + self.wrap - ring.held as u64) % self.wrap;
            ring.held -= 1;
            let slot = &mut ring.slots[(seq % self.capacity as u64) as usize];
            if matches!(slot.held, Held::Pending(..))
                && let Held::Pending(p, cost) = std::mem::replace(&mut slot.held, Held::Evicted)
            {
                ring.bytes -= cost;
                self.usage.evicted_bytes.fetch_add(1, Ordering::Relaxed);
                freed.push(p);
            }
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
                } else {
                    match slot.held {
                        Held::Pending(..) => Ok(Claim(i)),
                        Held::Labelled => Err(JoinError::AlreadyLabelled),
                        Held::Evicted => Err(JoinError::Evicted),
                    }
                }
            }
            // Gone from the ring: say why, from the time the id carries.
            _ if Duration::from_millis(self.now_ms.saturating_sub(key.ms)) > cache.ttl => {
                Err(JoinError::Expired)
            }
            _ => Err(JoinError::Unknown),
        }
    }

    /// The prediction a checked claim names, left in place.
    pub fn peek(&self, claim: &Claim) -> Option<&PendingPrediction> {
        match &self.ring.slots.get(claim.0)?.held {
            Held::Pending(p, _) => Some(p),
            Held::Labelled | Held::Evicted => None,
        }
    }

    /// Takes a checked prediction, leaving a tombstone. Cannot fail: the
    /// lock has been held since the check.
    pub fn claim(&mut self, claim: Claim) -> Option<PendingPrediction> {
        let slot = self.ring.slots.get_mut(claim.0)?;
        if !matches!(slot.held, Held::Pending(..)) {
            return None;
        }
        let Held::Pending(p, cost) = std::mem::replace(&mut slot.held, Held::Labelled) else {
            return None;
        };
        self.ring.bytes -= cost;
        self.cache
            .usage
            .bytes
            .store(self.ring.bytes as u64, Ordering::Relaxed);
        Some(p)
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
        let cache = JoinCache::new(Duration::from_secs(60), 10, usize::MAX);
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
        let cache = JoinCache::new(Duration::from_secs(60), 3, usize::MAX);
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
        let cache = JoinCache::new(Duration::from_secs(60), 3, usize::MAX);
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

    /// A prediction of `n` features.
    fn wide(n: usize) -> PendingPrediction {
        let mut features = Vec::with_capacity(n);
        features.extend((0..n as u32).map(|index| crate::learn::Feature {
            index,
            value: 1.0,
            numeric: true,
        }));
        PendingPrediction {
            features: FeatureVec { features },
            ..pending()
        }
    }

    fn bytes(cache: &JoinCache) -> u64 {
        let held = cache.usage().bytes.load(Ordering::Relaxed);
        assert_eq!(held as usize, cache.lock().bytes, "metric mirrors the ring");
        held
    }

    #[test]
    fn bytes_are_the_heap_cost_of_the_features_held() {
        let cache = JoinCache::new(Duration::from_secs(60), 10, usize::MAX);
        let a = cache.insert(wide(100));
        assert_eq!(bytes(&cache), 1792, "100 x 16 bytes, rounded up to 1792");
        cache.insert(wide(10_000));
        assert_eq!(bytes(&cache), 1792 + 163_840);
        let mut b = cache.batch();
        let claim = b.check(&a).unwrap();
        assert_eq!(b.claim(claim).unwrap().features.len(), 100);
        drop(b);
        assert_eq!(bytes(&cache), 163_840, "a labelled entry holds nothing");
    }

    #[test]
    fn max_bytes_evicts_the_oldest_first() {
        let one = crate::learn::features::allocation_cost(1000 * 16);
        let cache = JoinCache::new(Duration::from_secs(60), 100, 3 * one);
        let ids: Vec<String> = (0..5).map(|_| cache.insert(wide(1000))).collect();
        assert_eq!(bytes(&cache), 3 * one as u64);
        assert_eq!(cache.usage().evicted_bytes.load(Ordering::Relaxed), 2);
        assert_eq!(cache.usage().evicted_capacity.load(Ordering::Relaxed), 0);
        let mut b = cache.batch();
        assert_eq!(b.check(&ids[0]), Err(JoinError::Evicted));
        assert_eq!(b.check(&ids[1]), Err(JoinError::Evicted));
        // Labelling the oldest survivor frees its bytes: the next insert
        // then evicts nothing.
        let claim = b.check(&ids[2]).unwrap();
        b.claim(claim);
        drop(b);
        let newest = cache.insert(wide(1000));
        assert_eq!(cache.usage().evicted_bytes.load(Ordering::Relaxed), 2);
        let b = cache.batch();
        assert_eq!(b.check(&ids[2]), Err(JoinError::AlreadyLabelled));
        for id in [&ids[3], &ids[4], &newest] {
            assert!(b.check(id).is_ok(), "{id} is within the budget");
        }
        drop(b);
        // A wide one takes the place of several narrow ones.
        let big = cache.insert(wide(2000));
        let b = cache.batch();
        assert_eq!(b.check(&ids[3]), Err(JoinError::Evicted));
        assert_eq!(b.check(&ids[4]), Err(JoinError::Evicted));
        assert!(b.check(&newest).is_ok());
        assert!(b.check(&big).is_ok());
        drop(b);
        assert!(bytes(&cache) <= 3 * one as u64);
    }

    #[test]
    fn one_prediction_over_the_budget_is_not_kept() {
        let cache = JoinCache::new(Duration::from_secs(60), 10, 1000);
        let small = cache.insert(wide(10));
        let id = cache.insert(wide(1000));
        assert_eq!(bytes(&cache), 0);
        let b = cache.batch();
        assert_eq!(b.check(&id), Err(JoinError::Evicted));
        assert_eq!(b.check(&small), Err(JoinError::Evicted));
    }

    #[test]
    fn the_eviction_cursor_follows_the_ring_when_it_overwrites() {
        let one = crate::learn::features::allocation_cost(1000 * 16);
        let cache = JoinCache::new(Duration::from_secs(60), 3, 2 * one);
        cache.lock().next = cache.wrap - 2;
        let ids: Vec<String> = (0..7).map(|_| cache.insert(wide(1000))).collect();
        assert_eq!(bytes(&cache), 2 * one as u64);
        let b = cache.batch();
        assert_eq!(b.check(&ids[4]), Err(JoinError::Evicted));
        assert!(b.check(&ids[5]).is_ok());
        assert!(b.check(&ids[6]).is_ok());
        assert_eq!(b.check(&ids[3]), Err(JoinError::Unknown), "overwritten");
    }

    #[test]
    fn overwriting_an_unlabelled_entry_counts_a_capacity_eviction() {
        let cache = JoinCache::new(Duration::from_secs(60), 2, usize::MAX);
        let first = cache.insert(wide(10));
        let mut b = cache.batch();
        let claim = b.check(&first).unwrap();
        b.claim(claim);
        drop(b);
        for _ in 0..3 {
            cache.insert(wide(10));
        }
        // The labelled one went without counting; one unlabelled one went.
        assert_eq!(cache.usage().evicted_capacity.load(Ordering::Relaxed), 1);
        assert_eq!(bytes(&cache), 2 * 160);
    }

    #[test]
    fn capacity_zero_remembers_nothing() {
        let cache = JoinCache::new(Duration::from_secs(60), 0, usize::MAX);
        let id = cache.insert(pending());
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.batch().check(&id), Err(JoinError::Unknown));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = JoinCache::new(Duration::from_millis(1), 10, usize::MAX);
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
