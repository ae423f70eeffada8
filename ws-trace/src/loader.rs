//! The one loader of the probe object: every user of the eBPF programs (attach/record,
//! profile, doctor, the demo's wire program) goes through a [`ProbeObject`].
//!
//! It reads the kernel's BTF once (for aya's relocations, the `tp_btf`/`fentry` programs
//! and the struct offsets the probes need), sizes the event ring, loads the object's maps,
//! writes its configuration maps, and loads and attaches programs one at a time, by hook
//! type. A program is loaded (verified) on its first attach only: the object holds
//! programs this kernel refuses (`fentry`), and loading everything would fail.
//!
//! Everything the kernel holds for a [`ProbeObject`] (programs, links, maps) is owned by
//! file descriptors inside it: dropping it, or the process dying for any reason, detaches
//! and unloads everything. Nothing is pinned.
use std::{os::fd::AsFd as _, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapError},
    programs::{
        BtfTracePoint, FEntry, PerfEvent, ProgramError, RawTracePoint, SchedClassifier,
        TcAttachType, TracePoint, UProbe,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        tp_btf::BtfTracePointLinkId,
        trace_point::TracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use ws_abi::{KernelOffsets, ProbeConfig, ProbeKind, ProfileConfig};

use crate::{
    btf::{Btf, BtfError},
    privileges::{PrivilegeError, Privileges},
    progstats::ProgramStats,
    tracefs,
};

/// Every map and program name of the probe object that is not a [`ProbeKind`]'s, in one
/// place (they must match `ws-ebpf`).
mod names {
    pub(super) use ws_abi::names::maps::{
        AGG_COUNTS, AGG_HIST, CONFIG, DOCTOR_HITS, DROPS, EVENTS, PORT_SET, PORTS, PROFILE_CONFIG,
        PROFILE_COUNTS, PROFILE_OFFCPU, PROFILE_STACKS, TGID_SET, TGIDS,
    };
    pub(super) use ws_abi::names::programs::{
        DOCTOR_FENTRY, DOCTOR_PERF_EVENT, DOCTOR_RAW_TP, DOCTOR_TP_BTF, DOCTOR_TRACEPOINT,
        DOCTOR_UPROBE, PROFILE_CPU_SAMPLE as PROFILE_SAMPLE,
        PROFILE_SCHED_SWITCH as PROFILE_SWITCH, SOCK_RECV_RCV_SPACE as RECV_FALLBACK,
        SOCK_SEND_LEARN as SEND_LEARN, SOCK_STATE_LEARN as STATE_LEARN,
        WIRE_CLEAR_DEPARTURE as WIRE,
    };
}

/// The probe object, built from `ws-ebpf` by this crate's build script.
static PROBES_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ws-ebpf"));

/// Default size of the event ring, bytes (a power of two, a multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// The smallest event ring, for users of the object that never read it (profile, the
/// demo's wire program).
pub const MIN_RING_BYTES: u32 = 4096;

/// Failures while loading the probe object, configuring it or attaching its programs.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The kernel said EPERM, and this process lacks what tracing needs.
    #[error("{privileges}")]
    NotPermitted {
        /// What is missing, and what to do about it.
        privileges: PrivilegeError,
        /// What the kernel refused.
        #[source]
        refused: Box<ProbeError>,
    },
    /// The kernel refused to load the object (maps or BTF).
    #[error("loading the probe object: {0}")]
    Load(#[from] aya::EbpfError),
    /// The kernel's BTF could not be read.
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[source] BtfError),
    /// The kernel's BTF could not be parsed for aya.
    #[error("reading the kernel's BTF: {0}")]
    KernelBtf(#[from] aya::BtfError),
    /// Our own BTF reader could not find a struct field the probes need.
    #[error("finding kernel struct offsets: {0}")]
    Offsets(#[source] BtfError),
    /// The object was loaded without the kernel's BTF, and something needs it.
    #[error("{0} needs the kernel's BTF, which was not available")]
    NoBtf(&'static str),
    /// The kernel has no BTF-typed tracepoint of that name (its BTF lacks
    /// `btf_trace_<name>`), so a program cannot attach there.
    #[error(
        "program {program}: this kernel has no tracepoint {tracepoint} (no btf_trace_{tracepoint} in its BTF)"
    )]
    NoTracepoint {
        /// The program's name.
        program: &'static str,
        /// The tracepoint it was meant for.
        tracepoint: String,
    },
    /// Neither a hook nor its fallback could be attached.
    #[error(
        "{probe}: the {hook} tracepoint (kernel {since}+) {why}, and its fallback {instead} could not be attached either: {source}"
    )]
    NoFallback {
        /// The probe (or program) that needed the hook.
        probe: &'static str,
        /// The preferred tracepoint.
        hook: &'static str,
        /// Since which kernel it exists.
        since: &'static str,
        /// Why it was not used: missing, refused, or fallbacks forced.
        why: String,
        /// The fallback's tracepoint.
        instead: &'static str,
        /// Why the fallback failed.
        #[source]
        source: Box<ProbeError>,
    },
    /// A program is missing from the object (a build mismatch).
    #[error("program {0} is not in the probe object")]
    NoProgram(&'static str),
    /// A map is missing from the object (a build mismatch).
    #[error("map {0} is not in the probe object")]
    NoMap(&'static str),
    /// The verifier or the attach step refused a program.
    #[error("program {program} ({hook}): {source}")]
    Program {
        /// The program's name.
        program: &'static str,
        /// What it was being attached to.
        hook: String,
        /// The kernel's answer.
        #[source]
        source: ProgramError,
    },
    /// Reading or writing a map failed.
    #[error("map {map}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The error.
        #[source]
        source: MapError,
    },
    /// The online CPUs could not be listed (perf events are per CPU).
    #[error("listing online CPUs ({0}): {1}")]
    Cpus(&'static str, #[source] std::io::Error),
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

impl ProbeError {
    /// A refusal of `program` on `hook`; see [`ProbeError::privileges`].
    fn program(program: Program, hook: impl Into<String>, source: ProgramError) -> ProbeError {
        ProbeError::Program {
            program: program.name(),
            hook: hook.into(),
            source,
        }
        .privileges()
    }

    /// A failure on `map`.
    pub fn map(map: Map, source: MapError) -> ProbeError {
        ProbeError::Map {
            map: map.name(),
            source,
        }
        .privileges()
    }

    /// When the kernel said EPERM and this process lacks CAP_BPF+CAP_PERFMON, says so
    /// first (with what to do), the kernel's refusal as its source. A privileged process
    /// refused with EPERM (lockdown, a hook the kernel does not allow) keeps the kernel's
    /// error as it is.
    fn privileges(self) -> ProbeError {
        let first: &(dyn std::error::Error + 'static) = &self;
        let eperm = std::iter::successors(Some(first), |e| e.source()).any(|e| {
            e.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
                == Some(libc::EPERM)
        });
        if !eperm {
            return self;
        }
        match Privileges::current().map(|p| p.require_tracing()) {
            Ok(Err(privileges)) => ProbeError::NotPermitted {
                privileges,
                refused: Box::new(self),
            },
            _ => self,
        }
    }
}

/// The kernel's `pid_max` (every process id is below it), capped at [`ws_abi::MAX_PID`];
/// that cap where it cannot be read.
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(ws_abi::MAX_PID, |n| n.clamp(1, ws_abi::MAX_PID))
}

/// A map of the probe object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Map {
    /// The event ring the tracing probes write into.
    Events,
    /// The tracing probes' [`ProbeConfig`].
    Config,
    /// Records lost per probe because the ring was full.
    Drops,
    /// The process filter (forks add to it in the kernel).
    Tgids,
    /// The local port filter.
    Ports,
    /// The port filter as the probes test it: a byte per port number.
    PortSet,
    /// The process filter as the probes test it: a byte per process id.
    TgidSet,
    /// How often each of the doctor's programs ran.
    DoctorHits,
    /// The profiling programs' [`ProfileConfig`].
    ProfileConfig,
    /// Stacks sampled by the profiling programs.
    ProfileStacks,
    /// On-CPU samples per stack key.
    ProfileCounts,
    /// Off-CPU nanoseconds per stack key.
    ProfileOffCpu,
    /// Aggregate mode: the kernel stage histograms, per CPU.
    AggHist,
    /// Aggregate mode: reads seen, rows made and why not, per CPU.
    AggCounts,
}

impl Map {
    /// The map's name in the object.
    pub const fn name(self) -> &'static str {
        match self {
            Map::Events => names::EVENTS,
            Map::Config => names::CONFIG,
            Map::Drops => names::DROPS,
            Map::Tgids => names::TGIDS,
            Map::Ports => names::PORTS,
            Map::PortSet => names::PORT_SET,
            Map::TgidSet => names::TGID_SET,
            Map::DoctorHits => names::DOCTOR_HITS,
            Map::ProfileConfig => names::PROFILE_CONFIG,
            Map::ProfileStacks => names::PROFILE_STACKS,
            Map::ProfileCounts => names::PROFILE_COUNTS,
            Map::ProfileOffCpu => names::PROFILE_OFFCPU,
            Map::AggHist => names::AGG_HIST,
            Map::AggCounts => names::AGG_COUNTS,
        }
    }
}

