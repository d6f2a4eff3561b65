//! `IdempotencyKeys`: the feedback requests a model has acknowledged under
//! an `Idempotency-Key`, so that a client retrying after a timeout gets
//! the original 202 instead of training the examples twice.
//!
//! A key is scoped to the model (each model has its own table). Only 202
//! answers are remembered: a request is `InFlight` from the moment it is
//! checked until its examples are appended and queued, and forgotten if it
//! fails before that. A duplicate arriving meanwhile is told so (409); the
//! same key with a different body is refused (422). The table is bounded
//! by count (`capacity`, oldest forgotten first) and by age (`ttl`).
//!
//! A key is finished once its examples are queued, before their fsync, so
//! that a client gone before the fsync still gets its answer on retry. A
//! 202 still means durable: `begin` hands back where the request's records
//! end, and the retry is answered 202 only once the log says they are
//! durable. If their fsync failed (the log is poisoned), the retry gets the
//! same refusal the first attempt got, never a 202 for examples that may
//! not survive a crash; the key is not forgotten either, because those
//! examples are queued for training and, if they did reach the disk, come
//! back on replay: applying the retry anew could train them twice.
//!
//! Durability: the first log record of a keyed request carries the key
//! (`log_record`), so replay after a crash restores what the snapshot does
//! not hold, and the table is saved beside each periodic snapshot
//! (`idempotency`, written atomically), so keys outlive the log segments
//! retention removes.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Longest accepted key.
pub const MAX_KEY_BYTES: usize = 128;
/// The file the table is saved to, in the model's directory.
pub const FILE: &str = "idempotency";

/// What a client's body hashes to (blake3).
pub type BodyHash = [u8; 32];

#[derive(Debug)]
pub struct IdempotencyKeys {
    table: Mutex<Table>,
    capacity: usize,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<Box<[u8]>, Entry>,
    /// Keys oldest first, for eviction by count and age.
    order: VecDeque<(Box<[u8]>, SystemTime)>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    body: BodyHash,
    at: SystemTime,
    /// Set once the examples are in the log: the first one's position.
    position: Option<u64>,
    accepted: usize,
    done: bool,
}

/// A key as saved and as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key: Vec<u8>,
    pub body: BodyHash,
    pub accepted: u32,
    pub at: SystemTime,
}

/// What `begin` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// A new request: go on, then `appended` and `finish` (or `abandon`).
    New,
    /// Already accepted: answer 202 with this count once the log says
    /// the records before `end` are durable (`None`: no log keeps them),
    /// train nothing.
    Acknowledged { accepted: usize, end: Option<u64> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a request with this Idempotency-Key is still being handled; retry later")]
    InFlight,
    #[error("this Idempotency-Key was used with a different body")]
    Reused,
}

impl IdempotencyKeys {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every mutation leaves the table consistent; a panic elsewhere
        // while holding it cannot break it.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `key` for a request whose body hashes to `body`.
    pub fn begin(&self, key: &[u8], body: BodyHash, now: SystemTime) -> Result<Begin, KeyError> {
        let mut t = self.lock();
        self.expire(&mut t, now);
        match t.entries.get(key) {
            Some(e) if e.body != body => Err(KeyError::Reused),
            Some(e) if e.done => Ok(Begin::Acknowledged {
                accepted: e.accepted,
                end: e.position.map(|p| p + e.accepted as u64),
            }),
            Some(_) => Err(KeyError::InFlight),
            None => {
                self.insert(
                    &mut t,
                    key.into(),
                    Entry {
                        body,
                        at: now,
                        position: None,
                        accepted: 0,
                        done: false,
                    },
                );
                Ok(Begin::New)
            }
        }
    }

    /// The request's `accepted` examples were queued, and are in the log
    /// from `position` when one is kept.
    pub fn appended(&self, key: &[u8], position: Option<u64>, accepted: usize) {
        if let Some(e) = self.lock().entries.get_mut(key) {
            e.position = position;
            e.accepted = accepted;
        }
    }

    /// The request's examples are queued: duplicates get its answer (once
    /// they are durable).
    pub fn finish(&self, key: &[u8]) {
        if let Some(e) = self.lock().entries.get_mut(key) {
            e.done = true;
        }
    }

    /// The request failed: the key is free again.
    pub fn abandon(&self, key: &[u8]) {
        let mut t = self.lock();
        if t.entries.get(key).is_some_and(|e| !e.done) {
            t.entries.remove(key);
        }
    }

    /// A key read back from the log or the saved table: acknowledged.
    pub fn restore(&self, record: &KeyRecord, position: u64, now: SystemTime) {
        let mut t = self.lock();
        let at = record.at;
        if now.duration_since(at).unwrap_or_default() >= self.ttl {
            return;
        }
        self.insert(
            &mut t,
            record.key.as_slice().into(),
            Entry {
                body: record.body,
                at,
                position: Some(position),
                accepted: record.accepted as usize,
                done: true,
            },
        );
    }

    fn insert(&self, t: &mut Table, key: Box<[u8]>, entry: Entry) {
        if t.entries.insert(key.clone(), entry).is_none() {
            t.order.push_back((key, entry.at));
        }
        while t.entries.len() > self.capacity {
            let Some((old, at)) = t.order.pop_front() else {
                break;
            };
            // A key forgotten and used again has a newer entry.
            if t.entries.get(&old).is_some_and(|e| e.at == at) {
                t.entries.remove(&old);
            }
        }
    }

