//! The tracing probes of a session: their filter, their configuration, attaching each
//! [`ProbeKind`] where its [`Hook`] says, and reading back drops and filter state.
//!
//! The probe object itself is loaded by [`crate::loader`]; dropping [`Probes`] detaches and
//! unloads everything.
use std::{
    collections::BTreeSet,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use crate::hooks::{Fallback, Hook, ProbeHooks as _, RECV_FALLBACK, SEND_FALLBACK};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use ws_abi::{
    CONFIG_AGGREGATE, CONFIG_FILTER_PORTS, CONFIG_FILTER_TGID, CONFIG_FOLLOW_FORKS,
    CONFIG_LEARN_PORTS, CONFIG_LOG, CONFIG_OFFSETS_VALID, CONFIG_STREAM, PROBE_COUNT, ProbeConfig,
    ProbeKind,
    agg::{StageHist, counter, stage},
};

// The loader's, re-exported: the ring size `LoadOptions` defaults to, and the error
// `Probes` returns.
pub use crate::loader::{DEFAULT_RING_BYTES, ProbeError};
use crate::{
    loader::{Map, ProbeObject, Program},
    progstats::ProgramStats,
    tracefs,
};

/// Which events the probes keep. Empty sets mean "everything".
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    /// Keep task-context events (reads, epoll, scheduler, uprobes) of these processes only.
    pub tgids: BTreeSet<u32>,
    /// Keep packets and TCP segments of sockets with these local ports only.
    pub ports: BTreeSet<u16>,
    /// With `tgids` and no `ports`: learn the local ports of the sockets the traced
    /// processes read, and keep those flows.
    pub learn_ports: bool,
    /// Trace the children the traced processes fork.
    pub follow_forks: bool,
}

impl Filter {
    /// Traces one process and the connections it reads, following its forks.
    pub fn process(tgid: u32) -> Filter {
        Filter {
            tgids: BTreeSet::from([tgid]),
            ports: BTreeSet::new(),
            learn_ports: true,
            follow_forks: true,
        }
    }

    fn flags(&self) -> u32 {
        let mut flags = 0;
        if !self.tgids.is_empty() {
            flags |= CONFIG_FILTER_TGID;
            if self.follow_forks {
                flags |= CONFIG_FOLLOW_FORKS;
            }
        }
        if !self.ports.is_empty() {
            flags |= CONFIG_FILTER_PORTS;
        } else if self.learn_ports && !self.tgids.is_empty() {
            flags |= CONFIG_FILTER_PORTS | CONFIG_LEARN_PORTS;
        }
        flags
    }
}

/// How to load the probes.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Event ring size in bytes.
    pub ring_bytes: u32,
    /// Emit aya-log debug records from the probes (forwarded to the `log` crate).
    pub log: bool,
    /// What to keep.
    pub filter: Filter,
    /// Attach the fallbacks of kernels before 6.3 ([`crate::hooks::RECV_FALLBACK`],
    /// [`crate::hooks::SEND_FALLBACK`]) even where the preferred tracepoints exist: to
    /// test them on a new kernel. Defaults to whether [`FORCE_FALLBACKS_ENV`] is `1`.
    pub force_fallbacks: bool,
    /// Aggregate mode ([`ws_abi::CONFIG_AGGREGATE`]): the probes write nothing to the ring
    /// and add each traced read's kernel stages into in-kernel histograms instead (read
    /// them with [`Probes::aggregate_stages`]).
    pub aggregate: bool,
    /// With [`LoadOptions::aggregate`]: the probes also write every record to the ring
    /// ([`ws_abi::CONFIG_STREAM`]), for a flight recorder; the histograms fill either way.
    pub stream: bool,
    /// Leave the probes' configuration unset (no [`ws_abi::CONFIG_OFFSETS_VALID`]): every
    /// attached program returns as soon as it has read it. Nothing is traced; what they
    /// cost is what the hooks cost by themselves, the floor `cargo xtask bench soak` prints
    /// next to serve's figure.
    pub idle: bool,
}

/// Environment variable that, set to `1`, makes [`LoadOptions::default`] force the
/// fallbacks (see [`LoadOptions::force_fallbacks`]); `ws-trace attach`/`record` honour it.
pub const FORCE_FALLBACKS_ENV: &str = "WS_TRACE_FORCE_FALLBACKS";

/// Whether [`FORCE_FALLBACKS_ENV`] asks for the fallbacks.
pub fn fallbacks_forced_by_env() -> bool {
    std::env::var(FORCE_FALLBACKS_ENV).is_ok_and(|v| v == "1")
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            ring_bytes: DEFAULT_RING_BYTES,
            log: false,
            filter: Filter::default(),
            force_fallbacks: fallbacks_forced_by_env(),
            aggregate: false,
            stream: false,
            idle: false,
        }
    }
}

