//! Aggregate mode: per-stage latency histograms of a target, with nothing per event
//! crossing the BPF ring (`docs/design.md`, "Aggregate mode").
//!
//! An [`Aggregator`] is an attach [`Session`] whose probes are loaded with
//! [`LoadOptions::aggregate`]: they compute each traced read's kernel stages in the kernel
//! and add them into per-CPU histograms. The engine's stages come from its stamp channels,
//! drained by [`Aggregator::pump`] into user-space histograms ([`engine`]). Nothing is
//! read from the kernel until [`Aggregator::snapshot`], once per scrape or interval.
pub mod engine;

use std::time::{Duration, Instant};

use ws_abi::{
    ProbeKind,
    agg::{StageHist, counter, stage},
    channel::{MAX_SAMPLE_SHIFT, sampled},
};

use crate::{
    attach::{AttachError, EngineRecords, Plan, Session, Summary},
    channel::ChannelStats,
    correlate::Stamp,
    decode::Event,
    loader::MIN_RING_BYTES,
    probes::{Filter, LoadOptions, ProbeError},
    stats::{LogHistogram, StageHistogram, StageSnapshot},
};
use engine::EngineStages;

/// Failures of an aggregate session.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// Starting or running the session failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// Reading the probes' maps failed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

/// The kernel stage histograms in [`ws_abi::agg::stage`] order, by the stamp ending each
/// (the end-to-end [`stage::TOTAL`] is the snapshot's `total`).
pub const KERNEL_STAGES: [Stamp; 7] = [
    Stamp::Softirq,
    Stamp::Tcp,
    Stamp::Waking,
    Stamp::Wakeup,
    Stamp::OnCpu,
    Stamp::Epoll,
    Stamp::Read,
];

/// How often an aggregate session searches the traced processes for new event loops'
/// stamp channels once it holds one ([`Session::set_channel_rescan`]): an always-on
/// agent trades up to this long of a late-started loop's messages for less CPU.
pub const AGGREGATE_RESCAN: Duration = Duration::from_millis(250);

/// The probes aggregate mode attaches: every kernel probe but `softirq_exit` (the stages
/// do not use it), and process forks (a traced process's children are traced).
pub const AGGREGATE_PROBES: [ProbeKind; 12] = [
    ProbeKind::NetifReceiveSkb,
    ProbeKind::SoftirqRaise,
    ProbeKind::SoftirqEntry,
    ProbeKind::NetifRx,
    ProbeKind::NapiGroReceive,
    ProbeKind::TcpProbe,
    ProbeKind::SchedWaking,
    ProbeKind::SchedWakeup,
    ProbeKind::SchedSwitch,
    ProbeKind::EpollExit,
    ProbeKind::SockRecv,
    ProbeKind::ProcessFork,
];

/// Which of the engine's messages are stamped and published through its stamp channels.
/// A sampled message counts for `1 << shift` in the engine stage histograms (an estimate
/// of the messages; percentiles are those of the sample). Sampling is per connection, by
/// `msg_seq` ([`ws_abi::channel::sampled`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineSampling {
    /// One message in `1 << shift` per connection (0: every message).
    Shift(u32),
    /// A shift that keeps the records at most [`ADAPTIVE_RECORDS_PER_S`] a second:
    /// re-chosen every [`ADAPTIVE_WINDOW`] from the rate seen, starting at
    /// [`ADAPTIVE_INITIAL_SHIFT`]. The default.
    #[default]
    Adaptive,
}

/// [`EngineSampling::Adaptive`]'s ceiling on engine records per second. Each record costs
/// the engine its conversion and publication (about 0.15 µs here) and the tracer its
/// drain: at most about 0.1 % of a core each. At a 64 B blast (about 40 ns of client CPU
/// per message) that is one message in 512, 0.3 ns per message.
pub const ADAPTIVE_RECORDS_PER_S: u64 = 4_096;
/// How often [`EngineSampling::Adaptive`] re-chooses its shift.
pub const ADAPTIVE_WINDOW: Duration = Duration::from_millis(100);
/// [`EngineSampling::Adaptive`]'s shift before its first window (a feed may start at full
/// rate).
pub const ADAPTIVE_INITIAL_SHIFT: u32 = 8;

/// The smallest shift that brings `messages_per_s` to at most `target` records a second.
pub fn shift_for(messages_per_s: u64, target: u64) -> u32 {
    let mut shift = 0;
    while shift < MAX_SAMPLE_SHIFT && messages_per_s >> shift > target {
        shift += 1;
    }
    shift
}

