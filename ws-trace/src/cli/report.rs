//! `ws-trace report`: reads a recorded trace.
use std::process::ExitCode;

use anyhow::Context as _;
use ws_trace::report;

use super::args::ReportArgs;

/// Prints the report of a trace file.
pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let ReportArgs {
        file,
        json,
        slowest,
    } = args;
    let trace = report::load(&file).with_context(|| format!("reading {}", file.display()))?;
    let report = report::Report::build(&trace, slowest);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}
