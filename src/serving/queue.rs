//! The feedback queue between request handlers and a model's trainer: a
//! bounded channel whose senders reserve room for a whole batch at once.
//!
//! `FeedbackQueue` is the narrow seam through which feedback reaches the
//! trainer (later, a shared log). `offer` never waits: a batch is enqueued
//! whole or refused whole with `QueueError::Full`, so nothing accepted is
//! ever dropped and no request blocks on the trainer.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use thiserror::Error;
use tokio::sync::mpsc;

use crate::learn::{FeatureVec, Scored, Target};
use crate::persist::wal::{Append, Appended, FeedbackLog, LogError, MemoryLog, RecordBatch};

use super::idempotency::KeyRecord;
use super::log_record;

/// One labelled example accepted for training.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Feedback {
    pub features: FeatureVec,
    pub target: Target,
    /// Who sent it (per example, batch default, or `X-Eddy-Source`).
    pub source: Option<Arc<str>>,
    /// Set when the features were joined from a prediction.
    pub prediction: Option<PredictionRef>,
    pub received_at: SystemTime,
    /// Scores taken when the example was accepted (see `Prescored`).
    pub scored: Option<Prescored>,
    /// Its position in the model's feedback log (set when it is appended).
    pub position: u64,
    /// How its features broke the model's declared schema, checked when it
    /// was accepted (`[[models.guard.features]]`): it is quarantined.
    pub schema: Option<Arc<str>>,
}

/// An example's outcome under the live and last-good versions, taken on
/// the request thread when it was accepted, so the trainer's thread does
/// not have to (the monitor rescores what is missing or stale).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Prescored {
    pub live_version: u64,
    pub live: Scored,
    pub base_version: u64,
    pub base: Scored,
    /// The candidate being scored for promotion, when there is one.
    pub candidate: Option<(u64, Scored)>,
}

impl Feedback {
    /// An example labelled inline (no prediction joined, not scored yet),
    /// received now: what drivers other than the HTTP handler send.
    pub fn labelled(features: FeatureVec, target: Target, source: Option<Arc<str>>) -> Self {
        Self {
            features,
            target,
            source,
            prediction: None,
            received_at: SystemTime::now(),
            scored: None,
            position: 0,
            schema: None,
        }
    }
}

/// The prediction a joined feedback labels.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct PredictionRef {
    pub version: u64,
    pub predicted_at: SystemTime,
}

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    #[error("the training queue has no room for {0} examples now")]
    Full(usize),
    #[error("a batch of {wanted} exceeds the training queue's capacity of {capacity}")]
    TooLarge { wanted: usize, capacity: usize },
    #[error("the trainer has stopped")]
    Closed,
}

/// Sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct FeedbackQueue {
    tx: mpsc::Sender<Feedback>,
    accepted: Arc<AtomicU64>,
    /// Where every accepted example is appended before it is queued (a
    /// `MemoryLog` when nothing is kept).
    log: Arc<dyn FeedbackLog>,
    /// Examples read back from the log at start-up and not learned yet:
    /// they count against the capacity too.
    backlog: Arc<AtomicUsize>,
}

/// Receiving side, owned by the trainer.
#[derive(Debug)]
pub struct FeedbackStream {
    rx: mpsc::Receiver<Feedback>,
    /// Items taken so far.
    taken: u64,
    backlog: Arc<AtomicUsize>,
}

/// A bounded queue whose examples are appended to `log` first.
pub fn feedback_channel(
    capacity: usize,
    log: Arc<dyn FeedbackLog>,
) -> (FeedbackQueue, FeedbackStream) {
    let (tx, rx) = mpsc::channel(capacity);
    let backlog = Arc::new(AtomicUsize::new(0));
    (
        FeedbackQueue {
            tx,
            accepted: Arc::new(AtomicU64::new(0)),
            log,
            backlog: backlog.clone(),
        },
        FeedbackStream {
            rx,
            taken: 0,
            backlog,
        },
    )
}

/// A queue over a `MemoryLog` from position 0 (in-process drivers, tests).
pub fn memory_channel(capacity: usize) -> (FeedbackQueue, FeedbackStream) {
    feedback_channel(capacity, Arc::new(MemoryLog::default()))
}

/// Room reserved for a batch; queueing cannot fail once this exists (the
/// log append can).
pub struct Reservation<'a> {
    permits: mpsc::PermitIterator<'a, Feedback>,
    accepted: &'a AtomicU64,
    log: &'a dyn FeedbackLog,
}

