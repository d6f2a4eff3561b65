//! One segment file: its name, header and record encoding, creating a new
//! segment safely, and reading one back record by record with the checks
//! that tell a torn tail from corruption. Deciding what to do about a bad
//! record (truncate, refuse, repair) is left to `local`, which knows whether
//! the segment is the last one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::batch::FRAME_LEN;
use super::{LogError, Position};

/// The segment format version this build writes; it reads every version
/// from 1 up to this one (see the module doc of `wal` for how they differ).
pub const FORMAT_VERSION: u32 = 2;
/// The largest payload a record may carry; a longer length is a bad record.
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

const MAGIC: &[u8; 8] = b"EDDYWAL\0";
/// Magic, format, first position, checksum.
pub(super) const HEADER_LEN: u64 = 8 + 4 + 8 + 4;
/// Payload length and checksum: what fills a `RecordBatch` frame slot.
pub(super) const RECORD_HEADER_LEN: u64 = FRAME_LEN as u64;
const _: () = assert!(FRAME_LEN == 4 + 4);
const SUFFIX: &str = ".wal";
const TMP_SUFFIX: &str = ".wal.tmp";

/// The file name of the segment whose first record is at `first`.
pub(super) fn segment_name(first: Position) -> String {
    format!("{first:020}{SUFFIX}")
}

/// The first position a segment file name stands for, if it is one.
pub(super) fn parse_name(name: &str) -> Option<Position> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files in `dir`, in position order.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<(Position, PathBuf)>, LogError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        let name = entry.file_name();
        if let Some(first) = name.to_str().and_then(parse_name) {
            segments.push((first, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(first, _)| *first);
    Ok(segments)
}

/// Removes temp files left by a crash while a segment was being created.
pub(super) fn remove_temp_files(dir: &Path) -> Result<usize, LogError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(TMP_SUFFIX))
        {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| LogError::io(&path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Fsyncs a directory, making creations, renames and removals in it durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates the segment starting at `first`: the header goes to a temp file,
/// which is fsynced (when `sync`), renamed into place, and the directory
/// fsynced (when `sync`), so a segment file never has a partial header.
/// Returns the path and the file opened for appending.
pub(super) fn create_segment(
    dir: &Path,
    first: Position,
    sync: bool,
) -> Result<(PathBuf, File), LogError> {
    let path = dir.join(segment_name(first));
    let tmp = dir.join(format!("{first:020}{TMP_SUFFIX}"));
    let written = (|| {
        // A temp file left by an earlier failure is stale; append mode
        // cannot truncate it, so it goes first.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&tmp)?;
        file.write_all(&encode_header(first))?;
        if sync {
            file.sync_all()?;
        }
        Ok(file)
    })();
    let file = match written {
        Ok(file) => file,
        Err(e) => {
            // Best effort: a leftover temp file is also removed at open.
            let _ = fs::remove_file(&tmp);
            return Err(LogError::io(&tmp, e));
        }
    };
    fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))?;
    if sync {
        sync_dir(dir).map_err(|e| LogError::io(dir, e))?;
    }
    Ok((path, file))
}

/// The 24-byte header of the segment starting at `first`.
pub(super) fn encode_header(first: Position) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&first.to_le_bytes());
    let crc = crc32fast::hash(&header[..20]);
    header[20..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// First half of framing a record of this build's format, done before the
/// position is known (outside the log's order lock): the payload's length
/// and the checksum of the payload alone go into the frame. `crc` is a
/// fresh hasher to clone (making one detects CPU features each time).
pub(super) fn seal_frame(frame: &mut [u8; FRAME_LEN], payload: &[u8], crc: &crc32fast::Hasher) {
    // Callers check the length against MAX_RECORD_BYTES, which fits a u32.
    let len = payload.len() as u32;
    let mut crc = crc.clone();
    crc.update(payload);
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..].copy_from_slice(&crc.finalize().to_le_bytes());
}

/// Second half, under the order lock: folds the record's position into
/// the checksum `seal_frame` left, giving crc32(payload ++ position).
pub(super) fn finish_frame(frame: &mut [u8; FRAME_LEN], position: Position) {
    let partial = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let crc = crc32_extend(partial, &position.to_le_bytes());
    frame[4..].copy_from_slice(&crc.to_le_bytes());
}

