//! `ws-trace diff BASE NEW`: two profiles give a differential flamegraph (inferno's
//! differential folding: frame widths from NEW, red where NEW spends more, blue where it
//! spends less, BASE normalised to NEW's total); two recorded traces give their stage
//! tables side by side with the change of each percentile and a verdict per stage.

use std::{fmt, io::Write, path::Path};

use super::{ProfileError, folded, pprof};
use crate::report::{self, StageStats};

/// Whether a file is a recorded trace (by extension) rather than a profile.
pub fn is_trace(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wstrace")
}

/// Folded lines of a profile file: folded text, or pprof (gzip or not) turned back into
/// `process;outer;...;inner VALUE` using its first sample value.
pub fn load_folded(path: &Path) -> Result<Vec<(String, u64)>, ProfileError> {
    let bytes = std::fs::read(path).map_err(|source| ProfileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.starts_with(&[0x1f, 0x8b])
        || path.extension().is_some_and(|e| e == "pprof" || e == "pb")
    {
        return Ok(folded_of_pprof(&pprof::read(&bytes)?));
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        ProfileError::Input(format!("{}: neither folded text nor pprof", path.display()))
    })?;
    if text.trim_start().starts_with('<') {
        return Err(ProfileError::Input(format!(
            "{}: an SVG cannot be compared; profile with -o FILE.folded or FILE.pb.gz",
            path.display()
        )));
    }
    let lines = folded::parse(&text);
    if lines.is_empty() {
        return Err(ProfileError::Input(format!(
            "{}: no folded stacks in it",
            path.display()
        )));
    }
    Ok(lines)
}

/// Folded lines of a pprof profile (first sample value; `process` label as the root).
pub fn folded_of_pprof(p: &pprof::proto::Profile) -> Vec<(String, u64)> {
    let s = |i: i64| p.string_table.get(i as usize).map_or("", String::as_str);
    let process_key = p.string_table.iter().position(|x| x == "process");
    let mut out = std::collections::BTreeMap::<String, u64>::new();
    for sample in &p.sample {
        let mut frames: Vec<&str> = Vec::new();
        for id in sample.location_id.iter().rev() {
            let Some(loc) = p.location.iter().find(|l| l.id == *id) else {
                continue;
            };
            for line in loc.line.iter().rev() {
                if let Some(f) = p.function.iter().find(|f| f.id == line.function_id) {
                    frames.push(s(f.name));
                }
            }
        }
        let root = sample
            .label
            .iter()
            .find(|l| Some(l.key as usize) == process_key)
            .map(|l| s(l.str));
        let mut line = String::new();
        if let Some(r) = root {
            line.push_str(r);
        }
        for f in frames {
            if !line.is_empty() {
                line.push(';');
            }
            line.push_str(&f.replace(';', ":"));
        }
        let v = sample.value.first().copied().unwrap_or(0).max(0) as u64;
        *out.entry(line).or_default() += v;
    }
    out.into_iter().collect()
}

/// Writes the differential flamegraph of two profiles as SVG.
pub fn write_flamegraph(base: &Path, new: &Path, out: &mut dyn Write) -> Result<(), ProfileError> {
    let text = |lines: Vec<(String, u64)>| {
        lines
            .into_iter()
            .map(|(s, v)| format!("{s} {v}\n"))
            .collect::<String>()
    };
    let before = text(load_folded(base)?);
    let after = text(load_folded(new)?);
    let mut diff = Vec::new();
    let opt = inferno::differential::Options {
        normalize: true,
        ..Default::default()
    };
    inferno::differential::from_readers(opt, before.as_bytes(), after.as_bytes(), &mut diff)?;
    let mut fg = inferno::flamegraph::Options::default();
    fg.title = "ws-trace diff: red = more in NEW, blue = less".into();
    fg.subtitle = Some(format!(
        "{} → {} (BASE normalised to NEW's total)",
        base.display(),
        new.display()
    ));
    fg.deterministic = true;
    let diff = String::from_utf8_lossy(&diff).into_owned();
    inferno::flamegraph::from_lines(&mut fg, diff.lines(), &mut *out)?;
    Ok(())
}

/// One stage of two traces.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StageDelta {
    /// The stage.
    pub stage: &'static str,
    /// BASE's figures.
    pub base: Option<StageStats>,
    /// NEW's figures.
    pub new: Option<StageStats>,
    /// `faster`, `slower`, `same` or `only in one`.
    pub verdict: &'static str,
}

/// Two traces' stage tables, side by side.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TraceDiff {
    /// Messages in BASE.
    pub base_messages: u64,
    /// Messages in NEW.
    pub new_messages: u64,
    /// One row per stage.
    pub stages: Vec<StageDelta>,
}

/// A change is only a verdict when both p50 and p99 move the same way by more than this
/// share (and more than 1 µs).
const THRESHOLD: f64 = 0.10;

