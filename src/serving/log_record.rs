//! What eddy writes to a model's feedback log (`persist::wal`): one record
//! per accepted feedback example, appended before the 202, in the order
//! the trainer takes them. A record holds everything the trainer needs to
//! learn the example again as it did the first time: the hashed features,
//! the target, the source, when it arrived, the prediction it labels, and
//! the scores taken on acceptance (test-then-train scores the live model
//! before the example was learned, so replay must not rescore them).
//!
//! A payload starts with its kind as one byte (postcard's tag of the
//! `Record*` enums below): a later release adds new kinds at the end, and
//! an older log still decodes; a kind this build does not know is an
//! error naming it, never a guess. Trainer steps are postcard. Examples,
//! by far the most records, are written by hand in a fixed little-endian
//! layout (kind `EXAMPLE`, see `encode_into`): postcard's byte-at-a-time
//! writer cost more than the rest of logging together. Logs of format 1
//! hold postcard examples (kinds 0 and 1), still read here.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use thiserror::Error;

use crate::learn::{Feature, FeatureVec, Scored, Target};

use super::idempotency::KeyRecord;
use super::queue::{Feedback, PredictionRef, Prescored};
use super::trainer::StepRecord;

/// The kind byte of a step: postcard's tag of `RecordIn::Step`, which the
/// postcard encoding of the `StepRecord` follows.
const STEP: u8 = 2;

/// The kind byte of a hand-written example (the next free postcard tag).
const EXAMPLE: u8 = 3;

/// Flags of an example record: which optional parts follow.
const HAS_BATCH: u8 = 1;
const HAS_KEY: u8 = 1 << 1;
const HAS_SOURCE: u8 = 1 << 2;
const HAS_PREDICTION: u8 = 1 << 3;
const HAS_SCORED: u8 = 1 << 4;
const HAS_CANDIDATE: u8 = 1 << 5;
const TARGET_VALUE: u8 = 1 << 6;
/// The example broke the model's declared schema (the guard's verdict
/// taken on acceptance); the violation follows, as text.
/// All eight flags are taken: a later optional part needs a new kind.
const HAS_SCHEMA: u8 = 1 << 7;

/// A record as read back: format 1's postcard examples, and steps.
#[derive(Deserialize)]
enum RecordIn {
    Feedback(FeedbackIn),
    BatchFirst(FeedbackIn, Batch),
    Step(StepRecord),
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

/// Why a record cannot be decoded.
#[derive(Debug, Error)]
pub enum DecodeError {
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
    #[error("the record ends early")]
    Truncated,
    #[error("{0} bytes follow the record")]
    Trailing(usize),
    #[error("{0}")]
    Invalid(&'static str),
}

/// Appends the encoding of one accepted example to `buf` (requests
/// encode all their examples into one buffer); the first of a request
/// says how many examples it has and carries the key of a keyed one.
///
/// ```text
/// kind u8 (= 3) | flags u8 | received_at time | target: class varint, or value f64 (TARGET_VALUE)
/// | features: count varint, count x (index u32, value f64), numeric flags (1 bit each, LSB first)
/// | [count varint | [key: len varint, bytes, body [u8; 32], accepted u32, at time]]  (HAS_BATCH, HAS_KEY)
/// | [source: len varint, UTF-8]  (HAS_SOURCE)
/// | [prediction: version varint, predicted_at time]  (HAS_PREDICTION)
/// | [live version varint, scored, base version varint, scored, [candidate version varint, scored]]  (HAS_SCORED, HAS_CANDIDATE)
/// | [schema violation: len varint, UTF-8]  (HAS_SCHEMA)
/// time: seconds from the Unix epoch (zigzag varint, negative before it), then nanoseconds forward u32
/// scored: 0 (wrong) or 1 (correct) u8, log_loss f64 | 2 u8, abs_err f64, sq_err f64
/// varint: LEB128, 7 bits a byte, least significant first
/// ```
///
/// Fixed-size numbers are little-endian, every float its exact bits:
/// replay sees the numbers that were accepted. Small counts and versions
/// are varints so a record stays as short as format 1's (the kernel's
/// cost of writing and syncing the log grows with its bytes).
pub fn encode_into(buf: &mut Vec<u8>, fb: &Feedback, batch: Option<(u32, Option<&KeyRecord>)>) {
    let start = buf.len();
    buf.resize(start + max_len(fb, batch), 0);
    let written = ExampleEncoder::default().encode(&mut buf[start..], fb, batch);
    buf.truncate(start + written);
}

/// Encodes the examples of a request one after another, byte for byte as
/// `encode_into` does, remembering the encoding of the last arrival time:
/// every example of a request arrives at once, and copying the time's
/// bytes costs a fraction of encoding it again (a `SystemTime` conversion
/// and a zigzag varint) for each example.
#[derive(Debug, Default)]
pub struct ExampleEncoder {
    /// The last `received_at` encoded, its bytes and how many are used.
    time: Option<(SystemTime, [u8; TIME_LEN], usize)>,
}

/// The most bytes a time takes (a varint of up to ten, four of nanoseconds).
const TIME_LEN: usize = VARINT_LEN + 4;
/// The most bytes a varint takes.
const VARINT_LEN: usize = 10;

impl ExampleEncoder {
    /// At least the bytes `encode` writes for this example: cheap to work
    /// out, so a buffer is sized once and cut back after.
    pub fn max_len(fb: &Feedback, batch: Option<(u32, Option<&KeyRecord>)>) -> usize {
        max_len(fb, batch)
    }

