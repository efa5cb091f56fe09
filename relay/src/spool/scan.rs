//! The record format of a segment and the pure scan that recovery runs over a segment's
//! bytes: which records are whole and valid, which stretches are damaged (valid records
//! follow them) and whether the segment ends in a torn tail (none follow).
//!
//! ```text
//! 0  magic u32 | 4 state [u8; 4] | 8 segment seq u64
//! 16 queue id u64 | 24 envelope length u32 | 28 text length u32 | 32 crc32 u32 | 36 zero[4]
//! 40 envelope JSON | text
//! ```
//!
//! The checksum covers bytes 16..32 and the payload; the sequence number must equal the
//! segment's, so a record left over from the segment's previous use never passes as one
//! of this use (sequence numbers are never reused: `sequence`). The state is outside the
//! checksum: a record is written `L\0\0\0` (live) and removing a message writes over it in
//! place, not flushed. Segments of the first layout mark a record done with one byte `D`
//! (`L` and `D` differ in one bit); segments whose header carries the `MRK4` flag (every
//! segment this relay prepares) with the four bytes `DONE`, so that no single flipped bit
//! turns a live record into a done one; anything else is live there (a damaged mark means
//! one more delivery, never a lost message). The flag sits after the first layout's
//! header, with a checksum of its own, and `DONE` starts with `D`: a relay of the first
//! layout (a rollback) still reads these segments, and their marks, as its own.
//!
//! How a scan goes on past damage: a record that fails its checks but whose header
//! (magic, sequence number, lengths) is followed by a valid record exactly at its claimed
//! end is skipped to that end; otherwise the scan resynchronises by searching forward,
//! byte by byte, for the next valid record (magic, this segment's sequence number, a
//! length inside the segment and a matching checksum). The stretch skipped is reported as
//! damaged. A stretch after which no valid record follows is the end of the records: a
//! torn tail when a record header of this use starts it (a batch that was being written
//! at a crash, never acknowledged: a writer acknowledges a batch only after flushing it
//! and appends the next one only after that), else just the zeros (or records of an
//! earlier use) after the last record.
//!
//! Every read from the bytes is bounds-checked (`get`), every sum checked: the scan never
//! panics on any input.
//!
//! Not here: files, segments in use, deciding what to do with what the scan found
//! (`segments`).

use std::ops::Range;

use crate::envelope::QueueId;

/// The header block of a segment; records start here.
pub(crate) const HEADER_LEN: u64 = 4096;
/// Fixed part of a record.
pub(crate) const RECORD_HEADER: usize = 40;
pub(crate) const RECORD_MAGIC: u32 = 0x5253_4731;
/// Header magic of every segment.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"RLYSEG01";
/// Header flag (bytes 24..28, its checksum at 28..32): done marks are four bytes.
pub(crate) const FOUR_BYTE_MARKS: &[u8; 4] = b"MRK4";
pub(crate) const LIVE: [u8; 4] = *b"L\0\0\0";
pub(crate) const DONE_V1: [u8; 4] = *b"D\0\0\0";
pub(crate) const DONE_V2: [u8; 4] = *b"DONE";

/// The fixed part of a record, decoded (nothing checked but the magic).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordHead {
    pub(crate) state: [u8; 4],
    pub(crate) seq: u64,
    pub(crate) id: u64,
    pub(crate) env_len: u32,
    pub(crate) text_len: u32,
    pub(crate) crc: u32,
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    let s = b.get(i..i.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    let s = b.get(i..i.checked_add(8)?)?;
    let mut x = [0u8; 8];
    x.copy_from_slice(s);
    Some(u64::from_le_bytes(x))
}

impl RecordHead {
    /// Decodes the first [`RECORD_HEADER`] bytes of `b`, if `b` starts with a record's magic.
    pub(crate) fn parse(b: &[u8]) -> Option<Self> {
        if u32_at(b, 0)? != RECORD_MAGIC {
            return None;
        }
        let state = b.get(4..8)?;
        Some(Self {
            state: [state[0], state[1], state[2], state[3]],
            seq: u64_at(b, 8)?,
            id: u64_at(b, 16)?,
            env_len: u32_at(b, 24)?,
            text_len: u32_at(b, 28)?,
            crc: u32_at(b, 32)?,
        })
    }

    pub(crate) fn payload_len(&self) -> u64 {
        u64::from(self.env_len) + u64::from(self.text_len)
    }