/// What an aggregate session counted besides its histograms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AggregateCounters {
    /// The stage probes are attached one period in this many ([`Aggregator::set_kernel_duty`];
    /// 1: always): the kernel's counts below and in the histograms are what the probes
    /// counted times this (estimates when above 1).
    pub kernel_duty: u32,
    /// Reads by traced threads of traced sockets that returned data (the kernel's count).
    pub reads: u64,
    /// Reads whose kernel stages went into the histograms (the total's count).
    pub rows: u64,
    /// Reads whose last byte no remembered segment of its socket held.
    pub no_segment: u64,
    /// Reads whose segment had no packet stamps.
    pub no_packet: u64,
    /// Reads whose kernel stamps were out of order.
    pub inconsistent: u64,
    /// Records that came through the BPF ring: 0 in aggregate mode (anything else is a
    /// bug, counted rather than hidden); every probe record with [`LoadOptions::stream`].
    pub ring_events: u64,
    /// Engine messages whose stages were recorded (sampled records, each once).
    pub engine_messages: u64,
    /// Engine records that arrived outside the sample (an engine that does not sample, or
    /// the moment before it read a new shift): left out.
    pub engine_unsampled: u64,
    /// The engine sample in force: one message in `1 << engine_sample_shift`.
    pub engine_sample_shift: u32,
    /// Engine callback ends whose start was not seen (the channel lost it).
    pub engine_unpaired: u64,
    /// The stamp channels: rings, records, drops, lease lapses.
    pub channel: ChannelStats,
}

/// An aggregate-mode session on a target.
pub struct Aggregator {
    session: Session,
    engine: EngineStages,
    /// The last callback entry, waiting for its end: (tid, msg_seq, its stamps).
    pending: Option<(u32, u64, ws_abi::MsgStamps)>,
    ring_events: u64,
    unpaired: u64,
    unsampled: u64,
    sampling: EngineSampling,
    shift: u32,
    /// Adaptive sampling: start of the window and records in it.
    window: (Instant, u64),
    /// Reused buffer for reading the kernel histograms.
    kernel: Vec<StageHist>,
    /// Sampling in time: the stage probes attached one [`DUTY_PERIOD`] in `duty`.
    duty: u32,
    /// Whether they are attached now, and until when.
    duty_phase: (bool, Instant),
}

/// With [`Aggregator::set_kernel_duty`]: how long the stage probes stay attached at a
/// time.
pub const DUTY_PERIOD: Duration = Duration::from_secs(1);

/// What sampling in time detaches: every aggregate probe but forks (a traced process's
/// children must join the filter whenever they are born), in pipeline order (that of
/// [`AGGREGATE_PROBES`]).
fn duty_probes() -> impl DoubleEndedIterator<Item = ProbeKind> {
    AGGREGATE_PROBES
        .into_iter()
        .filter(|k| *k != ProbeKind::ProcessFork)
}

impl Aggregator {
    /// The plan for process `tgid` (its threads, the sockets they read, its forks) in
    /// aggregate mode.
    pub fn plan(tgid: u32) -> Plan {
        Plan {
            load: LoadOptions {
                filter: Filter::process(tgid),
                ..LoadOptions::default()
            },
            ..Plan::default()
        }
    }

    /// Starts a session from `plan` in aggregate mode: whatever it says, the probes
    /// aggregate, the engine's records come from its stamp channels, no uprobes are
    /// placed, and the probes attached are [`AGGREGATE_PROBES`]. Filters, the fallback
    /// setting and [`LoadOptions::stream`] are taken from `plan`: without `stream` the ring
    /// is the minimal one (nothing is written to it); with it, the ring is `plan`'s and
    /// every record also reaches [`Aggregator::pump_with`]'s caller. The engine is sampled
    /// ([`EngineSampling::Adaptive`]) unless streaming, where every message's record is
    /// wanted ([`EngineSampling::Shift`]`(0)`).
    pub fn start(plan: &Plan) -> Result<Aggregator, AggregateError> {
        let stream = plan.load.stream;
        let plan = Plan {
            load: LoadOptions {
                ring_bytes: if stream {
                    plan.load.ring_bytes
                } else {
                    MIN_RING_BYTES
                },
                aggregate: true,
                ..plan.load.clone()
            },
            kinds: AGGREGATE_PROBES.to_vec(),
            engine_records: EngineRecords::Channel,
            engine_binaries: Vec::new(),
            user_uprobes: Vec::new(),
        };
        let mut agg = Aggregator {
            session: Session::start(&plan)?,
            engine: EngineStages::new(),
            pending: None,
            ring_events: 0,
            unpaired: 0,
            unsampled: 0,
            sampling: EngineSampling::Adaptive,
            shift: 0,
            window: (Instant::now(), 0),
            kernel: Vec::new(),
            duty: 1,
            duty_phase: (true, Instant::now()),
        };
        agg.set_engine_sampling(if stream {
            EngineSampling::Shift(0)
        } else {
            EngineSampling::default()
        });
        agg.session.set_channel_rescan(AGGREGATE_RESCAN);
        Ok(agg)
    }

