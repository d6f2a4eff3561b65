//! What eddy writes to a model's feedback log (`persist::wal`): one record
//! per accepted feedback example, appended before the 202, in the order
//! the trainer takes them. A record holds everything the trainer needs to
//! learn the example again as it did the first time: the hashed features,
//! the target, the source, when it arrived, the prediction it labels, and
//! the scores taken on acceptance (test-then-train scores the live model
//! before the example was learned, so replay must not rescore them).
//!
//! Payloads are postcard, an enum tagged by variant: a later release adds
//! new variants (trainer decisions, quarantine, idempotency keys) at the
//! end, and an older log still decodes. A variant this build does not know
//! is an error naming it, never a guess.

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::learn::{FeatureVec, Target};

use super::idempotency::KeyRecord;
use super::queue::{Feedback, PredictionRef, Prescored};
use super::trainer::StepRecord;

/// A record as written, borrowing the example.
#[derive(Serialize)]
enum RecordOut<'a> {
    Feedback(FeedbackOut<'a>),
    /// The first example of a request of several examples, or of one
    /// sent with an `Idempotency-Key`.
    BatchFirst(FeedbackOut<'a>, BatchOut<'a>),
    /// A decision of the trainer (see `trainer::steps`).
    Step(&'a StepRecord),
}

#[derive(Serialize)]
struct FeedbackOut<'a> {
    features: &'a FeatureVec,
    target: Target,
    source: Option<&'a str>,
    prediction: Option<PredictionRef>,
    received_at: SystemTime,
    scored: Option<Prescored>,
}

/// A record as read back (the same layout, owned).
#[derive(Deserialize)]
enum RecordIn {
    Feedback(FeedbackIn),
    BatchFirst(FeedbackIn, Batch),
    Step(StepRecord),
}

#[derive(Serialize)]
struct BatchOut<'a> {
    count: u32,
    key: Option<&'a KeyRecord>,
}

/// What the first record of a request says about it: how many examples it
/// has (a crash mid-write can leave fewer, and replay then drops them all:
/// none was acknowledged), and its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Batch {
    pub count: u32,
    pub key: Option<KeyRecord>,
}

/// A record read back.
#[derive(Debug)]
pub enum Record {
    /// An accepted example, and what the first example of a request says
    /// about it.
    Feedback(Box<Feedback>, Option<Batch>),
    Step(StepRecord),
}

#[derive(Deserialize)]
struct FeedbackIn {
    features: FeatureVec,
    target: Target,
    source: Option<String>,
    prediction: Option<PredictionRef>,
    received_at: SystemTime,
    scored: Option<Prescored>,
}

/// Appends the encoding of one accepted example to `buf` (requests
/// encode all their examples into one buffer); the first of a keyed
/// request carries its key.
pub fn encode_into(buf: &mut Vec<u8>, fb: &Feedback, batch: Option<(u32, Option<&KeyRecord>)>) {
    let out = FeedbackOut {
        features: &fb.features,
        target: fb.target,
        source: fb.source.as_deref(),
        prediction: fb.prediction,
        received_at: fb.received_at,
        scored: fb.scored,
    };
    let record = match batch {
        None => RecordOut::Feedback(out),
        Some((count, key)) => RecordOut::BatchFirst(out, BatchOut { count, key }),
    };
    // Serialising plain data into a Vec cannot fail.
    let _ = postcard::to_io(&record, buf);
}

/// Encodes one accepted example on its own.
pub fn encode(fb: &Feedback, batch: Option<(u32, Option<&KeyRecord>)>) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_into(&mut buf, fb, batch);
    buf
}

/// Encodes a trainer's decision.
pub fn encode_step(step: &StepRecord) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_step_into(&mut buf, step);
    buf
}

/// Appends the encoding of a trainer's decision to `buf`.
pub fn encode_step_into(buf: &mut Vec<u8>, step: &StepRecord) {
    // Serialising plain data into a Vec cannot fail.
    let _ = postcard::to_io(&RecordOut::Step(step), buf);
}

