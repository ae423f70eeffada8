//! `ws-trace top`: the target's per-stage latencies, drops and BPF cost, one screen per
//! interval (the view, its data and the aggregate session live in the library's `top`
//! module).
use std::{
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use ws_trace::{
    attach::{self, AttachOptions, Hooks, Summary},
    decode::Event,
    privileges,
    stats::StageSnapshot,
    top::{
        self, Frame, FrameView, LiveStages, Meter, Tally,
        aggregate::IntervalHooks,
        render::{AGGREGATE_TOTAL_LABEL, TOTAL_LABEL},
        term::{self, Keys, TerminalGuard},
    },
};

use super::args::TopArgs;

/// Where frames go.
enum View {
    /// The terminal, redrawn in place.
    Screen(TerminalGuard),
    /// Plain text on stdout, one table per interval.
    Plain,
}

struct TopHooks<'a> {
    /// Full mode's kept events and their joined rows.
    live: LiveStages,
    meter: Meter,
    view: View,
    keys: Option<Arc<Keys>>,
    /// What is traced, for the screen shown before the first interval ends.
    target: String,
    drawn: bool,
    text: String,
    error: Option<std::io::Error>,
    stop: &'a AtomicBool,
}

impl TopHooks<'_> {
    /// Shows the last frame (before the first: the target and an empty table).
    fn show(&mut self) {
        let number = self.meter.frame().number;
        let result = match &mut self.view {
            View::Screen(guard) => {
                let waiting;
                let frame = if number == 0 {
                    waiting = Frame {
                        target: self.target.clone(),
                        ..self.meter.frame().clone()
                    };
                    &waiting
                } else {
                    self.meter.frame()
                };
                guard
                    .terminal()
                    .draw(|f| f.render_widget(FrameView(frame), f.area()))
                    .map(|_| ())
            }
            View::Plain => {
                self.text.clear();
                // Formatting into a String cannot fail.
                let _ = top::write_frame(&mut self.text, self.meter.frame());
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", self.text).and_then(|()| out.flush())
            }
        };
        if let Err(e) = result {
            self.error.get_or_insert(e);
            self.stop.store(true, Ordering::Relaxed);
        }
        self.drawn = true;
    }

    fn redraw_if_needed(&mut self) {
        let resized = self
            .keys
            .as_ref()
            .is_some_and(|k| k.resized.swap(false, Ordering::Relaxed));
        if matches!(self.view, View::Screen(_)) && (resized || !self.drawn) {
            self.show();
        }
    }
}

/// Full mode: every event is kept for the join; each refresh closes an interval.
impl Hooks for TopHooks<'_> {
    fn event(&mut self, _raw: &[u8], event: &Event) {
        self.live.push(event);
    }

    fn refresh(&mut self, summary: &Summary) {
        self.live.close(top::live::monotonic_ns());
        self.meter.update(
            summary,
            self.live.snapshot(),
            Tally::Joined(self.live.counts()),
        );
        self.show();
    }

    fn idle(&mut self) {
        self.redraw_if_needed();
    }
}

/// Aggregate mode: each interval brings the kernel's and the engine's histograms.
impl IntervalHooks for TopHooks<'_> {
    fn interval(&mut self, summary: &Summary, stages: &StageSnapshot, tally: Tally) {
        self.meter.update(summary, stages, tally);
        self.show();
    }

    fn idle(&mut self) {
        self.redraw_if_needed();
    }
}

