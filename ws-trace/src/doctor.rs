//! `ws-trace doctor`: what this machine allows, found by trying it.
//!
//! Each hook type is checked by really loading and attaching a trivial program from the
//! probe object, making it fire, and reading back how often it ran. Where the kernel says
//! no, its error is shown as it gave it.
use std::{
    fmt,
    io::{IoSliceMut, Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use aya::maps::PerCpuArray;
use serde::Serialize;
use ws_abi::doctor_hit;

use crate::{
    btf::Btf,
    hooks::{Fallback, RECV_FALLBACK, SEND_FALLBACK},
    loader::{self, DEFAULT_RING_BYTES, Map, ProbeError, ProbeObject, Program},
    privileges::Privileges,
    tracefs,
};

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Ok,
    /// Not available, and ws-trace does without it (or falls back).
    Unavailable,
    /// Not available, and ws-trace needs it.
    Fail,
}

/// One line of the doctor's report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Stable name (`hook.fentry`, `ktls`, ...).
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// Whether ws-trace needs this to work.
    pub required: bool,
    /// What was found, or the kernel's error.
    pub detail: String,
    /// What to do about it, when it is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `false` when a required check failed.
    pub ok: bool,
    /// Every check, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// The check of that name.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ws-trace doctor")?;
        for c in &self.checks {
            let mark = match c.status {
                Status::Ok => "ok",
                Status::Unavailable => "n/a",
                Status::Fail => "FAIL",
            };
            writeln!(f, "  {mark:<5} {:<20} {}", c.name, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(f, "  {:<5} {:<20} -> {fix}", "", "")?;
            }
        }
        if self.ok {
            write!(f, "everything ws-trace needs is here")
        } else {
            write!(f, "ws-trace cannot run here: fix the FAIL lines above")
        }
    }
}

fn check(name: &'static str, required: bool, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check {
            name,
            status: Status::Ok,
            required,
            detail,
            fix: None,
        },
        Err(detail) => Check {
            name,
            status: if required {
                Status::Fail
            } else {
                Status::Unavailable
            },
            required,
            detail,
            fix: None,
        },
    }
}

fn with_fix(mut c: Check, fix: &str) -> Check {
    if c.status != Status::Ok {
        c.fix = Some(fix.to_string());
    }
    c
}

/// Runs every check.
pub fn run() -> Report {
    // Read once: shown by the btf check, then given to the loader when it was usable.
    let types = Btf::from_sys_fs();
    let btf_check = btf(&types);
    let usable_btf = types.ok().filter(|_| btf_check.is_ok());
    let mut checks = vec![
        check("kernel", true, kernel()),
        with_fix(
            check("btf", true, btf_check),
            "ws-trace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        ),
    ];
    let privileges = Privileges::current();
    let privileged = privileges.as_ref().is_ok_and(Privileges::can_trace);
    checks.push(with_fix(
        check(
            "privileges",
            true,
            match &privileges {
                Ok(p) if p.can_trace() => Ok(format!(
                    "root={} CAP_BPF={} CAP_PERFMON={} CAP_SYS_ADMIN={}",
                    p.root, p.cap_bpf, p.cap_perfmon, p.cap_sys_admin
                )),
                Ok(p) => Err(p
                    .require_tracing()
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default()),
                Err(e) => Err(e.to_string()),
            },
        ),
        "run with sudo / needs CAP_BPF+CAP_PERFMON",
    ));
    checks.push(tracefs_check(privileged));
    if privileged {
        match ProbeObject::load_with(usable_btf.as_ref(), DEFAULT_RING_BYTES) {
            Ok(mut object) => {
                checks.push(check(
                    "bpf",
                    true,
                    Ok("bpf() allowed: probe object loaded, maps created".into()),
                ));
                checks.extend(hooks(&mut object));
            }
            Err(e) => checks.push(with_fix(
                check("bpf", true, Err(format!("{e:#}"))),
                "check kernel.unprivileged_bpf_disabled, lockdown and seccomp",
            )),
        }
    } else {
        checks.push(check(
            "bpf",
            true,
            Err("not tried: no privileges to load BPF programs".into()),
        ));
    }
    checks.push(with_fix(
        check("ktls", false, ktls()),
        "the engine uses userspace TLS (rustls); for kTLS load the `tls` module (modprobe tls)",
    ));
    checks.push(with_fix(
        check("clock", false, clock()),
        "the engine falls back to clock_gettime(CLOCK_MONOTONIC) stamps",
    ));
    checks.push(with_fix(
        check("so_timestamping", false, so_timestamping()),
        "the nic-stamp cross-check against socket timestamps is unavailable",
    ));
    let ok = checks.iter().all(|c| c.status != Status::Fail);
    Report { ok, checks }
}

fn kernel() -> Result<String, String> {
    let u = nix::sys::utsname::uname().map_err(|e| e.to_string())?;
    Ok(format!(
        "{} {} {}",
        u.sysname().to_string_lossy(),
        u.release().to_string_lossy(),
        u.machine().to_string_lossy()
    ))
}

fn btf(types: &Result<Btf, crate::btf::BtfError>) -> Result<String, String> {
    let btf = types.as_ref().map_err(|e| e.to_string())?;
    let off = loader::kernel_offsets(btf).map_err(|e| e.to_string())?;
    Ok(format!(
        "/sys/kernel/btf/vmlinux: {} types; sk_buff.len@{} sk_buff.dev@{} net_device.ifindex@{}",
        btf.type_count(),
        off.sk_buff_len,
        off.sk_buff_dev,
        off.net_device_ifindex
    ))
}

fn tracefs_check(privileged: bool) -> Check {
    let result = match tracefs::mounted() {
        Some(dir) => Ok(format!("mounted at {}", dir.display())),
        None if privileged => match tracefs::ensure_mounted() {
            Ok((dir, _)) => Ok(format!(
                "was not mounted; ws-trace mounted it at {} (it does so whenever classic tracepoints are used)",
                dir.display()
            )),
            Err(e) => Err(e.to_string()),
        },
        None => Err(format!(
            "not mounted; ws-trace mounts it at {} when run with privileges",
            tracefs::TRACEFS_PATH
        )),
    };
    with_fix(
        check("tracefs", true, result),
        "mount -t tracefs nodev /sys/kernel/tracing",
    )
}

/// The function the doctor's uprobe attaches to.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ws_trace_doctor_target(x: u64) -> u64 {
    std::hint::black_box(x.wrapping_mul(31).wrapping_add(7))
}

