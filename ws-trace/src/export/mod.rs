//! Exports of a correlated trace: one file per format, one entry point.
//!
//! | [`Format`] | file | shows |
//! |---|---|---|
//! | [`Format::Perfetto`] | `.pftrace` | native Perfetto protobuf: a track per RX CPU and per thread, one slice per stage, a flow arrow NIC → callback per message ([`perfetto`]) |
//! | [`Format::ChromeJson`] | `.json` | the same timeline as Chrome JSON trace events ([`chrome`]) |
//! | [`Format::Jsonl`] | `.jsonl` | one message timeline per line ([`jsonl`]) |
//! | [`Format::Folded`] | `.folded` | folded stacks `ws;conn N;from→to ns` ([`folded`]) |
//! | [`Format::Svg`] | `.svg` | a flamegraph of those stacks ([`svg`]) |
//!
//! Every format reads the same [`ExportInput`]: the [`Correlation`] (its rows are the
//! messages), the raw events (only to learn which process each thread belongs to) and the
//! trace header when there is one (host, kernel, clock offset). Timestamps stay
//! CLOCK_MONOTONIC ns as correlation produced them. docs/exports.md describes each format.
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use crate::correlate::Correlation;
use crate::decode::Event;
use crate::tracefile::TraceHeader;

pub mod chrome;
pub mod folded;
pub mod jsonl;
pub mod perfetto;
pub mod svg;
mod timeline;

/// An export format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// Perfetto's native protobuf trace (`.pftrace`).
    Perfetto,
    /// Chrome JSON trace events (`.json`).
    ChromeJson,
    /// JSON lines, one message per line (`.jsonl`).
    Jsonl,
    /// Folded stacks, Brendan Gregg's format (`.folded`).
    Folded,
    /// SVG flamegraph of the folded stacks (`.svg`).
    Svg,
}

impl Format {
    /// All formats.
    pub const ALL: [Format; 5] = [
        Format::Perfetto,
        Format::ChromeJson,
        Format::Jsonl,
        Format::Folded,
        Format::Svg,
    ];

    /// The name `--format` takes (and [`FromStr`] parses).
    pub const fn name(self) -> &'static str {
        match self {
            Format::Perfetto => "perfetto",
            Format::ChromeJson => "chrome-json",
            Format::Jsonl => "jsonl",
            Format::Folded => "folded",
            Format::Svg => "svg",
        }
    }

    /// The usual file extension, without the dot.
    pub const fn extension(self) -> &'static str {
        match self {
            Format::Perfetto => "pftrace",
            Format::ChromeJson => "json",
            Format::Jsonl => "jsonl",
            Format::Folded => "folded",
            Format::Svg => "svg",
        }
    }

    /// The format a file extension (without the dot, any case) stands for, if any:
    /// `pftrace`/`perfetto-trace`/`perfetto`/`pb`, `json`, `jsonl`/`ndjson`,
    /// `folded`/`collapsed`, `svg`.
    pub fn from_extension(ext: &str) -> Option<Format> {
        match ext.to_ascii_lowercase().as_str() {
            "pftrace" | "perfetto-trace" | "perfetto" | "pb" | "proto" => Some(Format::Perfetto),
            "json" => Some(Format::ChromeJson),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "folded" | "collapsed" => Some(Format::Folded),
            "svg" => Some(Format::Svg),
            _ => None,
        }
    }

    /// The format a path's extension stands for, if any (see [`Format::from_extension`]).
    pub fn from_path(path: &Path) -> Option<Format> {
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(Format::from_extension)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = ExportError;

    /// Parses a format name (any case): `perfetto`, `chrome-json` (also `chrome`,
    /// `chrome_json`), `jsonl`, `folded`, `svg` (also `flamegraph`), or any extension
    /// [`Format::from_extension`] knows.
    fn from_str(s: &str) -> Result<Format, ExportError> {
        let lower = s.trim().to_ascii_lowercase();
        let by_name = Format::ALL.into_iter().find(|f| f.name() == lower);
        by_name
            .or(match lower.as_str() {
                "chrome" | "chrome_json" | "chromejson" => Some(Format::ChromeJson),
                "flamegraph" => Some(Format::Svg),
                _ => None,
            })
            .or_else(|| Format::from_extension(&lower))
            .ok_or_else(|| ExportError::UnknownFormat(s.to_string()))
    }
}

/// What an export reads.
#[derive(Clone, Copy, Debug)]
pub struct ExportInput<'a> {
    /// The correlated messages.
    pub correlation: &'a Correlation,
    /// The trace's raw events; used to map threads to their processes (may be empty).
    pub events: &'a [Event],
    /// The trace file's header, when the input came from one.
    pub header: Option<&'a TraceHeader>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Writing the output failed.
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    /// JSON encoding failed.
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A format name or extension that is not one of [`Format::ALL`].
    #[error("unknown export format {0:?} (expected perfetto, chrome-json, jsonl, folded or svg)")]
    UnknownFormat(String),
    /// A flamegraph needs at least one stage with a duration; the trace has no joined
    /// message (or only zero-length stages).
    #[error("nothing to draw: no joined message has a stage longer than 0 ns")]
    Empty,
    /// The flamegraph library failed.
    #[error("drawing the flamegraph: {0}")]
    Flamegraph(std::io::Error),
}

/// Writes `input` to `out` in `format`. `out` is written in pieces: wrap a file in a
/// [`std::io::BufWriter`].
pub fn export(
    format: Format,
    input: &ExportInput<'_>,
    out: &mut dyn Write,
) -> Result<(), ExportError> {
    match format {
        Format::Perfetto => perfetto::write(input, out),
        Format::ChromeJson => chrome::write(input, out),
        Format::Jsonl => jsonl::write(input, out),
        Format::Folded => folded::write(input, out),
        Format::Svg => svg::write(input, out),
    }
}

#[cfg(test)]
pub(crate) mod testdata;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_extensions_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().ok(), Some(f));
            assert_eq!(Format::from_extension(f.extension()), Some(f));
            assert_eq!(f.to_string(), f.name());
        }
        assert_eq!("Chrome".parse::<Format>().ok(), Some(Format::ChromeJson));
        assert_eq!(
            Format::from_path(Path::new("/tmp/x.perfetto-trace")),
            Some(Format::Perfetto)
        );
        assert_eq!(
            Format::from_path(Path::new("out.NDJSON")),
            Some(Format::Jsonl)
        );
        assert_eq!(Format::from_path(Path::new("out")), None);
        assert!(matches!(
            "pdf".parse::<Format>(),
            Err(ExportError::UnknownFormat(s)) if s == "pdf"
        ));
    }

    #[test]
    fn every_format_writes_something() {
        let c = testdata::correlation();
        let input = ExportInput {
            correlation: &c,
            events: &[],
            header: None,
        };
        for f in Format::ALL {
            let mut out = Vec::new();
            export(f, &input, &mut out).unwrap();
            assert!(!out.is_empty(), "{f}");
        }
    }

    #[test]
    fn empty_correlation() {
        let c = Correlation::default();
        let input = ExportInput {
            correlation: &c,
            events: &[],
            header: None,
        };
        for f in Format::ALL {
            let mut out = Vec::new();
            let r = export(f, &input, &mut out);
            if f == Format::Svg {
                assert!(matches!(r, Err(ExportError::Empty)), "{r:?}");
            } else {
                r.unwrap();
            }
        }
    }
}