    /// Whether the record is marked done, in a segment of header layout `version` (1: a
    /// `D` first; 2: `DONE`; 0 when the header was unreadable: either mark, whole).
    pub(crate) fn is_done(&self, version: u8) -> bool {
        match version {
            1 => self.state[0] == DONE_V1[0],
            2 => self.state == DONE_V2,
            _ => self.state == DONE_V1 || self.state == DONE_V2,
        }
    }
}

/// The record's checksum over its header fields (bytes 16..32) and payload.
pub(crate) fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head.get(16..32).unwrap_or_default());
    h.update(payload);
    h.finalize()
}

/// A live record of message `id`, its sequence number still zero (the writer sets it).
pub(crate) fn encode(id: QueueId, envelope: &[u8], text: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD_HEADER + envelope.len() + text.len());
    r.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    r.extend_from_slice(&LIVE);
    r.extend_from_slice(&0u64.to_le_bytes());
    r.extend_from_slice(&id.0.to_le_bytes());
    // Callers keep records under MAX_RECORD, far below u32::MAX.
    r.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
    r.extend_from_slice(&(text.len() as u32).to_le_bytes());
    r.extend_from_slice(&[0u8; 8]);
    r.extend_from_slice(envelope);
    r.extend_from_slice(text);
    let crc = checksum(&r[..RECORD_HEADER], &r[RECORD_HEADER..]);
    r[32..36].copy_from_slice(&crc.to_le_bytes());
    r
}

/// Stamps a record from [`encode`] with its segment's sequence number.
pub(crate) fn set_seq(record: &mut [u8], seq: u64) {
    if let Some(s) = record.get_mut(8..16) {
        s.copy_from_slice(&seq.to_le_bytes());
    }
}

/// The envelope JSON and the text of a record from [`encode`].
pub(crate) fn split(record: &[u8]) -> (&[u8], &[u8]) {
    let env_len = u32_at(record, 24).unwrap_or(0) as usize;
    let payload = record.get(RECORD_HEADER..).unwrap_or_default();
    payload.split_at(env_len.min(payload.len()))
}

/// A segment header: magic, sequence number, checksum; with `version` 2, the
/// [`FOUR_BYTE_MARKS`] flag and its checksum after them.
pub(crate) fn header(seq: u64, version: u8) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    if version == 2 {
        h[24..28].copy_from_slice(FOUR_BYTE_MARKS);
        let crc = crc32fast::hash(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
    }
    h
}

/// The sequence number and layout version (1 or 2) of a whole header, or `None`.
pub(crate) fn parse_header(h: &[u8]) -> Option<(u64, u8)> {
    if h.get(..8)? != SEGMENT_MAGIC {
        return None;
    }
    let crc = u32_at(h, 16)?;
    if crc != crc32fast::hash(h.get(..16)?) {
        return None;
    }
    let flagged = h.get(24..28) == Some(&FOUR_BYTE_MARKS[..])
        && u32_at(h, 28).is_some_and(|c| Some(c) == h.get(..28).map(crc32fast::hash));
    Some((u64_at(h, 8)?, if flagged { 2 } else { 1 }))
}

/// A whole, valid record found by a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) offset: u64,
    pub(crate) bytes: u64,
    pub(crate) id: QueueId,
    pub(crate) done: bool,
}

/// What a scan of one segment's bytes found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Whole, valid records of this use, in order.
    pub(crate) records: Vec<Found>,
    /// Stretches that are not valid records but have valid records after them.
    pub(crate) damaged: Vec<Range<u64>>,
    /// Where the torn tail starts, if the records end in one.
    pub(crate) torn: Option<u64>,
}

/// The record of use `seq` at `offset` in `b`, if it is whole and valid: its head and end.
pub(crate) fn record_at(b: &[u8], offset: u64, seq: u64) -> Option<(RecordHead, u64)> {
    let start = usize::try_from(offset).ok()?;
    let head_bytes = b.get(start..start.checked_add(RECORD_HEADER)?)?;
    let h = RecordHead::parse(head_bytes)?;
    if h.seq != seq {
        return None;
    }
    let end = offset
        .checked_add(RECORD_HEADER as u64)?
        .checked_add(h.payload_len())?;
    let payload = b.get(start + RECORD_HEADER..usize::try_from(end).ok()?)?;
    (checksum(head_bytes, payload) == h.crc).then_some((h, end))
}