fn verdict(base: &StageStats, new: &StageStats) -> &'static str {
    let moved = |a: u64, b: u64| {
        let (a, b) = (a as f64, b as f64);
        if (b - a).abs() < 1000.0 || (b - a).abs() < THRESHOLD * a.max(1.0) {
            0
        } else if b > a {
            1
        } else {
            -1
        }
    };
    match (
        moved(base.p50_ns, new.p50_ns),
        moved(base.p99_ns, new.p99_ns),
    ) {
        (1, 1) | (1, 0) | (0, 1) => "slower",
        (-1, -1) | (-1, 0) | (0, -1) => "faster",
        (0, 0) => "same",
        _ => "mixed",
    }
}

/// Compares the overall stage tables of two recorded traces.
pub fn compare_traces(base: &Path, new: &Path) -> Result<TraceDiff, ProfileError> {
    let load = |p: &Path| {
        report::load(p).map_err(|e| ProfileError::Input(format!("{}: {e}", p.display())))
    };
    let b = report::Report::build(&load(base)?, 0).overall;
    let n = report::Report::build(&load(new)?, 0).overall;
    let mut names: Vec<&'static str> = b.stages.iter().map(|s| s.stage).collect();
    for s in &n.stages {
        if !names.contains(&s.stage) {
            names.push(s.stage);
        }
    }
    let stages = names
        .into_iter()
        .map(|stage| {
            let base = b.stages.iter().find(|s| s.stage == stage).cloned();
            let new = n.stages.iter().find(|s| s.stage == stage).cloned();
            let verdict = match (&base, &new) {
                (Some(x), Some(y)) if x.count > 0 && y.count > 0 => verdict(x, y),
                _ => "only in one",
            };
            StageDelta {
                stage,
                base,
                new,
                verdict,
            }
        })
        .collect();
    Ok(TraceDiff {
        base_messages: b.messages,
        new_messages: n.messages,
        stages,
    })
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn delta(a: u64, b: u64) -> String {
    if a == 0 {
        return "-".into();
    }
    format!("{:+.0}%", (b as f64 - a as f64) / a as f64 * 100.0)
}

impl fmt::Display for TraceDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "messages: base {}, new {}   (µs; Δ = new vs base)",
            self.base_messages, self.new_messages
        )?;
        writeln!(
            f,
            "{:<14} {:>9} {:>9} {:>6}  {:>9} {:>9} {:>6}  verdict",
            "stage", "p50 base", "p50 new", "Δ", "p99 base", "p99 new", "Δ"
        )?;
        for s in &self.stages {
            let (b50, b99) = s.base.as_ref().map_or((0, 0), |x| (x.p50_ns, x.p99_ns));
            let (n50, n99) = s.new.as_ref().map_or((0, 0), |x| (x.p50_ns, x.p99_ns));
            writeln!(
                f,
                "{:<14} {:>9} {:>9} {:>6}  {:>9} {:>9} {:>6}  {}",
                s.stage,
                us(b50),
                us(n50),
                delta(b50, n50),
                us(b99),
                us(n99),
                delta(b99, n99),
                s.verdict
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{View, testdata};

    #[test]
    fn pprof_folds_back_to_the_same_stacks() {
        let p = testdata::profile();
        let msg = pprof::build(&p, View::OnCpu).unwrap();
        assert_eq!(
            folded_of_pprof(&msg),
            folded::lines(&p, View::OnCpu)
                .into_iter()
                .map(|(s, v)| (s.replace("_[k]", ""), v))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn differential_flamegraph_of_two_folded_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.folded");
        let b = dir.path().join("b.folded");
        std::fs::write(&a, "app;main;burn 90\napp;main;idle 10\n").unwrap();
        std::fs::write(&b, "app;main;burn 30\napp;main;idle 70\n").unwrap();
        let mut out = Vec::new();
        write_flamegraph(&a, &b, &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.contains("burn") && svg.contains("idle"));
        // Differential colours: some frame is red-ish (more), some blue-ish (less).
        assert!(svg.contains("rgb(0,0,") || svg.contains("rgb("));
    }

    #[test]
    fn verdicts() {
        let s = |p50, p99| StageStats {
            stage: "tcp",
            p50_ns: p50,
            p99_ns: p99,
            count: 1,
            ..Default::default()
        };
        assert_eq!(verdict(&s(10_000, 50_000), &s(5_000, 20_000)), "faster");
        assert_eq!(verdict(&s(10_000, 50_000), &s(20_000, 90_000)), "slower");
        assert_eq!(verdict(&s(10_000, 50_000), &s(10_100, 50_500)), "same");
        assert_eq!(verdict(&s(10_000, 50_000), &s(5_000, 90_000)), "mixed");
    }
}
