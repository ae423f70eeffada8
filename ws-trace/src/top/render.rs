//! Drawing a [`Frame`]: a ratatui widget for the terminal view, plain text for pipes and
//! for `attach`'s live table. Both show the same columns.
use std::fmt::{self, Write as _};

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Rect},
    style::{Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Paragraph, Row, Table, Widget},
};

use super::{Frame, Tally};
use crate::correlate::Stamp;
use crate::stats::{ConnectionStats, LogHistogram, StageSnapshot};

/// Width of the stage column.
const STAGE_WIDTH: usize = 40;

/// A duration in ns with a unit that keeps 2-4 significant digits.
pub fn fmt_ns(ns: u64) -> String {
    let mut s = String::new();
    push_ns(&mut s, ns);
    s
}

fn push_ns(out: &mut String, ns: u64) {
    let v = ns as f64;
    // Writing to a String cannot fail.
    let _ = match ns {
        0..1_000 => write!(out, "{ns} ns"),
        1_000..1_000_000 => write!(out, "{:.1} µs", v / 1e3),
        1_000_000..1_000_000_000 => write!(out, "{:.2} ms", v / 1e6),
        _ => write!(out, "{:.2} s", v / 1e9),
    };
}

/// count, p50, p99, max of a histogram ("-" for the quantiles of an empty one).
fn quantiles(h: &LogHistogram) -> [String; 4] {
    if h.count() == 0 {
        return [0.to_string(), "-".into(), "-".into(), "-".into()];
    }
    [
        h.count().to_string(),
        fmt_ns(h.quantile(0.5)),
        fmt_ns(h.quantile(0.99)),
        fmt_ns(h.max()),
    ]
}

/// The end-to-end row's label in full mode (messages: to the callback's end; reads of
/// clients not on ws-engine: to the read's return).
pub const TOTAL_LABEL: &str = "total (nic → callback_done / read)";

/// The end-to-end row's label in aggregate mode (every row is a read).
pub const AGGREGATE_TOTAL_LABEL: &str = "total (nic → read return)";

/// What both end-to-end labels start with.
pub const TOTAL_PREFIX: &str = "total (nic → ";