impl FeedbackQueue {
    /// Reserves room for `n` examples, or refuses without side effects.
    pub fn reserve(&self, n: usize) -> Result<Reservation<'_>, QueueError> {
        let capacity = self.tx.max_capacity();
        if n > capacity {
            return Err(QueueError::TooLarge {
                wanted: n,
                capacity,
            });
        }
        if self.depth() + self.backlog.load(Ordering::Acquire) + n > capacity {
            return Err(QueueError::Full(n));
        }
        match self.tx.try_reserve_many(n) {
            Ok(permits) => Ok(Reservation {
                permits,
                accepted: &self.accepted,
                log: self.log.as_ref(),
            }),
            Err(mpsc::error::TrySendError::Full(())) => Err(QueueError::Full(n)),
            Err(mpsc::error::TrySendError::Closed(())) => Err(QueueError::Closed),
        }
    }

    /// Examples waiting for the trainer in the queue (not counting the
    /// backlog a restart read back from the log).
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// The log examples are appended to before they are queued.
    pub fn log(&self) -> &Arc<dyn FeedbackLog> {
        &self.log
    }

    /// Examples accepted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Reservation<'_> {
    /// Appends the batch to the log (the first record carrying `key`, a
    /// keyed request's) and, under the log's order lock, gives each example
    /// its position and queues them all: the trainer takes examples in log
    /// order. If the append fails nothing is queued and the reserved room
    /// is released.
    pub fn append(
        self,
        mut items: Vec<Feedback>,
        key: Option<&KeyRecord>,
    ) -> Result<Appended, LogError> {
        let (permits, accepted, log) = (self.permits, self.accepted, self.log);
        with_batch(|records| {
            if log.keeps_records() {
                // The first record says how many follow (a torn batch is
                // dropped whole on replay) and carries the request's key.
                let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
                let head = Some((count, key));
                let mut encoder = log_record::ExampleEncoder::default();
                for (i, fb) in items.iter().enumerate() {
                    let batch = head.filter(|_| i == 0);
                    let max = log_record::ExampleEncoder::max_len(fb, batch);
                    records.push_sized(max, |out| encoder.encode(out, fb, batch));
                }
            } else {
                // Positions only: empty payloads, never written.
                for _ in 0..items.len() {
                    records.push(&[]);
                }
            }
            let mut pending = Some(permits);
            let mut then = |first| {
                let Some(permits) = pending.take() else {
                    return;
                };
                // Counted before the sends, so `accepted` never trails
                // `trained`.
                accepted.fetch_add(items.len() as u64, Ordering::Relaxed);
                for (i, (permit, mut item)) in permits.zip(items.drain(..)).enumerate() {
                    item.position = first + i as u64;
                    permit.send(item);
                }
            };
            log.append(Append::new(records), &mut then)
        })
    }

    /// `append` without a key, for drivers that feed a trainer directly.
    pub fn send(self, items: Vec<Feedback>) -> Result<Appended, LogError> {
        self.append(items, None)
    }
}

/// Runs `f` with this thread's empty `RecordBatch`: request threads encode
/// request after request into the same buffers instead of allocating (and
/// growing) new ones each time.
fn with_batch<R>(f: impl FnOnce(&mut RecordBatch) -> R) -> R {
    /// A batch that grew past this (an unusually large request) is not kept.
    const KEEP_BYTES: usize = 4 << 20;
    thread_local! {
        static BATCH: RefCell<RecordBatch> = RefCell::new(RecordBatch::new());
    }
    BATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut batch) => {
            batch.clear();
            let out = f(&mut batch);
            if batch.capacity_bytes() > KEEP_BYTES {
                *batch = RecordBatch::new();
            } else {
                batch.clear();
            }
            out
        }
        // Only if `f` itself appended through this function: never here,
        // but a fresh batch is correct too.
        Err(_) => f(&mut RecordBatch::new()),
    })
}

impl FeedbackStream {
    /// Waits for at least one item and moves up to `limit` into `buf`.
    /// Returns 0 when every sender is gone and the queue is empty.
    pub async fn recv_many(&mut self, buf: &mut Vec<Feedback>, limit: usize) -> usize {
        let n = self.rx.recv_many(buf, limit).await;
        self.taken += n as u64;
        n
    }

    /// Moves what is queued now, up to `limit`, without waiting.
    pub fn try_recv_many(&mut self, buf: &mut Vec<Feedback>, limit: usize) -> usize {
        let mut n = 0;
        while n < limit {
            match self.rx.try_recv() {
                Ok(item) => {
                    buf.push(item);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        self.taken += n as u64;
        n
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Refuses new feedback (offers answer `QueueError::Closed`) while what
    /// is queued, and what holders of reservations still send, can be
    /// received.
    pub fn close(&mut self) {
        self.rx.close();
    }

    /// Waits for the next item; `None` once closed and drained.
    pub async fn recv(&mut self) -> Option<Feedback> {
        let item = self.rx.recv().await;
        self.taken += u64::from(item.is_some());
        item
    }

    /// How many examples read back from the log wait for the trainer.
    pub fn set_backlog(&self, n: usize) {
        self.backlog.store(n, Ordering::Release);
    }

    /// Items taken so far.
    pub fn taken(&self) -> u64 {
        self.taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::FeatureVec;

    fn item() -> Feedback {
        Feedback::labelled(FeatureVec::default(), Target::Class(1), None)
    }

    #[tokio::test]
    async fn a_batch_is_enqueued_whole_or_not_at_all() {
        let (q, mut s) = memory_channel(5);
        q.reserve(3)
            .unwrap()
            .send((0..3).map(|_| item()).collect())
            .unwrap();
        assert_eq!(q.depth(), 3);
        assert_eq!(q.reserve(3).err(), Some(QueueError::Full(3)));
        assert_eq!(q.depth(), 3, "a refused batch takes no room");
        assert_eq!(
            q.reserve(6).err(),
            Some(QueueError::TooLarge {
                wanted: 6,
                capacity: 5
            })
        );
        let mut buf = Vec::new();
        assert_eq!(s.recv_many(&mut buf, 10).await, 3);
        assert_eq!(s.taken(), 3);
        assert_eq!(q.accepted(), 3);
        q.reserve(5)
            .unwrap()
            .send((0..5).map(|_| item()).collect())
            .unwrap();
        assert_eq!(s.try_recv_many(&mut buf, 2), 2);
        let positions: Vec<u64> = buf.iter().map(|f| f.position).collect();
        assert_eq!(positions, [0, 1, 2, 3, 4], "positions in log order");
        assert_eq!(q.depth(), 3);
    }
}