/// Decodes the record at `position`.
pub fn decode(bytes: &[u8], position: u64) -> Result<Record, postcard::Error> {
    let (r, batch) = match postcard::from_bytes(bytes)? {
        RecordIn::Feedback(r) => (r, None),
        RecordIn::BatchFirst(r, batch) => (r, Some(batch)),
        RecordIn::Step(step) => return Ok(Record::Step(step)),
    };
    let fb = Feedback {
        features: r.features,
        target: r.target,
        source: r.source.map(Arc::from),
        prediction: r.prediction,
        received_at: r.received_at,
        scored: r.scored,
        position,
    };
    Ok(Record::Feedback(Box::new(fb), batch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{FeatureHasher, RawFeatures, Scored};

    #[test]
    fn an_example_comes_back_as_it_was_accepted() {
        let raw: RawFeatures =
            serde_json::from_str(r#"{"x": 1e-300, "y": -3.5, "c": "blue"}"#).expect("json");
        let mut fb = Feedback::labelled(
            FeatureHasher::new(10).hash(&raw).expect("hash"),
            Target::Class(1),
            Some("upstream".into()),
        );
        fb.scored = Some(Prescored {
            live_version: 7,
            live: Scored::Class {
                correct: true,
                log_loss: 0.125,
            },
            base_version: 5,
            base: Scored::Class {
                correct: false,
                log_loss: 2.5,
            },
            candidate: Some((
                6,
                Scored::Class {
                    correct: true,
                    log_loss: 0.5,
                },
            )),
        });
        fb.prediction = Some(PredictionRef {
            version: 7,
            predicted_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(123),
        });
        let Record::Feedback(back, key) = decode(&encode(&fb, None), 9).expect("decodes") else {
            panic!("an example")
        };
        assert_eq!(back.position, 9);
        assert_eq!(key, None);
        assert_eq!(back.features, fb.features);
        assert_eq!(back.target, fb.target);
        assert_eq!(back.source, fb.source);
        assert_eq!(back.received_at, fb.received_at);
        assert_eq!(format!("{:?}", back.scored), format!("{:?}", fb.scored));
        assert_eq!(
            format!("{:?}", back.prediction),
            format!("{:?}", fb.prediction)
        );
        let regression = Feedback::labelled(FeatureVec::default(), Target::Value(-2.25), None);
        let key = KeyRecord {
            key: b"retry-1".to_vec(),
            body: [7; 32],
            accepted: 3,
            at: SystemTime::UNIX_EPOCH,
        };
        let Record::Feedback(back, with) =
            decode(&encode(&regression, Some((3, Some(&key)))), 0).expect("decodes")
        else {
            panic!("an example")
        };
        assert_eq!(back.target, Target::Value(-2.25));
        assert_eq!(
            with,
            Some(Batch {
                count: 3,
                key: Some(key)
            })
        );
        assert!(
            decode(&[9, 0, 0], 0).is_err(),
            "an unknown variant is an error"
        );
    }

    /// A feedback log of this format, committed, so every later release
    /// proves it still reads it (`EDDY_WRITE_FIXTURES=1` rewrites it).
    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fixtures/wal-v1");

    fn fixture_records() -> Vec<Vec<u8>> {
        let raw: RawFeatures =
            serde_json::from_str(r#"{"x": 2.5, "colour": "red"}"#).expect("json");
        let mut fb = Feedback::labelled(
            FeatureHasher::new(6).hash(&raw).expect("hash"),
            Target::Class(1),
            Some("crm".into()),
        );
        fb.received_at =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_000);
        let key = KeyRecord {
            key: b"order-1".to_vec(),
            body: [3; 32],
            accepted: 2,
            at: fb.received_at,
        };
        let step = StepRecord {
            step: crate::serving::trainer::Step::Learn { count: 2, first: 0 },
            at_us: 5,
            versions: vec![2],
        };
        vec![
            encode(&fb, Some((2, Some(&key)))),
            encode(&fb, None),
            encode_step(&step),
        ]
    }

    #[test]
    fn write_fixture_when_asked() {
        if std::env::var("EDDY_WRITE_FIXTURES").as_deref() == Ok("1") {
            use crate::persist::wal::{Append, FeedbackLog, LocalLog, LogOptions};
            let _ = std::fs::remove_dir_all(FIXTURE);
            let (log, _) = LocalLog::open(std::path::Path::new(FIXTURE), LogOptions::default(), 0)
                .expect("open");
            let records = fixture_records();
            let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            log.append(Append::new(&slices[..2]), &mut |_| {})
                .expect("append");
            log.append(Append::new(&slices[2..]), &mut |_| {})
                .expect("append");
        }
    }

    #[test]
    fn the_committed_log_fixture_still_reads() {
        let read: Vec<(u64, Vec<u8>)> =
            crate::persist::wal::read_dir(std::path::Path::new(FIXTURE))
                .expect("fixture")
                .collect::<Result<_, _>>()
                .expect("records");
        assert_eq!(read.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(
            read.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
            fixture_records(),
            "this build encodes exactly as the committed log"
        );
        let Record::Feedback(fb, Some(batch)) = decode(&read[0].1, 0).expect("decodes") else {
            panic!("the first example of a request")
        };
        assert_eq!((batch.count, fb.source.as_deref()), (2, Some("crm")));
        assert!(matches!(decode(&read[2].1, 2), Ok(Record::Step(_))));
    }
}