/// A uprobe site like ws-engine's: a 5-byte nop, then the work.
#[cfg(target_arch = "x86_64")]
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn ws_trace_doctor_nop5_target(x: u64) -> u64 {
    core::arch::naked_asm!(
        ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
        "lea rax, [rdi + 1]",
        "ret"
    )
}

/// Whether a uprobe on a 5-byte nop was turned into a call to the kernel's trampoline.
#[cfg(target_arch = "x86_64")]
fn nop5_uprobe(object: &mut ProbeObject) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // Loaded by the hook.uprobe check before; attach a second site.
    let link = object
        .attach_uprobe(
            Program::DoctorUprobe,
            &exe,
            "ws_trace_doctor_nop5_target",
            None,
        )
        .map_err(refused)?;
    // The kernel optimizes a nop5 site on its first hit.
    for i in 0..4 {
        std::hint::black_box(ws_trace_doctor_nop5_target(std::hint::black_box(i)));
    }
    let site = ws_trace_doctor_nop5_target as *const u8;
    // SAFETY: the function is mapped, readable text of this binary, at least 5 bytes long
    // (the nop, an lea and a ret); the kernel rewrites it atomically.
    let first = unsafe { site.read_volatile() };
    let trampoline = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| e.to_string())?
        .contains("[uprobes-trampoline]");
    let _ = object.detach_uprobe(Program::DoctorUprobe, link);
    if first == 0xe8 && trampoline {
        Ok("a uprobe on a 5-byte nop became a call into [uprobes-trampoline] (ws-engine's probe sites are such nops)".into())
    } else {
        Err(format!(
            "a uprobe on a 5-byte nop still traps (first byte {first:#04x}, trampoline mapped: {trampoline}); each callback probe costs a breakpoint trap (kernels before 6.18)"
        ))
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn nop5_uprobe(_object: &mut ProbeObject) -> Result<String, String> {
    Err("x86-64 only".into())
}

fn hits(object: &ProbeObject, index: u32) -> Result<u64, String> {
    let hits: PerCpuArray<_, u64> = object
        .typed_map(Map::DoctorHits)
        .map_err(|e| e.to_string())?;
    Ok(hits.get(&index, 0).map_err(|e| e.to_string())?.iter().sum())
}

fn fired(object: &ProbeObject, index: u32, what: &str) -> Result<String, String> {
    match hits(object, index)? {
        0 => Err(format!("attached, but did not fire on {what}")),
        n => Ok(format!("loaded, attached, fired {n}x on {what}")),
    }
}

/// Renders an error with its whole source chain (the kernel's errno is usually last).
fn err(e: impl std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !s.contains(&cause_text) {
            s.push_str(": ");
            s.push_str(&cause_text);
        }
        source = cause.source();
    }
    // aya appends the verifier log, which is empty when the kernel refused before verifying.
    s.trim_end()
        .trim_end_matches("Verifier output:")
        .trim_end()
        .to_string()
}