/// Offsets of `ret` and `__syscall_nr` in `syscalls:sys_exit_*` records, from tracefs.
pub fn syscall_offsets(tracefs: &Path) -> Result<(u32, u32), tracefs::FormatError> {
    let ret = tracefs::field_offset(tracefs, "syscalls", "sys_exit_epoll_wait", "ret")?;
    let nr = tracefs::field_offset(tracefs, "syscalls", "sys_exit_epoll_wait", "__syscall_nr")?;
    Ok((ret, nr))
}

/// Where a uprobe goes.
#[derive(Clone, Debug)]
pub struct UprobeTarget {
    /// The binary (executable or shared library).
    pub binary: PathBuf,
    /// The symbol, exactly as in the binary's symbol table.
    pub symbol: String,
    /// Identifies this target in the events (`attach` field).
    pub cookie: u64,
}

/// The programs that may be attached for probe `kind`: its own, and for the reads their
/// fallback and the port learners.
fn programs_of(kind: ProbeKind) -> Vec<Program> {
    let mut out = vec![Program::Probe(kind)];
    if kind == ProbeKind::SockRecv {
        out.extend([
            Program::RecvFallback,
            Program::SendLearner,
            Program::StateLearner,
        ]);
    }
    out
}

/// The tracing probes: the loaded object, configured for a session.
pub struct Probes {
    object: ProbeObject,
    attached: Vec<ProbeKind>,
    filter_flags: u32,
    notes: Vec<String>,
    force_fallbacks: bool,
    fallbacks: Vec<Fallback>,
    state_learner: bool,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    _stats: Option<OwnedFd>,
}

impl Probes {
    /// Loads the object and writes its configuration; attaches nothing yet.
    pub fn load(opts: &LoadOptions) -> Result<Probes, ProbeError> {
        let mut object = ProbeObject::load(opts.ring_bytes)?;
        let mut offsets = object.offsets()?;
        // Classic tracepoints (the epoll probe) need tracefs; their record layout is read
        // from it. Where it cannot be read the kernel's fixed sys_exit layout stands.
        let (dir, _) = tracefs::ensure_mounted()?;
        if let Ok((ret, nr)) = syscall_offsets(&dir) {
            offsets.sys_exit_ret = ret;
            offsets.sys_exit_nr = nr;
        }
        let filter_flags = opts.filter.flags();
        let mut flags = filter_flags;
        if !opts.idle {
            flags |= CONFIG_OFFSETS_VALID;
        }
        if opts.log {
            flags |= CONFIG_LOG;
        }
        if opts.aggregate {
            flags |= CONFIG_AGGREGATE;
            if opts.stream {
                flags |= CONFIG_STREAM;
            }
        }
        object.write_config(ProbeConfig {
            flags,
            _pad: 0,
            offsets,
        })?;
        let logger = if opts.log {
            Some(object.start_log()?)
        } else {
            None
        };
        // Per-program run time and count (shown in summaries); harmless where refused.
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
        let mut probes = Probes {
            object,
            attached: Vec::new(),
            filter_flags,
            notes: Vec::new(),
            force_fallbacks: opts.force_fallbacks,
            fallbacks: Vec::new(),
            state_learner: false,
            logger,
            _stats: stats,
        };
        for &tgid in &opts.filter.tgids {
            probes.add_tgid(tgid)?;
        }
        for &port in &opts.filter.ports {
            probes.add_port(port)?;
        }
        Ok(probes)
    }

    /// Adds a process to the `TGIDS` filter (e.g. a new match of `--comm`).
    pub fn add_tgid(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.object.add_tgid(tgid)
    }

    /// Adds a local port to the port filter.
    pub fn add_port(&mut self, port: u16) -> Result<(), ProbeError> {
        self.object.add_port(port)
    }

    /// The processes in the `TGIDS` filter now (forks add to it in the kernel).
    pub fn tgids(&self) -> Result<BTreeSet<u32>, ProbeError> {
        self.object.tgids()
    }

    /// The local ports in the port filter now (learned ones included).
    pub fn ports(&self) -> Result<BTreeSet<u16>, ProbeError> {
        self.object.ports()
    }

    /// The `CONFIG_FILTER_*` bits in force.
    pub fn filter_flags(&self) -> u32 {
        self.filter_flags
    }

    /// Detaches the kernel probes `kinds`, in that order, keeping them loaded with their
    /// maps' state: [`Probes::resume`] attaches them again. For sampling in time. With
    /// `SockRecv` go its fallback and the port learners (a send of any process on the
    /// machine runs the send learner: 50 k runs/s under a 50 k msg/s feed server); a port
    /// not learned meanwhile is learned from the first read once they are back.
    pub fn pause(&mut self, kinds: impl IntoIterator<Item = ProbeKind>) -> Result<(), ProbeError> {
        for kind in kinds {
            for program in programs_of(kind) {
                self.object.pause(program)?;
            }
        }
        Ok(())
    }

