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
//! Labelling is two short critical sections, never one held across IO:
//! under the lock a request claims its ids (each slot reads as in flight,
//! its prediction moves to the request), then logs the labels without the
//! lock, then relocks to commit (labelled) or, dropped uncommitted, to put
//! the predictions back (pending again). An id is thus labelled at most
//! once, and `insert` (predict) never waits behind a disk write.
//!
//! While claimed, an entry's features are out of the byte count (the
//! request holds them) and eviction treats it as it treats a labelled one:
//! overwriting or passing it frees and counts nothing. Whatever it missed
//! is settled once, when the claim is released: an entry overwritten
//! meanwhile is counted a capacity eviction, one the byte eviction passed
//! is evicted and counted then; a committed claim counts no eviction.
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
    /// How the features broke the model's declared schema, if they did
    /// (the feedback that labels it is quarantined).
    pub schema: Option<std::sync::Arc<str>>,
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
    #[error(
        "prediction_id is being labelled by another request; retry to learn whether that label was accepted"
    )]
    InFlight,
    #[error("prediction_id appears more than once in this batch")]
    Repeated,
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
    slots: Slots,
    /// Sequence number of the next insert, in `0..wrap`.
    next: u64,
    /// The newest `held` entries may still hold features; older ones do
    /// not (labelled, evicted or overwritten). The eviction cursor.
    held: usize,
    /// Heap bytes of the features held (the sum of `Held::Pending` costs).
    bytes: usize,
}

/// The ring's slots in chunks of `SLOT_CHUNK`, so growing it allocates a
/// chunk and never copies the slots it holds: a `Vec` doubling from 65,536
/// to 131,072 slots copied about 15 MB under the lock every predict of the
/// model takes (predict p99 10-20 ms while a busy model's ring grew).
#[derive(Debug, Default)]
struct Slots {
    chunks: Vec<Vec<Slot>>,
    len: usize,
}

const SLOT_CHUNK: usize = 1024;

impl Slots {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, slot: Slot) {
        if self.len.is_multiple_of(SLOT_CHUNK) {
            self.chunks.push(Vec::with_capacity(SLOT_CHUNK));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(slot);
            self.len += 1;
        }
    }

    fn get(&self, i: usize) -> Option<&Slot> {
        self.chunks.get(i / SLOT_CHUNK)?.get(i % SLOT_CHUNK)
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut Slot> {
        self.chunks.get_mut(i / SLOT_CHUNK)?.get_mut(i % SLOT_CHUNK)
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Slot;

    fn index(&self, i: usize) -> &Slot {
        &self.chunks[i / SLOT_CHUNK][i % SLOT_CHUNK]
    }
}

impl std::ops::IndexMut<usize> for Slots {
    fn index_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.chunks[i / SLOT_CHUNK][i % SLOT_CHUNK]
    }
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
    /// Claimed by a request logging its label; the request holds the
    /// prediction (`Claimed`).
    Claiming,
    Labelled,
    /// Features dropped to stay within `max_bytes`.
    Evicted,
}

/// Ids a batch looks up, claims commit or claims go back per hold of the
/// lock.
const PER_HOLD: usize = 64;

/// A parsed id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    ms: u64,
    nonce: u32,
    seq: u32,
}

/// A view used to check and claim several ids at once, so a batch is
/// all-or-nothing: claims still here when it is dropped go back to pending,
/// unseen. Every check uses the same `now`, so an entry cannot expire
/// between its check and its claim. The lock is let go every
/// `PER_HOLD` ids, so a predict inserting into the cache waits for at most
/// that many, whatever the batch's size and the claiming thread's priority
/// (a lower-priority feedback thread may be preempted while it holds it).
pub struct JoinBatch<'a> {
    cache: &'a JoinCache,
    /// `None` between holds.
    ring: Option<MutexGuard<'a, Ring>>,
    /// Ids looked up in the current hold.
    in_hold: usize,
    now: Instant,
    now_ms: u64,
    taken: Vec<Taken>,
}