/// A program of the probe object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// A tracing probe.
    Probe(ProbeKind),
    /// Teaches the port filter the local ports of sockets the traced processes send on.
    SendLearner,
    /// The reads' fallback (`tcp_rcv_space_adjust`) where `sock_recv_length` is missing;
    /// writes [`ProbeKind::SockRecv`] records.
    RecvFallback,
    /// Port learning from TCP state changes (`inet_sock_set_state`) where
    /// `sock_send_length` is missing; also where the reads' fallback starts counting.
    StateLearner,
    /// The profiler's cpu-clock perf-event sampler.
    ProfileSample,
    /// The profiler's off-CPU (`sched_switch`) program.
    ProfileSwitch,
    /// The doctor's classic tracepoint.
    DoctorTracepoint,
    /// The doctor's `tp_btf` tracepoint.
    DoctorTpBtf,
    /// The doctor's raw tracepoint.
    DoctorRawTracepoint,
    /// The doctor's uprobe.
    DoctorUprobe,
    /// The doctor's perf-event program.
    DoctorPerfEvent,
    /// The doctor's `fentry` program.
    DoctorFentry,
    /// The demo's tc program that makes a veth behave like a wire.
    Wire,
}

impl Program {
    /// The program's name in the object.
    pub const fn name(self) -> &'static str {
        match self {
            Program::Probe(kind) => kind.program(),
            Program::SendLearner => names::SEND_LEARN,
            Program::RecvFallback => names::RECV_FALLBACK,
            Program::StateLearner => names::STATE_LEARN,
            Program::ProfileSample => names::PROFILE_SAMPLE,
            Program::ProfileSwitch => names::PROFILE_SWITCH,
            Program::DoctorTracepoint => names::DOCTOR_TRACEPOINT,
            Program::DoctorTpBtf => names::DOCTOR_TP_BTF,
            Program::DoctorRawTracepoint => names::DOCTOR_RAW_TP,
            Program::DoctorUprobe => names::DOCTOR_UPROBE,
            Program::DoctorPerfEvent => names::DOCTOR_PERF_EVENT,
            Program::DoctorFentry => names::DOCTOR_FENTRY,
            Program::Wire => names::WIRE,
        }
    }
}

