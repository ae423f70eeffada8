//! Autobahn TestSuite client: `autobahn_client <base-url> <agent>`.
//!
//! Speaks the fuzzingserver protocol: `getCaseCount`, then `runCase?case=N&agent=A` for
//! every case (echoing every message back as it came), then `updateReports?agent=A`.
use std::process::ExitCode;

#[path = "autobahn/suite.rs"]
mod suite;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(base), Some(agent)) = (args.first(), args.get(1)) else {
        eprintln!("usage: autobahn_client <base-url> <agent>");
        return ExitCode::from(2);
    };
    let verbose = std::env::var_os("AUTOBAHN_VERBOSE").is_some();
    match suite::run_suite(base, agent, verbose) {
        Ok(n) => {
            eprintln!("ran {n} cases as agent {agent:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