    /// Writes the example to the front of `out`, which holds at least
    /// `max_len` bytes (any values: every byte up to the returned length is
    /// written), and returns how many bytes it wrote.
    ///
    /// # Panics
    ///
    /// If `out` is shorter than `max_len`.
    pub fn encode(
        &mut self,
        out: &mut [u8],
        fb: &Feedback,
        batch: Option<(u32, Option<&KeyRecord>)>,
    ) -> usize {
        let time = match self.time {
            Some((at, bytes, len)) if at == fb.received_at => (bytes, len),
            _ => {
                let mut bytes = [0u8; TIME_LEN];
                let mut out = Out {
                    buf: &mut bytes,
                    at: 0,
                };
                out.time(fb.received_at);
                let len = out.at;
                self.time = Some((fb.received_at, bytes, len));
                (bytes, len)
            }
        };
        let mut out = Out { buf: out, at: 0 };
        let mut flags = 0;
        let key = batch.and_then(|(_, key)| key);
        let mut set = |flag: u8, on: bool| {
            if on {
                flags |= flag;
            }
        };
        set(HAS_BATCH, batch.is_some());
        set(HAS_KEY, key.is_some());
        set(HAS_SOURCE, fb.source.is_some());
        set(HAS_PREDICTION, fb.prediction.is_some());
        set(HAS_SCORED, fb.scored.is_some());
        set(
            HAS_CANDIDATE,
            fb.scored.is_some_and(|s| s.candidate.is_some()),
        );
        set(TARGET_VALUE, matches!(fb.target, Target::Value(_)));
        set(HAS_SCHEMA, fb.schema.is_some());
        out.put([EXAMPLE, flags]);
        // The whole array is copied (a fixed-size copy; `max_len` counts
        // a time at its longest), then only its used bytes are kept.
        out.put(time.0);
        out.at -= TIME_LEN - time.1;
        match fb.target {
            Target::Class(c) => out.varint(c as u64),
            Target::Value(v) => out.put(v.to_le_bytes()),
        }
        let features = &fb.features.features;
        out.varint(features.len() as u64);
        let pairs = features.len() * 12;
        for (pair, f) in out.buf[out.at..out.at + pairs]
            .chunks_exact_mut(12)
            .zip(features)
        {
            pair[..4].copy_from_slice(&f.index.to_le_bytes());
            pair[4..].copy_from_slice(&f.value.to_le_bytes());
        }
        out.at += pairs;
        for chunk in features.chunks(8) {
            let bits = chunk
                .iter()
                .enumerate()
                .fold(0u8, |bits, (i, f)| bits | (u8::from(f.numeric) << i));
            out.put([bits]);
        }
        if let Some((count, _)) = batch {
            out.varint(u64::from(count));
        }
        if let Some(key) = key {
            out.varint(key.key.len() as u64);
            out.slice(&key.key);
            out.put(key.body);
            out.put(key.accepted.to_le_bytes());
            out.time(key.at);
        }
        if let Some(source) = &fb.source {
            out.varint(source.len() as u64);
            out.slice(source.as_bytes());
        }
        if let Some(p) = &fb.prediction {
            out.varint(p.version);
            out.time(p.predicted_at);
        }
        if let Some(s) = &fb.scored {
            out.varint(s.live_version);
            out.scored(s.live);
            out.varint(s.base_version);
            out.scored(s.base);
            if let Some((version, scored)) = s.candidate {
                out.varint(version);
                out.scored(scored);
            }
        }
        if let Some(violation) = &fb.schema {
            out.varint(violation.len() as u64);
            out.slice(violation.as_bytes());
        }
        out.at
    }
}

/// At least the bytes `encode_into` writes for this example: cheap to
/// work out (every varint counted at its longest), so a buffer is sized
/// once and cut back after.
fn max_len(fb: &Feedback, batch: Option<(u32, Option<&KeyRecord>)>) -> usize {
    const VARINT: usize = VARINT_LEN;
    const TIME: usize = TIME_LEN;
    let n = fb.features.features.len();
    let mut len = 2 + TIME + VARINT + VARINT + n * 12 + n.div_ceil(8);
    if let Some((_, key)) = batch {
        len += VARINT;
        if let Some(key) = key {
            len += VARINT + key.key.len() + key.body.len() + 4 + TIME;
        }
    }
    len += fb.source.as_ref().map_or(0, |s| VARINT + s.len());
    len += fb.prediction.map_or(0, |_| VARINT + TIME);
    len += fb.scored.map_or(0, |_| 3 * (VARINT + 17));
    len += fb.schema.as_ref().map_or(0, |s| VARINT + s.len());
    len
}

/// A time as (seconds from the epoch, nanoseconds forward): whole seconds
/// back for a time before it.
fn time_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let back = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            let nanos = (1_000_000_000 - d.subsec_nanos()) % 1_000_000_000;
            (i64::try_from(back).map_or(i64::MIN, |b| -b), nanos)
        }
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes one accepted example on its own.
pub fn encode(fb: &Feedback, batch: Option<(u32, Option<&KeyRecord>)>) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_into(&mut buf, fb, batch);
    buf
}

