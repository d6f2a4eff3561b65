//! `ExampleStream`: one pass over the inputs, parsed on a thread of its own
//! and handed over in chunks through a bounded channel, so at most
//! `QUEUED_CHUNKS + 2` chunks exist at once whatever the data's size, and
//! parsing overlaps training.
//!
//! Examples the consumer is done with may be handed back (`recycle`): the
//! reader parses rows (CSV and JSON Lines) into their feature buffers
//! instead of allocating new ones for each row, which keeps allocation
//! (and freeing on another thread) off the reader, the slower side of the
//! pair. At most `RECYCLED_CHUNKS` chunks of spent examples wait to be
//! reused, and one more is being used up; more are dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::learn::{Example, Feature, FeatureHasher, FeatureNames, LabelSpace};

use super::csv::CsvSchema;
use super::{DataError, Format, Input, jsonl};

/// Chunks waiting between the reader and the consumer.
const QUEUED_CHUNKS: usize = 4;
/// Chunks of spent examples waiting to be reused by the reader.
const RECYCLED_CHUNKS: usize = 4;
/// Bad rows kept for the report (all are counted).
const BAD_ROWS_KEPT: usize = 20;

#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Forced format; else from each file's name.
    pub format: Option<Format>,
    /// The CSV label column.
    pub label: String,
    /// Bad rows tolerated (reported) before the read fails.
    pub skip_bad_rows: u64,
    /// Examples per chunk.
    pub chunk: usize,
    /// Note the feature names read (`ReadSummary::names`).
    pub names: bool,
    /// The share of rows held out of training (`held_out`): their names
    /// are not noted, since no weight is learned from them.
    pub holdout: f64,
}

/// Whether row `n` (valid rows counted from 0 across the inputs of a
/// pass) is held out when a `share` of rows is: the same rows every pass.
pub fn held_out(n: u64, share: f64) -> bool {
    share > 0.0
        && (xxh3_64_with_seed(&n.to_le_bytes(), 0x686f_6c64) as f64 / u64::MAX as f64) < share
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            format: None,
            label: "label".into(),
            skip_bad_rows: 0,
            chunk: 4096,
            names: false,
            holdout: 0.0,
        }
    }
}

/// A row that was skipped, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BadRow {
    pub file: String,
    pub line: u64,
    pub message: String,
}

/// What one pass read.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReadSummary {
    pub rows: u64,
    pub bad_rows: u64,
    /// The first `BAD_ROWS_KEPT` of them.
    pub bad: Vec<BadRow>,
    /// The feature names of the valid rows, when `ReadOptions::names`.
    #[serde(skip)]
    pub names: FeatureNames,
}

pub struct ExampleStream {
    chunks: Receiver<Vec<Example>>,
    /// Spent examples back to the reader.
    spent: SyncSender<Vec<Example>>,
    /// Bytes read from the inputs so far (for progress).
    bytes: Arc<AtomicU64>,
    reader: Option<JoinHandle<Result<ReadSummary, DataError>>>,
}

impl ExampleStream {
    /// Starts reading `inputs` in order on a new thread.
    pub fn spawn(
        inputs: Vec<Input>,
        options: ReadOptions,
        hasher: FeatureHasher,
        space: Arc<LabelSpace>,
    ) -> Self {
        let (tx, rx) = sync_channel(QUEUED_CHUNKS);
        let (spent, reuse) = sync_channel(RECYCLED_CHUNKS);
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        let reader = std::thread::Builder::new()
            .name("eddy-reader".into())
            .spawn(move || {
                let mut pass = Pass {
                    tx,
                    options,
                    hasher,
                    space,
                    chunk: Vec::new(),
                    reuse,
                    spare: Vec::new(),
                    summary: ReadSummary::default(),
                    bytes: counter,
                    gone: false,
                };
                for input in &inputs {
                    if pass.gone {
                        break;
                    }
                    pass.read(input)?;
                }
                pass.flush();
                Ok(pass.summary)
            })
            .expect("spawning the reader thread");
        Self {
            chunks: rx,
            spent,
            bytes,
            reader: Some(reader),
        }
    }

    /// Bytes read from the inputs so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The next chunk, or `None` at the end (or after an error: `finish`
    /// reports it).
    pub fn next_chunk(&mut self) -> Option<Vec<Example>> {
        self.chunks.recv().ok()
    }

    /// Hands back examples the consumer is done with, for the reader to
    /// parse into; dropped instead when enough are waiting already.
    pub fn recycle(&self, spent: Vec<Example>) {
        if !spent.is_empty() {
            let _ = self.spent.try_send(spent);
        }
    }