    /// Samples the kernel stages in time: the stage probes (all but forks) are attached
    /// for one [`DUTY_PERIOD`] in every `n` and detached the rest of the time, which cuts
    /// what they cost by `n` (their hooks do not run them at all while detached), and the
    /// kernel's counts are weighted by `n`. What is lost is coverage: a read in an off
    /// period is not counted. 1 (the default) keeps them attached.
    pub fn set_kernel_duty(&mut self, n: u32) -> Result<(), AggregateError> {
        let n = n.max(1);
        if n == 1 && !self.duty_phase.0 {
            self.session.probes_mut().resume(duty_probes())?;
        }
        self.duty = n;
        self.duty_phase = (true, Instant::now() + DUTY_PERIOD);
        Ok(())
    }

    /// Detaches or attaches the stage probes when their phase ends (with a duty above 1).
    fn duty_turn(&mut self) -> Result<(), AggregateError> {
        let (on, until) = self.duty_phase;
        if self.duty <= 1 || Instant::now() < until {
            return Ok(());
        }
        if on {
            // Readers first, the hooks that feed them last (and the other way round when
            // they come back): a detach waits for an RCU grace period, and a read probe
            // left running while the segment probe is gone would count reads it cannot
            // match.
            self.session.probes_mut().pause(duty_probes().rev())?;
            self.duty_phase = (false, until + DUTY_PERIOD * (self.duty - 1));
        } else {
            self.session.probes_mut().resume(duty_probes())?;
            self.duty_phase = (true, until + DUTY_PERIOD);
        }
        // A session that fell behind (a stalled caller) starts its next phase now.
        if self.duty_phase.1 < Instant::now() {
            self.duty_phase.1 = Instant::now();
        }
        Ok(())
    }

    /// Chooses which engine messages are stamped and published ([`EngineSampling`]).
    pub fn set_engine_sampling(&mut self, sampling: EngineSampling) {
        self.sampling = sampling;
        let shift = match sampling {
            EngineSampling::Shift(s) => s.min(MAX_SAMPLE_SHIFT),
            EngineSampling::Adaptive => ADAPTIVE_INITIAL_SHIFT,
        };
        self.set_shift(shift);
        self.window = (Instant::now(), 0);
    }

    fn set_shift(&mut self, shift: u32) {
        self.shift = shift;
        self.session.set_engine_sample_shift(shift);
    }

    /// Drains the engine's stamp channels into the engine stage histograms (waiting up to
    /// `timeout`, at most the session's channel poll interval, when there is nothing);
    /// returns the engine records drained. Call it often enough that a channel does not lap (a
    /// default channel holds 64 Ki records).
    pub fn pump(&mut self, timeout: Duration) -> Result<usize, AggregateError> {
        self.pump_with(timeout, |_, _, _| {})
    }

