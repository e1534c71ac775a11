//! Unpacking zip archives (and the zip-based formats: OOXML, jar, OpenDocument) under the
//! message's budget. The only module that names the `zip` crate, which has no bomb limits of
//! its own.
//!
//! Order of checks, so that nothing is allocated before it is paid for:
//! 1. the end-of-central-directory record is read by hand and its entry count (zip64 too) is
//!    charged to the budget before `zip` parses the directory;
//! 2. per entry, the directory's sizes are checked against the ratio and the bytes left;
//! 3. while inflating, the reader is capped at the smaller of the bytes left and the ratio cap,
//!    so an entry that lies about its size stops at the cap instead of filling memory.
//!
//! Nested archives are not unpacked here: their entries come back as bytes and the decoder
//! queues them like any other attachment (one level deeper).

use std::io::{Cursor, Read};

use super::budget::{Budget, Exceeded};

/// One file inside an archive.
#[derive(Debug)]
pub struct Entry {
    /// The name as stored (lossy UTF-8), sanitised for logs.
    pub name: String,
    /// Empty when the entry is encrypted.
    pub data: Vec<u8>,
    pub encrypted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Exceeded(#[from] Exceeded),
    #[error("malformed archive: {0}")]
    Malformed(String),
}

/// Unpacks every file entry of the zip in `data`, calling `each` for it in order. Entries that
/// cannot be read are reported in the returned list of problems (and skipped); a budget
/// refusal stops unpacking.
pub fn unpack_zip(
    data: &[u8],
    budget: &mut Budget,
    mut each: impl FnMut(Entry),
) -> Result<Vec<String>, ArchiveError> {
    let announced = announced_entries(data)
        .ok_or_else(|| ArchiveError::Malformed("no end of central directory".into()))?;
    budget.entries(announced)?;
    let mut zip = zip::ZipArchive::new(Cursor::new(data))
        .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
    let mut problems = Vec::new();
    for i in 0..zip.len() {
        budget.time()?;
        let (name, encrypted, size, compressed, is_file) = match zip.by_index_raw(i) {
            Ok(f) => (
                clean_name(f.name_raw()),
                f.encrypted(),
                f.size(),
                f.compressed_size(),
                f.is_file(),
            ),
            Err(e) => {
                problems.push(format!("entry {i}: {e}"));
                continue;
            }
        };
        if !is_file {
            continue;
        }
        if encrypted {
            each(Entry {
                name,
                data: Vec::new(),
                encrypted: true,
            });
            continue;
        }
        budget.ratio(size, compressed)?;
        if size > budget.bytes_left() {
            return Err(budget.charge_bytes(size).unwrap_err().into());
        }
        // The cap is what the budget allows, whatever the header claims.
        let cap = budget.bytes_left().min(budget.ratio_cap(compressed));
        let mut out = Vec::with_capacity(size.min(cap).min(1 << 20) as usize);
        let read = match zip.by_index(i) {
            Ok(f) => f.take(cap + 1).read_to_end(&mut out),
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        let got = out.len() as u64;
        if got > cap {
            // Decide which limit it was, for the finding.
            budget.ratio(got, compressed)?;
            return Err(budget.charge_bytes(got).unwrap_err().into());
        }
        budget.charge_bytes(got)?;
        if let Err(e) = read {
            problems.push(format!("{name}: {e}"));
            continue;
        }
        if got != size {
            problems.push(format!("{name}: header says {size} bytes, holds {got}"));
        }
        each(Entry {
            name,
            data: out,
            encrypted: false,
        });
    }
    Ok(problems)
}

/// The entry count the end-of-central-directory record announces (zip64 aware); `None` when
/// there is no such record.
pub fn announced_entries(data: &[u8]) -> Option<u64> {
    const EOCD: &[u8] = b"PK\x05\x06";
    // The record is 22 bytes plus a comment of at most 65 535.
    let from = data.len().saturating_sub(22 + 65_535);
    let tail = &data[from..];
    let pos = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..].starts_with(EOCD))?;
    let eocd = &tail[pos..];
    let entries = u16::from_le_bytes([eocd[10], eocd[11]]);
    if entries != 0xffff {
        return Some(entries.into());
    }
    // zip64: a locator sits right before the record and points at the zip64 record.
    let abs = from + pos;
    let loc = data.get(abs.checked_sub(20)?..abs)?;
    if !loc.starts_with(b"PK\x06\x07") {
        return Some(entries.into());
    }
    let off = u64::from_le_bytes(loc[8..16].try_into().ok()?);
    let rec = data.get(usize::try_from(off).ok()?..)?;
    if !rec.starts_with(b"PK\x06\x06") || rec.len() < 40 {
        return None;
    }
    Some(u64::from_le_bytes(rec[32..40].try_into().ok()?))
}

/// Printable, bounded (for logs, findings and summaries).
pub fn clean_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(200)
        .collect();
    if out.is_empty() {
        out.push('?');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::ScanLimits;
    use crate::config::{Bytes, Dur};
    use std::io::Write;
    use std::time::Instant;

    pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn budget(bytes: u64, ratio: u32, entries: u32) -> Budget {
        Budget::new(
            &ScanLimits {
                max_decoded_bytes: Bytes(bytes),
                max_archive_ratio: ratio,
                max_archive_entries: entries,
                max_time: Dur::secs(60),
                ..ScanLimits::default()
            },
            Instant::now(),
        )
    }

    #[test]
    fn unpacks_within_budget() {
        let z = zip_of(&[("a.txt", b"hello"), ("dir/b.bin", &[1, 2, 3])]);
        assert_eq!(announced_entries(&z), Some(2));
        let mut got = Vec::new();
        let problems = unpack_zip(&z, &mut budget(1 << 20, 100, 10), |e| got.push(e)).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "a.txt");
        assert_eq!(got[0].data, b"hello");
    }

    #[test]
    fn a_bomb_stops_at_the_ratio() {
        let zeros = vec![0u8; 10 << 20];
        let z = zip_of(&[("zeros", &zeros)]);
        let err = unpack_zip(&z, &mut budget(1 << 30, 100, 10), |_| {}).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Exceeded(Exceeded::ArchiveRatio(100))),
            "{err:?}"
        );
        let err = unpack_zip(&z, &mut budget(1 << 20, 100_000, 10), |_| {}).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Exceeded(Exceeded::Bytes(_))),
            "{err:?}"
        );
    }

    #[test]
    fn entry_count_is_charged_before_parsing() {
        let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        let z = zip_of(&entries);
        let err = unpack_zip(&z, &mut budget(1 << 20, 100, 10), |_| {}).unwrap_err();
        assert!(matches!(
            err,
            ArchiveError::Exceeded(Exceeded::ArchiveEntries(10))
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for data in [
            &b"PK\x03\x04garbage"[..],
            b"PK\x05\x06",
            b"",
            b"PK\x05\x06\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\0\0",
        ] {
            let r = unpack_zip(data, &mut budget(1 << 20, 100, 10), |_| {});
            assert!(r.is_err(), "{data:?}");
        }
    }
}