/// Where a record header of use `seq` at `offset` says its record ends (within `b`),
/// whether or not the record is valid.
fn claimed_end(b: &[u8], offset: u64, seq: u64) -> Option<u64> {
    let start = usize::try_from(offset).ok()?;
    let h = RecordHead::parse(b.get(start..start.checked_add(RECORD_HEADER)?)?)?;
    if h.seq != seq {
        return None;
    }
    let end = offset
        .checked_add(RECORD_HEADER as u64)?
        .checked_add(h.payload_len())?;
    (end <= b.len() as u64).then_some(end)
}

/// The offset of the next valid record of use `seq` at or after `from`.
pub(crate) fn next_valid(b: &[u8], from: u64, seq: u64) -> Option<u64> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let seq_bytes = seq.to_le_bytes();
    let mut at = usize::try_from(from).ok()?;
    let last = b.len().checked_sub(RECORD_HEADER)?;
    while at <= last {
        // The first byte of the magic, then the rest and the sequence number, before the
        // checksum is computed.
        let rest = b.get(at..=last)?;
        let skip = rest.iter().position(|&x| x == magic[0])?;
        at += skip;
        if b.get(at..at + 4) == Some(&magic[..])
            && b.get(at + 8..at + 16) == Some(&seq_bytes[..])
            && record_at(b, at as u64, seq).is_some()
        {
            return Some(at as u64);
        }
        at += 1;
    }
    None
}

/// The highest sequence number of any valid record in `b` after the header block: the
/// use a segment whose header is unreadable was last in.
pub(crate) fn latest_seq(b: &[u8]) -> Option<u64> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut best: Option<u64> = None;
    let mut at = HEADER_LEN as usize;
    let last = b.len().checked_sub(RECORD_HEADER)?;
    while at <= last {
        let Some(skip) = b
            .get(at..=last)
            .and_then(|r| r.iter().position(|&x| x == magic[0]))
        else {
            break;
        };
        at += skip;
        if b.get(at..at + 4) == Some(&magic[..])
            && let Some(seq) = u64_at(b, at + 8)
            && best.is_none_or(|s| seq > s)
            && let Some((_, end)) = record_at(b, at as u64, seq)
        {
            best = Some(seq);
            at = usize::try_from(end).unwrap_or(usize::MAX);
            continue;
        }
        at += 1;
    }
    best
}

/// Scans the records of use `seq` in a segment's bytes `b` (header block included), in a
/// segment of header layout `version` (see [`RecordHead::is_done`]).
pub(crate) fn scan(b: &[u8], seq: u64, version: u8) -> Scan {
    let mut out = Scan::default();
    let len = b.len() as u64;
    let mut offset = HEADER_LEN;
    while offset + RECORD_HEADER as u64 <= len {
        if let Some((h, end)) = record_at(b, offset, seq) {
            out.records.push(Found {
                offset,
                bytes: end - offset,
                id: QueueId(h.id),
                done: h.is_done(version),
            });
            offset = end;
            continue;
        }
        // A header to trust: a valid record stands exactly where it says it ends.
        if let Some(end) = claimed_end(b, offset, seq)
            && end > offset
            && record_at(b, end, seq).is_some()
        {
            out.damaged.push(offset..end);
            offset = end;
            continue;
        }
        match next_valid(b, offset + 1, seq) {
            Some(next) => {
                out.damaged.push(offset..next);
                offset = next;
            }
            None => {
                if claimed_start(b, offset, seq) {
                    out.torn = Some(offset);
                }
                break;
            }
        }
    }
    out
}

