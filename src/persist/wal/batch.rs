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
    /// Frame slot, payload, frame slot, payload, ...
    buf: Vec<u8>,
    /// Where each record's frame slot starts; its payload runs to the next
    /// record's slot (or the end of `buf`).
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
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; FRAME_LEN]);
        encode(&mut self.buf);
        debug_assert!(self.buf.len() >= start + FRAME_LEN, "encode truncated");
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
        self.buf.clear();
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
        &self.buf
    }

    /// Calls `f(index, frame slot, payload)` for every record in order.
    pub(super) fn for_each_frame(&mut self, mut f: impl FnMut(usize, &mut [u8; FRAME_LEN], &[u8])) {
        let mut rest = &mut self.buf[..];
        let mut at = 0;
        for i in 0..self.starts.len() {
            let end = self.starts.get(i + 1).copied().unwrap_or(at + rest.len());
            let (record, tail) = mem::take(&mut rest).split_at_mut(end - at);
            let (frame, payload) = record.split_at_mut(FRAME_LEN);
            // `split_at_mut(FRAME_LEN)` gives exactly FRAME_LEN bytes.
            let frame: &mut [u8; FRAME_LEN] = frame.try_into().expect("a whole frame slot");
            f(i, frame, payload);
            rest = tail;
            at = end;
        }
    }

    /// Where record `i`'s payload ends.
    fn end(&self, i: usize) -> usize {
        self.starts.get(i + 1).copied().unwrap_or(self.buf.len())
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
}