/// Kernel struct offsets the probes need, read from the running kernel's BTF. The
/// syscall tracepoint offsets are the kernel's fixed `sys_exit` layout here; see
/// [`crate::probes::syscall_offsets`] for the ones read from tracefs.
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

/// What the object keeps of the kernel's BTF.
struct Kernel {
    /// aya's view, for `tp_btf` and `fentry` programs.
    btf: aya::Btf,
    /// The struct offsets found in it.
    offsets: KernelOffsets,
    /// The BTF-typed tracepoints it has.
    tracepoints: std::collections::BTreeSet<String>,
}

/// The loaded probe object. Programs are loaded on their first attach.
pub struct ProbeObject {
    ebpf: Ebpf,
    kernel: Option<Kernel>,
    /// The tracepoint attachments made, so a program can be detached and attached again
    /// ([`ProbeObject::pause`], [`ProbeObject::resume`]).
    attachments: Vec<Attachment>,
}

/// One tracepoint attachment of a program, and its link while it is attached.
struct Attachment {
    program: Program,
    link: AttachmentLink,
}

/// Where an [`Attachment`] goes, and its link (`None` while paused).
enum AttachmentLink {
    TpBtf(Option<BtfTracePointLinkId>),
    Tracepoint {
        category: String,
        name: String,
        link: Option<TracePointLinkId>,
    },
}

