//! serve's default source: aggregate mode ([`Aggregator`]). The probes add each traced
//! read's kernel stages into per-CPU histograms in the kernel, the engine's stages come
//! from its stamp channels; nothing per event crosses the BPF ring and the histograms are
//! read once per publish.
//!
//! What the session holds of the last seconds, for captures, is what it receives: the
//! engine's stamp-channel records (each message's callback entry and exit with the
//! engine's stage stamps), kept in a [`FlightRecorder`]. The kernel's events never reach
//! user space in this mode, so a capture has no kernel stages (`--mode full` captures
//! every event).
use std::time::Duration;

use crate::{
    aggregate::{AggregateError, Aggregator},
    attach::{AttachError, Plan},
    decode::Event,
    flight::FlightRecorder,
    record,
    stats::StageSnapshot,
    tracefile::{TraceFilters, TraceHeader},
};

use super::CAPTURE_WINDOW;
use super::source::{CallbackTotals, ProgramStatus, SnapshotSource, SourceError, SourceStatus};

/// Memory they may take.
const WINDOW_BYTES: usize = 64 << 20;

impl From<AggregateError> for SourceError {
    fn from(e: AggregateError) -> SourceError {
        match e {
            AggregateError::Attach(e) => SourceError::Attach(e),
            AggregateError::Probe(e) => SourceError::Probe(e),
        }
    }
}

/// An [`Aggregator`] with the last seconds of its records.
pub struct AggregateSource {
    agg: Aggregator,
    plan: Plan,
    filters: TraceFilters,
    recent: FlightRecorder,
    callbacks: CallbackTotals,
}

fn monotonic_ns() -> u64 {
    ws_engine::clock::Clock::monotonic_now_ns()
}

impl AggregateSource {
    /// Starts `plan`'s session in aggregate mode (its filters; the aggregator picks the
    /// probes), its stage probes attached one second in `kernel_duty`. `filters` describe
    /// it in captures' headers.
    pub fn start(
        plan: Plan,
        filters: TraceFilters,
        kernel_duty: u32,
    ) -> Result<AggregateSource, SourceError> {
        let mut agg = Aggregator::start(&plan)?;
        agg.set_kernel_duty(kernel_duty)?;
        Ok(AggregateSource {
            agg,
            // As attached: the aggregator's probes (for captures' headers).
            plan: Plan {
                kinds: crate::aggregate::AGGREGATE_PROBES.to_vec(),
                ..plan
            },
            filters,
            recent: FlightRecorder::new(CAPTURE_WINDOW, WINDOW_BYTES),
            callbacks: CallbackTotals::default(),
        })
    }
}

impl SnapshotSource for AggregateSource {
    fn pump(&mut self, timeout: Duration) -> Result<(), SourceError> {
        let AggregateSource {
            agg,
            recent,
            callbacks,
            ..
        } = self;
        agg.pump_with(timeout, |raw, e, weight| {
            // With the engine sampling, each sampled record stands for `weight` messages.
            match e {
                Event::Callback(c) => callbacks.bytes += c.probe.len * weight,
                Event::CallbackDone(d) => {
                    callbacks.calls += weight;
                    callbacks.time_ns += d.done_ns.saturating_sub(d.start_ns) * weight;
                }
                _ => {}
            }
            recent.push(e.header().ts_ns, raw);
        })?;
        self.recent.expire(monotonic_ns());
        Ok(())
    }

    fn add_process(&mut self, tgid: u32) -> Result<(), SourceError> {
        let session = self.agg.session_mut();
        session
            .probes_mut()
            .add_tgid(tgid)
            .map_err(AttachError::from)?;
        session.scan_channels_now()?;
        Ok(())
    }

    fn snapshot(&mut self) -> Result<StageSnapshot, SourceError> {
        Ok(self.agg.snapshot()?)
    }

    fn status(&mut self) -> Result<SourceStatus, SourceError> {
        let summary = self.agg.summary()?;
        let counters = self.agg.counters()?;
        let probes = self.agg.session_mut().probes();
        let programs = ProgramStatus::of_all(probes)?;
        Ok(SourceStatus {
            mode: "aggregate",
            programs,
            channel: summary.channel,
            callbacks: Some(self.callbacks),
            decode_errors: summary.decode_errors,
            connections_over_cap: 0,
            tgids: probes.tgids()?,
            notes: summary.notes,
            aggregate: Some(counters),
        })
    }

    fn recorder(&self) -> &FlightRecorder {
        &self.recent
    }

    fn capture_header(&self) -> TraceHeader {
        record::header(&self.plan, self.filters.clone())
    }
}
