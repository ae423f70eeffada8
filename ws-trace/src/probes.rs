//! Loading the probe object, configuring it and attaching its programs.
//!
//! Everything the kernel holds for a [`Probes`] (programs, links, maps) is owned by file
//! descriptors inside it: dropping it, or the process dying for any reason, detaches and
//! unloads every probe. Nothing is pinned.
use std::{
    collections::BTreeSet,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use ws_abi::{
    CONFIG_FILTER_PORTS, CONFIG_FILTER_TGID, CONFIG_FOLLOW_FORKS, CONFIG_LEARN_PORTS, CONFIG_LOG,
    CONFIG_OFFSETS_VALID, Hook, KernelOffsets, PROBE_COUNT, ProbeConfig, ProbeKind,
};

use crate::{
    btf::{Btf, BtfError},
    progstats::ProgramStats,
    tracefs,
};

/// The probe object, built from `ws-ebpf` by this crate's build script.
pub static PROBES_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ws-ebpf"));

/// Default size of the event ring, bytes (a power of two, a multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// Failures while loading, configuring or attaching probes.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The kernel refused to load the object (maps or BTF).
    #[error("loading the probe object: {0}")]
    Load(#[from] aya::EbpfError),
    /// The kernel's BTF could not be read for aya.
    #[error("reading the kernel's BTF: {0}")]
    KernelBtf(#[from] aya::BtfError),
    /// Our own BTF reader could not find a struct field the probes need.
    #[error("finding kernel struct offsets: {0}")]
    Offsets(#[from] BtfError),
    /// A program is missing from the object (a build mismatch).
    #[error("program {0} is not in the probe object")]
    NoProgram(&'static str),
    /// A map is missing from the object (a build mismatch).
    #[error("map {0} is not in the probe object")]
    NoMap(&'static str),
    /// The verifier or the attach step refused a program.
    #[error("probe {probe} ({hook}): {source}")]
    Program {
        /// The probe's name.
        probe: &'static str,
        /// What it hooks.
        hook: &'static str,
        /// The kernel's answer.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Reading or writing a map failed.
    #[error("map {map}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The error.
        #[source]
        source: aya::maps::MapError,
    },
    /// aya-log could not be started.
    #[error("starting aya-log: {0}")]
    Log(#[from] aya_log::Error),
    /// tracefs could not be mounted (classic tracepoints need it).
    #[error(transparent)]
    Tracefs(#[from] tracefs::MountError),
    /// A uprobe was asked of a probe that is not a uprobe, or the reverse.
    #[error("probe {0} is not attached that way")]
    WrongHook(&'static str),
    /// The ring size is not a power of two or not a multiple of the page size.
    #[error("ring size {0} is not a power-of-two multiple of 4096 bytes")]
    RingSize(u32),
}

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
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            ring_bytes: DEFAULT_RING_BYTES,
            log: false,
            filter: Filter::default(),
        }
    }
}

/// Kernel struct offsets the probes need, read from the running kernel's BTF. The
/// syscall tracepoint offsets are the kernel's fixed `sys_exit` layout here; see
/// [`syscall_offsets`] for the ones read from tracefs.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let f = |s: &str, m: &str| btf.field_offset(s, m);
    // 5.16 moved the CPU number from task_struct into thread_info.
    let task_cpu = match f("thread_info", "cpu") {
        Ok(cpu) => f("task_struct", "thread_info")? + cpu,
        Err(_) => f("task_struct", "cpu")?,
    };
    let sk_common = f("sock", "__sk_common")?;
    Ok(KernelOffsets {
        sk_buff_len: f("sk_buff", "len")?,
        sk_buff_dev: f("sk_buff", "dev")?,
        sk_buff_data: f("sk_buff", "data")?,
        sk_buff_cb: f("sk_buff", "cb")?,
        net_device_ifindex: f("net_device", "ifindex")?,
        tcp_skb_cb_seq: f("tcp_skb_cb", "seq")?,
        tcp_skb_cb_end_seq: f("tcp_skb_cb", "end_seq")?,
        tcp_skb_cb_tcp_flags: f("tcp_skb_cb", "tcp_flags")?,
        sock_dport: sk_common + f("sock_common", "skc_dport")?,
        sock_num: sk_common + f("sock_common", "skc_num")?,
        sock_cookie: sk_common + f("sock_common", "skc_cookie")?,
        sock_protocol: f("sock", "sk_protocol")?,
        tcp_sock_rcv_nxt: f("tcp_sock", "rcv_nxt")?,
        tcp_sock_copied_seq: f("tcp_sock", "copied_seq")?,
        task_pid: f("task_struct", "pid")?,
        task_tgid: f("task_struct", "tgid")?,
        task_cpu,
        sys_exit_ret: 16,
        sys_exit_nr: 8,
        _pad: 0,
    })
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

/// A loaded, configured probe object.
pub struct Probes {
    ebpf: Ebpf,
    kernel_btf: aya::Btf,
    attached: Vec<ProbeKind>,
    loaded: BTreeSet<ProbeKind>,
    filter_flags: u32,
    notes: Vec<String>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    _stats: Option<OwnedFd>,
}

impl Probes {
    /// Loads the object and writes its configuration; attaches nothing yet.
    pub fn load(opts: &LoadOptions) -> Result<Probes, ProbeError> {
        if !opts.ring_bytes.is_power_of_two() || opts.ring_bytes < 4096 {
            return Err(ProbeError::RingSize(opts.ring_bytes));
        }
        let btf = Btf::from_sys_fs()?;
        let kernel_btf = btf.to_aya()?;
        let mut offsets = kernel_offsets(&btf)?;
        // Classic tracepoints (the epoll probe) need tracefs; their record layout is read
        // from it. Where it cannot be read the kernel's fixed sys_exit layout stands.
        let (dir, _) = tracefs::ensure_mounted()?;
        if let Ok((ret, nr)) = syscall_offsets(&dir) {
            offsets.sys_exit_ret = ret;
            offsets.sys_exit_nr = nr;
        }
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&kernel_btf))
            .map_max_entries("EVENTS", opts.ring_bytes)
            .load(PROBES_OBJECT)?;
        let filter_flags = opts.filter.flags();
        let mut flags = CONFIG_OFFSETS_VALID | filter_flags;
        if opts.log {
            flags |= CONFIG_LOG;
        }
        let config = ProbeConfig {
            flags,
            _pad: 0,
            offsets,
        };
        let map = ebpf.map_mut("CONFIG").ok_or(ProbeError::NoMap("CONFIG"))?;
        let mut array: Array<_, ProbeConfig> =
            Array::try_from(map).map_err(|source| ProbeError::Map {
                map: "CONFIG",
                source,
            })?;
        array.set(0, config, 0).map_err(|source| ProbeError::Map {
            map: "CONFIG",
            source,
        })?;
        let logger = if opts.log {
            Some(aya_log::EbpfLogger::init(&mut ebpf)?)
        } else {
            None
        };
        // Per-program run time and count (shown in summaries); harmless where refused.
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
        let mut probes = Probes {
            ebpf,
            kernel_btf,
            attached: Vec::new(),
            loaded: BTreeSet::new(),
            filter_flags,
            notes: Vec::new(),
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
        let err = |source| ProbeError::Map {
            map: "TGIDS",
            source,
        };
        let map = self
            .ebpf
            .map_mut("TGIDS")
            .ok_or(ProbeError::NoMap("TGIDS"))?;
        let mut tgids: HashMap<_, u32, u8> = HashMap::try_from(map).map_err(err)?;
        tgids.insert(tgid, 1, 0).map_err(err)
    }

    /// Adds a local port to the `PORTS` filter.
    pub fn add_port(&mut self, port: u16) -> Result<(), ProbeError> {
        let err = |source| ProbeError::Map {
            map: "PORTS",
            source,
        };
        let map = self
            .ebpf
            .map_mut("PORTS")
            .ok_or(ProbeError::NoMap("PORTS"))?;
        let mut ports: HashMap<_, u16, u8> = HashMap::try_from(map).map_err(err)?;
        ports.insert(port, 1, 0).map_err(err)
    }

    /// The processes in the `TGIDS` filter now (forks add to it in the kernel).
    pub fn tgids(&self) -> Result<BTreeSet<u32>, ProbeError> {
        let err = |source| ProbeError::Map {
            map: "TGIDS",
            source,
        };
        let map = self.ebpf.map("TGIDS").ok_or(ProbeError::NoMap("TGIDS"))?;
        let tgids: HashMap<_, u32, u8> = HashMap::try_from(map).map_err(err)?;
        tgids.keys().collect::<Result<_, _>>().map_err(err)
    }

    /// The local ports in the `PORTS` filter now (learned ones included).
    pub fn ports(&self) -> Result<BTreeSet<u16>, ProbeError> {
        let err = |source| ProbeError::Map {
            map: "PORTS",
            source,
        };
        let map = self.ebpf.map("PORTS").ok_or(ProbeError::NoMap("PORTS"))?;
        let ports: HashMap<_, u16, u8> = HashMap::try_from(map).map_err(err)?;
        ports.keys().collect::<Result<_, _>>().map_err(err)
    }

    /// The `CONFIG_FILTER_*` bits in force.
    pub fn filter_flags(&self) -> u32 {
        self.filter_flags
    }

    /// Loads and attaches one kernel probe (a tp_btf or classic tracepoint).
    pub fn attach(&mut self, kind: ProbeKind) -> Result<(), ProbeError> {
        let program = kind.program();
        let hook = kind.hook();
        let err = |source| ProbeError::Program {
            probe: kind.name(),
            hook: match hook {
                Hook::TpBtf(name) => name,
                Hook::Tracepoints(category, _) => category,
                Hook::Uprobe => "uprobe",
                Hook::Uretprobe => "uretprobe",
            },
            source,
        };
        let prog = self
            .ebpf
            .program_mut(program)
            .ok_or(ProbeError::NoProgram(program))?;
        match hook {
            Hook::TpBtf(name) => {
                let prog: &mut BtfTracePoint = prog.try_into().map_err(err)?;
                prog.load(name, &self.kernel_btf).map_err(err)?;
                prog.attach().map_err(err)?;
            }
            Hook::Tracepoints(category, names) => {
                let prog: &mut TracePoint = prog.try_into().map_err(err)?;
                prog.load().map_err(err)?;
                // A kernel may lack some of them (epoll_pwait2 is 5.11+): one is enough.
                let mut first_error = None;
                let mut attached = 0;
                for name in names {
                    match prog.attach(category, name) {
                        Ok(_) => attached += 1,
                        Err(e) => {
                            self.notes.push(format!(
                                "{}: {category}:{name} not attached ({e})",
                                kind.name()
                            ));
                            first_error.get_or_insert(e);
                        }
                    }
                }
                if attached == 0
                    && let Some(e) = first_error
                {
                    return Err(err(e));
                }
            }
            Hook::Uprobe | Hook::Uretprobe => return Err(ProbeError::WrongHook(kind.name())),
        }
        self.loaded.insert(kind);
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
        const PROGRAM: &str = "sock_send_learn";
        let kernel_btf = &self.kernel_btf;
        let placed = match self.ebpf.program_mut(PROGRAM) {
            None => Err(format!("{PROGRAM} is not in the probe object")),
            Some(prog) => <&mut BtfTracePoint>::try_from(prog)
                .and_then(|prog| {
                    prog.load("sock_send_length", kernel_btf)?;
                    prog.attach().map(drop)
                })
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = placed {
            self.notes.push(format!(
                "ports are learned from reads only (sock_send_length: {e}); messages that arrive before the first read are not joined"
            ));
        }
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
        let program = kind.program();
        let err = |source| ProbeError::Program {
            probe: kind.name(),
            hook: "uprobe",
            source,
        };
        let prog: &mut UProbe = self
            .ebpf
            .program_mut(program)
            .ok_or(ProbeError::NoProgram(program))?
            .try_into()
            .map_err(err)?;
        if !self.loaded.contains(&kind) {
            prog.load().map_err(err)?;
            self.loaded.insert(kind);
        }
        // Every process mapping the binary: a per-process perf event would only follow
        // one thread. The tgid filter in the probe picks the traced processes.
        let scope = UProbeScope::AllProcesses;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::Symbol(&target.symbol),
            cookie: Some(target.cookie),
        };
        prog.attach(point, &target.binary, scope).map_err(err)?;
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
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::NoMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            map: "EVENTS",
            source,
        })
    }

    /// Records lost per probe (summed over CPUs) because the ring was full.
    pub fn drops(&self) -> Result<[u64; PROBE_COUNT], ProbeError> {
        let err = |source| ProbeError::Map {
            map: "DROPS",
            source,
        };
        let map = self.ebpf.map("DROPS").ok_or(ProbeError::NoMap("DROPS"))?;
        let drops: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(err)?;
        let mut out = [0u64; PROBE_COUNT];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = drops.get(&(i as u32), 0).map_err(err)?.iter().sum();
        }
        Ok(out)
    }

    /// The kernel's counters of a probe's program: run time and runs (needs BPF stats,
    /// which loading turns on when it may) and recursion misses (events the probe never
    /// saw because it was already running on that CPU).
    pub fn run_stats(&self, kind: ProbeKind) -> Option<ProgramStats> {
        let prog = self.ebpf.program(kind.program())?;
        let fd = prog.fd().ok()?;
        crate::progstats::program_stats(fd.as_fd()).ok()
    }

    /// Forwards pending aya-log records to the `log` crate (no-op unless logging).
    pub fn flush_log(&mut self) {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
    }
}
