//! `ws-trace attach` and `ws-trace record`: a live tracing session.
use std::sync::atomic::Ordering;
use std::{cell::RefCell, io::IsTerminal as _, process::ExitCode, time::Duration};

use anyhow::Context as _;
use ws_abi::ProbeKind;
use ws_trace::{
    attach::{self, AttachOptions, EngineRecords, Plan},
    correlate,
    decode::Event,
    export, privileges,
    probes::{Filter, LoadOptions},
    record::Recorder,
    symbols,
    target::Target,
    top::{self, LiveStages, Meter},
    tracefile::TraceFilters,
};

use super::args::{AttachArgs, TargetArgs};

/// `record`: `attach` with a trace file, which it requires.
pub fn record(args: AttachArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.output.is_some(), "record needs -o FILE");
    run(args)
}

/// The target and the plan of probes `args` ask for (shared by `attach`, `record` and
/// `top`); says on stderr when a named target has no process yet. A command started here
/// writes its stdout and stderr to `output` when given.
pub(super) fn prepare(
    args: &TargetArgs,
    output: Option<std::fs::File>,
) -> anyhow::Result<(Target, Plan)> {
    let engine_records = if args.engine_uprobes {
        EngineRecords::Uprobes
    } else {
        EngineRecords::Channel
    };
    let channel = engine_records == EngineRecords::Channel;
    let target = match output {
        Some(out) if args.pid.is_none() && args.comm.is_none() && args.cgroup.is_none() => {
            Target::spawn_with_output(&args.command, channel, Some(out))?
        }
        _ => Target::select_with(
            args.pid,
            args.comm.as_deref(),
            args.cgroup.as_deref(),
            &args.command,
            channel,
        )?,
    };
    let tgids = target.tgids()?;
    if tgids.is_empty() {
        match &target {
            Target::Comm(name) => {
                eprintln!("ws-trace: no process named {name:?} yet; waiting for one")
            }
            Target::Cgroup(dir) => eprintln!(
                "ws-trace: no process in cgroup {} yet; waiting for one",
                dir.display()
            ),
            _ => {}
        }
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
            let (binary, symbol) = symbols::parse_target_in(spec, &tgids)?;
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
            force_fallbacks: ws_trace::probes::fallbacks_forced_by_env(),
            aggregate: false,
            stream: false,
            idle: false,
        },
        kinds,
        engine_records,
        engine_binaries: target.binaries()?.into_iter().collect(),
        user_uprobes,
    };
    Ok((target, plan))
}

/// `--duration` as a [`Duration`].
pub(super) fn duration(args: &TargetArgs) -> anyhow::Result<Option<Duration>> {
    args.duration
        .map(Duration::try_from_secs_f64)
        .transpose()
        .context("--duration must be a non-negative number of seconds")
}

/// Attaches the probes to the target until Ctrl-C, `--duration` or its exit; prints the
/// summary, and writes the trace file or export `-o` names.
pub fn run(args: AttachArgs) -> anyhow::Result<ExitCode> {
    privileges::require_tracing()?;
    if args.target.log {
        env_logger_init();
    }
    let stop = super::stop_on_ctrl_c()?;
    let duration = duration(&args.target)?;
    let (mut target, plan) = prepare(&args.target, None)?;
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
    let mut kept: Vec<Event> = Vec::new();
    let mut recorder = match args.output.as_ref().filter(|_| export_format.is_none()) {
        Some(path) => {
            let filters = TraceFilters {
                tgids: opts.plan.load.filter.tgids.iter().copied().collect(),
                ports: args.target.ports.clone(),
                comm: args.target.comm.clone(),
                command: (!args.target.command.is_empty()).then(|| args.target.command.clone()),
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
    // On a terminal, the table also shows the stages of the last interval: the events are
    // kept for a moment and joined once per refresh (the same per-message join as report).
    let live = RefCell::new(interactive.then(|| {
        (
            LiveStages::new(false),
            Meter::new(top::live::source(), top::render::TOTAL_LABEL, 0),
        )
    }));
    let summary = attach::run(
        &opts,
        &mut target,
        &stop,
        |s| {
            let mut table = String::new();
            if let Some((stages, meter)) = live.borrow_mut().as_mut() {
                stages.close(top::live::monotonic_ns());
                let frame = meter.update(s, stages.snapshot(), top::Tally::Joined(stages.counts()));
                table.push('\n');
                // Formatting into a String cannot fail.
                let _ = top::write_stage_table(&mut table, &frame.stages, frame.total_label);
                table.push_str(&top::render::summary_line(frame));
            }
            // Redraw the table in place on a terminal.
            eprintln!("\x1b[2J\x1b[H{s}\n{table}");
        },
        |raw, event| {
            if let Some((stages, _)) = live.borrow_mut().as_mut() {
                stages.push(event);
            }
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
                // A failed write (a full disk) ends the session: the probes detach and the
                // file keeps every block written before.
                record_error = Some(e);
                stop.store(true, Ordering::Relaxed);
            }
        },
    )
    .context("attach session")?;
    if let (Some(format), Some(path)) = (export_format, &args.output) {
        let correlation = correlate::correlate(&kept);
        super::export::write_export(format, &correlation, &kept, None, path)?;
        super::export::say_exported(&correlation, path, format);
    }
    if let (Some(r), Some(path)) = (recorder, &args.output) {
        let records = r.records();
        if let Some(e) = record_error {
            eprintln!("ws-trace: probes detached");
            anyhow::bail!(
                "{e}; recording stopped after {records} records ({} of them in the file)",
                r.records_in_file()
            );
        }
        r.finish(&summary)
            .with_context(|| format!("finishing {}", path.display()))?;
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

/// Sends `log` records (the probes' aya-log output) to stderr.
pub(super) fn env_logger_init() {
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
