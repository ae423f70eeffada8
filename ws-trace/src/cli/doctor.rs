//! `ws-trace doctor`: what this machine allows.
use std::process::ExitCode;

use anyhow::Context as _;
use ws_trace::doctor;

use super::args::DoctorArgs;

/// Runs every check and prints the report; fails when a required check did.
pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = doctor::run();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding the report")?
        );
    } else {
        println!("{report}");
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
