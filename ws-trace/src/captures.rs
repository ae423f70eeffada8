//! Capture storage: a directory of trace files (`ID.wstrace`) under a byte quota.
//!
//! Whatever takes a capture (the flight recorder's threshold trigger, SIGUSR1, `serve`'s
//! `POST /api/captures`) writes a window of raw records through [`Captures::store`]; the
//! HTTP API lists, downloads and deletes them by [`CaptureId`]. IDs are validated strictly
//! (`[A-Za-z0-9_-]`, 1–[`MAX_ID_LEN`] characters) before any path is built, so no request
//! can name a file outside the directory. A capture that would take the directory past its
//! quota is refused before it is written (and removed if it came out larger than its
//! estimate): the directory never holds more than the quota of captures.
use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::tracefile::TraceFileError;

/// Longest accepted capture ID.
pub const MAX_ID_LEN: usize = 128;

/// File extension of a capture.
const EXTENSION: &str = "wstrace";

/// Bytes a trace file spends beside its records, at most (header JSON, block framing,
/// footer), counted into the estimate a capture is checked against before it is written.
pub const FILE_OVERHEAD: u64 = 16 * 1024;

/// Failures of capture storage.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The ID has characters other than `[A-Za-z0-9_-]`, is empty or too long.
    #[error("invalid capture id {0:?}: use 1-{MAX_ID_LEN} characters of [A-Za-z0-9_-]")]
    InvalidId(String),
    /// No capture has that ID.
    #[error("no capture {0}")]
    NotFound(String),
    /// Writing it would take the directory past its quota; nothing was written.
    #[error(
        "capture quota reached: {used} of {quota} bytes used, this capture needs about {needed}; delete captures or raise --capture-quota"
    )]
    QuotaReached {
        /// Bytes the directory's captures take.
        used: u64,
        /// The quota.
        quota: u64,
        /// Bytes the refused capture needed (estimated, or measured once written).
        needed: u64,
    },
    /// Nothing to capture: the window holds no records.
    #[error("nothing to capture: the last {window_s:.1} s hold no events")]
    Empty {
        /// The window's length, seconds.
        window_s: f64,
    },
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing the trace file failed.
    #[error(transparent)]
    Trace(#[from] TraceFileError),
}

/// A validated capture ID: the file `ID.wstrace` in the capture directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct CaptureId(String);

impl CaptureId {
    /// Accepts `s` if it is 1–[`MAX_ID_LEN`] characters of `[A-Za-z0-9_-]`.
    pub fn parse(s: &str) -> Result<CaptureId, CaptureError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(CaptureId(s.to_string()))
        } else {
            Err(CaptureError::InvalidId(
                s.chars().take(MAX_ID_LEN).collect(),
            ))
        }
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn file_name(&self) -> String {
        format!("{}.{EXTENSION}", self.0)
    }
}

impl std::fmt::Display for CaptureId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One stored capture.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CaptureInfo {
    /// Its ID.
    pub id: CaptureId,
    /// File size, bytes.
    pub bytes: u64,
    /// When it was written, seconds since the Unix epoch.
    pub created_unix_s: u64,
}

/// Usage of the capture directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureUsage {
    /// Captures stored.
    pub captures: u64,
    /// Bytes they take.
    pub bytes: u64,
    /// The quota, bytes.
    pub quota: u64,
}

/// The capture directory and its quota.
#[derive(Clone, Debug)]
pub struct Captures {
    dir: PathBuf,
    quota: u64,
}