/// Writes an example into its bytes, already sized by `max_len` (falling
/// short is a bug the round-trip tests catch, and panics here).
struct Out<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Out<'_> {
    fn put<const N: usize>(&mut self, bytes: [u8; N]) {
        self.buf[self.at..self.at + N].copy_from_slice(&bytes);
        self.at += N;
    }

    fn slice(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.put([v as u8 | 0x80]);
            v >>= 7;
        }
        self.put([v as u8]);
    }

    fn time(&mut self, t: SystemTime) {
        let (secs, nanos) = time_parts(t);
        self.varint(zigzag(secs));
        self.put(nanos.to_le_bytes());
    }

    fn scored(&mut self, s: Scored) {
        match s {
            Scored::Class { correct, log_loss } => {
                self.put([u8::from(correct)]);
                self.put(log_loss.to_le_bytes());
            }
            Scored::Value { abs_err, sq_err } => {
                self.put([2]);
                self.put(abs_err.to_le_bytes());
                self.put(sq_err.to_le_bytes());
            }
        }
    }
}

/// Reads an example record, front to back.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn f64(&mut self) -> Result<f64, DecodeError> {
        self.array().map(f64::from_le_bytes)
    }

    /// A LEB128 varint, refused when longer than a u64 can need.
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            if shift == 63 && byte > 1 {
                return Err(DecodeError::Invalid("a varint overflows 64 bits"));
            }
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid("a varint overflows 64 bits"))
    }

    /// A varint length or count.
    fn len(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)
    }

    /// A length-prefixed byte string.
    fn prefixed(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.len()?;
        self.bytes(len)
    }

    fn time(&mut self) -> Result<SystemTime, DecodeError> {
        let secs = unzigzag(self.varint()?);
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(DecodeError::Invalid("nanoseconds out of range"));
        }
        let base = if secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
        } else {
            UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
        };
        base.and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
            .ok_or(DecodeError::Invalid("time out of range"))
    }

    fn scored(&mut self) -> Result<Scored, DecodeError> {
        match self.u8()? {
            kind @ (0 | 1) => {
                let log_loss = self.f64()?;
                Ok(Scored::Class {
                    correct: kind == 1,
                    log_loss,
                })
            }
            2 => {
                let abs_err = self.f64()?;
                let sq_err = self.f64()?;
                Ok(Scored::Value { abs_err, sq_err })
            }
            _ => Err(DecodeError::Invalid("unknown kind of score")),
        }
    }
}

