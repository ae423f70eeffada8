//! `ws-trace diff`: two profiles (a differential flamegraph) or two traces (stage tables
//! side by side).
use std::process::ExitCode;

use anyhow::Context as _;
use ws_trace::profile::diff;

use super::args::DiffArgs;

/// Compares the two files.
pub fn run(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let DiffArgs {
        base,
        new,
        output,
        json,
    } = args;
    if diff::is_trace(&base) || diff::is_trace(&new) {
        anyhow::ensure!(
            diff::is_trace(&base) && diff::is_trace(&new),
            "diff compares two traces (.wstrace) or two profiles, not one of each"
        );
        let d = diff::compare_traces(&base, &new)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&d)?);
        } else {
            print!("{d}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let file =
        std::fs::File::create(&output).with_context(|| format!("creating {}", output.display()))?;
    let mut out = std::io::BufWriter::new(file);
    diff::write_flamegraph(&base, &new, &mut out)
        .with_context(|| format!("comparing {} with {}", base.display(), new.display()))?;
    std::io::Write::flush(&mut out).with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "ws-trace: differential flamegraph written to {}",
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}
