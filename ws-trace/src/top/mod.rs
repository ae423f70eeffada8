//! `ws-trace top`: a live view of a traced target, one screen per interval.
//!
//! Each interval is the difference of two cumulative readings: [`StageSnapshot::since`]
//! for the stage histograms, and the session's [`Summary`] counters for events, drops and
//! each program's BPF run time. [`Meter`] turns two readings into a [`Frame`] (what one
//! screen shows); [`render`] draws a frame, as a ratatui widget on a terminal or as plain
//! text (the view when stdout is not a terminal, and `attach`'s live table); [`term`]
//! owns the terminal while the view is up.
//!
//! The stage histograms come from the in-kernel aggregation ([`aggregate`], the default:
//! nothing per event crosses the ring; kernel stages per read, engine stages per message)
//! or from [`LiveStages`] (full mode, `--full`: every event reaches user space and each
//! interval's messages are joined there, as `report` joins a recording).
pub mod aggregate;
pub mod live;
pub mod render;
pub mod term;

pub use live::{JoinCounts, LiveStages};
pub use render::{FrameView, write_frame, write_stage_table};

use crate::{attach::Summary, stats::StageSnapshot};

/// Counts of messages (and reads) of a session, cumulative; the kind depends on the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tally {
    /// Full mode: messages whose callback ran, and those joined into a row.
    Joined(JoinCounts),
    /// Aggregate mode: the engine's messages, the kernel's reads and its rows.
    Aggregate(AggregateTally),
}

impl Default for Tally {
    fn default() -> Self {
        Tally::Joined(JoinCounts::default())
    }
}

/// Aggregate mode's counts (see `docs/design.md`, "Aggregate mode").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggregateTally {
    /// Engine messages: the count of the engine's last stage histogram, where each sampled
    /// message weighs `1 << shift` (exact while every message is sampled).
    pub messages: u64,
    /// Engine records drained (sampled messages, each once).
    pub records: u64,
    /// The engine sample in force when read: one message in `1 << sample_shift`.
    pub sample_shift: u32,
    /// Engine records that arrived outside the sample (an engine that does not sample),
    /// left out of the stages.
    pub unsampled: u64,
    /// Reads by traced threads of traced sockets that returned data.
    pub reads: u64,
    /// Those whose kernel stages went into the histograms (the total's count).
    pub rows: u64,
}

impl Tally {
    /// What was counted since `earlier` (of the same kind; else all of this one).
    pub fn since(&self, earlier: &Tally) -> Tally {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        match (self, earlier) {
            (Tally::Joined(now), Tally::Joined(then)) => Tally::Joined(now.since(then)),
            (Tally::Aggregate(now), Tally::Aggregate(then)) => Tally::Aggregate(AggregateTally {
                messages: d(now.messages, then.messages),
                records: d(now.records, then.records),
                sample_shift: now.sample_shift,
                unsampled: d(now.unsampled, then.unsampled),
                reads: d(now.reads, then.reads),
                rows: d(now.rows, then.rows),
            }),
            _ => *self,
        }
    }

    /// Messages counted.
    pub fn messages(&self) -> u64 {
        match self {
            Tally::Joined(j) => j.messages,
            Tally::Aggregate(a) => a.messages,
        }
    }
}

/// One probe's share of an interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgramRow {
    /// Probe name.
    pub probe: &'static str,
    /// Events it sent in the interval.
    pub events: u64,
    /// Times the kernel ran it.
    pub runs: u64,
    /// Its kernel run time, ns (0 without BPF stats).
    pub run_ns: u64,
    /// That run time as a share of one CPU over the interval, percent.
    pub cpu_pct: f64,
}

/// What one screen shows: the last interval of a session.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    /// What is traced.
    pub target: String,
    /// Where the stage histograms come from, in a few words.
    pub source: String,
    /// Intervals shown so far (this one included).
    pub number: u64,
    /// Length of the interval, s.
    pub interval_s: f64,
    /// Time since the probes were attached, s.
    pub elapsed_s: f64,
    /// Length of the window the stage histograms cover (between the two readings'
    /// `at_ns`), s; the interval's length when unknown.
    pub window_s: f64,
    /// The interval's stage, end-to-end and per-connection histograms.
    pub stages: StageSnapshot,
    /// The interval's messages (and reads), as the source counts them.
    pub tally: Tally,
    /// The end-to-end line's label (what the source's end to end spans).
    pub total_label: &'static str,
    /// Events lost in the interval because the ring was full.
    pub ring_drops: u64,
    /// Engine records lost in the interval (stamp channel lapped).
    pub channel_drops: u64,
    /// Hook hits the kernel skipped in the interval (a probe already running on the CPU).
    pub misses: u64,
    /// One row per attached probe.
    pub programs: Vec<ProgramRow>,
    /// BPF stats were off: run times are unknown.
    pub no_bpf_stats: bool,
    /// Notes of the session (its last one first is not guaranteed: in the order made).
    pub notes: Vec<String>,
    /// Connections shown at most.
    pub max_connections: usize,
}

impl Frame {
    /// Sum of [`ProgramRow::cpu_pct`].
    pub fn bpf_cpu_pct(&self) -> f64 {
        self.programs.iter().map(|p| p.cpu_pct).sum()
    }
}

/// Keeps the previous readings and makes each interval's [`Frame`] from the next ones.
pub struct Meter {
    frame: Frame,
    stages: StageSnapshot,
    tally: Tally,
    summary: Summary,
}