    /// Attaches again, in that order, what [`Probes::pause`] detached of `kinds`.
    pub fn resume(&mut self, kinds: impl IntoIterator<Item = ProbeKind>) -> Result<(), ProbeError> {
        for kind in kinds {
            for program in programs_of(kind) {
                self.object.resume(program)?;
            }
        }
        Ok(())
    }

    /// Loads and attaches one kernel probe (a tp_btf or classic tracepoint).
    pub fn attach(&mut self, kind: ProbeKind) -> Result<(), ProbeError> {
        let program = Program::Probe(kind);
        match kind.hook() {
            Hook::TpBtf(_) if kind == ProbeKind::SockRecv => {
                if self.attach_or_fall_back(
                    kind.name(),
                    program,
                    &RECV_FALLBACK,
                    Program::RecvFallback,
                )? {
                    // It tells the reads' fallback where each new socket's stream starts.
                    if let Err(e) = self.attach_state_learner() {
                        self.notes.push(format!(
                            "sock_recv: {} not attached ({}): every socket's first read has an unknown length",
                            SEND_FALLBACK.instead,
                            cause(&e)
                        ));
                    }
                }
            }
            Hook::TpBtf(name) => self.object.attach_tp_btf(program, name)?,
            Hook::Tracepoints(category, names) => {
                // A kernel may lack some of them (epoll_pwait2 is 5.11+): one is enough.
                let mut first_error = None;
                let mut attached = 0;
                for name in names {
                    match self.object.attach_tracepoint(program, category, name) {
                        Ok(()) => attached += 1,
                        Err(e) => {
                            self.notes.push(format!(
                                "{}: {category}:{name} not attached ({})",
                                kind.name(),
                                cause(&e)
                            ));
                            first_error.get_or_insert(e);
                        }
                    }
                }
                if attached == 0
                    && let Some(e) = first_error
                {
                    return Err(e);
                }
            }
            Hook::Uprobe | Hook::Uretprobe => return Err(ProbeError::WrongHook(kind.name())),
        }
        self.attached.push(kind);
        if kind == ProbeKind::SockRecv && self.filter_flags & CONFIG_LEARN_PORTS != 0 {
            self.attach_send_learner();
        }
        Ok(())
    }

    /// With port learning, sends teach the filter ports too (see the probe's doc): without
    /// it, segments that arrive before the client's first read are filtered out. Optional:
    /// where it cannot attach, ports are learned from reads alone, and a note says so.
    fn attach_send_learner(&mut self) {
        if let Err(e) = self.attach_or_fall_back(
            "port learning",
            Program::SendLearner,
            &SEND_FALLBACK,
            Program::StateLearner,
        ) {
            self.notes.push(format!(
                "ports are learned from reads only ({e}); messages that arrive before the first read are not joined"
            ));
        }
    }

    /// Attaches `program` on `fallback.hook`; where that tracepoint is missing or refused,
    /// or fallbacks are forced, attaches `instead` on `fallback.instead` and notes what
    /// degrades. Returns whether the fallback is in use; fails naming both hooks when
    /// neither attaches.
    fn attach_or_fall_back(
        &mut self,
        what: &'static str,
        program: Program,
        fallback: &Fallback,
        instead: Program,
    ) -> Result<bool, ProbeError> {
        let why = if self.force_fallbacks {
            "is not used (fallbacks forced)".to_string()
        } else {
            match self.object.attach_tp_btf(program, fallback.hook) {
                Ok(()) => return Ok(false),
                Err(ProbeError::NoTracepoint { .. }) => "does not exist on this kernel".to_string(),
                // Missing privileges are not the hook's fault: say what to do.
                Err(e @ ProbeError::NotPermitted { .. }) => return Err(e),
                Err(e) => format!("was refused ({})", cause(&e)),
            }
        };
        let attached = if instead == Program::StateLearner {
            self.attach_state_learner()
        } else {
            self.object.attach_tp_btf(instead, fallback.instead)
        };
        match attached {
            Ok(()) => {
                self.note_fallback(fallback, &why);
                Ok(true)
            }
            Err(e) => Err(ProbeError::NoFallback {
                probe: what,
                hook: fallback.hook,
                since: fallback.since,
                why,
                instead: fallback.instead,
                source: Box::new(e),
            }),
        }
    }

    fn note_fallback(&mut self, fallback: &Fallback, why: &str) {
        self.notes.push(format!(
            "{} (kernel {}+) {why}: {} comes from {} instead; {}",
            fallback.hook, fallback.since, fallback.role, fallback.instead, fallback.degrades
        ));
        self.fallbacks.push(*fallback);
    }

