//! The log export file: a self-describing, checked copy of a log's records, for backups, for moving a log
//! between machines and for replaying production history elsewhere.
//!
//! Layout:
//! - the magic line `custodian-log-export 1\n`;
//! - one line of JSON, the [`ExportHeader`];
//! - one frame per record, `[seq u64 LE][len u32 LE][record]`, the record exactly as the log stores it
//!   (format, CRC, rkyv envelope; sealed payloads stay sealed, so the file needs the source's master key to
//!   be opened and leaks nothing without it);
//! - the trailer `[0 u64][32 u32][SHA-256 of every byte before the trailer]`.
//!
//! A reader checks the magic, the header, that sequences run from `first_seq` without gaps to `last_seq`,
//! each record's framing (format byte, CRC, encoding, sequence), and at the end the count and the digest. A
//! file cut short has no trailer and is refused.

use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::EventLogError;
use custodian_events::envelope::{CorruptRecord, Envelope};

/// The first line of every export file.
pub const MAGIC: &[u8] = b"custodian-log-export 1\n";

/// The largest record a reader accepts (a signed upload body is capped far below this).
const RECORD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The header line longest accepted.
const HEADER_BYTES_MAX: usize = 64 * 1024;

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHeader {
    pub format: String,
    pub version: u32,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    /// The fingerprint (hex) of the log's first event: the identity of the log it came from.
    pub log_genesis: Option<String>,
    /// RFC 3339, when the export started.
    pub exported_at: String,
    /// How to open it.
    pub note: String,
}

impl ExportHeader {
    pub fn new(last_seq: u64, log_genesis: Option<String>, exported_at: String) -> Self {
        ExportHeader {
            format: "custodian-log-export".into(),
            version: 1,
            first_seq: 1,
            last_seq,
            records: last_seq,
            log_genesis,
            exported_at,
            note:
                "records as the log stores them; sealed payloads need the source node's master key \
                   (custodian log import FILE --data-dir DIR, custodian replay --log FILE)"
                    .into(),
        }
    }
}

/// Writes an export, piece by piece, as bytes to send or store.
pub struct Exporter {
    hasher: Sha256,
    next_seq: u64,
    last_seq: u64,
}

impl Exporter {
    /// The exporter and the bytes of the magic and header.
    pub fn start(header: &ExportHeader) -> (Exporter, Vec<u8>) {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(
            serde_json::to_string(header)
                .expect("a header serialises")
                .as_bytes(),
        );
        out.push(b'\n');
        let mut hasher = Sha256::new();
        hasher.update(&out);
        (
            Exporter {
                hasher,
                next_seq: header.first_seq,
                last_seq: header.last_seq,
            },
            out,
        )
    }

    /// Appends the frame of one record to `out`. Records must come in order, as the header announced.
    pub fn record(&mut self, seq: u64, record: &[u8], out: &mut Vec<u8>) {
        assert_eq!(seq, self.next_seq, "export frames come in sequence order");
        let start = out.len();
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&(record.len() as u32).to_le_bytes());
        out.extend_from_slice(record);
        self.hasher.update(&out[start..]);
        self.next_seq += 1;
    }

    /// The trailer, once every announced record is written.
    pub fn finish(self) -> Vec<u8> {
        assert_eq!(
            self.next_seq,
            self.last_seq + 1,
            "an export ends after its last announced record"
        );
        let mut out = 0u64.to_le_bytes().to_vec();
        out.extend_from_slice(&32u32.to_le_bytes());
        out.extend_from_slice(&self.hasher.finalize());
        out
    }
}

/// Reads and checks an export; iterate it for `(seq, record)`.
pub struct ExportReader<R: Read> {
    input: R,
    hasher: Sha256,
    header: ExportHeader,
    next_seq: u64,
    done: bool,
}

fn bad(reason: impl Into<String>) -> EventLogError {
    EventLogError::IndexCorrupt(format!("not a valid log export: {}", reason.into()))
}