/// Whether a record header of use `seq` (magic and sequence number) starts at `offset`.
fn claimed_start(b: &[u8], offset: u64, seq: u64) -> bool {
    let Ok(start) = usize::try_from(offset) else {
        return false;
    };
    // A header cut short by the end of the bytes still counts when what is there matches.
    let magic_ok = b.get(start..start + 4) == Some(&RECORD_MAGIC.to_le_bytes()[..]);
    magic_ok && b.get(start + 8..start + 16) == Some(&seq.to_le_bytes()[..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segment(seq: u64, records: &[(u64, &[u8])], len: usize) -> (Vec<u8>, Vec<u64>) {
        let mut b = vec![0u8; len];
        b[..32].copy_from_slice(&header(seq, 2));
        let mut at = HEADER_LEN as usize;
        let mut offsets = Vec::new();
        for (id, text) in records {
            let mut r = encode(QueueId(*id), b"{}", text);
            set_seq(&mut r, seq);
            offsets.push(at as u64);
            b[at..at + r.len()].copy_from_slice(&r);
            at += r.len();
        }
        (b, offsets)
    }

    #[test]
    fn a_flipped_bit_mid_segment_loses_only_its_record() {
        let texts: Vec<Vec<u8>> = (0..50).map(|i| vec![b'a' + (i % 26) as u8; 100]).collect();
        let recs: Vec<(u64, &[u8])> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u64 + 1, &t[..]))
            .collect();
        let (mut b, offsets) = segment(7, &recs, 64 * 1024);
        // Payload damage: the header is trusted, the record skipped to its end.
        b[offsets[10] as usize + 60] ^= 0x10;
        // Header damage (a length): resynchronised on the next record.
        b[offsets[20] as usize + 29] ^= 0x01;
        let s = scan(&b, 7, 2);
        assert_eq!(s.records.len(), 48);
        assert_eq!(
            s.damaged,
            vec![offsets[10]..offsets[11], offsets[20]..offsets[21]]
        );
        assert_eq!(s.torn, None);
        assert!(s.records.iter().all(|f| f.id.0 != 11 && f.id.0 != 21));
    }

    #[test]
    fn a_torn_tail_is_not_damage() {
        let (mut b, offsets) = segment(3, &[(1, b"one"), (2, b"two")], 16 * 1024);
        let end = offsets[1] as usize + RECORD_HEADER + 5;
        // Half of the next record's header.
        let mut r = encode(QueueId(3), b"{}", b"three");
        set_seq(&mut r, 3);
        b[end..end + 20].copy_from_slice(&r[..20]);
        let s = scan(&b, 3, 2);
        assert_eq!(s.records.len(), 2);
        assert!(s.damaged.is_empty());
        assert_eq!(s.torn, Some(end as u64));
    }

    #[test]
    fn one_flipped_bit_in_a_live_mark_is_not_done() {
        let (mut b, offsets) = segment(3, &[(1, b"one")], 8 * 1024);
        b[offsets[0] as usize + 4] ^= b'L' ^ b'D';
        assert!(!scan(&b, 3, 2).records[0].done);
        assert!(
            scan(&b, 3, 1).records[0].done,
            "the first layout's one-byte mark"
        );
    }

    proptest! {
        /// Flipped bits and a cut anywhere: the scan never panics, and every record left
        /// untouched is found (or lies whole inside a stretch reported damaged).
        #[test]
        fn damage_anywhere_never_panics_and_keeps_later_records(
            n in 1usize..30,
            flips in proptest::collection::vec((0usize..70_000, 0u8..8), 0..6),
            cut in proptest::option::of(0usize..70_000),
        ) {
            let texts: Vec<Vec<u8>> = (0..n).map(|i| vec![b'x'; 50 + i * 37]).collect();
            let recs: Vec<(u64, &[u8])> =
                texts.iter().enumerate().map(|(i, t)| (i as u64 + 1, &t[..])).collect();
            let (mut b, offsets) = segment(9, &recs, 64 * 1024);
            let clean = b.clone();
            for (at, bit) in &flips {
                if let Some(x) = b.get_mut(*at) {
                    *x ^= 1 << bit;
                }
            }
            if let Some(c) = cut {
                b.truncate(c);
            }
            let s = scan(&b, 9, 2);
            let found: Vec<u64> = s.records.iter().map(|f| f.offset).collect();
            for (i, off) in offsets.iter().enumerate() {
                let end = offsets.get(i + 1).copied().unwrap_or(*off + (RECORD_HEADER + 2 + texts[i].len()) as u64);
                let intact = (end as usize) <= b.len()
                    && b[*off as usize..end as usize] == clean[*off as usize..end as usize];
                // An intact record is found, or (when a damaged length before it happens
                // to claim it, up to a valid record after it) lies whole inside a
                // stretch reported damaged, which recovery copies to quarantine.
                let claimed = s.damaged.iter().any(|d| d.start <= *off && end <= d.end);
                if intact {
                    prop_assert!(found.contains(off) || claimed, "record {i} at {off} dropped: {s:?}");
                }
            }
        }
    }
}
