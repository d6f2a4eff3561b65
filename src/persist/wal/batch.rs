//! `RecordBatch`: the records of one append, encoded back to back into one
//! buffer by the caller. Each payload follows a slot of [`FRAME_LEN`] bytes
//! that the log fills in as it writes (the local file puts the record's
//! length and checksum there), so a batch reaches the file in one write
//! without being copied, and a caller can reuse one batch's buffers for
//! request after request. Engines that store payloads alone (a shared log)
//! read them with `payloads` and ignore the slots.

use std::mem;

/// Bytes reserved before each payload for the log's framing.
pub const FRAME_LEN: usize = 8;

/// Payloads of one append, each after a frame slot, in one buffer.
#[derive(Debug, Default, Clone)]
pub struct RecordBatch {
    /// Frame slot, payload, frame slot, payload, ... up to `len`; the bytes
    /// after it are left from earlier batches (a reused batch does not
    /// zero its buffer again for every record, see `push_sized`).
    buf: Vec<u8>,
    /// Where the batch's bytes end in `buf`.
    len: usize,
    /// Where each record's frame slot starts; its payload runs to the next
    /// record's slot (or `len`).
    starts: Vec<usize>,
}

impl RecordBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// A batch holding these payloads.
    pub fn of<R: AsRef<[u8]>>(payloads: impl IntoIterator<Item = R>) -> Self {
        let mut batch = Self::new();
        for payload in payloads {
            batch.push(payload.as_ref());
        }
        batch
    }

    /// Makes room for `records` more records of `payload_bytes` in all.
    pub fn reserve(&mut self, records: usize, payload_bytes: usize) {
        self.starts.reserve(records);
        self.buf.reserve(records * FRAME_LEN + payload_bytes);
    }

    /// Adds one record whose payload `encode` appends to the buffer it is
    /// given. `encode` must only append: what is already in the buffer
    /// belongs to earlier records.
    pub fn push_with(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.len;
        self.buf.truncate(start);
        self.buf.extend_from_slice(&[0; FRAME_LEN]);
        encode(&mut self.buf);
        debug_assert!(self.buf.len() >= start + FRAME_LEN, "encode truncated");
        self.len = self.buf.len();
        self.starts.push(start);
    }

    /// Adds one record of at most `max` bytes, which `encode` writes to the
    /// front of the slice it is given, returning how many it wrote. The
    /// slice holds whatever an earlier batch left there: a batch reused
    /// request after request grows its buffer once, instead of zeroing room
    /// for every record.
    ///
    /// # Panics
    ///
    /// If `encode` says it wrote more than `max` bytes.
    pub fn push_sized(&mut self, max: usize, encode: impl FnOnce(&mut [u8]) -> usize) {
        let start = self.len;
        let end = start + FRAME_LEN + max;
        if self.buf.len() < end {
            // Grown geometrically, so a request's records resize it a few
            // times at most, and a reused batch not at all.
            let want = end.max(self.buf.len() * 2);
            self.buf.resize(want, 0);
        }
        self.buf[start..start + FRAME_LEN].fill(0);
        let written = encode(&mut self.buf[start + FRAME_LEN..end]);
        assert!(written <= max, "a record overran its size");
        self.len = start + FRAME_LEN + written;
        self.starts.push(start);
    }

    /// Adds one record with this payload.
    pub fn push(&mut self, payload: &[u8]) {
        self.push_with(|buf| buf.extend_from_slice(payload));
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.len = 0;
        self.starts.clear();
    }

    /// Bytes allocated for records, to bound what a reused batch keeps.
    pub fn capacity_bytes(&self) -> usize {
        self.buf.capacity() + self.starts.capacity() * mem::size_of::<usize>()
    }

    /// The payloads, in order.
    pub fn payloads(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.starts.len()).map(|i| &self.buf[self.starts[i] + FRAME_LEN..self.end(i)])
    }

    /// Every frame slot and payload, in order, including the slots.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Calls `f(index, frame slot, payload)` for every record in order,
    /// stopping at the first error `f` returns.
    pub(super) fn try_for_each_frame<E>(
        &mut self,
        mut f: impl FnMut(usize, &mut [u8; FRAME_LEN], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let Self { buf, len, starts } = self;
        let mut rest = &mut buf[..*len];
        let mut at = 0;
        // Each record runs to the next one's start, the last to `len`.
        let ends = starts.iter().skip(1).copied().chain(std::iter::once(*len));
        for (i, end) in ends.take(starts.len()).enumerate() {
            let (record, tail) = mem::take(&mut rest).split_at_mut(end - at);
            // Every push wrote a whole frame slot first.
            let Some((frame, payload)) = record.split_first_chunk_mut::<FRAME_LEN>() else {
                unreachable!("a record without its frame slot")
            };
            f(i, frame, payload)?;
            rest = tail;
            at = end;
        }
        Ok(())
    }

    /// Calls `f(index, frame slot, payload)` for every record in order.
    pub(super) fn for_each_frame(&mut self, mut f: impl FnMut(usize, &mut [u8; FRAME_LEN], &[u8])) {
        let done: Result<(), std::convert::Infallible> =
            self.try_for_each_frame(|i, frame, payload| {
                f(i, frame, payload);
                Ok(())
            });
        let Ok(()) = done;
    }

    /// Where record `i`'s payload ends.
    fn end(&self, i: usize) -> usize {
        self.starts.get(i + 1).copied().unwrap_or(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_come_back_in_order_with_their_slots() {
        let mut batch = RecordBatch::of([&b"ab"[..], b"", b"xyz"]);
        batch.push_with(|buf| buf.extend_from_slice(b"q"));
        assert_eq!(batch.len(), 4);
        let payloads: Vec<&[u8]> = batch.payloads().collect();
        assert_eq!(payloads, [&b"ab"[..], b"", b"xyz", b"q"]);
        assert_eq!(batch.bytes().len(), 4 * FRAME_LEN + 6);
        let mut seen = Vec::new();
        batch.for_each_frame(|i, frame, payload| {
            frame.copy_from_slice(&[i as u8; FRAME_LEN]);
            seen.push(payload.to_vec());
        });
        assert_eq!(
            seen,
            [b"ab".to_vec(), vec![], b"xyz".to_vec(), b"q".to_vec()]
        );
        assert_eq!(&batch.bytes()[..FRAME_LEN], &[0; FRAME_LEN]);
        let third = 2 * FRAME_LEN + 2;
        assert_eq!(&batch.bytes()[third..third + FRAME_LEN], &[2; FRAME_LEN]);
        batch.clear();
        assert!(batch.is_empty() && batch.payloads().next().is_none());
    }

    /// A reused batch hands `push_sized` room holding an earlier batch's
    /// bytes; only what `encode` says it wrote is kept, and every frame
    /// slot starts zeroed.
    #[test]
    fn sized_records_keep_only_what_was_written() {
        let mut batch = RecordBatch::new();
        batch.push_sized(10, |out| {
            out[..10].fill(0xaa);
            10
        });
        batch.for_each_frame(|_, frame, _| frame.fill(0xff));
        batch.clear();
        batch.push_sized(10, |out| {
            out[..2].copy_from_slice(b"hi");
            2
        });
        batch.push(b"there");
        batch.push_sized(40, |out| {
            out[0] = b'!';
            1
        });
        let payloads: Vec<&[u8]> = batch.payloads().collect();
        assert_eq!(payloads, [&b"hi"[..], b"there", b"!"]);
        let bytes = batch.bytes();
        assert_eq!(bytes.len(), 3 * FRAME_LEN + 8);
        assert_eq!(&bytes[..FRAME_LEN], &[0; FRAME_LEN]);
        assert_eq!(&bytes[FRAME_LEN..FRAME_LEN + 2], b"hi");
    }
}