/// The CRC-32 (IEEE, as crc32fast computes it) of `a ++ bytes`, given
/// `crc` = the CRC-32 of `a`, for the eight bytes of a position: all eight
/// in one step (slicing-by-8: eight independent table lookups), cheaper
/// than a crc32fast hasher or a byte-at-a-time loop, and it runs once per
/// record under the log's order lock.
fn crc32_extend(crc: u32, bytes: &[u8; 8]) -> u32 {
    let t = &CRC_TABLES;
    let lo = !crc ^ u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let hi = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let byte = |v: u32, i: u32| ((v >> (8 * i)) & 0xff) as usize;
    !(t[7][byte(lo, 0)]
        ^ t[6][byte(lo, 1)]
        ^ t[5][byte(lo, 2)]
        ^ t[4][byte(lo, 3)]
        ^ t[3][byte(hi, 0)]
        ^ t[2][byte(hi, 1)]
        ^ t[1][byte(hi, 2)]
        ^ t[0][byte(hi, 3)])
}

/// Slicing-by-8 tables of the reflected CRC-32 polynomial: `[0]` is the
/// byte-wise table; `[k][b]` is the CRC state of byte `b` followed by `k`
/// zero bytes.
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut tables = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        tables[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = tables[k - 1][i];
            tables[k][i] = (prev >> 8) ^ tables[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    tables
};

/// The checksum of the record at `position` in a segment of `format`.
pub(super) fn record_crc(format: u32, position: Position, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    if format == 1 {
        hasher.update(&position.to_le_bytes());
        hasher.update(payload);
    } else {
        hasher.update(payload);
        hasher.update(&position.to_le_bytes());
    }
    hasher.finalize()
}

/// Writes a whole segment of `format` holding `payloads` from `first`, for
/// tests of older formats.
#[cfg(test)]
pub(super) fn write_segment(path: &Path, format: u32, first: Position, payloads: &[&[u8]]) {
    let mut bytes = encode_header(first).to_vec();
    bytes[8..12].copy_from_slice(&format.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..20]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    for (position, payload) in (first..).zip(payloads) {
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&record_crc(format, position, payload).to_le_bytes());
        bytes.extend_from_slice(payload);
    }
    fs::write(path, bytes).expect("write a test segment");
}

/// Why a segment header cannot be used.
#[derive(Debug)]
pub(super) enum HeaderError {
    Io(io::Error),
    /// Shorter than a header, or all zero bytes: a segment that never got
    /// its header (only possible when segments are created without fsync).
    Incomplete,
    Bad(String),
    Newer(u32),
}

impl HeaderError {
    pub(super) fn into_log_error(self, path: &Path) -> LogError {
        match self {
            HeaderError::Io(e) => LogError::io(path, e),
            HeaderError::Newer(found) => LogError::NewerFormat {
                path: path.to_owned(),
                found,
                supported: FORMAT_VERSION,
            },
            other => corrupt(path, 0, other.reason()),
        }
    }

    /// Why the header is unusable, in words.
    pub(super) fn reason(&self) -> String {
        match self {
            HeaderError::Io(e) => format!("cannot read the header: {e}"),
            HeaderError::Incomplete => "incomplete segment header".into(),
            HeaderError::Bad(reason) => reason.clone(),
            HeaderError::Newer(found) => format!("format version {found} is newer than this build"),
        }
    }
}

/// Why the next record cannot be read.
#[derive(Debug)]
pub(super) enum RecordError {
    Io(io::Error),
    Bad {
        /// Where the bad record starts.
        offset: u64,
        reason: String,
        /// Nothing valid can follow it: a torn tail, if this is the last
        /// segment.
        torn: bool,
    },
}

impl RecordError {
    pub(super) fn into_log_error(self, path: &Path) -> LogError {
        match self {
            RecordError::Io(e) => LogError::io(path, e),
            RecordError::Bad { offset, reason, .. } => corrupt(path, offset, reason),
        }
    }
}

impl From<io::Error> for RecordError {
    fn from(e: io::Error) -> Self {
        RecordError::Io(e)
    }
}

pub(super) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        path: path.to_owned(),
        offset,
        reason: reason.into(),
    }
}

/// Reads one segment file front to back, checking every record.
pub(super) struct SegmentReader {
    reader: BufReader<File>,
    /// The file's length when it was opened; bytes appended later are not
    /// read.
    file_len: u64,
    /// Byte offset of the next record.
    offset: u64,
    /// Position of the next record.
    next: Position,
    /// First position, from the header.
    first: Position,
    /// Format version, from the header: how checksums are computed.
    format: u32,
}

