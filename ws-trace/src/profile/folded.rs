//! Folded stacks: `process;outer;...;inner VALUE` per line, the input of flamegraph tools
//! (inferno, FlameGraph, speedscope). On-CPU values are samples, off-CPU and combined
//! values microseconds. Kernel frames end in `_[k]`.

use std::{collections::BTreeMap, io::Write};

use super::{Profile, ProfileError, Stack, View};

/// Marks off-CPU frames in the combined view (and gives them their own colour).
pub const OFF_CPU_SUFFIX: &str = " [off]";

fn clean(name: &str) -> String {
    name.replace(';', ":").replace('\n', " ")
}

fn line(stack: &Stack, middle: Option<&str>, suffix: &str) -> String {
    let mut out = clean(&stack.process);
    if let Some(m) = middle {
        out.push(';');
        out.push_str(m);
    }
    for f in &stack.frames {
        out.push(';');
        out.push_str(&clean(&f.name));
        if f.kernel {
            out.push_str("_[k]");
        }
        out.push_str(suffix);
    }
    out
}

/// The folded lines of one view, merged and sorted, with their values.
pub fn lines(profile: &Profile, view: View) -> Vec<(String, u64)> {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    let us_per_sample = 1_000_000 / profile.freq.max(1);
    match view {
        View::OnCpu => {
            for s in &profile.on_cpu {
                *merged.entry(line(s, None, "")).or_default() += s.value;
            }
        }
        View::OffCpu => {
            for s in &profile.off_cpu {
                *merged.entry(line(s, None, "")).or_default() += s.value / 1000;
            }
        }
        View::Combined => {
            for s in &profile.on_cpu {
                *merged.entry(line(s, Some("on-CPU"), "")).or_default() += s.value * us_per_sample;
            }
            for s in &profile.off_cpu {
                *merged
                    .entry(line(s, Some("off-CPU"), OFF_CPU_SUFFIX))
                    .or_default() += s.value / 1000;
            }
        }
    }
    merged.into_iter().filter(|(_, v)| *v > 0).collect()
}

/// Writes one view as folded stacks.
pub fn write(profile: &Profile, view: View, out: &mut dyn Write) -> Result<(), ProfileError> {
    let lines = lines(profile, view);
    if lines.is_empty() {
        return Err(ProfileError::Empty);
    }
    for (stack, value) in lines {
        writeln!(out, "{stack} {value}")?;
    }
    Ok(())
}

/// Parses folded text back into (stack, value) pairs; lines that are not `STACK VALUE`
/// are skipped.
pub fn parse(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let (stack, value) = l.trim_end().rsplit_once(' ')?;
            Some((stack.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::testdata;

    #[test]
    fn on_off_and_combined_lines() {
        let p = testdata::profile();
        let on = lines(&p, View::OnCpu);
        assert_eq!(
            on,
            vec![
                ("app;main;burn".to_string(), 7),
                ("app;main;read;sys_read_[k]".to_string(), 3)
            ]
        );
        let off = lines(&p, View::OffCpu);
        assert_eq!(off, vec![("app;main;wait;schedule_[k]".to_string(), 2000)]);
        let both = lines(&p, View::Combined);
        assert!(both.contains(&("app;on-CPU;main;burn".to_string(), 7 * 10_101)));
        assert!(both.contains(&(
            "app;off-CPU;main [off];wait [off];schedule_[k] [off]".to_string(),
            2000
        )));
        let mut text = Vec::new();
        write(&p, View::OnCpu, &mut text).unwrap();
        assert_eq!(parse(&String::from_utf8(text).unwrap()), on);
    }
}