    /// Attaches the TCP state program once (port learning and the reads' fallback share it).
    fn attach_state_learner(&mut self) -> Result<(), ProbeError> {
        if !self.state_learner {
            self.object
                .attach_tp_btf(Program::StateLearner, SEND_FALLBACK.instead)?;
            self.state_learner = true;
        }
        Ok(())
    }

    /// The fallbacks in use: the preferred tracepoints this kernel lacks (or that were
    /// forced off), each with what was attached instead.
    pub fn fallbacks(&self) -> &[Fallback] {
        &self.fallbacks
    }

    /// Places a uprobe-type probe (`CallbackEntry`/`CallbackExit`/`UserEntry`/`UserExit`)
    /// on `target`. May be called many times per probe.
    pub fn attach_uprobe(
        &mut self,
        kind: ProbeKind,
        target: &UprobeTarget,
    ) -> Result<(), ProbeError> {
        if !matches!(kind.hook(), Hook::Uprobe | Hook::Uretprobe) {
            return Err(ProbeError::WrongHook(kind.name()));
        }
        self.object.attach_uprobe(
            Program::Probe(kind),
            &target.binary,
            &target.symbol,
            Some(target.cookie),
        )?;
        // Listed once it is attached somewhere, not when a first placement failed.
        if !self.attached.contains(&kind) {
            self.attached.push(kind);
        }
        Ok(())
    }

    /// Attaches every probe in `kinds`.
    pub fn attach_all(&mut self, kinds: &[ProbeKind]) -> Result<(), ProbeError> {
        kinds.iter().try_for_each(|k| self.attach(*k))
    }

    /// What the user should know about partial attachments.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The probes attached so far.
    pub fn attached(&self) -> &[ProbeKind] {
        &self.attached
    }

    /// Takes the event ring out of the object (once).
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        self.object.take_map(Map::Events)
    }

    /// Records lost per probe (summed over CPUs) because the ring was full.
    pub fn drops(&self) -> Result<[u64; PROBE_COUNT], ProbeError> {
        let drops: PerCpuArray<_, u64> = self.object.typed_map(Map::Drops)?;
        let mut out = [0u64; PROBE_COUNT];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = drops
                .get(&(i as u32), 0)
                .map_err(|e| ProbeError::map(Map::Drops, e))?
                .iter()
                .sum();
        }
        Ok(out)
    }

    /// Aggregate mode: every kernel stage histogram ([`ws_abi::agg::stage`] order), each
    /// merged over the CPUs into `into` (resized to [`ws_abi::agg::stage::COUNT`]; its
    /// buffers are reused from one call to the next).
    pub fn aggregate_stages(&self, into: &mut Vec<StageHist>) -> Result<(), ProbeError> {
        let hist: PerCpuArray<_, StageHist> = self.object.typed_map(Map::AggHist)?;
        into.resize(stage::COUNT as usize, StageHist::default());
        for (i, merged) in into.iter_mut().enumerate() {
            let per_cpu = hist
                .get(&(i as u32), 0)
                .map_err(|e| ProbeError::map(Map::AggHist, e))?;
            *merged = StageHist::default();
            for h in per_cpu.iter() {
                merged.merge(h);
            }
        }
        Ok(())
    }

    /// Aggregate mode: the counters ([`ws_abi::agg::counter`] order), summed over the CPUs.
    pub fn aggregate_counters(&self) -> Result<[u64; counter::COUNT as usize], ProbeError> {
        let counts: PerCpuArray<_, u64> = self.object.typed_map(Map::AggCounts)?;
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = counts
                .get(&(i as u32), 0)
                .map_err(|e| ProbeError::map(Map::AggCounts, e))?
                .iter()
                .sum();
        }
        Ok(out)
    }

    /// The kernel's counters of a probe's program: run time and runs (needs BPF stats,
    /// which loading turns on when it may) and recursion misses (events the probe never
    /// saw because it was already running on that CPU).
    pub fn run_stats(&self, kind: ProbeKind) -> Option<ProgramStats> {
        self.object.run_stats(Program::Probe(kind))
    }

    /// The kernel's counters of the loaded helper programs that are no probe kind's (the
    /// port learners, the reads' fallback), by program name: they run on their hooks like
    /// any probe (the send learner on every send of the machine) and cost as much.
    pub fn helper_stats(&self) -> Vec<(&'static str, ProgramStats)> {
        [
            Program::SendLearner,
            Program::StateLearner,
            Program::RecvFallback,
        ]
        .into_iter()
        .filter_map(|p| Some((p.name(), self.object.run_stats(p)?)))
        .collect()
    }

    /// Forwards pending aya-log records to the `log` crate (no-op unless logging).
    pub fn flush_log(&mut self) {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
    }
}

/// The kernel's answer inside a refusal, as the notes have always shown it (the probe
/// and hook are already in the note).
fn cause(e: &ProbeError) -> String {
    match e {
        ProbeError::Program { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}