    /// Waits for the reader: what it read, or the error that stopped it.
    pub fn finish(mut self) -> Result<ReadSummary, DataError> {
        // Unblock a reader waiting for room, then collect its verdict.
        drop(std::mem::replace(&mut self.chunks, sync_channel(0).1));
        match self.reader.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(DataError::Format {
                file: "<reader>".into(),
                message: "the reader thread panicked".into(),
            }),
            None => Ok(ReadSummary::default()),
        }
    }
}

struct Pass {
    tx: SyncSender<Vec<Example>>,
    options: ReadOptions,
    hasher: FeatureHasher,
    space: Arc<LabelSpace>,
    chunk: Vec<Example>,
    /// Spent examples from the consumer, and those taken but not used up.
    reuse: Receiver<Vec<Example>>,
    spare: Vec<Example>,
    summary: ReadSummary,
    bytes: Arc<AtomicU64>,
    /// The consumer stopped taking chunks.
    gone: bool,
}

impl Pass {
    /// Whether to note the names of the row about to be parsed.
    fn noting(&self) -> bool {
        self.options.names && !held_out(self.summary.rows, self.options.holdout)
    }

    /// A feature buffer to parse into: a spent example's when there is
    /// one.
    fn buffer(&mut self) -> Vec<Feature> {
        if self.spare.is_empty()
            && let Ok(spent) = self.reuse.try_recv()
        {
            self.spare = spent;
        }
        self.spare
            .pop()
            .map(|e| e.features.features)
            .unwrap_or_default()
    }

    fn read(&mut self, input: &Input) -> Result<(), DataError> {
        if let Input::File(dir) = input
            && dir.is_dir()
        {
            return self.read_log(dir);
        }
        let format = self
            .options
            .format
            .or_else(|| input.format())
            .ok_or_else(|| DataError::Format {
                file: input.name(),
                message: "cannot tell CSV from JSON Lines by the name; pass --format csv|jsonl"
                    .into(),
            })?;
        let reader = input.open_counted(self.bytes.clone())?;
        match format {
            Format::Csv => self.read_csv(input, reader),
            Format::Jsonl => self.read_jsonl(input, reader),
        }
    }

