//! `Input`: a data file or stdin, opened as buffered text; gzip is
//! recognised by its magic bytes, whatever the name. `Format` is CSV or
//! JSON Lines, from the name (`.csv`, `.jsonl`, `.json`, `.ndjson`, each
//! optionally `.gz`) unless given.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::DataError;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const BUFFER: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    File(PathBuf),
    Stdin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Input {
    /// `-` is stdin.
    pub fn parse(arg: &Path) -> Self {
        if arg == Path::new("-") {
            Input::Stdin
        } else {
            Input::File(arg.to_owned())
        }
    }

    /// How errors name it.
    pub fn name(&self) -> String {
        match self {
            Input::File(p) => p.display().to_string(),
            Input::Stdin => "<stdin>".to_owned(),
        }
    }

    /// The format its name implies.
    pub fn format(&self) -> Option<Format> {
        let Input::File(p) = self else {
            return None;
        };
        let name = p.file_name()?.to_str()?.to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name.ends_with(".csv") {
            Some(Format::Csv)
        } else if [".jsonl", ".json", ".ndjson"]
            .iter()
            .any(|e| name.ends_with(e))
        {
            Some(Format::Jsonl)
        } else {
            None
        }
    }

    /// Its size in bytes, when it is a file.
    pub fn size(&self) -> Option<u64> {
        match self {
            Input::File(p) => std::fs::metadata(p).ok().map(|m| m.len()),
            Input::Stdin => None,
        }
    }

    /// Opens it for reading, decompressing gzip.
    pub fn open(&self) -> Result<Box<dyn BufRead + Send>, DataError> {
        self.open_counted(Arc::default())
    }

    /// As `open`, adding the bytes read from the file (compressed, for
    /// gzip) to `counter`: what progress reports measure.
    pub fn open_counted(
        &self,
        counter: Arc<AtomicU64>,
    ) -> Result<Box<dyn BufRead + Send>, DataError> {
        let io = |source| DataError::Io {
            file: self.name(),
            source,
        };
        let raw: Box<dyn Read + Send> = match self {
            Input::File(p) => Box::new(File::open(p).map_err(io)?),
            Input::Stdin => Box::new(std::io::stdin()),
        };
        let raw = Counted {
            inner: raw,
            counter,
        };
        let mut reader = BufReader::with_capacity(BUFFER, raw);
        let gzip = reader.fill_buf().map_err(io)?.starts_with(&GZIP_MAGIC);
        Ok(if gzip {
            Box::new(BufReader::with_capacity(
                BUFFER,
                flate2::read::MultiGzDecoder::new(reader),
            ))
        } else {
            Box::new(reader)
        })
    }
}

/// A reader that counts what passes through it.
struct Counted {
    inner: Box<dyn Read + Send>,
    counter: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_name_and_gzip_the_bytes() {
        let f = |n: &str| Input::parse(Path::new(n)).format();
        assert_eq!(f("a.csv"), Some(Format::Csv));
        assert_eq!(f("a.CSV.gz"), Some(Format::Csv));
        assert_eq!(f("a.jsonl.gz"), Some(Format::Jsonl));
        assert_eq!(f("a.txt"), None);
        assert_eq!(Input::parse(Path::new("-")), Input::Stdin);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"x,label\n1,0\n").unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let mut text = String::new();
        Input::File(path)
            .open()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "x,label\n1,0\n");
    }
}