impl SegmentReader {
    /// Opens a segment and checks its header.
    pub(super) fn open(path: &Path) -> Result<Self, HeaderError> {
        let file = File::open(path).map_err(HeaderError::Io)?;
        let file_len = file.metadata().map_err(HeaderError::Io)?.len();
        let mut reader = BufReader::with_capacity(64 << 10, file);
        if file_len < HEADER_LEN {
            return Err(HeaderError::Incomplete);
        }
        let mut header = [0u8; HEADER_LEN as usize];
        reader.read_exact(&mut header).map_err(HeaderError::Io)?;
        let (first, format) = decode_header(&header)?;
        Ok(SegmentReader {
            reader,
            file_len,
            offset: HEADER_LEN,
            next: first,
            first,
            format,
        })
    }

    /// The first position, as the header states it.
    pub(super) fn first(&self) -> Position {
        self.first
    }

    /// The format version the header states.
    pub(super) fn format(&self) -> u32 {
        self.format
    }

    /// The position the next record read will have.
    pub(super) fn next_position(&self) -> Position {
        self.next
    }

    pub(super) fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Reads the next record's payload into `buf` and returns its position,
    /// or `None` at the end of the file. After an error the reader is
    /// spent.
    pub(super) fn next_record(
        &mut self,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Position>, RecordError> {
        let offset = self.offset;
        let remaining = self.file_len - offset;
        if remaining == 0 {
            return Ok(None);
        }
        if remaining < RECORD_HEADER_LEN {
            return Err(bad(offset, "incomplete record header", true));
        }
        let mut head = [0u8; RECORD_HEADER_LEN as usize];
        self.reader.read_exact(&mut head)?;
        let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if RECORD_HEADER_LEN + len > remaining {
            // A crash mid-write, unless a whole record follows: then the
            // length itself is damaged and what follows must not be lost.
            let torn = !self.record_follows(offset + RECORD_HEADER_LEN)?;
            let reason = format!("record length {len} runs past the end of the file");
            return Err(bad(offset, reason, torn));
        }
        if len > MAX_RECORD_BYTES {
            let torn = !self.record_follows(offset + RECORD_HEADER_LEN)?;
            let reason = format!("record length {len} is over the limit of {MAX_RECORD_BYTES}");
            return Err(bad(offset, reason, torn));
        }
        buf.clear();
        // Bounded by MAX_RECORD_BYTES just above.
        buf.resize(len as usize, 0);
        self.reader.read_exact(buf)?;
        if crc != record_crc(self.format, self.next, buf) {
            // Torn (a crash mid-write, or a power loss that left zeros)
            // unless a whole record follows: then this one was damaged in
            // place, and what follows must not be cut away.
            let torn = !self.record_follows(offset + RECORD_HEADER_LEN)?;
            let reason = format!("checksum mismatch for position {}", self.next);
            return Err(bad(offset, reason, torn));
        }
        self.offset += RECORD_HEADER_LEN + len;
        let position = self.next;
        self.next += 1;
        Ok(Some(position))
    }

    /// Whether a whole, valid record of the next position but one starts
    /// anywhere from `from` to the end of the file: proof that the damage
    /// at hand is not a torn tail (a torn write leaves nothing valid after
    /// it). Only on the error path, so a plain scan of every offset.
    fn record_follows(&mut self, from: u64) -> io::Result<bool> {
        self.reader.seek(SeekFrom::Start(from))?;
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest)?;
        let after = self.next + 1;
        let header = RECORD_HEADER_LEN as usize;
        for at in 0..rest.len().saturating_sub(header - 1) {
            let h = &rest[at..at + header];
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            let Some(payload) = rest.get(at + header..at + header + len) else {
                continue;
            };
            if crc == record_crc(self.format, after, payload) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn bad(offset: u64, reason: impl Into<String>, torn: bool) -> RecordError {
    RecordError::Bad {
        offset,
        reason: reason.into(),
        torn,
    }
}

/// The first position and the format version of a header.
fn decode_header(header: &[u8; HEADER_LEN as usize]) -> Result<(Position, u32), HeaderError> {
    if header.iter().all(|&b| b == 0) {
        return Err(HeaderError::Incomplete);
    }
    if &header[..8] != MAGIC {
        return Err(HeaderError::Bad("not a log segment (bad magic)".into()));
    }
    let format = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    // A newer format may lay out the rest of the header differently, so the
    // version is checked before the checksum.
    if format > FORMAT_VERSION {
        return Err(HeaderError::Newer(format));
    }
    let crc = u32::from_le_bytes([header[20], header[21], header[22], header[23]]);
    if crc != crc32fast::hash(&header[..20]) {
        return Err(HeaderError::Bad("header checksum mismatch".into()));
    }
    if format == 0 {
        return Err(HeaderError::Bad("format version 0".into()));
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&header[12..20]);
    Ok((Position::from_le_bytes(first), format))
}
