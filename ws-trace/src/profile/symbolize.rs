//! Stacks to names with blazesym: user frames through the ELF file they were mapped from
//! (symbol table and DWARF, demangled), kernel frames through kallsyms. An address no
//! symbol covers stays as `module+0xoffset`, never dropped.

use std::collections::{BTreeMap, HashMap};

use blazesym::{
    MaybeDefault,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Elf, Kernel, Source},
    },
};
use ws_abi::StackKey;

use super::{Frame, Profile, Stack, session::RawProfile};

/// How many distinct frames found a symbol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SymbolStats {
    /// Distinct user frames.
    pub user_frames: u64,
    /// Of those, with a symbol.
    pub user_known: u64,
    /// Distinct kernel frames.
    pub kernel_frames: u64,
    /// Of those, with a symbol.
    pub kernel_known: u64,
    /// Samples whose user stack was at most two frames deep.
    pub shallow_samples: u64,
}

impl SymbolStats {
    /// Share of distinct user frames with a symbol (0..=1; 1 when there were none).
    pub fn user_hit_rate(&self) -> f64 {
        ratio(self.user_known, self.user_frames)
    }

    /// Share of distinct kernel frames with a symbol.
    pub fn kernel_hit_rate(&self) -> f64 {
        ratio(self.kernel_known, self.kernel_frames)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A frame from one blazesym answer.
fn frame_of(result: &Symbolized<'_>, module: &str, addr: u64, offset: u64, kernel: bool) -> Frame {
    match result {
        Symbolized::Sym(sym) => Frame {
            name: sym.name.to_string(),
            module: module.to_string(),
            addr,
            line: sym
                .code_info
                .as_ref()
                .and_then(|c| Some((c.to_path().display().to_string(), c.line?))),
            kernel,
            known: true,
        },
        Symbolized::Unknown(_) => Frame {
            name: format!("{}+0x{offset:x}", basename(module)),
            module: module.to_string(),
            addr,
            line: None,
            kernel,
            known: false,
        },
    }
}

/// Symbolizes the kernel addresses in one batch.
fn kernel_frames(symbolizer: &Symbolizer, addrs: &[u64]) -> HashMap<u64, Frame> {
    // kallsyms is enough for names and fast; a vmlinux search is slow and rarely useful.
    let kernel = Kernel {
        vmlinux: MaybeDefault::None,
        debug_syms: false,
        ..Kernel::default()
    };
    let src = Source::Kernel(kernel);
    let results = symbolizer
        .symbolize(&src, Input::AbsAddr(addrs))
        .unwrap_or_default();
    addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let frame = match results.get(i) {
                Some(r) => frame_of(r, "[kernel]", addr, addr, true),
                None => frame_of(
                    &Symbolized::Unknown(blazesym::symbolize::Reason::IgnoredError),
                    "[kernel]",
                    addr,
                    addr,
                    true,
                ),
            };
            (addr, frame)
        })
        .collect()
}

/// Where to read a mapping's file: a binary replaced or deleted since the process mapped
/// it is still readable through `/proc/PID/map_files` while the process lives.
fn elf_path(tgid: u32, m: &super::session::Mapping) -> String {
    if m.path.ends_with(" (deleted)") {
        // Once the process is gone, the file at that path (if any) is another build whose
        // symbols would lie: the frames stay as addresses.
        let alive = format!("/proc/{tgid}/map_files/{:x}-{:x}", m.start, m.end);
        if std::fs::metadata(&alive).is_ok() {
            return alive;
        }
    }
    m.path.clone()
}