/// Predictions claimed by one request, held without the lock while the
/// request logs their labels. `commit` labels their ids; dropped
/// uncommitted (a failed append, a full queue, an early return, a panic)
/// they go back to pending and can be labelled again.
#[derive(Debug)]
pub struct Claimed<'a> {
    cache: &'a JoinCache,
    taken: Vec<Taken>,
}

/// A prediction moved out of its slot by a claim.
#[derive(Debug)]
struct Taken {
    key: Key,
    prediction: PendingPrediction,
    cost: usize,
}

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

    /// Locks the cache for a check-then-claim over several ids. Not to be
    /// called while holding a `Claimed` of this cache that may be dropped
    /// before the batch is.
    pub fn batch(&self) -> JoinBatch<'_> {
        JoinBatch {
            cache: self,
            ring: Some(self.lock()),
            in_hold: 0,
            now: Instant::now(),
            now_ms: epoch_ms(SystemTime::now()),
            taken: Vec::new(),
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

    /// Puts a released claim back: pending again if its slot still waits
    /// for it, or settles the eviction it missed while claimed.
    fn put_back(&self, ring: &mut Ring, t: Taken, freed: &mut Vec<PendingPrediction>) {
        let i = t.key.seq as usize % self.capacity;
        match ring.slots.get_mut(i) {
            Some(slot) if slot.key == t.key && matches!(slot.held, Held::Claiming) => {
                // Its age in inserts: the newest `held` entries are those
                // the byte eviction has not passed.
                let age = (ring.next + self.wrap - 1 - u64::from(t.key.seq)) % self.wrap;
                if (age as usize) < ring.held {
                    slot.held = Held::Pending(t.prediction, t.cost);
                    ring.bytes += t.cost;
                    self.evict_for_bytes(ring, freed);
                } else {
                    slot.held = Held::Evicted;
                    self.usage.evicted_bytes.fetch_add(1, Ordering::Relaxed);
                    freed.push(t.prediction);
                }
            }
            // Overwritten while claimed (it was unexpired when claimed).
            _ => {
                self.usage.evicted_capacity.fetch_add(1, Ordering::Relaxed);
                freed.push(t.prediction);
            }
        }
        self.usage.bytes.store(ring.bytes as u64, Ordering::Relaxed);
    }

    /// Puts released claims back; `held` is the lock if the caller has it.
    fn put_back_all<'a>(&'a self, taken: Vec<Taken>, held: Option<MutexGuard<'a, Ring>>) {
        let mut freed = Vec::new();
        self.in_holds(taken, held, |ring, t| self.put_back(ring, t, &mut freed));
        // The features are freed outside the lock.
        drop(freed);
    }

    /// Applies `f` to each item under the lock (`held`, or taken here),
    /// letting it go every `PER_HOLD` items.
    fn in_holds<'a, T>(
        &'a self,
        items: impl IntoIterator<Item = T>,
        held: Option<MutexGuard<'a, Ring>>,
        mut f: impl FnMut(&mut Ring, T),
    ) {
        let mut ring = held.unwrap_or_else(|| self.lock());
        for (n, item) in items.into_iter().enumerate() {
            if n > 0 && n % PER_HOLD == 0 {
                drop(ring);
                ring = self.lock();
            }
            f(&mut ring, item);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Every mutation is a single slot write or a push, so a poisoned
        // lock still guards a consistent ring.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<'a> JoinBatch<'a> {
    /// Whether `id` can be claimed; claims nothing.
    pub fn check(&mut self, id: &str) -> Result<(), JoinError> {
        let found = self.find(id).map(|_| ());
        self.pace();
        found
    }

    /// Ends the hold once it has looked up `PER_HOLD` ids.
    fn pace(&mut self) {
        self.in_hold += 1;
        if self.in_hold >= PER_HOLD {
            self.ring = None;
            self.in_hold = 0;
        }
    }

    /// The lock, taken again if the last hold ended.
    fn ring(&mut self) -> &mut MutexGuard<'a, Ring> {
        let cache = self.cache;
        self.ring.get_or_insert_with(|| cache.lock())
    }

    /// Checks `id` and claims it: its prediction moves to the claims and
    /// its slot answers `InFlight` until they are committed or dropped.
    /// Returns the prediction's index among the claims.
    pub fn claim(&mut self, id: &str) -> Result<usize, JoinError> {
        let claimed = self.take(id);
        self.pace();
        claimed
    }

    fn take(&mut self, id: &str) -> Result<usize, JoinError> {
        let i = self.find(id)?;
        let usage = &self.cache.usage;
        let ring = self.ring();
        let slot = &mut ring.slots[i];
        let key = slot.key;
        let (prediction, cost) = match std::mem::replace(&mut slot.held, Held::Claiming) {
            Held::Pending(p, cost) => (p, cost),
            // `find` answers only pending slots.
            other => {
                slot.held = other;
                return Err(JoinError::InFlight);
            }
        };
        ring.bytes -= cost;
        usage.bytes.store(ring.bytes as u64, Ordering::Relaxed);
        self.taken.push(Taken {
            key,
            prediction,
            cost,
        });
        Ok(self.taken.len() - 1)
    }

    /// Puts back every claim made so far (a batch that will be refused),
    /// so a concurrent request naming the same ids is not refused for
    /// them; later lookups can still `check`.
    pub fn release(&mut self) {
        self.in_hold = 0;
        let held = self.ring.take();
        let taken = std::mem::take(&mut self.taken);
        if !taken.is_empty() {
            // Under the hold that saw the refusal (at most 64 more ids'
            // work): no other batch finds these ids claimed in between.
            self.cache.put_back_all(taken, held);
        }
    }

    /// Lets go of the lock; the claims stay in flight.
    pub fn unlock(mut self) -> Claimed<'a> {
        Claimed {
            cache: self.cache,
            taken: std::mem::take(&mut self.taken),
        }
    }

    /// The slot of a claimable `id`, or why it cannot be claimed.
    fn find(&mut self, id: &str) -> Result<usize, JoinError> {
        let key = parse_id(id).ok_or(JoinError::Unknown)?;
        let cache = self.cache;
        // Another model's or another process's id is unknown here,
        // whatever its age.
        if key.nonce != cache.nonce || cache.capacity == 0 {
            return Err(JoinError::Unknown);
        }
        let i = key.seq as usize % cache.capacity;
        let (now, now_ms) = (self.now, self.now_ms);
        match self.ring().slots.get(i) {
            Some(slot) if slot.key == key => {
                if now.saturating_duration_since(slot.issued) > cache.ttl {
                    Err(JoinError::Expired)
                } else {
                    match slot.held {
                        Held::Pending(..) => Ok(i),
                        Held::Claiming => Err(JoinError::InFlight),
                        Held::Labelled => Err(JoinError::AlreadyLabelled),
                        Held::Evicted => Err(JoinError::Evicted),
                    }
                }
            }
            // Gone from the ring: say why, from the time the id carries.
            _ if Duration::from_millis(now_ms.saturating_sub(key.ms)) > cache.ttl => {
                Err(JoinError::Expired)
            }
            _ => Err(JoinError::Unknown),
        }
    }
}

