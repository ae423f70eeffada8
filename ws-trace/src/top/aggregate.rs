//! Aggregate mode's session for `top`: an [`Aggregator`] on the target (its in-kernel
//! histograms and the engine stages from the stamp channels; nothing per event crosses
//! the ring), read once per interval.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::{AggregateTally, Tally};
use crate::{
    aggregate::{AggregateCounters, AggregateError, Aggregator},
    attach::{AttachError, AttachOptions, Summary},
    correlate::Stamp,
    stats::StageSnapshot,
    target::{Target, TargetError},
};

/// How the view names this source.
pub fn source() -> String {
    "aggregate mode: kernel stages per read, engine stages per message (--full: per message)"
        .to_string()
}

/// What an aggregate session calls back into.
pub trait IntervalHooks {
    /// Every interval: the session's totals, the cumulative stage histograms and counts.
    fn interval(&mut self, summary: &Summary, stages: &StageSnapshot, tally: Tally);
    /// After each wait for the stamp channels (at least every 100 ms).
    fn idle(&mut self) {}
}

impl AggregateTally {
    /// The counts of an aggregate session: its counters, and the engine messages its
    /// (weighted) callback histogram in `stages` holds.
    pub fn of(c: &AggregateCounters, stages: &StageSnapshot) -> AggregateTally {
        AggregateTally {
            messages: stages.stage(Stamp::CallbackDone).map_or(0, |h| h.count()),
            records: c.engine_messages,
            sample_shift: c.engine_sample_shift,
            unsampled: c.engine_unsampled,
            reads: c.reads,
            rows: c.rows,
        }
    }
}

/// How an aggregate session ended.
#[derive(Debug)]
pub struct Ended {
    /// The session's totals at the end.
    pub summary: Summary,
    /// The cumulative stage histograms at the end.
    pub stages: StageSnapshot,
    /// The counts at the end.
    pub tally: Tally,
    /// The target exited (rather than the time running out or `stop` being set).
    pub target_exited: bool,
}

fn target_err(e: TargetError) -> AggregateError {
    AggregateError::Attach(AttachError::Target(e))
}

/// Runs an aggregate session on `target` (`opts.plan`'s filters; see
/// [`Aggregator::start`]) until `opts.duration` passes, `stop` is set or the target exits;
/// calls `hooks` every `opts.refresh` (default 1 s). A spawned target is released once the
/// probes are attached; processes of a `--comm`/`--cgroup` target that appear later join
/// the filter. The probes are detached on return, whatever the outcome.
pub fn run(
    opts: &AttachOptions,
    target: &mut Target,
    stop: &AtomicBool,
    hooks: &mut impl IntervalHooks,
) -> Result<Ended, AggregateError> {
    let mut agg = Aggregator::start(&opts.plan)?;
    agg.session_mut().set_target(target.describe());
    target.release().map_err(target_err)?;
    let started = Instant::now();
    let every = opts.refresh.unwrap_or(Duration::from_secs(1));
    let deadline = opts.duration.map(|d| started + d);
    let mut next = started + every;
    let mut next_rescan = started + Duration::from_secs(1);
    let mut known = target.tgids().map_err(target_err)?;
    let mut target_exited = false;
    while !stop.load(Ordering::Relaxed) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if target.exited() {
            target_exited = true;
            break;
        }
        agg.pump(Duration::from_millis(100))?;
        if let Target::Comm(_) | Target::Cgroup(_) = target
            && Instant::now() >= next_rescan
        {
            let now = target.tgids().map_err(target_err)?;
            for &tgid in now.difference(&known) {
                agg.session_mut().probes_mut().add_tgid(tgid)?;
            }
            known.extend(now);
            next_rescan += Duration::from_secs(1);
        }
        if Instant::now() >= next {
            let stages = agg.snapshot()?;
            let tally = Tally::Aggregate(AggregateTally::of(&agg.counters()?, &stages));
            hooks.interval(&agg.summary()?, &stages, tally);
            next = (next + every).max(Instant::now());
        }
        hooks.idle();
    }
    // The stamp records still in the channels belong to the session.
    agg.pump(Duration::ZERO)?;
    let stages = agg.snapshot()?;
    Ok(Ended {
        summary: agg.summary()?,
        tally: Tally::Aggregate(AggregateTally::of(&agg.counters()?, &stages)),
        stages,
        target_exited,
    })
}
