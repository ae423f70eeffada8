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
use std::path::PathBuf;

use ws_abi::ProbeKind;
use ws_trace::{
    attach::{self, AttachOptions, Plan},
    correlate, demo, doctor, export, privileges,
    probes::{DEFAULT_RING_BYTES, Filter, LoadOptions},
    record::Recorder,
    report, symbols,
    target::Target,
    tracefile::TraceFilters,
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
    /// Attach the probes and show what arrives; Ctrl-C, --duration or the target's exit
    /// ends it and detaches everything.
    Attach(AttachArgs),
    /// Like attach, recording every event to a trace file (-o is required).
    Record(AttachArgs),
    /// A real traced WebSocket session: a feed server in a network namespace, a ws-engine
    /// client, every probe attached; prints the stage table, writes trace and exports.
    Demo {
        /// How long the feed runs.
        #[arg(long, value_name = "SECS", default_value_t = 5.0)]
        duration: f64,
        /// Messages per second.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// Bytes per message.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Folder for the trace and its exports.
        #[arg(long, value_name = "DIR", default_value = "ws-trace-demo")]
        out: PathBuf,
        /// Stay on loopback instead of a network namespace with a veth pair.
        #[arg(long)]
        loopback: bool,
        /// Plain ws:// instead of wss://.
        #[arg(long)]
        plain: bool,
    },
    /// The demo's client process (internal).
    #[command(hide = true)]
    DemoClient {
        /// CA certificate (PEM) to trust for wss://.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Server URL.
        url: String,
    },
    /// Export a recorded trace: Perfetto, Chrome JSON, JSON lines, folded stacks, SVG.
    Export {
        /// The trace file.
        file: PathBuf,
        /// Output format (default: from the output file's extension).
        #[arg(long, value_name = "perfetto|chrome-json|jsonl|folded|svg")]
        format: Option<export::Format>,
        /// Output file.
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: PathBuf,
    },
    /// Read a recorded trace: events, one NIC→callback row per message, stage tables.
    Report {
        /// The trace file (from `attach -o` or `record -o`).
        file: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// How many of the slowest messages to show in full.
        #[arg(long, default_value_t = 5)]
        slowest: usize,
    },
    /// Sample where a process spends its CPU (perf-event stacks counted in the kernel), and
    /// with --off-cpu where it waits; write a flamegraph (.svg), folded stacks (.folded) or
    /// pprof (.pb.gz).
    Profile(ProfileArgs),
    /// Compare two profiles (differential flamegraph, -o OUT.svg) or two recorded traces
    /// (.wstrace: stage tables side by side with deltas and a verdict per stage).
    Diff {
        /// The baseline: a profile (.folded or .pb.gz) or a trace (.wstrace).
        base: PathBuf,
        /// The new run, same kind as BASE.
        new: PathBuf,
        /// Where the differential flamegraph goes (profiles only).
        #[arg(
            short = 'o',
            long = "output",
            value_name = "OUT.svg",
            default_value = "diff.svg"
        )]
        output: PathBuf,
        /// Print the trace comparison as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct AttachArgs {
    /// Trace this process (all its threads, and the children it forks).
    #[arg(long, conflicts_with_all = ["comm", "command"])]
    pid: Option<u32>,
    /// Trace every process with this name (new ones join while attached).
    #[arg(long, conflicts_with = "command")]
    comm: Option<String>,
    /// Keep only packets and segments of sockets with this local port (repeatable).
    /// Without it, --pid/--comm/CMD follow the sockets the traced processes read.
    #[arg(long = "port", value_name = "PORT")]
    ports: Vec<u16>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Also place a uprobe and uretprobe on BINARY:SYMBOL (repeatable; Rust names may be
    /// given mangled or demangled).
    #[arg(long = "uprobe", value_name = "BINARY:SYMBOL")]
    uprobes: Vec<String>,
    /// Event ring size in bytes (a power of two, at least 4096).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES)]
    ring_size: u32,
    /// Forward the probes' aya-log debug records to stderr.
    #[arg(long)]
    log: bool,
    /// Print the final summary as JSON.
    #[arg(long)]
    json: bool,
    /// Print every event as a line on stdout while attached.
    #[arg(long)]
    print: bool,
    /// Record every event to this trace file (`.wstrace`), or write an export at the end
    /// when the extension names one (`.pftrace`, `.json`, `.jsonl`, `.folded`, `.svg`).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Start this command and trace it (it runs once the probes are attached).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
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
        Command::Attach(args) => attach_command(args),
        Command::Record(args) => {
            anyhow::ensure!(args.output.is_some(), "record needs -o FILE");
            attach_command(args)
        }
        Command::Demo {
            duration,
            rate,
            size,
            out,
            loopback,
            plain,
        } => {
            privileges::require_tracing()?;
            let stop = stop_on_ctrl_c()?;
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
                    sent.messages,
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
        Command::DemoClient { ca, url } => {
            let n = demo::client(&url, ca.as_deref()).map_err(anyhow::Error::msg)?;
            println!("demo-client: received {n} messages");
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            file,
            format,
            output,
        } => {
            let format = match format {
                Some(f) => f,
                None => format_of(&output)?,
            };
            let trace =
                report::load(&file).with_context(|| format!("reading {}", file.display()))?;
            let correlation = correlate::correlate(&trace.events);
            write_export(
                format,
                &correlation,
                &trace.events,
                Some(&trace.header),
                &output,
            )?;
            eprintln!(
                "ws-trace: {} of {} messages exported to {} ({})",
                correlation.rows.len(),
                correlation.messages,
                output.display(),
                format.name()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            file,
            json,
            slowest,
        } => {
            let trace =
                report::load(&file).with_context(|| format!("reading {}", file.display()))?;
            let report = report::Report::build(&trace, slowest);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Profile(args) => profile_command(args),
        Command::Diff {
            base,
            new,
            output,
            json,
        } => diff_command(&base, &new, &output, json),
    }
}

fn attach_command(args: AttachArgs) -> anyhow::Result<ExitCode> {
    privileges::require_tracing()?;
    if args.log {
        env_logger_init();
    }
    let stop = stop_on_ctrl_c()?;
    let duration = args
        .duration
        .map(Duration::try_from_secs_f64)
        .transpose()
        .context("--duration must be a non-negative number of seconds")?;
    let mut target = Target::select(args.pid, args.comm.as_deref(), &args.command)?;
    let tgids = target.tgids()?;
    if let Target::Comm(name) = &target
        && tgids.is_empty()
    {
        eprintln!("ws-trace: no process named {name:?} yet; waiting for one");
    }
    let filtered = !matches!(target, Target::All);
    let mut kinds = ProbeKind::KERNEL.to_vec();
    if filtered {
        kinds.push(ProbeKind::ProcessFork);
    }
    let user_uprobes = args
        .uprobes
        .iter()
        .map(|spec| {
            let (binary, symbol) = symbols::parse_target(spec)?;
            let resolved = symbols::resolve(&binary, &symbol)?;
            Ok((binary, resolved.elf_name))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plan = Plan {
        load: LoadOptions {
            ring_bytes: args.ring_size,
            log: args.log,
            filter: Filter {
                tgids,
                ports: args.ports.iter().copied().collect(),
                learn_ports: filtered,
                follow_forks: filtered,
            },
        },
        kinds,
        engine_binaries: target.binaries()?.into_iter().collect(),
        user_uprobes,
    };
    let interactive = std::io::stderr().is_terminal() && !args.json;
    let opts = AttachOptions {
        plan,
        duration,
        refresh: interactive.then_some(Duration::from_secs(1)),
    };
    eprintln!(
        "ws-trace: attaching to {}{}; Ctrl-C to stop",
        target.describe(),
        duration.map_or(String::new(), |d| format!(" for {:.1} s", d.as_secs_f64()))
    );
    // `-o` names either a trace file, or (by its extension) an export written at the end.
    let export_format = args
        .output
        .as_deref()
        .and_then(|p| p.extension()?.to_str())
        .filter(|e| *e != "wstrace")
        .and_then(export::Format::from_extension);
    let mut kept: Vec<ws_trace::decode::Event> = Vec::new();
    let mut recorder = match args.output.as_ref().filter(|_| export_format.is_none()) {
        Some(path) => {
            let filters = TraceFilters {
                tgids: opts.plan.load.filter.tgids.iter().copied().collect(),
                ports: args.ports.clone(),
                comm: args.comm.clone(),
                command: (!args.command.is_empty()).then(|| args.command.clone()),
                ..TraceFilters::default()
            };
            Some(
                Recorder::create(path, &opts.plan, filters)
                    .with_context(|| format!("creating {}", path.display()))?,
            )
        }
        None => None,
    };
    let mut record_error = None;
    let summary = attach::run(
        &opts,
        &mut target,
        &stop,
        |s| {
            // Redraw the table in place on a terminal.
            eprintln!("\x1b[2J\x1b[H{s}");
        },
        |raw, event| {
            if args.print {
                println!("{event}");
            }
            if export_format.is_some() {
                kept.push(*event);
            }
            if let Some(r) = recorder.as_mut()
                && record_error.is_none()
                && let Err(e) = r.record(raw)
            {
                // Keep tracing; the error is reported when the session ends.
                record_error = Some(e);
            }
        },
    )
    .context("attach session")?;
    if let (Some(format), Some(path)) = (export_format, &args.output) {
        let correlation = correlate::correlate(&kept);
        write_export(format, &correlation, &kept, None, path)?;
        eprintln!(
            "ws-trace: {} of {} messages exported to {} ({})",
            correlation.rows.len(),
            correlation.messages,
            path.display(),
            format.name()
        );
    }
    if let (Some(r), Some(path)) = (recorder, &args.output) {
        let records = r.records();
        r.finish(&summary)
            .with_context(|| format!("finishing {}", path.display()))?;
        if let Some(e) = record_error {
            return Err(anyhow::Error::new(e).context(format!("recording to {}", path.display())));
        }
        eprintln!("ws-trace: {records} events recorded to {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{summary}");
    }
    eprintln!("ws-trace: probes detached");
    Ok(ExitCode::SUCCESS)
}

/// The export format an output file's extension names.
fn format_of(path: &std::path::Path) -> anyhow::Result<export::Format> {
    path.extension()
        .and_then(|e| e.to_str())
        .and_then(export::Format::from_extension)
        .with_context(|| {
            format!(
                "{}: say --format (the extension names no format: .pftrace .json .jsonl .folded .svg)",
                path.display()
            )
        })
}

/// Writes one export of `correlation` to `path`.
fn write_export(
    format: export::Format,
    correlation: &correlate::Correlation,
    events: &[ws_trace::decode::Event],
    header: Option<&ws_trace::tracefile::TraceHeader>,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let input = export::ExportInput {
        correlation,
        events,
        header,
    };
    export::export(format, &input, &mut out)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::flush(&mut out).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Sends `log` records (the probes' aya-log output) to stderr.
fn env_logger_init() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            // The probes' records; not aya's own loader diagnostics.
            !m.target().starts_with("aya")
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                eprintln!("[probe {}] {}", r.level(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}

#[derive(clap::Args)]
struct ProfileArgs {
    /// Profile this process (all its threads).
    #[arg(long, conflicts_with_all = ["comm", "command"])]
    pid: Option<u32>,
    /// Profile every process with this name (new ones join while profiling).
    #[arg(long, conflicts_with = "command")]
    comm: Option<String>,
    /// Stop after this many seconds (default: Ctrl-C, or when the target exits).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Samples per second on each CPU.
    #[arg(long, value_name = "HZ", default_value_t = 99)]
    freq: u64,
    /// Output file; the format follows the extension (.svg, .folded/.txt, .pb.gz/.pprof).
    /// With --off-cpu, OUT.offcpu.EXT and OUT.combined.EXT are written next to it.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "OUT",
        default_value = "profile.svg"
    )]
    output: PathBuf,
    /// Output format, when the extension does not say.
    #[arg(long, value_enum)]
    format: Option<ws_trace::profile::Format>,
    /// Also record time spent off CPU (blocked, waiting, preempted) per stack.
    #[arg(long)]
    off_cpu: bool,
    /// Also sample CPU % (user/system), RSS and context switches every SECS (default 1):
    /// OUT.series.csv and a chart OUT.series.svg.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
    series: Option<f64>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Start this command and profile it (it runs once sampling has started; it is
    /// stopped when --duration ends).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn profile_command(args: ProfileArgs) -> anyhow::Result<ExitCode> {
    use ws_trace::profile::{self, Format, ProfileOptions, View};
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
    let stop = stop_on_ctrl_c()?;
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
    let mut target = Target::select(args.pid, args.comm.as_deref(), &args.command)?;
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

fn diff_command(
    base: &std::path::Path,
    new: &std::path::Path,
    output: &std::path::Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use ws_trace::profile::diff;
    if diff::is_trace(base) || diff::is_trace(new) {
        anyhow::ensure!(
            diff::is_trace(base) && diff::is_trace(new),
            "diff compares two traces (.wstrace) or two profiles, not one of each"
        );
        let d = diff::compare_traces(base, new)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&d)?);
        } else {
            print!("{d}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let file =
        std::fs::File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let mut out = std::io::BufWriter::new(file);
    diff::write_flamegraph(base, new, &mut out)
        .with_context(|| format!("comparing {} with {}", base.display(), new.display()))?;
    std::io::Write::flush(&mut out).with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "ws-trace: differential flamegraph written to {}",
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A flag that Ctrl-C (SIGINT, SIGTERM) sets; the sessions poll it and detach.
fn stop_on_ctrl_c() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    Ok(stop)
}
