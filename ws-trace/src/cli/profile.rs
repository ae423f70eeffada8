//! `ws-trace profile`: where a process spends its CPU, and where it waits.
use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use ws_trace::{
    privileges,
    profile::{self, Format, ProfileOptions, View},
    target::Target,
};

use super::args::ProfileArgs;

/// Profiles the target, writes the outputs and prints a summary.
pub fn run(args: ProfileArgs) -> anyhow::Result<ExitCode> {
    privileges::require_tracing()?;
    anyhow::ensure!(
        (1..=10_000).contains(&args.freq),
        "--freq must be between 1 and 10000 Hz"
    );
    let format = match args.format {
        Some(f) => f,
        None => Format::from_path(&args.output).with_context(|| {
            format!(
                "{}: say --format (the extension names no format: .svg .folded .txt .pb.gz .pprof)",
                args.output.display()
            )
        })?,
    };
    let stop = super::stop_on_ctrl_c()?;
    let secs = |s: f64, what: &str| {
        Duration::try_from_secs_f64(s)
            .with_context(|| format!("{what} must be a non-negative number of seconds"))
    };
    let opts = ProfileOptions {
        freq: args.freq,
        duration: args.duration.map(|d| secs(d, "--duration")).transpose()?,
        off_cpu: args.off_cpu,
        series: args
            .series
            .map(|s| secs(s, "--series").map(|d| d.max(Duration::from_millis(100))))
            .transpose()?,
    };
    let mut target = Target::select(args.pid, args.comm.as_deref(), None, &args.command)?;
    eprintln!(
        "ws-trace: profiling {} at {} Hz{}{}; Ctrl-C to stop",
        target.describe(),
        args.freq,
        if args.off_cpu {
            ", with off-CPU time"
        } else {
            ""
        },
        opts.duration
            .map_or(String::new(), |d| format!(" for {:.1} s", d.as_secs_f64()))
    );
    let raw = profile::run(&opts, &mut target, &stop).context("profiling session")?;
    let prof = profile::symbolize(&raw);
    for w in &prof.warnings {
        eprintln!("ws-trace: warning: {w}");
    }
    let mut files = Vec::new();
    let mut views = vec![View::OnCpu];
    if args.off_cpu {
        views.push(View::OffCpu);
        if format != Format::Pprof {
            views.push(View::Combined);
        }
    }
    for view in views {
        let path = view.path(&args.output);
        match profile::write(&prof, view, format, &path) {
            Ok(()) => files.push(path),
            Err(profile::ProfileError::Empty) => {
                eprintln!(
                    "ws-trace: nothing to write for {}: no samples",
                    path.display()
                );
            }
            Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
        }
    }
    if opts.series.is_some() {
        let csv = profile::sibling(&args.output, "series", "csv");
        let file =
            std::fs::File::create(&csv).with_context(|| format!("creating {}", csv.display()))?;
        let mut out = std::io::BufWriter::new(file);
        profile::series::write_csv(&raw.series, &mut out)
            .and_then(|()| std::io::Write::flush(&mut out))
            .with_context(|| format!("writing {}", csv.display()))?;
        files.push(csv.clone());
        let chart = profile::sibling(&args.output, "series", "svg");
        match profile::series::write_chart(&raw.series, &chart) {
            Ok(()) => files.push(chart),
            Err(e) => eprintln!("ws-trace: no chart: {e}"),
        }
    }
    let stacks = prof.on_cpu.len();
    let top = prof.top_self(10);
    if args.json {
        let summary = serde_json::json!({
            "samples": prof.samples(),
            "stacks": stacks,
            "freq_hz": prof.freq,
            "duration_s": prof.duration_ns as f64 / 1e9,
            "off_cpu_ms": prof.off_cpu_ns() as f64 / 1e6,
            "symbols": prof.stats,
            "user_hit_rate": prof.stats.user_hit_rate(),
            "kernel_hit_rate": prof.stats.kernel_hit_rate(),
            "top_self": top,
            "warnings": prof.warnings,
            "files": files,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{} samples in {} stacks over {:.1} s at {} Hz",
            prof.samples(),
            stacks,
            prof.duration_ns as f64 / 1e9,
            prof.freq
        );
        if args.off_cpu {
            println!(
                "off-CPU: {:.1} ms in {} stacks",
                prof.off_cpu_ns() as f64 / 1e6,
                prof.off_cpu.len()
            );
        }
        println!(
            "symbols: user {}/{} frames ({:.0}%), kernel {}/{} ({:.0}%)",
            prof.stats.user_known,
            prof.stats.user_frames,
            prof.stats.user_hit_rate() * 100.0,
            prof.stats.kernel_known,
            prof.stats.kernel_frames,
            prof.stats.kernel_hit_rate() * 100.0
        );
        if !top.is_empty() {
            println!("top functions (self samples):");
            let total = prof.samples().max(1) as f64;
            for (name, n) in &top {
                println!("  {:>5.1}%  {n:>6}  {name}", *n as f64 / total * 100.0);
            }
        }
        for f in &files {
            println!("wrote {}", f.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