impl Meter {
    /// Intervals of a session whose stage histograms come from `source` (described in a
    /// few words), whose end to end is labelled `total_label`.
    pub fn new(source: String, total_label: &'static str, max_connections: usize) -> Meter {
        Meter {
            frame: Frame {
                source,
                total_label,
                max_connections,
                ..Frame::default()
            },
            stages: StageSnapshot::default(),
            tally: Tally::default(),
            summary: Summary::default(),
        }
    }

    /// The interval since the previous readings (since the start, the first time), from
    /// the session's totals, the cumulative stage histograms and counts now.
    pub fn update(&mut self, summary: &Summary, stages: &StageSnapshot, tally: Tally) -> &Frame {
        let f = &mut self.frame;
        let before = &self.summary;
        f.number += 1;
        f.target.clone_from(&summary.target);
        f.elapsed_s = summary.elapsed_s;
        f.interval_s = (summary.elapsed_s - before.elapsed_s).max(0.0);
        stages.since_into(&self.stages, &mut f.stages);
        f.window_s = match (self.stages.at_ns, stages.at_ns) {
            (then, now) if then > 0 && now > then => (now - then) as f64 / 1e9,
            _ => f.interval_s,
        };
        f.tally = tally.since(&self.tally);
        let ring = |s: &Summary| s.probes.iter().map(|p| p.drops).sum::<u64>();
        f.ring_drops = ring(summary).saturating_sub(ring(before));
        let chan = |s: &Summary| s.channel.map_or(0, |c| c.drops);
        f.channel_drops = chan(summary).saturating_sub(chan(before));
        f.misses = summary.total_misses().saturating_sub(before.total_misses());
        let wall_ns = f.interval_s * 1e9;
        f.programs.clear();
        f.no_bpf_stats = summary.probes.iter().all(|p| p.runs == 0);
        for p in &summary.probes {
            let prev = before.probes.iter().find(|b| b.probe == p.probe);
            let d = |now: u64, then: fn(&crate::attach::ProbeSummary) -> u64| {
                now.saturating_sub(prev.map_or(0, then))
            };
            let run_ns = d(p.bpf_run_ns, |b| b.bpf_run_ns);
            f.programs.push(ProgramRow {
                probe: p.probe,
                events: d(p.events, |b| b.events),
                runs: d(p.runs, |b| b.runs),
                run_ns,
                cpu_pct: if wall_ns > 0.0 {
                    run_ns as f64 * 100.0 / wall_ns
                } else {
                    0.0
                },
            });
        }
        f.notes.clone_from(&summary.notes);
        self.stages.clone_from(stages);
        self.tally = tally;
        self.summary.clone_from(summary);
        &self.frame
    }

    /// The last frame made.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attach::ProbeSummary;
    use crate::correlate::Stamp;
    use crate::stats::{LogHistogram, StageHistogram};

    fn summary(elapsed_s: f64, events: u64, run_ns: u64, drops: u64) -> Summary {
        Summary {
            target: "pid 7".into(),
            elapsed_s,
            probes: vec![ProbeSummary {
                probe: "tcp_probe",
                stage: "tcp",
                events,
                drops,
                runs: events,
                bpf_run_ns: run_ns,
                ..ProbeSummary::default()
            }],
            ..Summary::default()
        }
    }

    fn stages(values: &[u64]) -> StageSnapshot {
        let mut hist = LogHistogram::new();
        values.iter().for_each(|&v| hist.record(v));
        StageSnapshot {
            stages: vec![StageHistogram {
                stamp: Stamp::Tcp,
                hist: hist.clone(),
            }],
            total: hist,
            ..StageSnapshot::default()
        }
    }

    #[test]
    fn a_frame_holds_only_its_interval() {
        let mut m = Meter::new("test".into(), "total", 4);
        let f = m.update(
            &summary(1.0, 100, 1_000_000, 0),
            &stages(&[500]),
            Tally::Joined(JoinCounts {
                messages: 1,
                joined: 1,
                not_kept: 0,
            }),
        );
        assert_eq!((f.number, f.programs[0].events), (1, 100));
        let f = m.update(
            &summary(3.0, 150, 21_000_000, 4),
            &stages(&[500, 700, 900]),
            Tally::Joined(JoinCounts {
                messages: 4,
                joined: 3,
                not_kept: 0,
            }),
        );
        assert_eq!(f.number, 2);
        assert!((f.interval_s - 2.0).abs() < 1e-9);
        assert_eq!(f.programs[0].events, 50);
        assert_eq!(f.programs[0].run_ns, 20_000_000);
        // 20 ms of BPF time in 2 s: 1 % of a CPU.
        assert!(
            (f.programs[0].cpu_pct - 1.0).abs() < 1e-9,
            "{}",
            f.programs[0].cpu_pct
        );
        assert_eq!(f.ring_drops, 4);
        assert_eq!(f.stages.total.count(), 2);
        assert_eq!(f.stages.stage(Stamp::Tcp).map(LogHistogram::count), Some(2));
        assert_eq!(
            f.tally,
            Tally::Joined(JoinCounts {
                messages: 3,
                joined: 2,
                not_kept: 0,
            })
        );
    }

    #[test]
    fn aggregate_counts_are_differenced_like_the_others() {
        let at = |messages, reads, rows| {
            Tally::Aggregate(AggregateTally {
                messages,
                records: messages / 2,
                sample_shift: 1,
                unsampled: 0,
                reads,
                rows,
            })
        };
        assert_eq!(at(10, 8, 7).since(&at(4, 3, 3)), at(6, 5, 4));
        // A tally of another kind is not differenced against.
        assert_eq!(at(10, 8, 7).since(&Tally::default()), at(10, 8, 7));
        assert_eq!(at(10, 8, 7).messages(), 10);
    }
}
