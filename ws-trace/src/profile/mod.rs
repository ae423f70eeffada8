//! `ws-trace profile`: where a process spends its CPU, and where it waits.
//!
//! [`session`] loads the probe object's profiling programs: a cpu-clock perf event on
//! every CPU counts samples per (process, user stack, kernel stack) in a kernel hash map,
//! and with `--off-cpu` a `sched_switch` program sums the time each thread spends switched
//! out per the stacks it left the CPU with. Nothing is streamed: user space reads both maps
//! once at the end. [`symbolize`](mod@symbolize) turns the stacks into names with blazesym (ELF symbols,
//! DWARF, demangled Rust/C++, kernel frames from kallsyms; unknown frames stay as
//! `module+0xoffset`). The outputs are one file each: [`folded`], [`svg`], [`pprof`].
//! [`series`] samples the target's CPU, RSS and context switches per interval, and
//! [`diff`] compares two profiles.

pub mod diff;
pub mod folded;
pub mod pprof;
pub mod series;
pub mod session;
pub mod svg;
pub mod symbolize;
#[cfg(test)]
mod testdata;

use std::path::{Path, PathBuf};

pub use session::{ProfileOptions, RawProfile, run};
pub use symbolize::{SymbolStats, symbolize};

/// Errors of a profiling session and its outputs.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Loading the probe object, or attaching or reading its profiling programs.
    #[error(transparent)]
    Probe(#[from] crate::loader::ProbeError),
    /// The target could not be found or started.
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Writing an output.
    #[error("writing the output: {0}")]
    Write(#[from] std::io::Error),
    /// Nothing was sampled, so there is nothing to draw.
    #[error("no samples: the target did not run on a CPU while profiled")]
    Empty,
    /// A file given to `diff` is not a profile this tool reads.
    #[error("{0}")]
    Input(String),
    /// Drawing a chart.
    #[error("drawing the chart: {0}")]
    Chart(String),
}

/// One frame of a symbolized stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    /// Function name (demangled), or `module+0xoffset` when unknown.
    pub name: String,
    /// The module (binary, library, `[kernel]`) the address falls in.
    pub module: String,
    /// The sampled address (absolute).
    pub addr: u64,
    /// Source file and line, when DWARF had them.
    pub line: Option<(String, u32)>,
    /// A kernel frame.
    pub kernel: bool,
    /// Whether a symbol was found.
    pub known: bool,
}

/// One stack with its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    /// Process id.
    pub tgid: u32,
    /// Process name.
    pub process: String,
    /// Frames, outermost first (user frames, then kernel frames).
    pub frames: Vec<Frame>,
    /// Samples (on-CPU) or nanoseconds (off-CPU).
    pub value: u64,
}

/// A symbolized profile.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// On-CPU: samples per stack.
    pub on_cpu: Vec<Stack>,
    /// Off-CPU: nanoseconds switched out per stack (empty without `--off-cpu`).
    pub off_cpu: Vec<Stack>,
    /// Sampling frequency (Hz).
    pub freq: u64,
    /// How long the session ran (ns).
    pub duration_ns: u64,
    /// Wall-clock start (ns since the Unix epoch).
    pub start_unix_ns: u64,
    /// Things the user should know (stripped binaries, missing frame pointers ...).
    pub warnings: Vec<String>,
    /// Symbolization figures.
    pub stats: SymbolStats,
}

impl Profile {
    /// Total on-CPU samples.
    pub fn samples(&self) -> u64 {
        self.on_cpu.iter().map(|s| s.value).sum()
    }

    /// Total off-CPU nanoseconds.
    pub fn off_cpu_ns(&self) -> u64 {
        self.off_cpu.iter().map(|s| s.value).sum()
    }

    /// Functions by self samples (leaf frame), most first.
    pub fn top_self(&self, n: usize) -> Vec<(String, u64)> {
        let mut by: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for s in &self.on_cpu {
            if let Some(f) = s.frames.last() {
                *by.entry(f.name.as_str()).or_default() += s.value;
            }
        }
        let mut v: Vec<(String, u64)> = by.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Folded stacks (`a;b;c N` per line), the input of flamegraph tools.
    Folded,
    /// An SVG flamegraph (inferno).
    Svg,
    /// pprof: a gzip-compressed `perftools.profiles.Profile` protobuf.
    Pprof,
}

impl Format {
    /// The format a file name implies: `.folded`/`.txt`, `.svg`, `.pb.gz`/`.pprof`/`.pb`.
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?;
        if name.ends_with(".pb.gz") || name.ends_with(".pprof") || name.ends_with(".pb") {
            Some(Format::Pprof)
        } else if name.ends_with(".svg") {
            Some(Format::Svg)
        } else if name.ends_with(".folded") || name.ends_with(".txt") {
            Some(Format::Folded)
        } else {
            None
        }
    }
}

/// Which picture of a profile a file shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// On-CPU samples.
    OnCpu,
    /// Off-CPU time.
    OffCpu,
    /// Both, in microseconds, coloured apart.
    Combined,
}

impl View {
    /// The output file for this view: `OUT` itself for on-CPU, `OUT` with `.offcpu` or
    /// `.combined` before the extension otherwise.
    pub fn path(self, out: &Path) -> PathBuf {
        let tag = match self {
            View::OnCpu => return out.to_path_buf(),
            View::OffCpu => "offcpu",
            View::Combined => "combined",
        };
        let name = out
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("profile.svg");
        let (stem, ext) = match name.find('.') {
            Some(i) => (&name[..i], &name[i..]),
            None => (name, ""),
        };
        out.with_file_name(format!("{stem}.{tag}{ext}"))
    }
}

/// `OUT` with its extension(s) replaced by `.TAG.EXT`: `p.pb.gz` → `p.series.csv`.
pub fn sibling(out: &Path, tag: &str, ext: &str) -> PathBuf {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("profile");
    let stem = name
        .split('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(name);
    out.with_file_name(format!("{stem}.{tag}.{ext}"))
}

/// Writes one view of `profile` as `format` to `path`.
pub fn write(
    profile: &Profile,
    view: View,
    format: Format,
    path: &Path,
) -> Result<(), ProfileError> {
    let io = |source| ProfileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    match format {
        Format::Folded => folded::write(profile, view, &mut out)?,
        Format::Svg => svg::write(profile, view, &mut out)?,
        Format::Pprof => pprof::write(profile, view, &mut out)?,
    }
    std::io::Write::flush(&mut out).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names() {
        let out = Path::new("/tmp/x/v1.pb.gz");
        assert_eq!(View::OnCpu.path(out), out);
        assert_eq!(View::OffCpu.path(out), Path::new("/tmp/x/v1.offcpu.pb.gz"));
        assert_eq!(
            View::Combined.path(Path::new("p.svg")),
            Path::new("p.combined.svg")
        );
        assert_eq!(
            sibling(out, "series", "csv"),
            Path::new("/tmp/x/v1.series.csv")
        );
        assert_eq!(Format::from_path(out), Some(Format::Pprof));
        assert_eq!(Format::from_path(Path::new("a.txt")), Some(Format::Folded));
        assert_eq!(Format::from_path(Path::new("a.png")), None);
    }
}