/// Finds `program` in `ebpf` as the program type `T`.
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, program: Program) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let name = program.name();
    ebpf.program_mut(name)
        .ok_or(ProbeError::NoProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::program(program, "its type", source))
}

impl ProbeObject {
    /// Reads the kernel's BTF and the struct offsets in it, and loads the object's maps
    /// with an event ring of `ring_bytes` (a power of two, at least 4096).
    pub fn load(ring_bytes: u32) -> Result<ProbeObject, ProbeError> {
        check_ring(ring_bytes)?;
        let btf = Btf::from_sys_fs().map_err(ProbeError::Btf)?;
        ProbeObject::load_with(Some(&btf), ring_bytes)
    }

    /// Like [`ProbeObject::load`], with the kernel's types as the caller read them, or
    /// without BTF (`None`): then aya relocates nothing, and `tp_btf`/`fentry` programs
    /// and [`ProbeObject::offsets`] fail with [`ProbeError::NoBtf`].
    pub fn load_with(btf: Option<&Btf>, ring_bytes: u32) -> Result<ProbeObject, ProbeError> {
        check_ring(ring_bytes)?;
        let kernel = btf
            .map(|btf| {
                Ok::<_, ProbeError>(Kernel {
                    offsets: kernel_offsets(btf).map_err(ProbeError::Offsets)?,
                    tracepoints: btf.tracepoints().map_err(ProbeError::Btf)?,
                    btf: btf.to_aya()?,
                })
            })
            .transpose()?;
        let ebpf = EbpfLoader::new()
            .btf(kernel.as_ref().map(|k| &k.btf))
            .map_max_entries(names::EVENTS, ring_bytes)
            .map_max_entries(names::TGID_SET, pid_max())
            .load(PROBES_OBJECT)
            .map_err(|e| ProbeError::Load(e).privileges())?;
        Ok(ProbeObject {
            ebpf,
            kernel,
            attachments: Vec::new(),
        })
    }

    /// The kernel struct offsets found in its BTF at load time.
    pub fn offsets(&self) -> Result<KernelOffsets, ProbeError> {
        self.kernel
            .as_ref()
            .map(|k| k.offsets)
            .ok_or(ProbeError::NoBtf("the probes' kernel struct offsets"))
    }

    /// Whether the kernel has the BTF-typed tracepoint `name` (per its BTF); `None` when
    /// the object was loaded without BTF.
    pub fn has_tracepoint(&self, name: &str) -> Option<bool> {
        self.kernel.as_ref().map(|k| k.tracepoints.contains(name))
    }

