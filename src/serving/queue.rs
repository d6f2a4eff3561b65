//! The feedback queue between request handlers and a model's trainer: a
//! bounded channel whose senders reserve room for a whole batch at once.
//!
//! `FeedbackQueue` is the narrow seam through which feedback reaches the
//! trainer (later, a shared log). `offer` never waits: a batch is enqueued
//! whole or refused whole with `QueueError::Full`, so nothing accepted is
//! ever dropped and no request blocks on the trainer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use thiserror::Error;
use tokio::sync::mpsc;

use crate::learn::{FeatureVec, Scored, Target};

/// One labelled example accepted for training.
#[derive(Debug, Clone)]
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
}

/// Receiving side, owned by the trainer.
#[derive(Debug)]
pub struct FeedbackStream {
    rx: mpsc::Receiver<Feedback>,
    /// Items taken so far: the feedback position versions record.
    taken: u64,
}

pub fn feedback_channel(capacity: usize) -> (FeedbackQueue, FeedbackStream) {
    let (tx, rx) = mpsc::channel(capacity);
    (
        FeedbackQueue {
            tx,
            accepted: Arc::new(AtomicU64::new(0)),
        },
        FeedbackStream { rx, taken: 0 },
    )
}

/// Room reserved for a batch; sending cannot fail once this exists.
pub struct Reservation<'a> {
    permits: mpsc::PermitIterator<'a, Feedback>,
    accepted: &'a AtomicU64,
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
        match self.tx.try_reserve_many(n) {
            Ok(permits) => Ok(Reservation {
                permits,
                accepted: &self.accepted,
            }),
            Err(mpsc::error::TrySendError::Full(())) => Err(QueueError::Full(n)),
            Err(mpsc::error::TrySendError::Closed(())) => Err(QueueError::Closed),
        }
    }

    /// Examples waiting for the trainer.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Examples accepted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Reservation<'_> {
    /// Sends the batch; `items` must yield exactly as many as were reserved.
    pub fn send(self, items: Vec<Feedback>) {
        // Counted before the sends, so `accepted` never trails `trained`.
        self.accepted
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        for (permit, item) in self.permits.zip(items) {
            permit.send(item);
        }
    }
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

    /// Counts `n` items taken by other means (replayed from the log) so
    /// positions continue after them.
    pub fn advance(&mut self, n: u64) {
        self.taken += n;
    }

    /// Starts counting positions at `position` (a snapshot's).
    pub fn starting_at(mut self, position: u64) -> Self {
        self.taken = position;
        self
    }

    /// The position of the next item: items taken so far, counted from
    /// where this stream started.
    pub fn position(&self) -> u64 {
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
        let (q, mut s) = feedback_channel(5);
        q.reserve(3).unwrap().send((0..3).map(|_| item()).collect());
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
        assert_eq!(s.position(), 3);
        assert_eq!(q.accepted(), 3);
        q.reserve(5).unwrap().send((0..5).map(|_| item()).collect());
        assert_eq!(s.try_recv_many(&mut buf, 2), 2);
        assert_eq!(q.depth(), 3);
    }
}