/// The stage rows of a snapshot, in pipeline order, then the end-to-end row: label and
/// [count, p50, p99, max].
fn stage_rows<'a>(
    s: &'a StageSnapshot,
    total_label: &'static str,
) -> impl Iterator<Item = (&'static str, [String; 4])> + 'a {
    s.stages
        .iter()
        .filter(|st| st.hist.count() > 0)
        .map(|st| (st.stamp.stage(), quantiles(&st.hist)))
        .chain(std::iter::once((total_label, quantiles(&s.total))))
}

/// A connection's label: its ports (local → remote) when known, else its socket cookie.
fn connection_label(c: &ConnectionStats) -> String {
    match c.ports {
        (0, 0) => format!("cookie {}", c.cookie),
        (l, r) => format!(":{l} ← :{r} (cookie {})", c.cookie),
    }
}

/// The busiest connections of the interval, at most `n`.
fn busiest(s: &StageSnapshot, n: usize) -> Vec<&ConnectionStats> {
    let mut conns: Vec<&ConnectionStats> = s
        .connections
        .iter()
        .filter(|c| c.total.count() > 0)
        .collect();
    conns.sort_by_key(|c| (std::cmp::Reverse(c.total.count()), c.cookie));
    conns.truncate(n);
    conns
}

/// The per-stage table of an interval as text: one line per stage seen, then the end to
/// end line labelled `total_label` (p50/p99/max of the interval).
pub fn write_stage_table(
    out: &mut impl fmt::Write,
    s: &StageSnapshot,
    total_label: &'static str,
) -> fmt::Result {
    writeln!(
        out,
        "{:<STAGE_WIDTH$} {:>9} {:>10} {:>10} {:>10}",
        "stage (last interval)", "count", "p50", "p99", "max"
    )?;
    for (label, [n, p50, p99, max]) in stage_rows(s, total_label) {
        writeln!(
            out,
            "{label:<STAGE_WIDTH$} {n:>9} {p50:>10} {p99:>10} {max:>10}"
        )?;
    }
    Ok(())
}

/// A whole frame as plain text (the view when stdout is not a terminal).
pub fn write_frame(out: &mut impl fmt::Write, f: &Frame) -> fmt::Result {
    writeln!(
        out,
        "ws-trace top: {} · interval #{} ({:.2} s, {:.1} s attached) · {}",
        f.target, f.number, f.interval_s, f.elapsed_s, f.source
    )?;
    write_stage_table(out, &f.stages, f.total_label)?;
    writeln!(out, "{}", summary_line(f))?;
    if let Some(line) = callbacks_line(f) {
        writeln!(out, "{line}")?;
    }
    let conns = busiest(&f.stages, f.max_connections);
    if !conns.is_empty() {
        writeln!(
            out,
            "{:<STAGE_WIDTH$} {:>9} {:>10} {:>10} {:>10}",
            "connection (end to end)", "count", "p50", "p99", "max"
        )?;
        for c in conns {
            let [n, p50, p99, max] = quantiles(&c.total);
            writeln!(
                out,
                "{:<STAGE_WIDTH$} {n:>9} {p50:>10} {p99:>10} {max:>10}",
                connection_label(c)
            )?;
        }
    }
    writeln!(
        out,
        "{:<STAGE_WIDTH$} {:>9} {:>10} {:>10} {:>10}",
        "probe", "events", "runs", "ns/run", "BPF CPU %"
    )?;
    for p in &f.programs {
        let [events, runs, ns, pct] = program_cells(f, p);
        writeln!(
            out,
            "{:<STAGE_WIDTH$} {events:>9} {runs:>10} {ns:>10} {pct:>10}",
            p.probe
        )?;
    }
    for note in &f.notes {
        writeln!(out, "note: {note}")?;
    }
    Ok(())
}

fn program_cells(f: &Frame, p: &super::ProgramRow) -> [String; 4] {
    let (ns, pct) = if f.no_bpf_stats {
        ("-".to_string(), "-".to_string())
    } else if p.runs == 0 {
        ("-".to_string(), format!("{:.3}", p.cpu_pct))
    } else {
        (
            format!("{:.0}", p.run_ns as f64 / p.runs as f64),
            format!("{:.3}", p.cpu_pct),
        )
    };
    [p.events.to_string(), p.runs.to_string(), ns, pct]
}

/// Messages, joins, drops and BPF CPU of the interval, in one line.
pub fn summary_line(f: &Frame) -> String {
    let (messages, costs) = summary_parts(f);
    format!("{messages} · {costs}")
}

/// The engine's callbacks of the interval by kind (the tracer sees one kind, `receive`:
/// the message callback, from its callback → callback_done stage): calls, time in them,
/// and that time as a share of one CPU.
pub fn callbacks_line(f: &Frame) -> Option<String> {
    let h = f.stages.stage(Stamp::CallbackDone)?;
    if h.count() == 0 {
        return None;
    }
    let share = if f.window_s > 0.0 {
        h.sum() as f64 / 1e9 / f.window_s * 100.0
    } else {
        0.0
    };
    Some(format!(
        "callbacks: receive {} · {} in callbacks ({share:.2} % of a CPU), mean {}",
        h.count(),
        fmt_ns(h.sum()),
        fmt_ns(h.sum() / h.count()),
    ))
}

/// The messages of the interval; its drops, misses and BPF CPU.
fn summary_parts(f: &Frame) -> (String, String) {
    let per_s = |n: u64| {
        if f.window_s > 0.0 {
            n as f64 / f.window_s
        } else {
            0.0
        }
    };
    let bpf = if f.no_bpf_stats {
        "BPF CPU unknown (BPF stats off)".to_string()
    } else {
        format!("BPF CPU {:.3} %", f.bpf_cpu_pct())
    };
    let messages = match f.tally {
        Tally::Joined(m) => {
            let mut line = format!(
                "messages {} ({:.0}/s), joined {}, unjoined {}",
                m.messages,
                per_s(m.messages),
                m.joined,
                m.messages.saturating_sub(m.joined),
            );
            if m.not_kept > 0 {
                let _ = write!(line, " ({} events over the join's cap)", m.not_kept);
            }
            line
        }
        Tally::Aggregate(a) => {
            let mut line = format!(
                "messages {} ({:.0}/s) · reads {}, with kernel stages {}, without {}",
                a.messages,
                per_s(a.messages),
                a.reads,
                a.rows,
                a.reads.saturating_sub(a.rows),
            );
            if a.sample_shift > 0 {
                let _ = write!(
                    line,
                    " · engine stages from 1 message in {} ({} records)",
                    1u64 << a.sample_shift,
                    a.records
                );
            }
            if a.unsampled > 0 {
                let _ = write!(
                    line,
                    " · {} engine records outside the sample, left out (an engine that does not sample?)",
                    a.unsampled
                );
            }
            line
        }
    };
    (
        messages,
        format!(
            "drops: ring {}, stamp channel {} · missed {} · {bpf}",
            f.ring_drops, f.channel_drops, f.misses,
        ),
    )
}

/// A [`Frame`] as a ratatui widget: title, the stage table, connections, the probes.
pub struct FrameView<'a>(pub &'a Frame);