/// A loader error as a check's detail: a refusal is the kernel's answer as it gave it (the
/// check's name already says which hook it was).
fn refused(e: ProbeError) -> String {
    match e {
        ProbeError::Program { source, .. } => err(source),
        other => err(other),
    }
}

fn syscalls() {
    for _ in 0..16 {
        std::hint::black_box(nix::unistd::getppid());
    }
}

fn tcp_exchange() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    client.write_all(b"doctor")?;
    let mut buf = [0u8; 6];
    server.read_exact(&mut buf)?;
    Ok(())
}

fn hooks(object: &mut ProbeObject) -> Vec<Check> {
    let mut out = Vec::new();

    let r = (|| -> Result<String, String> {
        object
            .attach_tracepoint(Program::DoctorTracepoint, "syscalls", "sys_enter_getppid")
            .map_err(refused)?;
        syscalls();
        fired(object, doctor_hit::TRACEPOINT, "syscalls:sys_enter_getppid")
    })();
    out.push(check("hook.tracepoint", true, r));

    let r = (|| -> Result<String, String> {
        object
            .attach_tp_btf(Program::DoctorTpBtf, "sys_enter")
            .map_err(refused)?;
        syscalls();
        fired(object, doctor_hit::TP_BTF, "sys_enter")
    })();
    out.push(check("hook.tp_btf", true, r));

    let r = (|| -> Result<String, String> {
        object
            .attach_raw_tracepoint(Program::DoctorRawTracepoint, "sys_enter")
            .map_err(refused)?;
        syscalls();
        fired(object, doctor_hit::RAW_TP, "sys_enter")
    })();
    out.push(check("hook.raw_tracepoint", false, r));

    let r = (|| -> Result<String, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        object
            .attach_uprobe(Program::DoctorUprobe, &exe, "ws_trace_doctor_target", None)
            .map_err(refused)?;
        for i in 0..4 {
            std::hint::black_box(ws_trace_doctor_target(i));
        }
        fired(object, doctor_hit::UPROBE, "ws_trace_doctor_target")
    })();
    let uprobe_ok = r.is_ok();
    out.push(check("hook.uprobe", true, r));
    if uprobe_ok {
        out.push(check("uprobe.nop5", false, nop5_uprobe(object)));
    }

    let r = (|| -> Result<String, String> {
        object
            .attach_cpu_clock(Program::DoctorPerfEvent, 1000)
            .map_err(refused)?;
        let until = Instant::now() + Duration::from_millis(50);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        fired(
            object,
            doctor_hit::PERF_EVENT,
            "software cpu-clock at 1000 Hz",
        )
    })();
    out.push(check("hook.perf_event", true, r));

    let r = (|| -> Result<String, String> {
        object
            .attach_fentry(Program::DoctorFentry, "tcp_rcv_established")
            .map_err(refused)?;
        tcp_exchange().map_err(|e| e.to_string())?;
        fired(object, doctor_hit::FENTRY, "tcp_rcv_established")
    })();
    out.push(with_fix(
        check("hook.fentry", false, r),
        "not needed: ws-trace uses tp_btf tracepoints instead of fentry",
    ));

    let forced = crate::probes::fallbacks_forced_by_env();
    out.push(fallback_check(
        object,
        "hook.sock_recv",
        true,
        &RECV_FALLBACK,
        (
            Program::Probe(ws_abi::ProbeKind::SockRecv),
            Program::RecvFallback,
        ),
        forced,
    ));
    out.push(fallback_check(
        object,
        "hook.sock_send",
        false,
        &SEND_FALLBACK,
        (Program::SendLearner, Program::StateLearner),
        forced,
    ));
    out
}