/// Symbolizes one process's user addresses (already adjusted to point into the call
/// instruction for return addresses) against its last seen mappings.
fn user_frames(
    symbolizer: &Symbolizer,
    tgid: u32,
    maps: &[super::session::Mapping],
    addrs: &[u64],
) -> HashMap<u64, Vec<Frame>> {
    let mut out = HashMap::new();
    // Per mapped file: (address, file offset).
    // Per mapped file (as shown, and where to read it): (address, file offset).
    let mut by_file: BTreeMap<(&str, String), Vec<(u64, u64)>> = BTreeMap::new();
    for &addr in addrs {
        match maps.iter().find(|m| m.start <= addr && addr < m.end) {
            Some(m) => by_file
                .entry((m.path.as_str(), elf_path(tgid, m)))
                .or_default()
                .push((addr, addr - m.start + m.offset)),
            None => {
                out.insert(
                    addr,
                    vec![Frame {
                        name: format!("[unknown]+0x{addr:x}"),
                        module: "[unknown]".into(),
                        addr,
                        line: None,
                        kernel: false,
                        known: false,
                    }],
                );
            }
        }
    }
    for ((path, elf), list) in by_file {
        let offsets: Vec<u64> = list.iter().map(|(_, off)| *off).collect();
        let results = if path.starts_with('/') {
            let src = Source::Elf(Elf::new(elf));
            symbolizer
                .symbolize(&src, Input::FileOffset(&offsets))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        for (i, &(addr, off)) in list.iter().enumerate() {
            let unknown = Symbolized::Unknown(blazesym::symbolize::Reason::Unsupported);
            let r = results.get(i).unwrap_or(&unknown);
            let mut frames = vec![frame_of(r, path, addr, off, false)];
            if let Symbolized::Sym(sym) = r {
                // Calls inlined at this address, outermost first, as frames of their own.
                frames.extend(sym.inlined.iter().map(|f| {
                    Frame {
                        name: f.name.to_string(),
                        module: path.to_string(),
                        addr,
                        line: f
                            .code_info
                            .as_ref()
                            .and_then(|c| Some((c.to_path().display().to_string(), c.line?))),
                        kernel: false,
                        known: true,
                    }
                }));
            }
            out.insert(addr, frames);
        }
    }
    out
}

/// Kernel frames of the BPF tracing path (`__traceiter_*`, `bpf_trace_run*`, programs).
fn is_tracing_frame(name: &str) -> bool {
    name.starts_with("__traceiter_")
        || name.starts_with("bpf_trace_run")
        || name.starts_with("bpf_prog_")
        || name.starts_with("__bpf_trace_")
        || name.starts_with("trace_call_bpf")
}

/// Return addresses point after the call; look up the call itself (all but the first,
/// sampled, frame).
fn lookup_addr(index: usize, ip: u64) -> u64 {
    if index == 0 { ip } else { ip.saturating_sub(1) }
}

/// Turns the kernel's stack ids into named frames, and notes what the user should know.
pub fn symbolize(raw: &RawProfile) -> Profile {
    let symbolizer = Symbolizer::new();
    let mut stats = SymbolStats::default();
    let keys = || raw.counts.iter().chain(&raw.off_cpu).map(|(k, _)| k);

    let mut kaddrs: Vec<u64> = keys()
        .filter_map(|k| raw.stacks.get(&u32::try_from(k.kernel_stack).ok()?))
        .flat_map(|s| s.iter().copied())
        .collect();
    kaddrs.sort_unstable();
    kaddrs.dedup();
    let kernel = kernel_frames(&symbolizer, &kaddrs);
    stats.kernel_frames = kernel.len() as u64;
    stats.kernel_known = kernel.values().filter(|f| f.known).count() as u64;

    let mut per_tgid: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for k in keys() {
        if let Some(s) = u32::try_from(k.user_stack)
            .ok()
            .and_then(|id| raw.stacks.get(&id))
        {
            let v = per_tgid.entry(k.tgid).or_default();
            v.extend(s.iter().enumerate().map(|(i, ip)| lookup_addr(i, *ip)));
        }
    }
    let mut user: HashMap<u32, HashMap<u64, Vec<Frame>>> = HashMap::new();
    let mut warnings = Vec::new();
    let mut module_hits: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut unmapped = Vec::new();
    for (tgid, mut addrs) in per_tgid {
        addrs.sort_unstable();
        addrs.dedup();
        let maps = raw
            .processes
            .get(&tgid)
            .map(|p| p.maps.as_slice())
            .unwrap_or_default();
        if maps.is_empty() && raw.processes.get(&tgid).is_none_or(|p| p.comm.is_empty()) {
            unmapped.push(tgid);
        }
        let frames = user_frames(&symbolizer, tgid, maps, &addrs);
        for f in frames.values().filter_map(|v| v.first()) {
            let e = module_hits.entry(f.module.clone()).or_default();
            e.0 += 1;
            e.1 += u64::from(f.known);
        }
        stats.user_frames += frames.len() as u64;
        stats.user_known += frames
            .values()
            .filter(|v| v.first().is_some_and(|f| f.known))
            .count() as u64;
        user.insert(tgid, frames);
    }
    if !unmapped.is_empty() {
        let shown: Vec<String> = unmapped.iter().take(8).map(u32::to_string).collect();
        warnings.push(format!(
            "{} process(es) exited before their memory map was read (pid {}{}): their user frames are raw addresses",
            unmapped.len(),
            shown.join(", "),
            if unmapped.len() > shown.len() { ", ..." } else { "" }
        ));
    }
    for (module, (total, known)) in &module_hits {
        if module.starts_with('/') && known == &0 {
            warnings.push(format!(
                "{module}: no symbols found for its {total} sampled address(es) (stripped?); its frames are shown as {}+0xOFFSET. Profile a build with symbols (or install its debug info) to see names.",
                basename(module)
            ));
        }
    }

    let build = |k: &StackKey, value: u64| -> Stack {
        let mut frames = Vec::new();
        if let Some(s) = u32::try_from(k.user_stack)
            .ok()
            .and_then(|id| raw.stacks.get(&id))
        {
            let table = user.get(&k.tgid);
            for (i, ip) in s.iter().enumerate().rev() {
                let a = lookup_addr(i, *ip);
                match table.and_then(|t| t.get(&a)) {
                    Some(found) => frames.extend(found.iter().cloned()),
                    None => frames.push(Frame {
                        name: format!("[unknown]+0x{a:x}"),
                        module: "[unknown]".into(),
                        addr: a,
                        line: None,
                        kernel: false,
                        known: false,
                    }),
                }
            }
        }
        if let Some(s) = u32::try_from(k.kernel_stack)
            .ok()
            .and_then(|id| raw.stacks.get(&id))
        {
            // The off-CPU program runs inside the scheduler's tracepoint: drop the frames
            // of the tracing machinery itself (innermost) so the stack ends in schedule().
            let skip = s
                .iter()
                .take_while(|ip| kernel.get(ip).is_some_and(|f| is_tracing_frame(&f.name)))
                .count();
            for ip in s[skip..].iter().rev() {
                if let Some(f) = kernel.get(ip) {
                    frames.push(f.clone());
                }
            }
        }
        if frames.is_empty() {
            frames.push(Frame {
                name: "[no stack]".into(),
                module: "[unknown]".into(),
                addr: 0,
                line: None,
                kernel: false,
                known: false,
            });
        }
        Stack {
            tgid: k.tgid,
            process: raw
                .processes
                .get(&k.tgid)
                .map(|p| p.comm.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| format!("pid {}", k.tgid)),
            frames,
            value,
        }
    };
    let on_cpu: Vec<Stack> = raw.counts.iter().map(|(k, v)| build(k, *v)).collect();
    let off_cpu: Vec<Stack> = raw.off_cpu.iter().map(|(k, v)| build(k, *v)).collect();

    // Frame pointers: without them the kernel's unwinder stops after a frame or two.
    let mut shallow: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for (k, v) in &raw.counts {
        let depth = u32::try_from(k.user_stack)
            .ok()
            .and_then(|id| raw.stacks.get(&id))
            .map_or(0, Vec::len);
        if depth == 0 {
            continue;
        }
        let e = shallow.entry(k.tgid).or_default();
        e.0 += v;
        if depth <= 2 {
            e.1 += v;
            stats.shallow_samples += v;
        }
    }
    for (tgid, (total, short)) in shallow {
        if total >= 10 && short * 2 >= total {
            let exe = std::fs::read_link(format!("/proc/{tgid}/exe"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| format!("pid {tgid}"));
            warnings.push(format!(
                "{exe}: {short} of {total} user stacks are at most 2 frames deep: it was probably built without frame pointers, so callers are missing. Rebuild it with RUSTFLAGS=\"-C force-frame-pointers=yes\" (Rust) or -fno-omit-frame-pointer (C/C++)."
            ));
        }
    }

    Profile {
        on_cpu,
        off_cpu,
        freq: raw.freq,
        duration_ns: raw.duration_ns,
        start_unix_ns: raw.start_unix_ns,
        warnings,
        stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::session::ProcessInfo;

    /// A function of this test binary, looked up through its own mapping.
    #[inline(never)]
    fn symbolize_me() -> u64 {
        std::hint::black_box(7)
    }

    #[test]
    fn own_function_and_unmapped_address() {
        let maps =
            super::super::session::parse_maps(&std::fs::read_to_string("/proc/self/maps").unwrap());
        let addr = symbolize_me as *const () as usize as u64 + 1;
        let mut raw = RawProfile::default();
        raw.stacks.insert(1, vec![addr]);
        raw.stacks.insert(2, vec![0x10]);
        raw.processes.insert(
            42,
            ProcessInfo {
                comm: "me".into(),
                maps,
            },
        );
        let key = |user_stack| StackKey {
            tgid: 42,
            user_stack,
            kernel_stack: -14,
            _pad: 0,
        };
        raw.counts = vec![(key(1), 3), (key(2), 1)];
        let p = symbolize(&raw);
        assert_eq!(p.on_cpu.len(), 2);
        assert!(
            p.on_cpu[0].frames[0].name.contains("symbolize_me"),
            "{:?}",
            p.on_cpu[0].frames
        );
        assert_eq!(p.on_cpu[0].process, "me");
        assert_eq!(p.on_cpu[1].frames[0].name, "[unknown]+0x10");
        assert_eq!(p.stats.user_frames, 2);
        assert_eq!(p.stats.user_known, 1);
    }
}