impl Drop for JoinBatch<'_> {
    fn drop(&mut self) {
        // Nothing has seen these claims: each goes back as it was.
        self.release();
    }
}

impl Claimed<'_> {
    /// The `i`th claimed prediction.
    pub fn get(&self, i: usize) -> Option<&PendingPrediction> {
        self.taken.get(i).map(|t| &t.prediction)
    }

    /// Labels the claimed ids: each answers `AlreadyLabelled` from now on
    /// (or, overwritten meanwhile, `Unknown`).
    pub fn commit(mut self) {
        let taken = std::mem::take(&mut self.taken);
        let capacity = self.cache.capacity;
        self.cache.in_holds(&taken, None, |ring, t| {
            let i = t.key.seq as usize % capacity;
            if let Some(slot) = ring.slots.get_mut(i)
                && slot.key == t.key
                && matches!(slot.held, Held::Claiming)
            {
                slot.held = Held::Labelled;
            }
        });
        // The features are freed outside the lock.
        drop(taken);
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        if !self.taken.is_empty() {
            self.cache
                .put_back_all(std::mem::take(&mut self.taken), None);
        }
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
            schema: None,
        }
    }

    #[test]
    fn an_id_is_claimed_once() {
        let cache = JoinCache::new(Duration::from_secs(60), 10, usize::MAX);
        let id = cache.insert(pending());
        assert_eq!(id.len(), 28);
        let mut b = cache.batch();
        let claim = b.claim(&id).unwrap();
        let claimed = b.unlock();
        assert_eq!(claimed.get(claim).unwrap().version, 3);
        claimed.commit();
        let mut b = cache.batch();
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
        let mut b = cache.batch();
        assert_eq!(b.check(&ids[1]), Err(JoinError::Unknown));
        assert!(b.check(&ids[2]).is_ok());
        assert_eq!(b.check(&ids[0]), Err(JoinError::Unknown));
        assert!(b.check(&ids[4]).is_ok());
    }

    #[test]
    fn a_ring_over_several_chunks_evicts_the_oldest() {
        // 2,500 slots: the ring spans three chunks, the last one partly.
        let cache = JoinCache::new(Duration::from_secs(60), 2_500, usize::MAX);
        let ids: Vec<String> = (0..3_000).map(|_| cache.insert(pending())).collect();
        assert_eq!(cache.len(), 2_500);
        let mut b = cache.batch();
        for gone in [0, 499] {
            assert_eq!(b.check(&ids[gone]), Err(JoinError::Unknown), "{gone}");
        }
        for kept in [500, 1_023, 1_024, 2_047, 2_048, 2_999] {
            assert!(b.check(&ids[kept]).is_ok(), "{kept} is among the newest");
        }
    }

    #[test]
    fn sequence_wrap_keeps_evicting_the_oldest() {
        let cache = JoinCache::new(Duration::from_secs(60), 3, usize::MAX);
        assert_eq!(cache.wrap % 3, 0);
        // Jump to just before the wrap.
        cache.lock().next = cache.wrap - 2;
        let ids: Vec<String> = (0..5).map(|_| cache.insert(pending())).collect();
        assert_eq!(cache.len(), 3);
        let mut b = cache.batch();
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
        let claim = b.claim(&a).unwrap();
        let claimed = b.unlock();
        assert_eq!(claimed.get(claim).unwrap().features.len(), 100);
        assert_eq!(bytes(&cache), 163_840, "a claimed entry holds nothing");
        claimed.commit();
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
        b.claim(&ids[2]).unwrap();
        b.unlock().commit();
        let newest = cache.insert(wide(1000));
        assert_eq!(cache.usage().evicted_bytes.load(Ordering::Relaxed), 2);
        let mut b = cache.batch();
        assert_eq!(b.check(&ids[2]), Err(JoinError::AlreadyLabelled));
        for id in [&ids[3], &ids[4], &newest] {
            assert!(b.check(id).is_ok(), "{id} is within the budget");
        }
        drop(b);
        // A wide one takes the place of several narrow ones.
        let big = cache.insert(wide(2000));
        let mut b = cache.batch();
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
        let mut b = cache.batch();
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
        let mut b = cache.batch();
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
        b.claim(&first).unwrap();
        b.unlock().commit();
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
    fn a_claim_is_in_flight_until_committed() {
        let cache = JoinCache::new(Duration::from_secs(60), 10, usize::MAX);
        let id = cache.insert(wide(10));
        let mut b = cache.batch();
        let claim = b.claim(&id).unwrap();
        let claimed = b.unlock();
        // The lock is free while claimed: predict inserts, a second label
        // of the id is refused as in flight.
        cache.insert(pending());
        let mut b = cache.batch();
        assert_eq!(b.check(&id), Err(JoinError::InFlight));
        assert_eq!(b.claim(&id), Err(JoinError::InFlight));
        drop(b);
        assert_eq!(claimed.get(claim).unwrap().features.len(), 10);
        claimed.commit();
        assert_eq!(cache.batch().claim(&id), Err(JoinError::AlreadyLabelled));
        assert_eq!(bytes(&cache), 0);
    }

    #[test]
    fn a_released_claim_is_pending_again() {
        let cache = JoinCache::new(Duration::from_secs(60), 10, usize::MAX);
        let id = cache.insert(wide(10));
        let mut b = cache.batch();
        b.claim(&id).unwrap();
        let claimed = b.unlock();
        assert_eq!(bytes(&cache), 0);
        // A failed append: dropped uncommitted.
        drop(claimed);
        assert_eq!(bytes(&cache), 160);
        let mut b = cache.batch();
        let claim = b.claim(&id).unwrap();
        let claimed = b.unlock();
        assert_eq!(claimed.get(claim).unwrap().features.len(), 10);
        claimed.commit();
        assert_eq!(cache.batch().check(&id), Err(JoinError::AlreadyLabelled));
        let usage = cache.usage();
        assert_eq!(usage.evicted_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(usage.evicted_capacity.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_refused_batch_puts_its_claims_back() {
        let cache = JoinCache::new(Duration::from_secs(60), 10, usize::MAX);
        let id = cache.insert(wide(10));
        let mut b = cache.batch();
        b.claim(&id).unwrap();
        assert_eq!(b.claim("zz"), Err(JoinError::Unknown));
        drop(b);
        assert_eq!(bytes(&cache), 160);
        assert!(cache.batch().check(&id).is_ok());
    }

    #[test]
    fn eviction_missed_while_claimed_is_settled_once_on_release() {
        let one = crate::learn::features::allocation_cost(1000 * 16);
        // Claims `a` and `b`, then inserts three more: `a` is overwritten
        // (capacity 4) and the byte eviction passes `b` (claimed, nothing
        // to free) to evict `c`.
        let run = |commit: bool| {
            let cache = JoinCache::new(Duration::from_secs(60), 4, 2 * one);
            let (a, b_id) = (cache.insert(wide(1000)), cache.insert(wide(1000)));
            let mut b = cache.batch();
            b.claim(&a).unwrap();
            b.claim(&b_id).unwrap();
            let claimed = b.unlock();
            let c = cache.insert(wide(1000));
            cache.insert(wide(1000));
            cache.insert(wide(1000));
            let usage = cache.usage();
            assert_eq!(usage.evicted_capacity.load(Ordering::Relaxed), 0);
            assert_eq!(usage.evicted_bytes.load(Ordering::Relaxed), 1);
            if commit {
                claimed.commit();
            } else {
                drop(claimed);
            }
            assert_eq!(bytes(&cache), 2 * one as u64);
            let mut b = cache.batch();
            assert_eq!(b.check(&a), Err(JoinError::Unknown), "overwritten");
            assert_eq!(b.check(&c), Err(JoinError::Evicted));
            let b_now = b.check(&b_id);
            drop(b);
            let evicted = |e: &AtomicU64| e.load(Ordering::Relaxed);
            (
                b_now,
                evicted(&usage.evicted_capacity),
                evicted(&usage.evicted_bytes),
            )
        };
        // Released: each missed eviction is counted once, now.
        assert_eq!(run(false), (Err(JoinError::Evicted), 1, 2));
        // Committed: labelled, no eviction counted for either.
        assert_eq!(run(true), (Err(JoinError::AlreadyLabelled), 0, 1));
    }

    #[test]
    fn a_release_within_the_budget_window_may_evict_older_entries() {
        let one = crate::learn::features::allocation_cost(1000 * 16);
        let cache = JoinCache::new(Duration::from_secs(60), 10, 2 * one);
        let old = cache.insert(wide(1000));
        let id = cache.insert(wide(1000));
        let mut b = cache.batch();
        b.claim(&id).unwrap();
        let claimed = b.unlock();
        // Fits while `id` is claimed.
        let newest = cache.insert(wide(1000));
        drop(claimed);
        // Back over the budget: the oldest goes.
        assert_eq!(bytes(&cache), 2 * one as u64);
        let mut b = cache.batch();
        assert_eq!(b.check(&old), Err(JoinError::Evicted));
        assert!(b.check(&id).is_ok());
        assert!(b.check(&newest).is_ok());
    }

    #[test]
    fn concurrent_claims_label_an_id_once() {
        let cache = JoinCache::new(Duration::from_secs(60), 100, usize::MAX);
        let ids: Vec<String> = (0..50).map(|_| cache.insert(wide(4))).collect();
        let committed = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (cache, ids, committed) = (&cache, &ids, &committed);
                s.spawn(move || {
                    for (n, id) in ids.iter().enumerate() {
                        let mut b = cache.batch();
                        let Ok(_) = b.claim(id) else { continue };
                        let claimed = b.unlock();
                        std::thread::yield_now();
                        // Some fail and put the id back for another.
                        if (n + t) % 3 == 0 {
                            drop(claimed);
                        } else {
                            claimed.commit();
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let mut b = cache.batch();
        let labelled = ids
            .iter()
            .filter(|id| b.check(id) == Err(JoinError::AlreadyLabelled))
            .count();
        assert_eq!(committed.load(Ordering::Relaxed), labelled as u64);
        drop(b);
        let pending = 50 - labelled as u64;
        assert_eq!(bytes(&cache), pending * 64);
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

    /// A batch larger than one hold lets the lock go between holds (a
    /// predict can insert meanwhile) and is still all-or-nothing: dropped,
    /// every claim from every hold is pending again; committed, every one
    /// is labelled.
    #[test]
    fn a_large_batch_lets_predict_in_between_holds() {
        let n = PER_HOLD * 3 + 5;
        let cache = JoinCache::new(Duration::from_secs(60), n * 2, usize::MAX);
        let ids: Vec<String> = (0..n).map(|_| cache.insert(pending())).collect();
        let mut b = cache.batch();
        for id in &ids[..PER_HOLD] {
            b.claim(id).unwrap();
        }
        assert!(cache.inner.try_lock().is_ok(), "free after a hold's ids");
        let late = cache.insert(pending());
        for id in &ids[PER_HOLD..] {
            b.claim(id).unwrap();
        }
        assert_eq!(b.claim(&ids[0]), Err(JoinError::InFlight));
        drop(b);
        let mut b = cache.batch();
        for id in ids.iter().chain([&late]) {
            assert_eq!(b.check(id), Ok(()), "back to pending");
        }
        for id in &ids {
            b.claim(id).unwrap();
        }
        b.unlock().commit();
        let mut b = cache.batch();
        for id in &ids {
            assert_eq!(b.check(id), Err(JoinError::AlreadyLabelled));
        }
        assert_eq!(b.check(&late), Ok(()));
    }

    /// A batch that is refused gives back what it claimed: a concurrent
    /// batch naming the same ids then claims them, instead of both being
    /// refused `InFlight`.
    #[test]
    fn a_refused_batch_gives_its_claims_back() {
        let cache = JoinCache::new(Duration::from_secs(60), 1000, usize::MAX);
        let ids: Vec<String> = (0..200).map(|_| cache.insert(pending())).collect();
        let mut a = cache.batch();
        for id in &ids[..PER_HOLD] {
            a.claim(id).unwrap();
        }
        let mut b = cache.batch();
        b.claim(&ids[100]).unwrap();
        assert_eq!(b.claim(&ids[0]), Err(JoinError::InFlight));
        b.release();
        // While `b` lives (it holds no lock after `release`).
        a.claim(&ids[100]).expect("given back at once");
        drop(b);
        for id in ids[PER_HOLD..].iter().filter(|id| **id != ids[100]) {
            a.claim(id).expect("pending");
        }
        a.unlock().commit();
    }
}
