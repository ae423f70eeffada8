//! `ws-trace serve`: the always-on agent (the library's `serve` does the work).
use std::{
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context as _;
use ws_trace::{
    flight::CapturePolicy,
    privileges,
    serve::{self, Mode, ServeOptions},
    target::Target,
};

use super::args::{ServeArgs, ServeMode};

/// Serves the target's metrics until Ctrl-C or SIGTERM; detaches on the way out.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    privileges::require_tracing()?;
    let stop = super::stop_on_ctrl_c()?;
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the token from {}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    anyhow::ensure!(
        token.as_ref().is_none_or(|t| !t.is_empty()),
        "the bearer token is empty"
    );
    if !args.listen.ip().is_loopback() && args.allow_remote && token.is_none() {
        eprintln!(
            "ws-trace: WARNING: serving on {} without --token: anyone who can reach it can read the metrics and download captures",
            args.listen
        );
    }
    // SIGUSR1: a capture of the last seconds (the session loop takes it).
    let capture_now = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, capture_now.clone())
        .context("installing the SIGUSR1 handler")?;
    let mut target =
        Target::select_with(args.pid, args.comm.as_deref(), None, &args.command, true)?;
    let opts = ServeOptions {
        listen: args.listen,
        allow_remote: args.allow_remote,
        token,
        capture_dir: args.capture_dir,
        capture_quota: args.capture_quota,
        per_connection: args.per_connection,
        max_connections: args.max_connections,
        ring_bytes: args.ring_size,
        mode: match args.mode {
            ServeMode::Aggregate => Mode::Aggregate,
            ServeMode::Full => Mode::Full,
        },
        capture_over: args.capture_over,
        capture_policy: CapturePolicy {
            min_gap: Duration::try_from_secs_f64(args.capture_min_gap)
                .context("--capture-min-gap: a number of seconds, 0 or more")?,
            ..CapturePolicy::default()
        },
        capture_now: Some(capture_now),
        kernel_duty: args.kernel_duty,
    };
    serve::run(&opts, &mut target, &stop, |running| {
        eprintln!(
            "ws-trace: serving {} on http://{}/metrics; Ctrl-C to stop",
            target_name(&args.pid, &args.comm, &args.command),
            running.addr
        );
    })
    .context("serve")?;
    eprintln!("ws-trace: probes detached");
    Ok(ExitCode::SUCCESS)
}

fn target_name(pid: &Option<u32>, comm: &Option<String>, command: &[String]) -> String {
    match (pid, comm) {
        (Some(pid), _) => format!("pid {pid}"),
        (None, Some(comm)) => format!("comm {comm:?}"),
        (None, None) => command.join(" "),
    }
}