/// Runs the view until q, Ctrl-C, SIGTERM, `--duration` or the target's exit.
pub fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    privileges::require_tracing()?;
    if !args.full {
        anyhow::ensure!(
            args.target.uprobes.is_empty() && !args.target.engine_uprobes,
            "aggregate mode places no uprobes: use --full with --uprobe or --engine-uprobes"
        );
    }
    if args.target.log {
        super::attach::env_logger_init();
    }
    let stop = super::stop_on_ctrl_c()?;
    let duration = super::attach::duration(&args.target)?;
    let interval = Duration::try_from_secs_f64(args.interval)
        .ok()
        .filter(|d| *d >= Duration::from_millis(100))
        .context("--interval must be at least 0.1 seconds")?;
    let screen = !args.plain && std::io::stdout().is_terminal();
    // A command started under the full-screen view would write over it: its output goes
    // to a file instead.
    let log = (screen && !args.target.command.is_empty())
        .then(|| std::env::temp_dir().join(format!("ws-trace-top-{}.log", std::process::id())));
    let output = log
        .as_ref()
        .map(|path| {
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
        })
        .transpose()?;
    let (mut target, plan) = super::attach::prepare(&args.target, output)?;
    if let Some(path) = &log {
        eprintln!("ws-trace: the command's output goes to {}", path.display());
    }
    let opts = AttachOptions {
        plan,
        duration,
        refresh: Some(interval),
    };
    eprintln!(
        "ws-trace: attaching to {}{} ({} mode); {} to stop",
        target.describe(),
        duration.map_or(String::new(), |d| format!(" for {:.1} s", d.as_secs_f64())),
        if args.full { "full" } else { "aggregate" },
        if screen { "q" } else { "Ctrl-C" }
    );
    let view = if screen {
        View::Screen(TerminalGuard::enter().context("setting up the terminal")?)
    } else {
        View::Plain
    };
    let key_reader = screen.then(|| term::read_keys(stop.clone()));
    let meter = if args.full {
        Meter::new(top::live::source(), TOTAL_LABEL, args.connections)
    } else {
        Meter::new(
            top::aggregate::source(),
            AGGREGATE_TOTAL_LABEL,
            args.connections,
        )
    };
    let mut hooks = TopHooks {
        live: LiveStages::new(true),
        meter,
        view,
        keys: key_reader.as_ref().map(|(k, _)| k.clone()),
        target: target.describe(),
        drawn: false,
        text: String::new(),
        error: None,
        stop: &stop,
    };
    // The final readings: the totals, the stages and counts up to now, whether the
    // target exited.
    let result: anyhow::Result<(Summary, StageSnapshot, Tally, bool)> = if args.full {
        attach::run_with(&opts, &mut target, &stop, &mut hooks)
            .map(|summary| {
                // Everything drained: the rest of the last interval, up to now.
                hooks
                    .live
                    .close(top::live::monotonic_ns() + top::live::SETTLE_NS);
                let exited = summary.notes.iter().any(|n| n.ends_with("exited"));
                let stages = hooks.live.snapshot().clone();
                let tally = Tally::Joined(hooks.live.counts());
                (summary, stages, tally, exited)
            })
            .context("top session")
    } else {
        top::aggregate::run(&opts, &mut target, &stop, &mut hooks)
            .map(|e| (e.summary, e.stages, e.tally, e.target_exited))
            .context("top session (aggregate mode)")
    };
    // The key reader ends once stop is set; the terminal is restored when the view drops.
    stop.store(true, Ordering::Relaxed);
    // In raw mode Ctrl-C reached only this process: a command started here ends with the
    // view, as it would with Ctrl-C in its terminal.
    let ended = screen && target.end_spawned(Duration::from_secs(2));
    let keys_result = key_reader.map(|(_, handle)| handle.join());
    let TopHooks {
        view,
        mut meter,
        error,
        ..
    } = hooks;
    let was_screen = matches!(view, View::Screen(_));
    drop(view);
    let (summary, stages, tally, exited) = result?;
    if let Some(e) = error {
        return Err(e).context("drawing the view");
    }
    match keys_result {
        Some(Ok(Err(e))) => return Err(e).context("reading keys"),
        Some(Err(_)) => anyhow::bail!("the key reader panicked"),
        _ => {}
    }
    let mut text = String::new();
    if was_screen {
        // The last screen stays readable after the view closes.
        if meter.frame().number > 0 {
            let _ = top::write_frame(&mut text, meter.frame());
        }
    } else {
        // A pipe gets every message: the rest of the last interval.
        let _ = top::write_frame(&mut text, meter.update(&summary, &stages, tally));
    }
    if !text.is_empty() {
        println!("{text}");
    }
    if exited {
        eprintln!("ws-trace: {} exited", target.describe());
    }
    if ended {
        eprintln!("ws-trace: ended {} (SIGINT)", target.describe());
    }
    eprintln!("ws-trace: probes detached");
    if let Some(path) = &log {
        eprintln!("ws-trace: the command's output is in {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