    fn expire(&self, t: &mut Table, now: SystemTime) {
        while t
            .order
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at).unwrap_or_default() >= self.ttl)
        {
            let Some((key, at)) = t.order.pop_front() else {
                break;
            };
            // A key re-inserted later has a newer entry: keep that one.
            if t.entries.get(&key).is_some_and(|e| e.at == at) {
                t.entries.remove(&key);
            }
        }
    }

    /// Every key whose examples are in the log, for `save`.
    fn logged(&self) -> Vec<(u64, KeyRecord)> {
        let t = self.lock();
        t.entries
            .iter()
            .filter_map(|(key, e)| {
                Some((
                    e.position?,
                    KeyRecord {
                        key: key.to_vec(),
                        body: e.body,
                        accepted: u32::try_from(e.accepted).unwrap_or(u32::MAX),
                        at: e.at,
                    },
                ))
            })
            .collect()
    }

    /// Saves the keys whose examples are in the log (called after the log
    /// was synced for a snapshot).
    ///
    /// The file is the postcard encoding followed by its blake3 checksum,
    /// so a damaged file is never read as a smaller table.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let mut bytes = postcard::to_stdvec(&self.logged()).map_err(std::io::Error::other)?;
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(sum.as_bytes());
        crate::persist::write_atomic(&dir.join(FILE), &bytes)
    }

    /// Loads the saved keys whose examples lie before `position` (those
    /// after it come back with the log's replay).
    pub fn load(&self, dir: &Path, position: u64, now: SystemTime) -> std::io::Result<usize> {
        let bytes = match std::fs::read(dir.join(FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let damaged = |why: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: {why}; start with --repair to go on without it (keys it held are forgotten)",
                    dir.join(FILE).display()
                ),
            )
        };
        let body = bytes
            .len()
            .checked_sub(32)
            .map(|at| bytes.split_at(at))
            .filter(|(body, sum)| blake3::hash(body).as_bytes() == *sum)
            .map(|(body, _)| body)
            .ok_or_else(|| damaged("checksum mismatch (damaged)".into()))?;
        let mut saved: Vec<(u64, KeyRecord)> =
            postcard::from_bytes(body).map_err(|e| damaged(e.to_string()))?;
        saved.sort_by_key(|(_, r)| r.at);
        let mut n = 0;
        for (p, record) in saved.iter().filter(|(p, _)| *p < position) {
            self.restore(record, *p, now);
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: u8) -> BodyHash {
        [b; 32]
    }

    #[test]
    fn a_key_answers_its_first_202_once_done_and_only_then() {
        let keys = IdempotencyKeys::new(3, Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(keys.begin(b"a", h(1), t0), Ok(Begin::New));
        assert_eq!(keys.begin(b"a", h(1), t0), Err(KeyError::InFlight));
        assert_eq!(keys.begin(b"a", h(2), t0), Err(KeyError::Reused));
        keys.appended(b"a", Some(10), 5);
        keys.finish(b"a");
        assert_eq!(
            keys.begin(b"a", h(1), t0),
            Ok(Begin::Acknowledged {
                accepted: 5,
                end: Some(15)
            })
        );
        // A failed request leaves its key free.
        assert_eq!(keys.begin(b"b", h(1), t0), Ok(Begin::New));
        keys.abandon(b"b");
        assert_eq!(keys.begin(b"b", h(1), t0), Ok(Begin::New));
        // Bounded by count (oldest first) and by age.
        for k in [b"c", b"d", b"e"] {
            assert_eq!(keys.begin(k, h(1), t0), Ok(Begin::New));
        }
        assert_eq!(keys.begin(b"a", h(9), t0), Ok(Begin::New), "evicted");
        let later = t0 + Duration::from_secs(61);
        assert_eq!(keys.begin(b"e", h(7), later), Ok(Begin::New), "expired");
    }

    #[test]
    fn saved_keys_come_back_up_to_the_snapshot_position() {
        let dir = tempfile::tempdir().expect("dir");
        let now = SystemTime::now();
        let keys = IdempotencyKeys::new(100, Duration::from_secs(60));
        for (k, p) in [(b"x", 5), (b"y", 50)] {
            keys.begin(k, h(3), now).expect("new");
            keys.appended(k, Some(p), 2);
            keys.finish(k);
        }
        keys.begin(b"z", h(3), now).expect("never logged");
        keys.save(dir.path()).expect("save");
        let back = IdempotencyKeys::new(100, Duration::from_secs(60));
        assert_eq!(back.load(dir.path(), 20, now).expect("load"), 1);
        assert_eq!(
            back.begin(b"x", h(3), now),
            Ok(Begin::Acknowledged {
                accepted: 2,
                end: Some(7)
            })
        );
        assert_eq!(
            back.begin(b"y", h(3), now),
            Ok(Begin::New),
            "after the position: replay's job"
        );
        assert_eq!(back.begin(b"z", h(3), now), Ok(Begin::New));
        // A damaged file is refused, never read as a smaller table.
        let file = dir.path().join(FILE);
        let mut bytes = std::fs::read(&file).expect("read");
        bytes[3] ^= 1;
        std::fs::write(&file, &bytes).expect("write");
        let err = IdempotencyKeys::new(100, Duration::from_secs(60))
            .load(dir.path(), 20, now)
            .unwrap_err();
        assert!(err.to_string().contains("--repair"), "{err}");
    }
}