impl Widget for FrameView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let f = self.0;
        let stage_lines = f
            .stages
            .stages
            .iter()
            .filter(|s| s.hist.count() > 0)
            .count()
            + 1;
        let conns = busiest(&f.stages, f.max_connections);
        let conn_height = if conns.is_empty() {
            0
        } else {
            conns.len() as u16 + 3
        };
        // Top to bottom in order of importance: what does not fit is cut from the bottom
        // (the probes first), the footer keeps the last line.
        let foot = Rect {
            y: area.bottom().saturating_sub(1),
            height: area.height.min(1),
            ..area
        };
        let mut rest = Rect {
            height: area.height.saturating_sub(1),
            ..area
        };
        let mut take = |wanted: u16| {
            let height = wanted.min(rest.height);
            let r = Rect { height, ..rest };
            rest.y += height;
            rest.height -= height;
            r
        };
        let callbacks = callbacks_line(f);
        let head = take(3 + u16::from(callbacks.is_some()));
        let stages = take(stage_lines as u16 + 3);
        let connections = take(conn_height);
        let programs = take(f.programs.len() as u16 + 3);

        let bold = Style::new().add_modifier(Modifier::BOLD);
        let (messages, costs) = summary_parts(f);
        let mut head_lines = vec![
            Line::from(vec![
                Span::styled(format!("ws-trace top — {}", f.target), bold),
                Span::raw(format!(
                    "   interval #{} · {:.2} s · {:.0} s attached",
                    f.number, f.interval_s, f.elapsed_s
                )),
            ]),
            Line::from(messages),
            Line::from(costs),
        ];
        head_lines.extend(callbacks.map(Line::from));
        Paragraph::new(head_lines).render(head, buf);

        let widths = [
            Constraint::Length(STAGE_WIDTH as u16),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
        ];
        let header = |first: &'static str| {
            Row::new([first, "count", "p50", "p99", "max"].map(|h| {
                if h == first {
                    Line::from(h)
                } else {
                    Line::from(h).right_aligned()
                }
            }))
            .style(bold)
        };
        let cells = |label: String, q: [String; 4]| {
            let [n, p50, p99, max] = q;
            Row::new([
                Line::from(label),
                Line::from(n).right_aligned(),
                Line::from(p50).right_aligned(),
                Line::from(p99).right_aligned(),
                Line::from(max).right_aligned(),
            ])
        };
        let rows: Vec<Row> = stage_rows(&f.stages, f.total_label)
            .map(|(label, q)| {
                let row = cells(label.to_string(), q);
                if label == f.total_label {
                    row.style(bold)
                } else {
                    row
                }
            })
            .collect();
        Table::new(rows, widths)
            .header(header("stage"))
            .block(Block::bordered().title(format!(" stages over {:.2} s ", f.window_s)))
            .render(stages, buf);

        if !conns.is_empty() {
            let rows: Vec<Row> = conns
                .iter()
                .map(|c| cells(connection_label(c), quantiles(&c.total)))
                .collect();
            Table::new(rows, widths)
                .header(header("connection (end to end)"))
                .block(Block::bordered().title(" connections "))
                .render(connections, buf);
        }

        let rows: Vec<Row> = f
            .programs
            .iter()
            .map(|p| {
                let [events, runs, ns, pct] = program_cells(f, p);
                Row::new([
                    Line::from(p.probe),
                    Line::from(events).right_aligned(),
                    Line::from(runs).right_aligned(),
                    Line::from(ns).right_aligned(),
                    Line::from(pct).right_aligned(),
                ])
            })
            .collect();
        Table::new(rows, widths)
            .header(
                Row::new([
                    Line::from("probe"),
                    Line::from("events").right_aligned(),
                    Line::from("runs").right_aligned(),
                    Line::from("ns/run").right_aligned(),
                    Line::from("BPF CPU %").right_aligned(),
                ])
                .style(bold),
            )
            .block(Block::bordered().title(" BPF programs, last interval "))
            .render(programs, buf);

        let note = f
            .notes
            .last()
            .map_or(String::new(), |n| format!(" · note: {n}"));
        Line::from(vec![
            " q ".reversed(),
            Span::raw(format!(" quit · {}{note}", f.source)),
        ])
        .render(foot, buf);
    }
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::correlate::Stamp;
    use crate::stats::StageHistogram;
    use crate::top::{JoinCounts, ProgramRow};

    fn hist(values: impl IntoIterator<Item = u64>) -> LogHistogram {
        let mut h = LogHistogram::new();
        values.into_iter().for_each(|v| h.record(v));
        h
    }

    /// An interval of 1 000 messages: tcp 1-1000 ns, the callback 10-10 000 µs (its p99
    /// near 9.9 ms), one connection, two probes.
    fn frame() -> Frame {
        let stages = StageSnapshot {
            at_ns: 5,
            stages: vec![
                StageHistogram {
                    stamp: Stamp::Tcp,
                    hist: hist(1..=1_000),
                },
                StageHistogram {
                    stamp: Stamp::CallbackDone,
                    hist: hist((1..=1_000).map(|v| v * 10_000)),
                },
            ],
            total: hist((1..=1_000).map(|v| v * 10_000 + 2_000)),
            connections: vec![ConnectionStats {
                cookie: 42,
                ports: (40_000, 8_080),
                total: hist((1..=1_000).map(|v| v * 10_000 + 2_000)),
            }],
        };
        Frame {
            target: "pid 1234".into(),
            source: "full mode".into(),
            number: 3,
            interval_s: 1.0,
            elapsed_s: 3.0,
            window_s: 1.0,
            stages,
            tally: Tally::Joined(JoinCounts {
                messages: 1_000,
                joined: 998,
                not_kept: 0,
            }),
            total_label: TOTAL_LABEL,
            ring_drops: 7,
            channel_drops: 0,
            misses: 0,
            programs: vec![
                ProgramRow {
                    probe: "tcp_probe",
                    events: 1_000,
                    runs: 1_200,
                    run_ns: 600_000,
                    cpu_pct: 0.06,
                },
                ProgramRow {
                    probe: "sched_switch",
                    events: 40,
                    runs: 9_000,
                    run_ns: 1_800_000,
                    cpu_pct: 0.18,
                },
            ],
            no_bpf_stats: false,
            notes: vec![],
            max_connections: 4,
        }
    }

    fn line_with<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
        let line = text
            .lines()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("no line with {label:?} in\n{text}"));
        line.split("  ")
            .map(|c| c.trim_matches(|ch: char| ch == '│' || ch.is_whitespace()))
            .filter(|c| !c.is_empty())
            .collect()
    }

    fn screen(f: &Frame, w: u16, h: u16) -> String {
        let mut term = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
        term.draw(|fr| fr.render_widget(FrameView(f), fr.area()))
            .expect("draw");
        let buf = term.backend().buffer();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn durations_keep_their_unit_readable() {
        assert_eq!(fmt_ns(850), "850 ns");
        assert_eq!(fmt_ns(12_345), "12.3 µs");
        assert_eq!(fmt_ns(1_250_000), "1.25 ms");
        assert_eq!(fmt_ns(3_000_000_000), "3.00 s");
    }

    #[test]
    fn the_screen_shows_each_stage_with_its_interval_quantiles() {
        let f = frame();
        let text = screen(&f, 120, 30);
        assert!(text.contains("ws-trace top — pid 1234"), "{text}");
        assert!(text.contains("interval #3"), "{text}");
        let tcp = line_with(&text, Stamp::Tcp.stage());
        // 1000 values 1..=1000 ns: p50 ≈ 500 ns, p99 ≈ 990 ns, max 1000 ns (within 3 %).
        assert_eq!(tcp[1], "1000", "{tcp:?}");
        let ns = |c: &str| -> f64 {
            let (v, unit) = c.split_once(' ').expect("value and unit");
            let v: f64 = v.parse().expect("number");
            v * match unit {
                "ns" => 1.0,
                "µs" => 1e3,
                "ms" => 1e6,
                _ => 1e9,
            }
        };
        for (cell, exact) in [(tcp[2], 500.0), (tcp[3], 990.0), (tcp[4], 1_000.0)] {
            assert!(
                (ns(cell) - exact).abs() / exact <= 0.04,
                "{cell} vs {exact}"
            );
        }
        let cb = line_with(&text, Stamp::CallbackDone.stage());
        assert!((ns(cb[3]) - 9.9e6).abs() / 9.9e6 <= 0.04, "{cb:?}");
        let total = line_with(&text, TOTAL_LABEL);
        assert_eq!(total[1], "1000");
        let conn = line_with(&text, ":40000 ← :8080");
        assert_eq!(conn[1], "1000");
        let sw = line_with(&text, "sched_switch");
        assert_eq!(sw[1..], ["40", "9000", "200", "0.180"], "{sw:?}");
        assert!(text.contains("unjoined 2"), "{text}");
        // 1000 callbacks of 10..10 000 µs: 5.005 s in callbacks over a 1 s window.
        assert!(
            text.contains("callbacks: receive 1000 · 5.00 s in callbacks (500.50 % of a CPU)"),
            "{text}"
        );
        assert!(text.contains("drops: ring 7"), "{text}");
        assert!(text.contains("BPF CPU 0.240 %"), "{text}");
    }

    #[test]
    fn the_plain_view_has_the_same_numbers_as_the_screen() {
        let f = frame();
        let mut text = String::new();
        write_frame(&mut text, &f).expect("format");
        let on_screen = screen(&f, 120, 30);
        for label in [
            Stamp::Tcp.stage(),
            Stamp::CallbackDone.stage(),
            TOTAL_LABEL,
            "sched_switch",
        ] {
            assert_eq!(
                line_with(&text, label),
                line_with(&on_screen, label),
                "{label}"
            );
        }
        assert!(text.contains("interval #3"), "{text}");
    }

    #[test]
    fn an_empty_interval_shows_zero_messages_and_no_quantiles() {
        let f = Frame {
            stages: StageSnapshot::default(),
            tally: Tally::default(),
            ..frame()
        };
        let text = screen(&f, 120, 30);
        let total = line_with(&text, TOTAL_LABEL);
        assert_eq!(total[1..], ["0", "-", "-", "-"], "{total:?}");
        assert!(!text.contains(Stamp::Tcp.stage()), "{text}");
        assert!(!text.contains("connections"), "{text}");
    }

    #[test]
    fn aggregate_mode_counts_reads_and_says_when_the_engine_is_sampled() {
        let mut f = Frame {
            tally: Tally::Aggregate(crate::top::AggregateTally {
                messages: 4_000,
                records: 500,
                sample_shift: 3,
                unsampled: 0,
                reads: 3_900,
                rows: 3_890,
            }),
            total_label: AGGREGATE_TOTAL_LABEL,
            ..frame()
        };
        let text = screen(&f, 160, 30);
        assert!(
            text.contains("reads 3900, with kernel stages 3890, without 10"),
            "{text}"
        );
        assert!(
            text.contains("engine stages from 1 message in 8 (500 records)"),
            "{text}"
        );
        assert_eq!(line_with(&text, AGGREGATE_TOTAL_LABEL)[1], "1000");
        f.tally = Tally::Aggregate(crate::top::AggregateTally {
            sample_shift: 0,
            ..Default::default()
        });
        assert!(!screen(&f, 160, 30).contains("1 message in"));
    }

    #[test]
    fn a_short_terminal_cuts_the_probes_before_the_stages() {
        let f = frame();
        // Title 4, stages 3 + 3 (borders, header), connections 4, footer 1: 4 lines are
        // left for the probes' box, one probe row.
        let text = screen(&f, 120, 19);
        assert!(text.contains(TOTAL_LABEL), "{text}");
        assert!(text.contains("tcp_probe"), "{text}");
        assert!(!text.contains("sched_switch"), "{text}");
        assert!(
            text.lines().last().is_some_and(|l| l.contains("quit")),
            "{text}"
        );
    }

    #[test]
    fn a_small_terminal_does_not_panic() {
        let f = frame();
        for (w, h) in [(20, 5), (1, 1), (80, 10)] {
            let _ = screen(&f, w, h);
        }
    }
}