    /// The program `program` as type `T`, and aya's view of the kernel's BTF to load it
    /// with (borrowed together).
    fn with_btf<T>(&mut self, program: Program) -> Result<(&mut T, &aya::Btf), ProbeError>
    where
        for<'a> &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let btf = self
            .kernel
            .as_ref()
            .map(|k| &k.btf)
            .ok_or(ProbeError::NoBtf(program.name()))?;
        Ok((program_mut(&mut self.ebpf, program)?, btf))
    }

    /// Adds a process to the process filter: `TGIDS`, and its `TGID_SET` byte (what the
    /// probes test).
    pub fn add_tgid(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.add_to_filter((Map::Tgids, tgid), (Map::TgidSet, tgid))
    }

    /// The processes in the `TGIDS` filter now (forks add to it in the kernel).
    pub fn tgids(&self) -> Result<std::collections::BTreeSet<u32>, ProbeError> {
        self.filter_keys(Map::Tgids)
    }

    /// Adds a local port to the port filter: `PORTS`, and its `PORT_SET` byte (what the
    /// probes test).
    pub fn add_port(&mut self, port: u16) -> Result<(), ProbeError> {
        self.add_to_filter((Map::Ports, port), (Map::PortSet, u32::from(port)))
    }

    /// The local ports in the port filter now (learned ones included).
    pub fn ports(&self) -> Result<std::collections::BTreeSet<u16>, ProbeError> {
        self.filter_keys(Map::Ports)
    }

    /// A filter's two maps: `key` into the hash user space lists, and the byte at `index`
    /// of the array the probes test.
    fn add_to_filter<K: aya::Pod>(
        &mut self,
        (hash, key): (Map, K),
        (set, index): (Map, u32),
    ) -> Result<(), ProbeError> {
        let mut keys: HashMap<_, K, u8> = self.typed_map_mut(hash)?;
        keys.insert(key, 1, 0)
            .map_err(|e| ProbeError::map(hash, e))?;
        let mut bytes: Array<_, u8> = self.typed_map_mut(set)?;
        bytes.set(index, 1, 0).map_err(|e| ProbeError::map(set, e))
    }

    /// The keys of a filter's hash.
    fn filter_keys<K: aya::Pod + Ord>(
        &self,
        hash: Map,
    ) -> Result<std::collections::BTreeSet<K>, ProbeError> {
        let keys: HashMap<_, K, u8> = self.typed_map(hash)?;
        keys.keys()
            .collect::<Result<_, _>>()
            .map_err(|e| ProbeError::map(hash, e))
    }

    /// Writes the tracing probes' configuration.
    pub fn write_config(&mut self, config: ProbeConfig) -> Result<(), ProbeError> {
        self.set_first(Map::Config, config)
    }

    /// Writes the profiling programs' configuration.
    pub fn write_profile_config(&mut self, config: ProfileConfig) -> Result<(), ProbeError> {
        self.set_first(Map::ProfileConfig, config)
    }

    fn set_first<T: aya::Pod>(&mut self, map: Map, value: T) -> Result<(), ProbeError> {
        let mut array: Array<_, T> = self.typed_map_mut(map)?;
        array
            .set(0, value, 0)
            .map_err(|source| ProbeError::map(map, source))
    }

    /// `map`, as aya's map type `T`.
    pub fn typed_map<'a, T>(&'a self, map: Map) -> Result<T, ProbeError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = MapError>,
    {
        let found = self
            .ebpf
            .map(map.name())
            .ok_or(ProbeError::NoMap(map.name()))?;
        T::try_from(found).map_err(|source| ProbeError::map(map, source))
    }

    /// `map`, as aya's map type `T`, writable.
    pub fn typed_map_mut<'a, T>(&'a mut self, map: Map) -> Result<T, ProbeError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let found = self
            .ebpf
            .map_mut(map.name())
            .ok_or(ProbeError::NoMap(map.name()))?;
        T::try_from(found).map_err(|source| ProbeError::map(map, source))
    }

    /// Takes `map` out of the object (once), as aya's map type `T`.
    pub fn take_map<T>(&mut self, map: Map) -> Result<T, ProbeError>
    where
        T: TryFrom<aya::maps::Map, Error = MapError>,
    {
        let taken = self
            .ebpf
            .take_map(map.name())
            .ok_or(ProbeError::NoMap(map.name()))?;
        T::try_from(taken).map_err(|source| ProbeError::map(map, source))
    }

    /// Starts forwarding the programs' aya-log records to the `log` crate.
    pub fn start_log(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, ProbeError> {
        Ok(aya_log::EbpfLogger::init(&mut self.ebpf)?)
    }

    /// Loads `program` (on its first use) and attaches it to the BTF-typed tracepoint
    /// `tracepoint`.
    pub fn attach_tp_btf(&mut self, program: Program, tracepoint: &str) -> Result<(), ProbeError> {
        // Said plainly, rather than as the EINVAL the kernel would give for it.
        if self.has_tracepoint(tracepoint) == Some(false) {
            return Err(ProbeError::NoTracepoint {
                program: program.name(),
                tracepoint: tracepoint.to_string(),
            });
        }
        let err = |source| ProbeError::program(program, format!("tp_btf {tracepoint}"), source);
        let (prog, btf) = self.with_btf::<BtfTracePoint>(program)?;
        if prog.fd().is_err() {
            prog.load(tracepoint, btf).map_err(err)?;
        }
        let link = prog.attach().map_err(err)?;
        self.attachments.push(Attachment {
            program,
            link: AttachmentLink::TpBtf(Some(link)),
        });
        Ok(())
    }

    /// Loads `program` (on its first use) and attaches it to the classic tracepoint
    /// `category:name` (tracefs must be mounted).
    pub fn attach_tracepoint(
        &mut self,
        program: Program,
        category: &str,
        name: &str,
    ) -> Result<(), ProbeError> {
        let err =
            |source| ProbeError::program(program, format!("tracepoint {category}:{name}"), source);
        let prog: &mut TracePoint = program_mut(&mut self.ebpf, program)?;
        if prog.fd().is_err() {
            prog.load().map_err(err)?;
        }
        let link = prog.attach(category, name).map_err(err)?;
        self.attachments.push(Attachment {
            program,
            link: AttachmentLink::Tracepoint {
                category: category.to_string(),
                name: name.to_string(),
                link: Some(link),
            },
        });
        Ok(())
    }

    /// Detaches every tracepoint attachment of `program` (tp_btf and classic) and keeps
    /// them to [`resume`](Self::resume): the program stays loaded, its maps keep their
    /// state, its hooks stop running it. Attachments already paused are left as they are.
    pub fn pause(&mut self, program: Program) -> Result<(), ProbeError> {
        let err = |source| ProbeError::program(program, "detaching", source);
        for a in self.attachments.iter_mut().filter(|a| a.program == program) {
            match &mut a.link {
                AttachmentLink::TpBtf(link) => {
                    if let Some(id) = link.take() {
                        program_mut::<BtfTracePoint>(&mut self.ebpf, program)?
                            .detach(id)
                            .map_err(err)?;
                    }
                }
                AttachmentLink::Tracepoint { link, .. } => {
                    if let Some(id) = link.take() {
                        program_mut::<TracePoint>(&mut self.ebpf, program)?
                            .detach(id)
                            .map_err(err)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Attaches again what [`pause`](Self::pause) detached of `program`, where it was.
    pub fn resume(&mut self, program: Program) -> Result<(), ProbeError> {
        let err = |source| ProbeError::program(program, "attaching again", source);
        for a in self.attachments.iter_mut().filter(|a| a.program == program) {
            match &mut a.link {
                AttachmentLink::TpBtf(link) => {
                    if link.is_none() {
                        let prog = program_mut::<BtfTracePoint>(&mut self.ebpf, program)?;
                        *link = Some(prog.attach().map_err(err)?);
                    }
                }
                AttachmentLink::Tracepoint {
                    category,
                    name,
                    link,
                } => {
                    if link.is_none() {
                        let prog = program_mut::<TracePoint>(&mut self.ebpf, program)?;
                        *link = Some(prog.attach(category, name).map_err(err)?);
                    }
                }
            }
        }
        Ok(())
    }

    /// Loads `program` (on its first use) and attaches it to the raw tracepoint `name`.
    pub fn attach_raw_tracepoint(
        &mut self,
        program: Program,
        name: &str,
    ) -> Result<(), ProbeError> {
        let err = |source| ProbeError::program(program, format!("raw tracepoint {name}"), source);
        let prog: &mut RawTracePoint = program_mut(&mut self.ebpf, program)?;
        if prog.fd().is_err() {
            prog.load().map_err(err)?;
        }
        prog.attach(name).map(drop).map_err(err)
    }

    /// Loads `program` (on its first use) and places it, a uprobe or a uretprobe, on
    /// `symbol` of `binary` in every process that maps it, with `cookie` for the program
    /// to read. May be called many times per program.
    pub fn attach_uprobe(
        &mut self,
        program: Program,
        binary: &Path,
        symbol: &str,
        cookie: Option<u64>,
    ) -> Result<UProbeLinkId, ProbeError> {
        let err = |source| {
            ProbeError::program(
                program,
                format!("uprobe {}:{symbol}", binary.display()),
                source,
            )
        };
        let prog: &mut UProbe = program_mut(&mut self.ebpf, program)?;
        if prog.fd().is_err() {
            prog.load().map_err(err)?;
        }
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::Symbol(symbol),
            cookie,
        };
        // Every process mapping the binary: a per-process perf event would only follow
        // one thread. The programs' tgid filter picks the traced processes.
        prog.attach(point, binary, UProbeScope::AllProcesses)
            .map_err(err)
    }

    /// Removes one placement of a uprobe made by [`ProbeObject::attach_uprobe`].
    pub fn detach_uprobe(
        &mut self,
        program: Program,
        link: UProbeLinkId,
    ) -> Result<(), ProbeError> {
        let prog: &mut UProbe = program_mut(&mut self.ebpf, program)?;
        prog.detach(link)
            .map_err(|source| ProbeError::program(program, "uprobe detach", source))
    }

    /// Loads `program` (on its first use) and attaches it to a software cpu-clock perf
    /// event sampling `freq_hz` times a second on every online CPU, whatever runs there.
    pub fn attach_cpu_clock(&mut self, program: Program, freq_hz: u64) -> Result<(), ProbeError> {
        let prog: &mut PerfEvent = program_mut(&mut self.ebpf, program)?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|source| ProbeError::program(program, "perf_event", source))?;
        }
        let cpus = aya::util::online_cpus().map_err(|(what, e)| ProbeError::Cpus(what, e))?;
        for cpu in cpus {
            prog.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(freq_hz),
                false,
            )
            .map_err(|source| {
                ProbeError::program(
                    program,
                    format!("cpu-clock perf event on CPU {cpu}"),
                    source,
                )
            })?;
        }
        Ok(())
    }

    /// Loads `program` (on its first use) and attaches it at the entry of the kernel
    /// function `function`.
    pub fn attach_fentry(&mut self, program: Program, function: &str) -> Result<(), ProbeError> {
        let err = |source| ProbeError::program(program, format!("fentry {function}"), source);
        let (prog, btf) = self.with_btf::<FEntry>(program)?;
        if prog.fd().is_err() {
            prog.load(function, btf).map_err(err)?;
        }
        prog.attach().map(drop).map_err(err)
    }

    /// Loads `program` (on its first use) and attaches it as a tc classifier on
    /// `interface` (as named in the calling thread's network namespace).
    pub fn attach_tc(
        &mut self,
        program: Program,
        interface: &str,
        attach_type: TcAttachType,
    ) -> Result<(), ProbeError> {
        let err = |source| {
            ProbeError::program(
                program,
                format!("tc {attach_type:?} on {interface}"),
                source,
            )
        };
        let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, program)?;
        if prog.fd().is_err() {
            prog.load().map_err(err)?;
        }
        prog.attach(interface, attach_type).map(drop).map_err(err)
    }

    /// The kernel's counters of a loaded program: run time and runs (with BPF stats on)
    /// and recursion misses. `None` when it is not loaded or the kernel will not say.
    pub fn run_stats(&self, program: Program) -> Option<ProgramStats> {
        let prog = self.ebpf.program(program.name())?;
        let fd = prog.fd().ok()?;
        crate::progstats::program_stats(fd.as_fd()).ok()
    }
}

fn check_ring(ring_bytes: u32) -> Result<(), ProbeError> {
    if !ring_bytes.is_power_of_two() || ring_bytes < MIN_RING_BYTES {
        return Err(ProbeError::RingSize(ring_bytes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names both sides use (`ws_abi::names`, `ProbeKind::program`) are the names the
    /// built object really has.
    #[test]
    fn the_object_has_every_map_and_program_ws_abi_names() {
        let object = aya_obj::Object::parse(PROBES_OBJECT).expect("parse the probe object");
        for map in ws_abi::names::maps::ALL {
            assert!(object.maps.contains_key(map), "no map {map} in the object");
        }
        let programs = ProbeKind::ALL
            .iter()
            .map(|k| k.program())
            .chain(ws_abi::names::programs::ALL);
        for program in programs {
            assert!(
                object.programs.contains_key(program),
                "no program {program} in the object: {:?}",
                object.programs.keys().collect::<Vec<_>>()
            );
        }
    }
}
