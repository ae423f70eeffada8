//! Loading the probe object, configuring it and attaching its programs.
//!
//! Everything the kernel holds for a [`Probes`] (programs, links, maps) is owned by file
//! descriptors inside it: dropping it, or the process dying for any reason, detaches and
//! unloads every probe. Nothing is pinned.
use std::{os::fd::OwnedFd, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
};
use ws_abi::{
    CONFIG_LOG, CONFIG_OFFSETS_VALID, KernelOffsets, PROBE_COUNT, ProbeConfig, ProbeKind,
};

use crate::btf::{Btf, BtfError};

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
    /// The ring size is not a power of two or not a multiple of the page size.
    #[error("ring size {0} is not a power-of-two multiple of 4096 bytes")]
    RingSize(u32),
}

/// How to load the probes.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Event ring size in bytes.
    pub ring_bytes: u32,
    /// Emit aya-log debug records from the probes (forwarded to the `log` crate).
    pub log: bool,
    /// Only trace task-context events of this process (0: all).
    pub target_tgid: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            ring_bytes: DEFAULT_RING_BYTES,
            log: false,
            target_tgid: 0,
        }
    }
}

/// Kernel struct offsets the probes need, read from the running kernel's BTF.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    Ok(KernelOffsets {
        sk_buff_len: btf.field_offset("sk_buff", "len")?,
        sk_buff_dev: btf.field_offset("sk_buff", "dev")?,
        net_device_ifindex: btf.field_offset("net_device", "ifindex")?,
        _pad: 0,
    })
}

/// A loaded, configured probe object.
pub struct Probes {
    ebpf: Ebpf,
    kernel_btf: aya::Btf,
    attached: Vec<ProbeKind>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    _stats: Option<OwnedFd>,
}

impl Probes {
    /// Loads the object and writes its configuration; attaches nothing yet.
    pub fn load(opts: &LoadOptions) -> Result<Probes, ProbeError> {
        if !opts.ring_bytes.is_power_of_two() || opts.ring_bytes < 4096 {
            return Err(ProbeError::RingSize(opts.ring_bytes));
        }
        let kernel_btf = aya::Btf::from_sys_fs()?;
        let offsets = kernel_offsets(&Btf::from_sys_fs()?)?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&kernel_btf))
            .map_max_entries("EVENTS", opts.ring_bytes)
            .load(PROBES_OBJECT)?;
        let mut flags = CONFIG_OFFSETS_VALID;
        if opts.log {
            flags |= CONFIG_LOG;
        }
        let config = ProbeConfig {
            flags,
            target_tgid: opts.target_tgid,
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
        Ok(Probes {
            ebpf,
            kernel_btf,
            attached: Vec::new(),
            logger,
            _stats: stats,
        })
    }

    /// Loads and attaches one probe.
    pub fn attach(&mut self, kind: ProbeKind) -> Result<(), ProbeError> {
        let program = kind.program();
        let err = |source| ProbeError::Program {
            probe: kind.name(),
            hook: kind.hook(),
            source,
        };
        let prog: &mut BtfTracePoint = self
            .ebpf
            .program_mut(program)
            .ok_or(ProbeError::NoProgram(program))?
            .try_into()
            .map_err(err)?;
        prog.load(kind.hook(), &self.kernel_btf).map_err(err)?;
        prog.attach().map_err(err)?;
        self.attached.push(kind);
        Ok(())
    }

    /// Attaches every probe in `kinds`.
    pub fn attach_all(&mut self, kinds: &[ProbeKind]) -> Result<(), ProbeError> {
        kinds.iter().try_for_each(|k| self.attach(*k))
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

    /// Kernel-measured run time and run count of a probe's program (needs BPF stats).
    pub fn run_stats(&self, kind: ProbeKind) -> Option<(Duration, u64)> {
        let prog = self.ebpf.program(kind.program())?;
        let info = prog.info().ok()?;
        Some((info.run_time(), info.run_count()))
    }

    /// Forwards pending aya-log records to the `log` crate (no-op unless logging).
    pub fn flush_log(&mut self) {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
    }
}
