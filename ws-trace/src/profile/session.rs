//! Loading, attaching and reading out the profiling programs.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, PerCpuHashMap, StackTraceMap};
use ws_abi::{
    CONFIG_FILTER_TGID, CONFIG_FOLLOW_FORKS, CONFIG_OFFSETS_VALID, PROFILE_FILTER_TGID,
    PROFILE_OFF_CPU, PROFILE_ON_CPU, ProbeConfig, ProbeKind, ProfileConfig, StackKey,
};

use super::{ProfileError, series};
use crate::{
    loader::{MIN_RING_BYTES, Map, ProbeError, ProbeObject, Program},
    target::Target,
};

/// The perf-event program.
pub const SAMPLE_PROGRAM: &str = Program::ProfileSample.name();
/// The off-CPU (`sched_switch`) program.
pub const SWITCH_PROGRAM: &str = Program::ProfileSwitch.name();

/// What a session does.
#[derive(Clone, Debug)]
pub struct ProfileOptions {
    /// Samples per second per CPU.
    pub freq: u64,
    /// Stop after this long (otherwise at Ctrl-C or when the target exits).
    pub duration: Option<Duration>,
    /// Also sum off-CPU time per stack.
    pub off_cpu: bool,
    /// Sample the target's CPU/RSS/context switches at this interval.
    pub series: Option<Duration>,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            freq: 99,
            duration: None,
            off_cpu: false,
            series: None,
        }
    }
}

/// One executable mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The mapped file (or `[vdso]` and the like).
    pub path: String,
}

/// What was seen of one process while profiling.
#[derive(Clone, Debug, Default)]
pub struct ProcessInfo {
    /// `/proc/PID/comm`.
    pub comm: String,
    /// Its executable mappings, last seen.
    pub maps: Vec<Mapping>,
}

/// The kernel maps as read at the end, and what user space saw of the processes.
#[derive(Clone, Debug, Default)]
pub struct RawProfile {
    /// On-CPU samples per key.
    pub counts: Vec<(StackKey, u64)>,
    /// Off-CPU nanoseconds per key.
    pub off_cpu: Vec<(StackKey, u64)>,
    /// Stack frames (instruction pointers, innermost first) per stack id.
    pub stacks: BTreeMap<u32, Vec<u64>>,
    /// Per process.
    pub processes: BTreeMap<u32, ProcessInfo>,
    /// Sampling frequency.
    pub freq: u64,
    /// Session length (ns).
    pub duration_ns: u64,
    /// Start (ns since the Unix epoch).
    pub start_unix_ns: u64,
    /// The resource time series, when asked for.
    pub series: Vec<series::Point>,
}

/// Parses `/proc/PID/maps` text into executable mappings.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_ascii_whitespace();
            let range = it.next()?;
            let perms = it.next()?;
            let offset = u64::from_str_radix(it.next()?, 16).ok()?;
            let _dev = it.next()?;
            let _inode = it.next()?;
            let path = it.collect::<Vec<_>>().join(" ");
            if !perms.contains('x') || path.is_empty() {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                offset,
                path,
            })
        })
        .collect()
}

fn snapshot(processes: &mut BTreeMap<u32, ProcessInfo>, tgid: u32) {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{tgid}/maps")) else {
        return;
    };
    let maps = parse_maps(&maps);
    let info = processes.entry(tgid).or_default();
    // Kernel threads have no mappings; a process that is exiting may show none: keep what
    // was seen before.
    if !maps.is_empty() {
        info.maps = maps;
    }
    if let Ok(comm) = std::fs::read_to_string(format!("/proc/{tgid}/comm")) {
        info.comm = comm.trim_end().to_string();
    }
}

/// The loaded object with the profiling programs attached.
struct Loaded {
    object: ProbeObject,
}

impl Loaded {
    fn load(opts: &ProfileOptions, filter: bool) -> Result<Loaded, ProbeError> {
        // The event ring of the tracing probes is not used here: keep it minimal.
        let mut object = ProbeObject::load(MIN_RING_BYTES)?;
        let offsets = object.offsets()?;
        let mut flags = PROFILE_ON_CPU;
        if opts.off_cpu {
            flags |= PROFILE_OFF_CPU;
        }
        if filter {
            flags |= PROFILE_FILTER_TGID;
        }
        object.write_profile_config(ProfileConfig {
            flags,
            task_pid: offsets.task_pid,
            task_tgid: offsets.task_tgid,
            _pad: 0,
        })?;
        if filter {
            // Children the target forks join the filter: the probes' own fork program adds
            // them to TGIDS (it needs the probes' CONFIG with the task offsets).
            object.write_config(ProbeConfig {
                flags: CONFIG_OFFSETS_VALID | CONFIG_FILTER_TGID | CONFIG_FOLLOW_FORKS,
                _pad: 0,
                offsets,
            })?;
            object.attach_tp_btf(Program::Probe(ProbeKind::ProcessFork), "sched_process_fork")?;
        }
        if opts.off_cpu {
            object.attach_tp_btf(Program::ProfileSwitch, "sched_switch")?;
        }
        Ok(Loaded { object })
    }

    fn add_tgid(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.object.add_tgid(tgid)
    }

    fn tgids(&self) -> Result<BTreeSet<u32>, ProbeError> {
        self.object.tgids()
    }

