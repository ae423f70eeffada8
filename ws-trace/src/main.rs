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
            let stop = Arc::new(AtomicBool::new(false));
            {
                let stop = stop.clone();
                ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
                    .context("installing the Ctrl-C handler")?;
            }
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
            println!(
                "server sent {} messages ({} bytes); probe drops: {}",
                result.sent.messages,
                result.sent.bytes,
                result.summary.total_drops()
            );
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
    }
}

fn attach_command(args: AttachArgs) -> anyhow::Result<ExitCode> {
    privileges::require_tracing()?;
    if args.log {
        env_logger_init();
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let duration = args
        .duration
        .map(Duration::try_from_secs_f64)
        .transpose()
        .context("--duration must be a non-negative number of seconds")?;
    let mut target = if let Some(pid) = args.pid {
        Target::pid(pid)?
    } else if let Some(comm) = &args.comm {
        Target::Comm(comm.clone())
    } else if !args.command.is_empty() {
        Target::spawn(&args.command)?
    } else {
        Target::All
    };
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
