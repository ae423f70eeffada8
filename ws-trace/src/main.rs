//! The `ws-trace` command line.
use std::{
    io::IsTerminal as _,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ws_abi::ProbeKind;
use ws_trace::{
    attach::{self, AttachOptions},
    doctor, privileges,
    probes::{DEFAULT_RING_BYTES, LoadOptions},
};

/// Where every microsecond of a WebSocket message goes, from the NIC to the callback.
#[derive(Parser)]
#[command(name = "ws-trace", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check what this machine allows: kernel, BTF, privileges, each hook type, kTLS, clocks.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load and attach the probes, show what arrives, detach on Ctrl-C or when time is up.
    Attach {
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECS")]
        duration: Option<f64>,
        /// Event ring size in bytes (a power of two, at least 4096).
        #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES)]
        ring_size: u32,
        /// Forward the probes' aya-log debug records to stderr.
        #[arg(long)]
        log: bool,
        /// Print the final summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ws-trace: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor { json } => {
            let report = doctor::run();
            if json {
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
        Command::Attach {
            duration,
            ring_size,
            log,
            json,
        } => {
            privileges::require_tracing()?;
            if log {
                env_logger_init();
            }
            let stop = Arc::new(AtomicBool::new(false));
            {
                let stop = stop.clone();
                ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
                    .context("installing the Ctrl-C handler")?;
            }
            let duration = duration
                .map(Duration::try_from_secs_f64)
                .transpose()
                .context("--duration must be a non-negative number of seconds")?;
            let interactive = std::io::stderr().is_terminal() && !json;
            let opts = AttachOptions {
                load: LoadOptions {
                    ring_bytes: ring_size,
                    log,
                    target_tgid: 0,
                },
                duration,
                refresh: interactive.then_some(Duration::from_secs(1)),
            };
            eprintln!(
                "ws-trace: attaching {} probes{}; Ctrl-C to stop",
                ProbeKind::ALL.len(),
                duration.map_or(String::new(), |d| format!(" for {:.1} s", d.as_secs_f64()))
            );
            let summary = attach::run(&opts, &ProbeKind::ALL, &stop, |s| {
                // Redraw the table in place on a terminal.
                eprintln!("\x1b[2J\x1b[H{s}");
            })
            .context("attach session")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{summary}");
            }
            eprintln!("ws-trace: probes detached");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Sends `log` records (the probes' aya-log output) to stderr.
fn env_logger_init() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, r: &log::Record<'_>) {
            eprintln!("[probe {}] {}", r.level(), r.args());
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}