/// Decodes the body of an `EXAMPLE` record (after its kind byte).
fn decode_example(bytes: &[u8], position: u64) -> Result<Record, DecodeError> {
    let mut r = Reader { rest: bytes };
    let flags = r.u8()?;
    let has = |flag: u8| flags & flag != 0;
    let received_at = r.time()?;
    let target = if has(TARGET_VALUE) {
        Target::Value(r.f64()?)
    } else {
        Target::Class(
            usize::try_from(r.varint()?).map_err(|_| DecodeError::Invalid("class out of range"))?,
        )
    };
    let n = r.len()?;
    // Bounded by the record's own length before anything is allocated.
    let pairs = r.bytes(n.checked_mul(12).ok_or(DecodeError::Truncated)?)?;
    let numeric = r.bytes(n.div_ceil(8))?;
    let features = pairs
        .chunks_exact(12)
        .enumerate()
        .map(|(i, pair)| {
            let mut index = [0u8; 4];
            index.copy_from_slice(&pair[..4]);
            let mut value = [0u8; 8];
            value.copy_from_slice(&pair[4..]);
            Feature {
                index: u32::from_le_bytes(index),
                value: f64::from_le_bytes(value),
                numeric: numeric[i / 8] & (1 << (i % 8)) != 0,
            }
        })
        .collect();
    let batch = if has(HAS_BATCH) {
        let count =
            u32::try_from(r.varint()?).map_err(|_| DecodeError::Invalid("count out of range"))?;
        let key = if has(HAS_KEY) {
            let key = r.prefixed()?.to_vec();
            let body = r.array()?;
            let accepted = r.u32()?;
            let at = r.time()?;
            Some(KeyRecord {
                key,
                body,
                accepted,
                at,
            })
        } else {
            None
        };
        Some(Batch { count, key })
    } else if has(HAS_KEY) {
        return Err(DecodeError::Invalid(
            "a key outside a request's first record",
        ));
    } else {
        None
    };
    let source = if has(HAS_SOURCE) {
        let s = std::str::from_utf8(r.prefixed()?)
            .map_err(|_| DecodeError::Invalid("the source is not UTF-8"))?;
        Some(Arc::from(s))
    } else {
        None
    };
    let prediction = if has(HAS_PREDICTION) {
        let version = r.varint()?;
        let predicted_at = r.time()?;
        Some(PredictionRef {
            version,
            predicted_at,
        })
    } else {
        None
    };
    let scored = if has(HAS_SCORED) {
        let live_version = r.varint()?;
        let live = r.scored()?;
        let base_version = r.varint()?;
        let base = r.scored()?;
        let candidate = if has(HAS_CANDIDATE) {
            let version = r.varint()?;
            Some((version, r.scored()?))
        } else {
            None
        };
        Some(Prescored {
            live_version,
            live,
            base_version,
            base,
            candidate,
        })
    } else if has(HAS_CANDIDATE) {
        return Err(DecodeError::Invalid("a candidate's score without scores"));
    } else {
        None
    };
    let schema = if has(HAS_SCHEMA) {
        let s = std::str::from_utf8(r.prefixed()?)
            .map_err(|_| DecodeError::Invalid("the schema violation is not UTF-8"))?;
        Some(Arc::from(s))
    } else {
        None
    };
    if !r.rest.is_empty() {
        return Err(DecodeError::Trailing(r.rest.len()));
    }
    let fb = Feedback {
        features: FeatureVec { features },
        target,
        source,
        prediction,
        received_at,
        scored,
        position,
        schema,
    };
    Ok(Record::Feedback(Box::new(fb), batch))
}