impl<R: Read> ExportReader<R> {
    pub fn open(mut input: R) -> Result<Self, EventLogError> {
        let mut hasher = Sha256::new();
        let mut magic = vec![0u8; MAGIC.len()];
        input
            .read_exact(&mut magic)
            .map_err(|e| bad(format!("reading its first line: {e}")))?;
        if magic != MAGIC {
            return Err(bad("it does not start with `custodian-log-export 1`"));
        }
        hasher.update(&magic);
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            input
                .read_exact(&mut byte)
                .map_err(|e| bad(format!("reading its header: {e}")))?;
            line.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
            if line.len() > HEADER_BYTES_MAX {
                return Err(bad("its header line is too long"));
            }
        }
        hasher.update(&line);
        let header: ExportHeader = serde_json::from_slice(&line[..line.len() - 1])
            .map_err(|e| bad(format!("its header: {e}")))?;
        if header.format != "custodian-log-export" || header.version != 1 {
            return Err(bad(format!(
                "format {} version {} is not one this build reads",
                header.format, header.version
            )));
        }
        if header.first_seq != 1 || header.records != header.last_seq {
            return Err(bad("only whole logs from sequence 1 are exported"));
        }
        Ok(ExportReader {
            input,
            hasher,
            next_seq: header.first_seq,
            header,
            done: false,
        })
    }

    pub fn header(&self) -> &ExportHeader {
        &self.header
    }

    fn next_frame(&mut self) -> Result<Option<(u64, Vec<u8>)>, EventLogError> {
        let mut head = [0u8; 12];
        self.input.read_exact(&mut head).map_err(|e| {
            bad(format!(
                "it ends before record {} of {} and has no trailer (cut short?): {e}",
                self.next_seq, self.header.last_seq
            ))
        })?;
        let seq = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(head[8..].try_into().expect("4 bytes")) as usize;
        if seq == 0 {
            let mut digest = [0u8; 32];
            self.input
                .read_exact(&mut digest)
                .map_err(|e| bad(format!("its trailer is cut short: {e}")))?;
            if len != 32 {
                return Err(bad("its trailer is malformed"));
            }
            if self.next_seq != self.header.last_seq + 1 {
                return Err(bad(format!(
                    "it ends after record {} but its header announced {}",
                    self.next_seq - 1,
                    self.header.last_seq
                )));
            }
            let expected: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
            if digest != expected {
                return Err(bad(
                    "its SHA-256 does not match: the file changed after it was written",
                ));
            }
            let mut rest = [0u8; 1];
            if self.input.read(&mut rest).unwrap_or(0) != 0 {
                return Err(bad("bytes follow its trailer"));
            }
            return Ok(None);
        }
        if seq != self.next_seq {
            return Err(CorruptRecord {
                seq,
                reason: format!(
                    "the export holds record {seq} where {} belongs",
                    self.next_seq
                ),
            }
            .into());
        }
        if len > RECORD_BYTES_MAX {
            return Err(bad(format!("record {seq} claims {len} bytes")));
        }
        let mut record = vec![0u8; len];
        self.input
            .read_exact(&mut record)
            .map_err(|e| bad(format!("record {seq} is cut short: {e}")))?;
        // Framing, CRC, encoding and sequence; the payload is opened by whoever has the keys.
        Envelope::decode_if(seq, &record, None, &|_| false)?;
        self.hasher.update(head);
        self.hasher.update(&record);
        self.next_seq += 1;
        Ok(Some((seq, record)))
    }
}

impl<R: Read> Iterator for ExportReader<R> {
    type Item = Result<(u64, Vec<u8>), EventLogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_frame() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A syntactically valid record for `seq` (the envelope of a clock tick).
    fn record(seq: u64) -> Vec<u8> {
        let event = custodian_events::Event::ClockTicked(custodian_events::event::ClockTicked {
            at_ns: seq as i64 * 1_000_000_000,
        });
        let fp = custodian_events::fingerprint(&event.canonical().to_bytes());
        Envelope::encode(seq, 7, fp, event, None, None, None)
    }

    fn export(n: u64) -> Vec<u8> {
        let header = ExportHeader::new(n, None, "2026-11-26T00:00:00Z".into());
        let (mut ex, mut out) = Exporter::start(&header);
        for seq in 1..=n {
            ex.record(seq, &record(seq), &mut out);
        }
        out.extend(ex.finish());
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, EventLogError> {
        ExportReader::open(bytes)?.collect()
    }

    #[test]
    fn an_export_reads_back_record_for_record() {
        let bytes = export(5);
        let back = read_all(&bytes).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back[2], (3, record(3)));
        assert!(read_all(&export(0)).unwrap().is_empty());
    }

    #[test]
    fn cut_altered_or_extended_files_are_refused() {
        let bytes = export(5);
        for len in [0, 10, MAGIC.len() + 5, bytes.len() - 40, bytes.len() - 1] {
            assert!(read_all(&bytes[..len]).is_err(), "cut at {len}");
        }
        // Flip a bit in every byte after the header: a record's check or the digest catches it.
        let body_start = bytes.iter().position(|b| *b == b'}').unwrap() + 2;
        for i in body_start..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x10;
            assert!(read_all(&changed).is_err(), "byte {i} changed unnoticed");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read_all(&longer).is_err());
    }
}
