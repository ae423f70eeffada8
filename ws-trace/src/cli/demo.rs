//! `ws-trace demo`: a real traced WebSocket session; and `demo-client`, its traced client.
use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use ws_trace::{demo, privileges};

use super::args::{DemoArgs, DemoClientArgs};

/// Runs the demo and prints what it found and wrote.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let DemoArgs {
        duration,
        rate,
        size,
        out,
        loopback,
        plain,
    } = args;
    privileges::require_tracing()?;
    let stop = super::stop_on_ctrl_c()?;
    let opts = demo::DemoOptions {
        duration: Duration::try_from_secs_f64(duration)
            .context("--duration must be a non-negative number of seconds")?,
        rate,
        size,
        out,
        loopback,
        plain,
    };
    let exe = std::env::current_exe().context("finding the ws-trace binary")?;
    eprintln!(
        "ws-trace demo: {rate} msg/s of {size} B over {} for {duration} s, every probe attached",
        if plain { "ws://" } else { "wss://" }
    );
    let result = demo::run(&opts, &exe, &stop).context("demo")?;
    println!("network: {}", result.network);
    if result.interrupted {
        println!("stopped by Ctrl-C: the report covers what was traced until then");
    }
    match &result.sent {
        Some(sent) => println!(
            "server sent {} messages ({} bytes); probe drops: {}",
            sent.sent,
            sent.bytes,
            result.summary.total_drops()
        ),
        None => println!(
            "feed cut short; probe drops: {}",
            result.summary.total_drops()
        ),
    }
    println!("\n{}", result.report);
    println!("\nfiles:");
    println!("  trace     {}", result.trace.display());
    for (what, path) in &result.files {
        println!("  {what:<9} {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo's client process: connects to the demo server and counts what arrives.
pub fn client(args: DemoClientArgs) -> anyhow::Result<ExitCode> {
    let n = demo::client(&args.url, args.ca.as_deref()).map_err(anyhow::Error::msg)?;
    println!("demo-client: received {n} messages");
    Ok(ExitCode::SUCCESS)
}