    /// As [`Aggregator::pump`], handing every record to `f` too (with its raw bytes) after
    /// it is aggregated, with its weight: the messages it stands for (`1 << shift` for an
    /// engine record in the sample, 0 for one outside it and for the probes' records). With
    /// [`LoadOptions::stream`] the probes' records from the ring come too (a flight
    /// recorder's input); `serve` also estimates callback calls, time and bytes from them.
    pub fn pump_with(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&[u8], &Event, u64),
    ) -> Result<usize, AggregateError> {
        let Aggregator {
            session,
            engine,
            pending,
            ring_events,
            unpaired,
            unsampled,
            shift,
            ..
        } = self;
        let (shift, weight) = (*shift, 1u64 << *shift);
        let mut records = 0u64;
        session.pump(timeout, |raw, e| {
            let in_sample = match e {
                Event::Callback(c) => {
                    records += 1;
                    sampled(c.probe.msg_seq, shift)
                }
                Event::CallbackDone(d) => sampled(d.msg_seq, shift),
                _ => false,
            };
            match e {
                Event::Callback(_) if !in_sample => *unsampled += 1,
                Event::Callback(c) => {
                    *pending = Some((c.hdr.tid, c.probe.msg_seq, c.probe.stamps));
                }
                Event::CallbackDone(_) if !in_sample => {}
                Event::CallbackDone(d) => match pending.take() {
                    Some((tid, seq, stamps)) if tid == d.hdr.tid && seq == d.msg_seq => {
                        engine.record_weighted(&stamps, d.start_ns, d.done_ns, weight);
                    }
                    _ => *unpaired += 1,
                },
                _ => *ring_events += 1,
            }
            f(raw, e, if in_sample { weight } else { 0 });
        })?;
        self.window.1 += records;
        self.duty_turn()?;
        if self.sampling == EngineSampling::Adaptive {
            let elapsed = self.window.0.elapsed();
            if elapsed >= ADAPTIVE_WINDOW {
                let rate =
                    (self.window.1 << self.shift) * 1_000_000 / elapsed.as_micros().max(1) as u64;
                let next = shift_for(rate, ADAPTIVE_RECORDS_PER_S);
                if next != self.shift {
                    self.set_shift(next);
                }
                self.window = (Instant::now(), 0);
            }
        }
        Ok(records as usize)
    }

    /// One reading of every stage, cumulative since the session started: the kernel's
    /// histograms (read and merged over the CPUs now) and the engine's (as drained so far).
    /// `total` is the kernel's end to end, nic → read return.
    pub fn snapshot(&mut self) -> Result<StageSnapshot, AggregateError> {
        self.session.probes().aggregate_stages(&mut self.kernel)?;
        let w = u64::from(self.duty);
        let hist = |h: &StageHist| {
            let mut out = LogHistogram::from_counts(&h.counts, h.sum, h.max);
            out.weight(w);
            out
        };
        let mut stages: Vec<StageHistogram> = KERNEL_STAGES
            .iter()
            .zip(self.kernel.iter())
            .map(|(&stamp, h)| StageHistogram {
                stamp,
                hist: hist(h),
            })
            .collect();
        stages.extend(self.engine.stages());
        let total = self
            .kernel
            .get(stage::TOTAL as usize)
            .map(hist)
            .unwrap_or_default();
        Ok(StageSnapshot {
            at_ns: ws_engine::clock::Clock::monotonic_now_ns(),
            stages,
            total,
            connections: Vec::new(),
        })
    }

    /// The counters: the kernel's reads and rows, ring records, engine messages, the
    /// stamp channels' drops.
    pub fn counters(&self) -> Result<AggregateCounters, AggregateError> {
        let k = self.session.probes().aggregate_counters()?;
        let w = u64::from(self.duty);
        let at = |i: u32| k[i as usize] * w;
        Ok(AggregateCounters {
            kernel_duty: self.duty,
            reads: at(counter::READS),
            rows: at(counter::ROWS),
            no_segment: at(counter::NO_SEGMENT),
            no_packet: at(counter::NO_PACKET),
            inconsistent: at(counter::INCONSISTENT),
            ring_events: self.ring_events,
            engine_messages: self.engine.messages(),
            engine_unsampled: self.unsampled,
            engine_sample_shift: self.shift,
            engine_unpaired: self.unpaired,
            channel: self
                .session
                .channels()
                .map(|c| c.stats())
                .unwrap_or_default(),
        })
    }

    /// The session's totals: per probe its runs, mean BPF run time per run and recursion
    /// misses, ring drops; notes; the stamp channels.
    pub fn summary(&self) -> Result<Summary, AggregateError> {
        Ok(self.session.summary()?)
    }

    /// The underlying session (to add processes to the filter, name the target).
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Values spread over per-CPU kernel histograms, merged and read as a snapshot
        /// does, give the histogram of all of them.
        #[test]
        fn merged_per_cpu_slices_equal_one_histogram_of_everything(
            values in proptest::collection::vec((0usize..4, 0u64..1 << 42), 0..300),
        ) {
            let mut cpus = vec![StageHist::default(); 4];
            let mut all = LogHistogram::new();
            for &(cpu, v) in &values {
                cpus[cpu].add(v);
                all.record(v);
            }
            let mut merged = StageHist::default();
            for c in &cpus {
                merged.merge(c);
            }
            let read = LogHistogram::from_counts(&merged.counts, merged.sum, merged.max);
            prop_assert_eq!(read, all);
        }
    }

    #[test]
    fn the_adaptive_shift_keeps_records_under_the_target() {
        assert_eq!(shift_for(0, ADAPTIVE_RECORDS_PER_S), 0);
        assert_eq!(shift_for(16_384, 16_384), 0);
        assert_eq!(shift_for(16_385, 16_384), 1);
        assert_eq!(shift_for(3_400_000, 16_384), 8);
        assert_eq!(shift_for(50_000, ADAPTIVE_RECORDS_PER_S), 4);
        for rate in [1u64, 1_000, 50_000, 1_000_000, 10_000_000] {
            let s = shift_for(rate, ADAPTIVE_RECORDS_PER_S);
            assert!(rate >> s <= ADAPTIVE_RECORDS_PER_S, "{rate}: {s}");
            assert!(
                s == 0 || rate >> (s - 1) > ADAPTIVE_RECORDS_PER_S,
                "{rate}: {s}"
            );
        }
        assert_eq!(shift_for(u64::MAX, 1), MAX_SAMPLE_SHIFT);
    }
}