    /// Processes with counts so far (to read the maps of, without a filter).
    fn seen_tgids(&self) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        for map in [Map::ProfileCounts, Map::ProfileOffCpu] {
            if let Ok(counts) = self
                .object
                .typed_map::<PerCpuHashMap<&MapData, StackKey, u64>>(map)
            {
                out.extend(counts.keys().flatten().map(|k| k.tgid));
            }
        }
        out
    }

    fn attach_sampler(&mut self, freq: u64) -> Result<(), ProbeError> {
        self.object.attach_cpu_clock(Program::ProfileSample, freq)
    }

    /// Turns the programs off (flags 0) so the read-out sees a still picture.
    fn quiesce(&mut self) -> Result<(), ProbeError> {
        self.object.write_profile_config(ProfileConfig::default())
    }

    fn read_counts(&self, map: Map) -> Result<Vec<(StackKey, u64)>, ProbeError> {
        let counts: PerCpuHashMap<&MapData, StackKey, u64> = self.object.typed_map(map)?;
        let mut out = Vec::new();
        // An entry deleted while iterating is skipped, not fatal.
        out.extend(
            counts
                .iter()
                .flatten()
                .map(|(key, per_cpu)| (key, per_cpu.iter().sum::<u64>())),
        );
        out.sort();
        Ok(out)
    }

    fn read_stacks(
        &self,
        ids: impl IntoIterator<Item = i32>,
    ) -> Result<BTreeMap<u32, Vec<u64>>, ProbeError> {
        let stacks: StackTraceMap<&MapData> = self.object.typed_map(Map::ProfileStacks)?;
        let mut out = BTreeMap::new();
        for id in ids {
            let Ok(id) = u32::try_from(id) else { continue };
            if out.contains_key(&id) {
                continue;
            }
            if let Ok(trace) = stacks.get(&id, 0) {
                out.insert(id, trace.frames().iter().map(|f| f.ip).collect());
            }
        }
        Ok(out)
    }
}

/// Profiles `target` until `opts.duration` passes, `stop` is set, or the target exits.
/// A spawned target is released once the programs are attached, and terminated if it is
/// still running when a `--duration` ends.
pub fn run(
    opts: &ProfileOptions,
    target: &mut Target,
    stop: &AtomicBool,
) -> Result<RawProfile, ProfileError> {
    let filter = !matches!(target, Target::All);
    let mut loaded = Loaded::load(opts, filter)?;
    let mut known: BTreeSet<u32> = target.tgids()?;
    for &tgid in &known {
        loaded.add_tgid(tgid)?;
    }
    loaded.attach_sampler(opts.freq)?;
    let start_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let started = Instant::now();
    target.release()?;
    let mut processes = BTreeMap::new();
    let mut series = opts.series.map(series::Sampler::new);
    let mut last_snapshot: Option<Instant> = None;
    let tick = Duration::from_millis(50);
    loop {
        let now = Instant::now();
        if let Target::Comm(_) = target
            && let Ok(current) = target.tgids()
        {
            for tgid in current.difference(&known.clone()) {
                loaded.add_tgid(*tgid)?;
                known.insert(*tgid);
            }
        }
        if filter && let Ok(all) = loaded.tgids() {
            // Forked children the kernel side added.
            known.extend(all);
        }
        if last_snapshot.is_none_or(|t| now.duration_since(t) >= Duration::from_millis(250)) {
            if !filter {
                // Every process: read the maps of those that were sampled.
                for tgid in loaded.seen_tgids() {
                    if !processes.contains_key(&tgid) {
                        snapshot(&mut processes, tgid);
                    }
                }
            }
            for &tgid in &known {
                snapshot(&mut processes, tgid);
            }
            last_snapshot = Some(now);
        }
        if let Some(s) = series.as_mut() {
            s.poll(&known, started.elapsed());
        }
        let done = stop.load(Ordering::Relaxed)
            || opts.duration.is_some_and(|d| started.elapsed() >= d)
            || (filter && !matches!(target, Target::Comm(_)) && target.exited());
        if done {
            break;
        }
        std::thread::sleep(tick);
    }
    // One last look at the maps while the process may still be there.
    if !filter {
        known.extend(loaded.seen_tgids());
    }
    for &tgid in &known {
        snapshot(&mut processes, tgid);
    }
    let duration_ns = started.elapsed().as_nanos() as u64;
    loaded.quiesce()?;
    if let Target::Spawned { child, .. } = target {
        // The session is over; the command (and what it forked) was only started to be
        // profiled.
        let own = child.id();
        if let Ok(all) = loaded.tgids() {
            known.extend(all);
        }
        for &tgid in known.iter().filter(|&&t| t != own) {
            if let Ok(pid) = i32::try_from(tgid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
    let counts = loaded.read_counts(Map::ProfileCounts)?;
    let off_cpu = if opts.off_cpu {
        loaded.read_counts(Map::ProfileOffCpu)?
    } else {
        Vec::new()
    };
    let ids = counts
        .iter()
        .chain(&off_cpu)
        .flat_map(|(k, _)| [k.user_stack, k.kernel_stack]);
    let stacks = loaded.read_stacks(ids)?;
    for (k, _) in counts.iter().chain(&off_cpu) {
        processes.entry(k.tgid).or_default();
    }
    Ok(RawProfile {
        counts,
        off_cpu,
        stacks,
        processes,
        freq: opts.freq,
        duration_ns,
        start_unix_ns,
        series: series.map(series::Sampler::finish).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keep_executable_file_mappings() {
        let text = "\
55d0c0a00000-55d0c0a10000 r--p 00000000 fd:01 123 /usr/bin/prog
55d0c0a10000-55d0c0a40000 r-xp 00010000 fd:01 123 /usr/bin/prog
7ffd1a000000-7ffd1a002000 r-xp 00000000 00:00 0 [vdso]
7f0000000000-7f0000001000 rw-p 00000000 00:00 0
7f0000100000-7f0000200000 r-xp 00001000 fd:01 9 /opt/my lib.so
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].start, 0x55d0c0a10000);
        assert_eq!(maps[0].offset, 0x10000);
        assert_eq!(maps[1].path, "[vdso]");
        assert_eq!(maps[2].path, "/opt/my lib.so");
    }
}