/// Encodes a trainer's decision.
pub fn encode_step(step: &StepRecord) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_step_into(&mut buf, step);
    buf
}

/// Appends the encoding of a trainer's decision to `buf`.
pub fn encode_step_into(buf: &mut Vec<u8>, step: &StepRecord) {
    buf.push(STEP);
    // Serialising plain data into a Vec cannot fail.
    let _ = postcard::to_io(step, buf);
}

/// Decodes the record at `position`.
pub fn decode(bytes: &[u8], position: u64) -> Result<Record, DecodeError> {
    if let Some((&EXAMPLE, rest)) = bytes.split_first() {
        return decode_example(rest, position);
    }
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
        schema: None,
    };
    Ok(Record::Feedback(Box::new(fb), batch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{FeatureHasher, RawFeatures};

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
        fb.schema = Some("feature `x` is 1e-300, below its min 1 ✓".into());
        let Record::Feedback(back, key) = decode(&encode(&fb, None), 9).expect("decodes") else {
            panic!("an example")
        };
        assert_eq!(back.position, 9);
        assert_eq!(key, None);
        assert_eq!(back.features, fb.features);
        assert_eq!(back.target, fb.target);
        assert_eq!(back.source, fb.source);
        assert_eq!(back.received_at, fb.received_at);
        assert_eq!(back.schema, fb.schema);
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

    /// Every optional part, a value target, a time before the epoch and
    /// odd floats come back bit for bit; every strict prefix and every
    /// extra byte is an error, never a panic or a guess.
    #[test]
    fn a_full_example_round_trips_and_damage_is_an_error() {
        let features = FeatureVec {
            features: (0..11)
                .map(|i| Feature {
                    index: (1 << 25) + i,
                    value: [f64::MIN_POSITIVE, -0.0, 1e300, f64::NAN][i as usize % 4],
                    numeric: i % 3 != 0,
                })
                .collect(),
        };
        let mut fb =
            Feedback::labelled(features, Target::Value(f64::EPSILON), Some("é-src".into()));
        fb.received_at = UNIX_EPOCH - Duration::new(5, 250);
        fb.prediction = Some(PredictionRef {
            version: u64::MAX,
            predicted_at: UNIX_EPOCH + Duration::new(1_700_000_000, 999_999_999),
        });
        fb.scored = Some(Prescored {
            live_version: 3,
            live: Scored::Value {
                abs_err: 0.5,
                sq_err: 0.25,
            },
            base_version: 2,
            base: Scored::Class {
                correct: true,
                log_loss: 0.75,
            },
            candidate: Some((
                4,
                Scored::Class {
                    correct: false,
                    log_loss: 9.0,
                },
            )),
        });
        let key = KeyRecord {
            key: vec![0xff; 128],
            body: [9; 32],
            accepted: 11,
            at: UNIX_EPOCH - Duration::from_secs(1),
        };
        fb.schema = Some("required feature `a` is missing".into());
        let bytes = encode(&fb, Some((11, Some(&key))));
        assert!(bytes.len() <= max_len(&fb, Some((11, Some(&key)))));
        let Record::Feedback(back, batch) = decode(&bytes, 77).expect("decodes") else {
            panic!("an example")
        };
        assert_eq!(back.position, 77);
        assert_eq!(
            batch,
            Some(Batch {
                count: 11,
                key: Some(key)
            })
        );
        let bits = |f: &FeatureVec| -> Vec<(u32, u64, bool)> {
            f.features
                .iter()
                .map(|f| (f.index, f.value.to_bits(), f.numeric))
                .collect()
        };
        assert_eq!(bits(&back.features), bits(&fb.features));
        assert_eq!(back.target, fb.target);
        assert_eq!(back.source, fb.source);
        assert_eq!(back.received_at, fb.received_at);
        assert_eq!(
            format!("{:?}", back.prediction),
            format!("{:?}", fb.prediction)
        );
        assert_eq!(format!("{:?}", back.scored), format!("{:?}", fb.scored));
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut], 0).is_err(),
                "a record cut at {cut} bytes"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer, 0), Err(DecodeError::Trailing(1))));
        let mut mismatched = bytes.clone();
        mismatched[1] ^= HAS_SCHEMA;
        assert!(
            decode(&mismatched, 0).is_err(),
            "flags that do not match what follows"
        );
        // A bare example: no batch, source, prediction or scores.
        let bare = Feedback::labelled(FeatureVec::default(), Target::Class(2), None);
        let bytes = encode(&bare, None);
        assert!(bytes.len() <= max_len(&bare, None));
        let Record::Feedback(back, None) = decode(&bytes, 1).expect("decodes") else {
            panic!("an example without a batch")
        };
        assert_eq!((back.target, back.features.len()), (Target::Class(2), 0));
        assert!(back.source.is_none() && back.prediction.is_none() && back.scored.is_none());
    }

    /// A request's encoder writes exactly what `encode` writes, into room
    /// holding anything, whether the arrival time is the one it remembers
    /// or a new one.
    #[test]
    fn a_request_encoder_writes_what_encode_writes() {
        let (fb, key, _) = fixture_parts();
        let mut later = fb.clone();
        later.received_at += Duration::from_nanos(1);
        let mut before = fb.clone();
        before.received_at = UNIX_EPOCH - Duration::new(3, 5);
        let mut encoder = ExampleEncoder::default();
        let mut out = vec![0xee; 512];
        for (fb, batch) in [
            (&fb, Some((2, Some(&key)))),
            (&fb, None),
            (&later, None),
            (&before, Some((1, None))),
            (&fb, None),
        ] {
            let n = encoder.encode(&mut out, fb, batch);
            assert!(n <= ExampleEncoder::max_len(fb, batch));
            assert_eq!(&out[..n], encode(fb, batch).as_slice());
            out.fill(0xee);
        }
    }

    #[test]
    fn varints_round_trip_and_overlong_ones_are_refused() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut buf = vec![0u8; 10];
            let mut out = Out {
                buf: &mut buf,
                at: 0,
            };
            out.varint(v);
            let written = out.at;
            let mut r = Reader {
                rest: &buf[..written],
            };
            assert_eq!(r.varint().expect("reads"), v);
            assert!(r.rest.is_empty());
        }
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader { rest: &overflow }.varint().is_err());
        let overlong = [0x80; 11];
        assert!(Reader { rest: &overlong }.varint().is_err());
        for secs in [i64::MIN / 2, -1, 0, 1, i64::MAX] {
            assert_eq!(unzigzag(zigzag(secs)), secs);
        }
    }

    proptest::proptest! {
        /// Any feature vector, target and arrival time survive the log.
        #[test]
        fn examples_round_trip(
            features in proptest::collection::vec((0u32..1 << 26, proptest::num::f64::ANY, proptest::bool::ANY), 0..40),
            class in proptest::option::of(0usize..1000),
            value in proptest::num::f64::ANY,
            secs in -1_000_000_000i64..4_000_000_000,
            nanos in 0u32..1_000_000_000,
            count in proptest::option::of(1u32..2000),
        ) {
            let features = FeatureVec {
                features: features
                    .into_iter()
                    .map(|(index, value, numeric)| Feature { index, value, numeric })
                    .collect(),
            };
            let target = class.map_or(Target::Value(value), Target::Class);
            let mut fb = Feedback::labelled(features, target, None);
            let magnitude = Duration::from_secs(secs.unsigned_abs());
            let whole = if secs >= 0 { UNIX_EPOCH + magnitude } else { UNIX_EPOCH - magnitude };
            fb.received_at = whole + Duration::from_nanos(u64::from(nanos));
            let bytes = encode(&fb, count.map(|c| (c, None)));
            proptest::prop_assert!(bytes.len() <= max_len(&fb, count.map(|c| (c, None))));
            let Ok(Record::Feedback(back, batch)) = decode(&bytes, 3) else {
                panic!("an example")
            };
            proptest::prop_assert_eq!(batch.map(|b| b.count), count);
            proptest::prop_assert_eq!(back.received_at, fb.received_at);
            proptest::prop_assert_eq!(format!("{:?}", back.target), format!("{:?}", fb.target));
            let bits = |f: &FeatureVec| -> Vec<(u32, u64, bool)> {
                f.features.iter().map(|f| (f.index, f.value.to_bits(), f.numeric)).collect()
            };
            proptest::prop_assert_eq!(bits(&back.features), bits(&fb.features));
        }
    }

    /// The example, key and step of the committed log fixtures.
    fn fixture_parts() -> (Feedback, KeyRecord, StepRecord) {
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
        (fb, key, step)
    }

    /// Feedback logs of every format, committed, so every later release
    /// proves it still reads them (`EDDY_WRITE_FIXTURES=1` rewrites the
    /// one of the current format).
    const FIXTURE_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fixtures/wal-v1");
    const FIXTURE_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fixtures/wal-v2");

    /// The records of the current format's fixture.
    fn fixture_records() -> Vec<Vec<u8>> {
        let (fb, key, step) = fixture_parts();
        vec![
            encode(&fb, Some((2, Some(&key)))),
            encode(&fb, None),
            encode_step(&step),
        ]
    }

    #[test]
    fn write_fixture_when_asked() {
        if std::env::var("EDDY_WRITE_FIXTURES").as_deref() == Ok("1") {
            use crate::persist::wal::{Append, FeedbackLog, LocalLog, LogOptions, RecordBatch};
            let _ = std::fs::remove_dir_all(FIXTURE_V2);
            let (log, _) =
                LocalLog::open(std::path::Path::new(FIXTURE_V2), LogOptions::default(), 0)
                    .expect("open");
            let records = fixture_records();
            let mut first = RecordBatch::of(&records[..2]);
            log.append(Append::new(&mut first), &mut |_| {})
                .expect("append");
            let mut second = RecordBatch::of(&records[2..]);
            log.append(Append::new(&mut second), &mut |_| {})
                .expect("append");
        }
    }

    fn read_fixture(dir: &str) -> Vec<(u64, Vec<u8>)> {
        crate::persist::wal::read_dir(std::path::Path::new(dir))
            .expect("fixture")
            .collect::<Result<_, _>>()
            .expect("records")
    }

    /// What every fixture holds, decoded.
    fn check_fixture(read: &[(u64, Vec<u8>)]) {
        let (fb, key, step) = fixture_parts();
        assert_eq!(read.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [0, 1, 2]);
        let Record::Feedback(first, Some(batch)) = decode(&read[0].1, 0).expect("decodes") else {
            panic!("the first example of a request")
        };
        assert_eq!(
            batch,
            Batch {
                count: 2,
                key: Some(key)
            }
        );
        let Record::Feedback(second, None) = decode(&read[1].1, 1).expect("decodes") else {
            panic!("the second example of a request")
        };
        for back in [first, second] {
            assert_eq!(back.features, fb.features);
            assert_eq!(back.target, fb.target);
            assert_eq!(back.source, fb.source);
            assert_eq!(back.received_at, fb.received_at);
            assert!(back.prediction.is_none() && back.scored.is_none());
        }
        let Ok(Record::Step(back)) = decode(&read[2].1, 2) else {
            panic!("a step")
        };
        assert_eq!(back, step);
    }

    #[test]
    fn the_committed_log_fixture_still_reads() {
        // Format 1 (postcard examples, position first in the checksum).
        check_fixture(&read_fixture(FIXTURE_V1));
        // Format 2, which this build writes byte for byte.
        let read = read_fixture(FIXTURE_V2);
        check_fixture(&read);
        assert_eq!(
            read.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
            fixture_records(),
            "this build encodes exactly as the committed log"
        );
        let format = |dir: &str| {
            let segment = std::path::Path::new(dir).join("00000000000000000000.wal");
            let bytes = std::fs::read(segment).expect("segment");
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]])
        };
        assert_eq!((format(FIXTURE_V1), format(FIXTURE_V2)), (1, 2));
    }
}