impl Captures {
    /// Uses `dir` (created if missing) with at most `quota` bytes of captures.
    pub fn open(dir: &Path, quota: u64) -> Result<Captures, CaptureError> {
        fs::create_dir_all(dir).map_err(|source| CaptureError::Io {
            op: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Captures {
            dir: dir.to_path_buf(),
            quota,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The quota, bytes.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// Every capture, oldest first. Files that are not captures (other names, a capture
    /// being written) are left out.
    pub fn list(&self) -> Result<Vec<CaptureInfo>, CaptureError> {
        let io = |source| CaptureError::Io {
            op: "listing",
            path: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(stem) = name
                .to_str()
                .and_then(|n| n.strip_suffix(&format!(".{EXTENSION}")))
            else {
                continue;
            };
            let Ok(id) = CaptureId::parse(stem) else {
                continue;
            };
            // A file removed between listing and reading is not an error.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let created_unix_s = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            out.push(CaptureInfo {
                id,
                bytes: meta.len(),
                created_unix_s,
            });
        }
        out.sort_by(|a, b| (a.created_unix_s, &a.id).cmp(&(b.created_unix_s, &b.id)));
        Ok(out)
    }

    /// Captures stored, their bytes and the quota.
    pub fn usage(&self) -> Result<CaptureUsage, CaptureError> {
        let list = self.list()?;
        Ok(CaptureUsage {
            captures: list.len() as u64,
            bytes: list.iter().map(|c| c.bytes).sum(),
            quota: self.quota,
        })
    }

    /// The path of capture `id`, if it exists.
    pub fn path(&self, id: &CaptureId) -> Result<PathBuf, CaptureError> {
        let path = self.dir.join(id.file_name());
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            Ok(_) => Err(CaptureError::NotFound(id.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(CaptureError::NotFound(id.to_string()))
            }
            Err(source) => Err(CaptureError::Io {
                op: "reading",
                path,
                source,
            }),
        }
    }

    /// The bytes of capture `id`.
    pub fn read(&self, id: &CaptureId) -> Result<Vec<u8>, CaptureError> {
        let path = self.path(id)?;
        fs::read(&path).map_err(|source| CaptureError::Io {
            op: "reading",
            path,
            source,
        })
    }

    /// Deletes capture `id`.
    pub fn delete(&self, id: &CaptureId) -> Result<(), CaptureError> {
        let path = self.path(id)?;
        fs::remove_file(&path).map_err(|source| CaptureError::Io {
            op: "deleting",
            path,
            source,
        })
    }

    /// Stores a capture that `write` puts at the path it is given (e.g. the flight
    /// recorder's `FlightRecorder::write`): refused before anything is written when the
    /// captures plus `estimated` bytes would pass the quota, removed when the file came out
    /// larger than the room left, renamed into the listing only once complete. `reason`
    /// becomes part of the ID.
    pub fn store<E>(
        &self,
        reason: &str,
        estimated: u64,
        write: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<CaptureInfo, CaptureError>
    where
        CaptureError: From<E>,
    {
        let used = self.usage()?.bytes;
        if used.saturating_add(estimated) > self.quota {
            return Err(CaptureError::QuotaReached {
                used,
                quota: self.quota,
                needed: estimated,
            });
        }
        let id = self.new_id(reason);
        // Written under a name `list` skips, renamed once complete.
        let tmp = self.dir.join(format!(".{}.tmp", id.as_str()));
        if let Err(e) = write(&tmp) {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        let size = fs::metadata(&tmp).map_or(u64::MAX, |m| m.len());
        if used.saturating_add(size) > self.quota {
            let _ = fs::remove_file(&tmp);
            return Err(CaptureError::QuotaReached {
                used,
                quota: self.quota,
                needed: size,
            });
        }
        let path = self.dir.join(id.file_name());
        fs::rename(&tmp, &path).map_err(|source| {
            let _ = fs::remove_file(&tmp);
            CaptureError::Io {
                op: "renaming",
                path: path.clone(),
                source,
            }
        })?;
        Ok(CaptureInfo {
            id,
            bytes: size,
            created_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }

    /// `YYYYMMDD-HHMMSS-mmm-REASON`, with a counter appended if taken.
    fn new_id(&self, reason: &str) -> CaptureId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let reason: String = reason
            .chars()
            .take(32)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = format!("{}-{reason}", utc_stamp(now.as_secs(), now.subsec_millis()));
        let mut n = 0u32;
        loop {
            let s = if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            // `base` is made of accepted characters only, and short enough.
            let id = CaptureId(s);
            if !self.dir.join(id.file_name()).exists() {
                return id;
            }
            n += 1;
        }
    }
}

/// `YYYYMMDD-HHMMSS-mmm` (UTC) of a Unix time.
fn utc_stamp(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{millis:03}",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flight::FlightRecorder;
    use crate::tracefile::{TraceFilters, TraceHeader, TraceReader};

    #[test]
    fn ids_are_checked_before_any_path_is_built() {
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "a/b",
            "a.wstrace",
            "x y",
            "%2e%2e",
            "é",
            "a\0b",
        ] {
            assert!(
                matches!(CaptureId::parse(bad), Err(CaptureError::InvalidId(_))),
                "{bad:?} accepted"
            );
        }
        assert!(CaptureId::parse(&"a".repeat(MAX_ID_LEN + 1)).is_err());
        for good in [
            "a",
            "20261201-024100-123-api",
            "A_b-9",
            &"z".repeat(MAX_ID_LEN),
        ] {
            assert_eq!(CaptureId::parse(good).expect(good).as_str(), good);
        }
    }

    #[test]
    fn utc_stamps_are_civil_dates() {
        assert_eq!(utc_stamp(0, 0), "19700101-000000-000");
        // 2000-02-29 12:34:56 UTC.
        assert_eq!(utc_stamp(951_827_696, 7), "20000229-123456-007");
        // 2026-12-01 02:41:02 UTC.
        assert_eq!(utc_stamp(1_796_092_862, 999), "20261201-024102-999");
    }

    fn record(i: u64) -> Vec<u8> {
        // A header-only record of kind `SockRecv` is still a record to the file format.
        let mut r = vec![0u8; 48];
        r[..8].copy_from_slice(&i.to_le_bytes());
        r
    }

    #[test]
    fn captures_are_written_listed_read_and_deleted_under_the_quota() {
        let dir = tempfile::tempdir().expect("tempdir");
        let header = TraceHeader::for_this_host(Vec::new(), TraceFilters::default());
        let mut window = FlightRecorder::new(std::time::Duration::from_secs(5), 1 << 20);
        for i in 0..100 {
            window.push(i, &record(i));
        }
        let span = (0, 99);
        let estimated = window.estimate(span.0, span.1) + FILE_OVERHEAD;
        let write = |captures: &Captures| {
            captures.store("api test", estimated, |path| {
                window
                    .write(path, &header, span, "api", Default::default())
                    .map(drop)
            })
        };
        // Room for two captures, not three: measured on a first one.
        let probe = Captures::open(&dir.path().join("probe"), u64::MAX).expect("open");
        let size = write(&probe).expect("a capture").bytes;
        let quota = size + estimated + size / 2;
        let captures = Captures::open(&dir.path().join("caps"), quota).expect("open");
        let first = write(&captures).expect("first capture");
        assert!(first.id.as_str().ends_with("-api_test"), "{}", first.id);
        let second = write(&captures).expect("second capture");
        assert_ne!(first.id, second.id);
        // A file that is not a capture is not listed.
        fs::write(captures.dir().join("notes.txt"), b"x").expect("write");
        let list = captures.list().expect("list");
        assert_eq!(list.len(), 2);
        let usage = captures.usage().expect("usage");
        assert_eq!(usage.bytes, first.bytes + second.bytes);
        // The third would pass the quota: refused, nothing left behind.
        let err = write(&captures).expect_err("over quota");
        assert!(matches!(err, CaptureError::QuotaReached { .. }), "{err}");
        assert_eq!(captures.list().expect("list").len(), 2);
        let leftovers = fs::read_dir(captures.dir())
            .expect("read_dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
            .count();
        assert_eq!(leftovers, 0);
        // Refused before the writer runs when the estimate alone passes the quota.
        let refused = captures.store("x", quota, |_| -> Result<(), CaptureError> {
            panic!("the writer ran over quota")
        });
        assert!(matches!(refused, Err(CaptureError::QuotaReached { .. })));
        // A capture opens like any trace, its footer counting its records by kind.
        let path = captures.path(&first.id).expect("path");
        let reader = TraceReader::open(&path).expect("a capture is a trace file");
        assert_eq!(reader.records().count(), 100);
        let footer = reader.footer().expect("footer");
        assert_eq!(footer.extra["capture"]["reason"], "api");
        assert_eq!(
            captures.read(&first.id).expect("read").len() as u64,
            first.bytes
        );
        captures.delete(&first.id).expect("delete");
        assert!(matches!(
            captures.path(&first.id),
            Err(CaptureError::NotFound(_))
        ));
        assert!(matches!(
            captures.delete(&first.id),
            Err(CaptureError::NotFound(_))
        ));
        // With room again, capturing works again.
        write(&captures).expect("capture after a delete");
    }
}
