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
    /// The first example of a request sent with an `Idempotency-Key`.
    KeyedFeedback(FeedbackOut<'a>, &'a KeyRecord),
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
    KeyedFeedback(FeedbackIn, KeyRecord),
    Step(StepRecord),
}

/// A record read back.
#[derive(Debug)]
pub enum Record {
    /// An accepted example, and the request's key if it is the first
    /// example of a keyed request.
    Feedback(Box<Feedback>, Option<KeyRecord>),
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
pub fn encode_into(buf: &mut Vec<u8>, fb: &Feedback, key: Option<&KeyRecord>) {
    let out = FeedbackOut {
        features: &fb.features,
        target: fb.target,
        source: fb.source.as_deref(),
        prediction: fb.prediction,
        received_at: fb.received_at,
        scored: fb.scored,
    };
    let record = match key {
        None => RecordOut::Feedback(out),
        Some(key) => RecordOut::KeyedFeedback(out, key),
    };
    // Serialising plain data into a Vec cannot fail.
    let _ = postcard::to_io(&record, buf);
}

/// Encodes one accepted example on its own.
pub fn encode(fb: &Feedback, key: Option<&KeyRecord>) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_into(&mut buf, fb, key);
    buf
}

/// Encodes a trainer's decision.
pub fn encode_step(step: &StepRecord) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    postcard::to_stdvec(&RecordOut::Step(step)).unwrap_or_default()
}

/// Decodes the record at `position`.
pub fn decode(bytes: &[u8], position: u64) -> Result<Record, postcard::Error> {
    let (r, key) = match postcard::from_bytes(bytes)? {
        RecordIn::Feedback(r) => (r, None),
        RecordIn::KeyedFeedback(r, key) => (r, Some(key)),
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
    Ok(Record::Feedback(Box::new(fb), key))
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
            decode(&encode(&regression, Some(&key)), 0).expect("decodes")
        else {
            panic!("an example")
        };
        assert_eq!(back.target, Target::Value(-2.25));
        assert_eq!(with, Some(key));
        assert!(
            decode(&[9, 0, 0], 0).is_err(),
            "an unknown variant is an error"
        );
    }
}