    fn read_csv(
        &mut self,
        input: &Input,
        reader: Box<dyn std::io::BufRead + Send>,
    ) -> Result<(), DataError> {
        let file = input.name();
        // Cells are trimmed by `CsvSchema` (cheaper than the reader's
        // trimming, which copies every record).
        let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
        let header = csv.headers().map_err(|e| DataError::Format {
            file: file.clone(),
            message: format!("cannot read the header: {e}"),
        })?;
        let mut schema =
            CsvSchema::new(header, &self.options.label, &self.hasher).map_err(|message| {
                DataError::Format {
                    file: file.clone(),
                    message,
                }
            })?;
        // Byte records: cells are checked as UTF-8 only where read as text
        // (numbers are parsed from the bytes).
        let mut record = csv::ByteRecord::new();
        while !self.gone {
            let line = csv.position().line() + 1;
            match csv.read_byte_record(&mut record) {
                Ok(false) => return Ok(()),
                Ok(true) => {
                    let line = record.position().map_or(line, |p| p.line());
                    let noting = self.noting();
                    let buffer = self.buffer();
                    match schema.example(
                        &record,
                        &self.hasher,
                        &self.space,
                        noting.then_some(&mut self.summary.names),
                        buffer,
                    ) {
                        Ok(e) => self.push(e),
                        Err(message) => self.bad(&file, line, message)?,
                    }
                }
                Err(e) if e.is_io_error() => {
                    return Err(DataError::Io {
                        file,
                        source: std::io::Error::other(e.to_string()),
                    });
                }
                Err(e) => {
                    let line = e.position().map_or(line, |p| p.line());
                    self.bad(&file, line, e.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// A directory of feedback log segments (a model's `wal/`, or the
    /// `storage.archive_dir` folder trimmed segments were moved to): each
    /// record's example as the server accepted it, features already hashed.
    /// A record that cannot be read counts as a bad row, named by position.
    fn read_log(&mut self, dir: &std::path::Path) -> Result<(), DataError> {
        use crate::serving::log_record::Record;
        let file = dir.display().to_string();
        let io = |e: crate::persist::wal::LogError| DataError::Format {
            file: file.clone(),
            message: e.to_string(),
        };
        let rows = self.hasher.rows() as u64;
        // What the server quarantined and never released is not learned.
        let kept_out = super::kept_out::kept_out(dir).map_err(io)?;
        for record in crate::persist::wal::read_dir(dir).map_err(io)? {
            if self.gone {
                break;
            }
            let (position, bytes) = match record {
                Ok(r) => r,
                Err(e) => {
                    self.bad(&file, 0, e.to_string())?;
                    continue;
                }
            };
            let fb = match crate::serving::log_record::decode(&bytes, position) {
                // The trainer's own decisions are not examples.
                Ok(Record::Step(_)) => continue,
                Ok(Record::Feedback(_, _)) if kept_out.contains(&position) => continue,
                Ok(Record::Feedback(fb, _)) => Ok(fb),
                Err(e) => Err(format!("log record {position}: {e}")),
            };
            let checked = fb.and_then(|fb| {
                if fb
                    .features
                    .features
                    .iter()
                    .any(|f| u64::from(f.index) >= rows)
                {
                    return Err(format!(
                        "log record {position}: hashed into more rows than this model's {rows}"
                    ));
                }
                self.space
                    .check(fb.target)
                    .map_err(|e| format!("log record {position}: {e}"))?;
                Ok(Example {
                    features: fb.features,
                    target: fb.target,
                })
            });
            match checked {
                Ok(e) => self.push(e),
                Err(message) => self.bad(&file, position, message)?,
            }
        }
        Ok(())
    }

    fn read_jsonl(
        &mut self,
        input: &Input,
        mut reader: Box<dyn std::io::BufRead + Send>,
    ) -> Result<(), DataError> {
        let file = input.name();
        let mut line = String::new();
        let mut number = 0u64;
        while !self.gone {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|source| DataError::Io {
                    file: file.clone(),
                    source,
                })?;
            if n == 0 {
                return Ok(());
            }
            number += 1;
            let noting = self.noting();
            let buffer = self.buffer();
            match jsonl::example(
                &line,
                &self.hasher,
                &self.space,
                noting.then_some(&mut self.summary.names),
                buffer,
            ) {
                Ok(Some(e)) => self.push(e),
                Ok(None) => {}
                Err(message) => self.bad(&file, number, message)?,
            }
        }
        Ok(())
    }

    fn push(&mut self, e: Example) {
        self.summary.rows += 1;
        self.chunk.push(e);
        if self.chunk.len() >= self.options.chunk {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.chunk.is_empty() {
            let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(self.options.chunk));
            // The consumer is gone only when it stopped early (`finish`
            // before the end): stop reading, rather than parse the rest of
            // a file nobody waits for while `finish` joins this thread.
            if self.tx.send(chunk).is_err() {
                self.gone = true;
            }
        }
    }

    /// Counts a bad row; fails once the budget is spent.
    fn bad(&mut self, file: &str, line: u64, message: String) -> Result<(), DataError> {
        self.summary.bad_rows += 1;
        if self.summary.bad_rows > self.options.skip_bad_rows {
            let row = DataError::BadRow {
                file: file.to_owned(),
                line,
                message,
            };
            return Err(if self.options.skip_bad_rows == 0 {
                row
            } else {
                DataError::TooManyBadRows {
                    budget: self.options.skip_bad_rows,
                    last: row.to_string(),
                }
            });
        }
        if self.summary.bad.len() < BAD_ROWS_KEPT {
            self.summary.bad.push(BadRow {
                file: file.to_owned(),
                line,
                message,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_noted_for_trained_rows_only() {
        use crate::learn::{FeatureHasher, LabelSpace, TaskKind};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        let lines: Vec<String> = (0..200)
            .map(|i| format!(r#"{{"features": {{"f{i}": 1}}, "label": 1}}"#))
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        let hasher = FeatureHasher::new(18);
        let space = Arc::new(LabelSpace::new(TaskKind::Binary, vec![]).unwrap());
        let options = ReadOptions {
            names: true,
            holdout: 0.5,
            ..ReadOptions::default()
        };
        let mut stream = ExampleStream::spawn(vec![Input::File(path)], options, hasher, space);
        while stream.next_chunk().is_some() {}
        let names = stream.finish().unwrap().names;
        let trained: Vec<u64> = (0..200).filter(|n| !held_out(*n, 0.5)).collect();
        assert!(trained.len() > 50 && trained.len() < 150);
        assert_eq!(names.len(), trained.len());
        for n in trained {
            let name = format!("f{n}");
            assert_eq!(
                names.get(hasher.numeric(&name)).next().map(|(n, _)| n),
                Some(name.as_str())
            );
        }
    }

    #[test]
    fn recycled_examples_are_parsed_into_afresh() {
        use crate::learn::{FeatureHasher, LabelSpace, TaskKind};
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("rows.csv");
        let jsonl = dir.path().join("rows.jsonl");
        // Rows of one to three features, so reused buffers differ in length.
        let mut text = String::from("a,b,c,label\n");
        let mut lines = String::new();
        for i in 0..500 {
            let numbers: Vec<(&str, usize)> = [("a", 1), ("b", 2)]
                .into_iter()
                .filter(|(_, k)| (i + k) % 3 != 0)
                .map(|(name, k)| (name, i * k))
                .collect();
            let cell = |name: &str| {
                numbers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(String::new(), |(_, v)| v.to_string())
            };
            text.push_str(&format!(
                "{},{},x{},{}\n",
                cell("a"),
                cell("b"),
                i % 4,
                i % 2
            ));
            let mut features = serde_json::Map::new();
            for (name, v) in &numbers {
                features.insert((*name).into(), (*v).into());
            }
            features.insert("c".into(), format!("x{}", i % 4).into());
            let line = serde_json::json!({"features": features, "label": i % 2});
            lines.push_str(&format!("{line}\n"));
        }
        std::fs::write(&csv, text).unwrap();
        std::fs::write(&jsonl, lines).unwrap();
        let read = |path: &std::path::Path, recycle: bool| {
            let hasher = FeatureHasher::new(18);
            let space = Arc::new(LabelSpace::new(TaskKind::Binary, vec![]).unwrap());
            let options = ReadOptions {
                chunk: 7,
                ..ReadOptions::default()
            };
            let mut stream =
                ExampleStream::spawn(vec![Input::File(path.to_owned())], options, hasher, space);
            let mut all = Vec::new();
            while let Some(chunk) = stream.next_chunk() {
                all.extend(chunk.iter().cloned());
                if recycle {
                    stream.recycle(chunk);
                }
            }
            stream.finish().unwrap();
            all
        };
        let fresh = read(&csv, false);
        assert_eq!(fresh.len(), 500);
        assert_eq!(read(&csv, true), fresh);
        // The JSON form of the same rows hashes to the same examples.
        assert_eq!(read(&jsonl, false), fresh);
        assert_eq!(read(&jsonl, true), fresh);
    }

    #[test]
    fn spent_buffers_are_handed_out_before_new_ones() {
        let (tx, _chunks) = sync_channel(QUEUED_CHUNKS);
        let (spent, reuse) = sync_channel(RECYCLED_CHUNKS);
        let mut pass = Pass {
            tx,
            options: ReadOptions::default(),
            hasher: crate::learn::FeatureHasher::new(18),
            space: Arc::new(
                crate::learn::LabelSpace::new(crate::learn::TaskKind::Binary, vec![]).unwrap(),
            ),
            chunk: Vec::new(),
            reuse,
            spare: Vec::new(),
            summary: ReadSummary::default(),
            bytes: Arc::new(AtomicU64::new(0)),
            gone: false,
        };
        assert_eq!(pass.buffer().capacity(), 0, "nothing spent yet");
        let example = |n: usize| Example {
            features: crate::learn::FeatureVec {
                features: Vec::with_capacity(n),
            },
            target: crate::learn::Target::Class(0),
        };
        let chunk = vec![example(3), example(5)];
        let buffers: Vec<*const Feature> =
            chunk.iter().map(|e| e.features.features.as_ptr()).collect();
        spent.send(chunk).unwrap();
        let (a, b) = (pass.buffer(), pass.buffer());
        assert_eq!(
            [b.as_ptr(), a.as_ptr()],
            buffers[..],
            "the same allocations"
        );
        assert_eq!(pass.buffer().capacity(), 0, "used up");
    }

    #[test]
    fn finishing_early_stops_the_reader() {
        use crate::learn::{FeatureHasher, LabelSpace, TaskKind};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.csv");
        let mut text = String::from("x,label\n");
        for i in 0..100_000 {
            text.push_str(&format!("{i},{}\n", i % 2));
        }
        std::fs::write(&path, text).unwrap();
        let space = Arc::new(LabelSpace::new(TaskKind::Binary, vec![]).unwrap());
        let options = ReadOptions {
            chunk: 100,
            ..ReadOptions::default()
        };
        let files = vec![Input::File(path.clone()), Input::File(path)];
        let mut stream = ExampleStream::spawn(files, options, FeatureHasher::new(18), space);
        assert_eq!(stream.next_chunk().map(|c| c.len()), Some(100));
        // The reader is at most the queued chunks ahead when it learns
        // that nobody takes them any more.
        let read = stream.finish().unwrap();
        assert!(
            read.rows <= 100 * (QUEUED_CHUNKS as u64 + 3),
            "{}",
            read.rows
        );
    }

    #[test]
    fn the_holdout_share_is_stable_and_about_right() {
        let held = (0..100_000u64).filter(|n| held_out(*n, 0.2)).count();
        assert!((19_000..21_000).contains(&held), "{held}");
        assert_eq!(held_out(12, 0.2), held_out(12, 0.2));
        assert!(!(0..1000u64).any(|n| held_out(n, 0.0)));
    }
}