/// A tracepoint that kernels before 6.3 lack: ok where it attaches; else which fallback
/// this kernel uses (attached, to be sure it loads) and what degrades.
fn fallback_check(
    object: &mut ProbeObject,
    name: &'static str,
    required: bool,
    fallback: &Fallback,
    (program, instead): (Program, Program),
    forced: bool,
) -> Check {
    let why = if forced {
        format!(
            "{} not used ({}=1)",
            fallback.hook,
            crate::probes::FORCE_FALLBACKS_ENV
        )
    } else {
        match object.attach_tp_btf(program, fallback.hook) {
            Ok(()) => {
                return check(
                    name,
                    required,
                    Ok(format!(
                        "{} (kernel {}+) attached: {}",
                        fallback.hook, fallback.since, fallback.role
                    )),
                );
            }
            Err(ProbeError::NoTracepoint { .. }) => {
                format!(
                    "no {} on this kernel (it is {}+)",
                    fallback.hook, fallback.since
                )
            }
            Err(e) => format!("{} refused: {}", fallback.hook, refused(e)),
        }
    };
    match object.attach_tp_btf(instead, fallback.instead) {
        Ok(()) => Check {
            name,
            status: Status::Unavailable,
            required,
            detail: format!(
                "{why}; fallback: {} from {} (attached ok)",
                fallback.role, fallback.instead
            ),
            fix: Some(format!("degrades: {}", fallback.degrades)),
        },
        Err(e) => check(
            name,
            required,
            Err(format!(
                "{why}; its fallback {} failed too: {}",
                fallback.instead,
                refused(e)
            )),
        ),
    }
}

fn ktls() -> Result<String, String> {
    let ulps = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let client = TcpStream::connect(listener.local_addr().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let name = b"tls";
    // SAFETY: a valid fd owned by `client`, a valid pointer/length pair for the option value.
    let rc = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(format!(
            "tls ULP attached to a loopback socket (available ULPs: {ulps})"
        ))
    } else {
        Err(format!(
            "setsockopt(TCP_ULP, \"tls\"): {} (available ULPs: {ulps})",
            std::io::Error::last_os_error()
        ))
    }
}

fn clock() -> Result<String, String> {
    use ws_engine::clock::{Clock, ClockCost, CpuFlags, KernelClocksource};
    let source = KernelClocksource::detect().current;
    let source = if source.is_empty() {
        "unknown".to_string()
    } else {
        source
    };
    let flags = CpuFlags::get();
    let cost = ClockCost::get();
    let detail = format!(
        "clocksource={source} constant_tsc={} nonstop_tsc={} tsc_known_freq={}; {cost}",
        flags.constant_tsc, flags.nonstop_tsc, flags.tsc_known_freq,
    );
    if ws_engine::clock::tsc_is_invariant() {
        let cal = Clock::global().calibration();
        Ok(format!("{detail}: engine stamps use the TSC ({cal})"))
    } else {
        Err(format!(
            "{detail}: TSC not invariant (engine stamps use clock_gettime)"
        ))
    }
}

fn so_timestamping() -> Result<String, String> {
    use nix::sys::socket::{
        ControlMessageOwned, MsgFlags, SockaddrStorage, TimestampingFlag, recvmsg, setsockopt,
        sockopt,
    };
    let e = |e: std::io::Error| e.to_string();
    let rx = UdpSocket::bind("127.0.0.1:0").map_err(e)?;
    let tx = UdpSocket::bind("127.0.0.1:0").map_err(e)?;
    rx.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(e)?;
    setsockopt(
        &rx,
        sockopt::Timestamping,
        &(TimestampingFlag::SOF_TIMESTAMPING_RX_SOFTWARE
            | TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE),
    )
    .map_err(|e| format!("setsockopt(SO_TIMESTAMPING): {e}"))?;
    // The first SO_TIMESTAMPING user switches receive stamping on through a work item,
    // so the first packets after setsockopt may arrive unstamped: try for a while.
    let dest = rx.local_addr().map_err(e)?;
    for attempt in 1..=50 {
        tx.send_to(b"stamp", dest).map_err(e)?;
        let mut buf = [0u8; 16];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(nix::sys::socket::Timestamps);
        let msg = recvmsg::<SockaddrStorage>(
            rx.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .map_err(|e| format!("recvmsg: {e}"))?;
        for c in msg.cmsgs().map_err(|e| e.to_string())? {
            if let ControlMessageOwned::ScmTimestampsns(ts) = c
                && ts.system.tv_sec() != 0
            {
                let hw = if ts.hw_raw.tv_sec() != 0 {
                    "present"
                } else {
                    "absent"
                };
                return Ok(format!(
                    "software receive stamps on loopback (CLOCK_REALTIME, from packet {attempt}); hardware stamp {hw}"
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err("50 packets carried no software receive stamp".into())
}
