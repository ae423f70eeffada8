//! Resolving `BINARY:SYMBOL` to the place a uprobe goes.
//!
//! The user names a function the way they know it: a Rust path (`my_crate::module::func`,
//! with or without its `::h0123abcd…` hash), a Rust-mangled name (legacy `_ZN…E` or v0
//! `_R…`), a C++ name (mangled `_ZN2ns3fooEi`, or demangled `ns::foo(int)` / `ns::foo`) or a
//! plain C symbol. [`resolve`] finds the one function symbol it means and returns its ELF
//! name, address and file offset; an ambiguous name lists the candidates, a missing one
//! lists close matches, and a stripped binary says that it is stripped.
//!
//! # Library
//! Symbols are read with **blazesym**'s `inspect` API ([`blazesym::inspect::Inspector`]).
//! It builds on this toolchain (stable rustc 1.95; blazesym 0.2 needs 1.88), it walks both
//! `.symtab` and `.dynsym` (deduplicated), follows `.gnu_debugdata` (MiniDebugInfo), gives
//! each symbol's file offset (which is what a uprobe needs), and it is the library
//! `ws-trace profile` will use for stack symbolization, so one ELF reader serves both.
//! blazesym reports names as they are in the ELF file, so demangling is ours:
//! `rustc-demangle` for Rust and `cpp_demangle` for C++ (both already pulled in by
//! blazesym's `demangle` feature, so they cost no extra build).
//!
//! # Matching order
//! 1. the exact ELF name (mangled or not);
//! 2. the full demangled name (Rust: with its hash, e.g. `a::b::h0123456789abcdef`;
//!    C++: with its parameter list);
//! 3. the short demangled name (Rust: without the hash and crate disambiguators; C++:
//!    without the parameter list).
//!
//! A user-given Rust-mangled name that is not in the binary verbatim is demangled and
//! matched by tiers 2 and 3. The first tier with any hit decides; if its hits sit at more
//! than one address the name is ambiguous. Only function symbols are considered.
use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use blazesym::SymType;
use blazesym::inspect::{Inspector, SymInfo, source::Elf, source::Source};

/// How many close matches a [`SymbolError::NotFound`] lists at most.
pub const MAX_CLOSE_MATCHES: usize = 5;

/// A function symbol found in a binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The name exactly as in the ELF symbol table (mangled if it is).
    pub elf_name: String,
    /// The demangled name (with hash for Rust legacy symbols); the ELF name if it is not
    /// mangled.
    pub demangled: String,
    /// The symbol's `st_value`: its virtual address in the file's layout.
    pub address: u64,
    /// The symbol's offset in the file: where a uprobe on it is placed.
    pub file_offset: u64,
    /// The symbol's `st_size` in bytes (0 when the ELF file does not say).
    pub size: u64,
}

/// Why a symbol could not be resolved or a target spec not parsed.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// The `BINARY:SYMBOL` spec is malformed.
    #[error(
        "bad uprobe target {spec:?}: {reason} (expected BINARY:SYMBOL, e.g. ./app:my_crate::on_message)"
    )]
    BadSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The binary does not exist (as a path) or is not on `PATH` (as a bare name).
    #[error("binary {binary:?} not found{}", if binary.contains('/') { "" } else { " on PATH or in the current directory" })]
    BinaryNotFound {
        /// The binary as given.
        binary: String,
    },
    /// A bare library name that no traced process has mapped.
    #[error(
        "no traced process (pid {pids}) maps a library named {library:?} (yet): give its path, e.g. /usr/lib/x86_64-linux-gnu/{library}.so"
    )]
    NotMapped {
        /// The name as given.
        library: String,
        /// The processes looked at.
        pids: String,
    },
    /// The binary could not be read as an ELF file.
    #[error("cannot read symbols of {}: {source}", binary.display())]
    Inspect {
        /// The binary.
        binary: PathBuf,
        /// What blazesym said.
        #[source]
        source: blazesym::Error,
    },
    /// The binary has no symbol table and the symbol is not among its dynamic symbols.
    #[error(
        "{} is stripped (no .symtab): {symbol:?} is not among its {dynamic} exported dynamic \
         symbols; trace an unstripped build (Cargo: `strip = false` in its profile)",
        binary.display()
    )]
    Stripped {
        /// The symbol asked for.
        symbol: String,
        /// The binary.
        binary: PathBuf,
        /// How many defined dynamic function symbols it has.
        dynamic: usize,
    },
    /// No function symbol matches.
    #[error("{}", not_found_message(symbol, binary, close))]
    NotFound {
        /// The symbol asked for.
        symbol: String,
        /// The binary searched.
        binary: PathBuf,
        /// Up to [`MAX_CLOSE_MATCHES`] close matches (demangled, without hash), best first.
        close: Vec<String>,
    },
    /// The name matches functions at more than one address.
    #[error("{}", ambiguous_message(symbol, binary, candidates))]
    Ambiguous {
        /// The symbol asked for.
        symbol: String,
        /// The binary searched.
        binary: PathBuf,
        /// The matches, as `demangled (elf_name) @ 0xaddress`.
        candidates: Vec<String>,
    },
    /// The symbol has no place in the file (no file offset could be computed).
    #[error("{symbol:?} in {} has no file offset (not in a loadable section)", binary.display())]
    NoFileOffset {
        /// The symbol asked for.
        symbol: String,
        /// The binary.
        binary: PathBuf,
    },
}

fn not_found_message(symbol: &str, binary: &Path, close: &[String]) -> String {
    let mut msg = format!("no function {symbol:?} in {}", binary.display());
    if close.is_empty() {
        msg.push_str(" (and nothing close to it)");
    } else {
        msg.push_str("; close matches:");
        for c in close {
            msg.push_str("\n  ");
            msg.push_str(c);
        }
    }
    msg
}

fn ambiguous_message(symbol: &str, binary: &Path, candidates: &[String]) -> String {
    let mut msg = format!(
        "{symbol:?} matches {} functions in {}; give the mangled name or the full name with its hash:",
        candidates.len(),
        binary.display()
    );
    for c in candidates {
        msg.push_str("\n  ");
        msg.push_str(c);
    }
    msg
}

/// Splits `BINARY:SYMBOL` at the first `:` that is not part of a `::`, and finds BINARY.
///
/// BINARY containing a `/` is a path and must exist; a bare name is looked up on `PATH`
/// (executable files only), then in the current directory. SYMBOL is returned as given.
pub fn parse_target(spec: &str) -> Result<(PathBuf, String), SymbolError> {
    let bad = |reason| SymbolError::BadSpec {
        spec: spec.to_string(),
        reason,
    };
    let bytes = spec.as_bytes();
    let mut split = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b':' {
            if bytes.get(i + 1) == Some(&b':') {
                i += 2;
                continue;
            }
            split = Some(i);
            break;
        }
        i += 1;
    }
    let Some(at) = split else {
        return Err(bad("no ':' between binary and symbol"));
    };
    let (binary, symbol) = (&spec[..at], &spec[at + 1..]);
    if binary.is_empty() {
        return Err(bad("empty binary"));
    }
    if symbol.is_empty() {
        return Err(bad("empty symbol"));
    }
    Ok((find_binary(binary)?, symbol.to_string()))
}

/// [`parse_target`], then the binary found: a path, a program on `PATH` or in the current
/// directory, or a shared library one of `tgids` has mapped, named by its file name or a
/// prefix of it (`libssl` or `libssl.so.3` for `/usr/lib/x86_64-linux-gnu/libssl.so.3`),
/// reached through `/proc/PID/root` so a container's own files work too.
pub fn parse_target_in(
    spec: &str,
    tgids: &std::collections::BTreeSet<u32>,
) -> Result<(PathBuf, String), SymbolError> {
    let name = match parse_target(spec) {
        Err(SymbolError::BinaryNotFound { binary })
            if !binary.contains('/') && !tgids.is_empty() =>
        {
            binary
        }
        other => return other,
    };
    // The symbol is what follows the binary's name and its ':'.
    let symbol = spec[name.len() + 1..].to_string();
    let path = mapped_library(&name, tgids).ok_or_else(|| SymbolError::NotMapped {
        pids: tgids
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        library: name,
    })?;
    Ok((path, symbol))
}

/// The first file mapped by one of `tgids` whose file name is `name` or starts with it
/// (followed by `.` or `-`), as a path through that process's root.
fn mapped_library(name: &str, tgids: &std::collections::BTreeSet<u32>) -> Option<PathBuf> {
    for tgid in tgids {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{tgid}/maps")) else {
            continue;
        };
        for line in maps.lines() {
            // address perms offset dev inode path
            let Some(path) = line.split_whitespace().nth(5) else {
                continue;
            };
            let file = path.rsplit('/').next().unwrap_or(path);
            let matches = file == name
                || file
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('-'));
            if matches && path.starts_with('/') {
                return Some(PathBuf::from(format!("/proc/{tgid}/root{path}")));
            }
        }
    }
    None
}

fn find_binary(binary: &str) -> Result<PathBuf, SymbolError> {
    let not_found = || SymbolError::BinaryNotFound {
        binary: binary.to_string(),
    };
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return if p.is_file() { Ok(p) } else { Err(not_found()) };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(binary);
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
        }
    }
    let local = PathBuf::from(binary);
    if local.is_file() {
        return Ok(local);
    }
    Err(not_found())
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A function symbol with its demangled forms, as matched by [`resolve`].
#[derive(Clone, Debug)]
struct Candidate {
    elf_name: String,
    demangled: String,
    short: String,
    address: u64,
    file_offset: Option<u64>,
    size: u64,
}

impl Candidate {
    fn from_sym(sym: &SymInfo<'_>) -> Candidate {
        let (demangled, short) = demangle(&sym.name);
        Candidate {
            elf_name: sym.name.to_string(),
            demangled,
            short,
            address: sym.addr,
            file_offset: sym.file_offset,
            size: sym.size.unwrap_or(0) as u64,
        }
    }

    fn describe(&self) -> String {
        if self.elf_name == self.demangled {
            format!("{} @ {:#x}", self.demangled, self.address)
        } else {
            format!(
                "{} ({}) @ {:#x}",
                self.demangled, self.elf_name, self.address
            )
        }
    }
}

/// Full and short demangled forms of an ELF name (both the name itself if not mangled).
fn demangle(name: &str) -> (String, String) {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return (format!("{d}"), format!("{d:#}"));
    }
    if name.starts_with("_Z")
        && let Ok(sym) = cpp_demangle::Symbol::new(name)
        && let Ok(full) = sym.demangle()
    {
        let short = strip_cpp_params(&full).to_string();
        return (full, short);
    }
    (name.to_string(), name.to_string())
}

/// `ns::foo<int>(int) const` → `ns::foo<int>`; `(anonymous namespace)::f()` keeps its prefix.
fn strip_cpp_params(full: &str) -> &str {
    const ANON: &str = "(anonymous namespace)";
    let mut depth = 0i32;
    let bytes = full.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => depth += 1,
            b'>' => depth -= 1,
            b'(' if depth == 0 => {
                if full[i..].starts_with(ANON) {
                    i += ANON.len();
                    continue;
                }
                if i > 0 {
                    return &full[..i];
                }
            }
            _ => {}
        }
        i += 1;
    }
    full
}

/// Resolves `symbol` to one function symbol of `binary`; see the module docs for the rules.
pub fn resolve(binary: &Path, symbol: &str) -> Result<Resolved, SymbolError> {
    if !binary.is_file() {
        return Err(SymbolError::BinaryNotFound {
            binary: binary.display().to_string(),
        });
    }
    let inspect_err = |source| SymbolError::Inspect {
        binary: binary.to_path_buf(),
        source,
    };
    let inspector = Inspector::new();
    let src = Source::Elf(Elf {
        debug_syms: false,
        ..Elf::new(binary)
    });

    // Fast path: the exact ELF name, through blazesym's name index.
    let exact: Vec<Candidate> = inspector
        .lookup(&src, &[symbol])
        .map_err(inspect_err)?
        .into_iter()
        .flatten()
        .filter(|s| s.sym_type == SymType::Function)
        .map(|s| Candidate::from_sym(&s))
        .collect();
    if !exact.is_empty() {
        return pick(binary, symbol, exact);
    }

    let mut all = Vec::new();
    inspector
        .for_each(&src, |s| {
            if s.sym_type == SymType::Function {
                all.push(Candidate::from_sym(s));
            }
            ControlFlow::Continue(())
        })
        .map_err(inspect_err)?;
    match find(symbol, &all) {
        Some(hits) => pick(binary, symbol, hits),
        None => {
            if has_symtab(binary) == Some(false) {
                return Err(SymbolError::Stripped {
                    symbol: symbol.to_string(),
                    binary: binary.to_path_buf(),
                    dynamic: all.len(),
                });
            }
            Err(SymbolError::NotFound {
                symbol: symbol.to_string(),
                binary: binary.to_path_buf(),
                close: close_matches(symbol, &all, MAX_CLOSE_MATCHES),
            })
        }
    }
}

/// Tiers 1–3 of the module docs over `all`; `None` when nothing matches.
fn find(symbol: &str, all: &[Candidate]) -> Option<Vec<Candidate>> {
    // A mangled query that is not verbatim in the binary is matched by what it demangles to.
    let (q_full, q_short) = demangle(symbol);
    let queries: Vec<&str> = if q_full == symbol {
        vec![symbol]
    } else {
        vec![symbol, q_full.as_str(), q_short.as_str()]
    };
    let tiers: [fn(&Candidate) -> &str; 3] = [|c| &c.elf_name, |c| &c.demangled, |c| &c.short];
    for key in tiers {
        let hits: Vec<Candidate> = all
            .iter()
            .filter(|c| queries.contains(&key(c)))
            .cloned()
            .collect();
        if !hits.is_empty() {
            return Some(hits);
        }
    }
    None
}

/// One hit, or aliases of one address → resolved; several addresses → ambiguous.
fn pick(binary: &Path, symbol: &str, mut hits: Vec<Candidate>) -> Result<Resolved, SymbolError> {
    hits.sort_by(|a, b| (a.address, &a.elf_name).cmp(&(b.address, &b.elf_name)));
    hits.dedup_by(|a, b| a.address == b.address);
    if hits.len() > 1 {
        return Err(SymbolError::Ambiguous {
            symbol: symbol.to_string(),
            binary: binary.to_path_buf(),
            candidates: hits.iter().map(Candidate::describe).collect(),
        });
    }
    let Some(hit) = hits.pop() else {
        return Err(SymbolError::NotFound {
            symbol: symbol.to_string(),
            binary: binary.to_path_buf(),
            close: Vec::new(),
        });
    };
    let Some(file_offset) = hit.file_offset else {
        return Err(SymbolError::NoFileOffset {
            symbol: symbol.to_string(),
            binary: binary.to_path_buf(),
        });
    };
    Ok(Resolved {
        elf_name: hit.elf_name,
        demangled: hit.demangled,
        address: hit.address,
        file_offset,
        size: hit.size,
    })
}

/// Levenshtein distance over chars, giving up (returning `limit + 1`) once past `limit`.
fn edit_distance(a: &str, b: &str, limit: usize) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > limit {
        return limit + 1;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        let mut row_min = cur[0];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            row_min = row_min.min(cur[j + 1]);
        }
        if row_min > limit {
            return limit + 1;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The last `::` component of a path (`a::b::c` → `c`).
fn last_component(s: &str) -> &str {
    s.rsplit("::").next().unwrap_or(s)
}

/// Up to `max` short names close to `symbol`, best first: small edit distance on the
/// whole name or on its last component, or one containing the other.
fn close_matches(symbol: &str, all: &[Candidate], max: usize) -> Vec<String> {
    let (_, query) = demangle(symbol);
    let q_last = last_component(&query);
    let q_last_lower = q_last.to_lowercase();
    let limit_full = (query.chars().count() / 4).max(2);
    let limit_last = (q_last.chars().count() / 3).clamp(1, 3);
    let mut scored: Vec<(usize, usize, Cow<'_, str>)> = Vec::new();
    for c in all {
        let name = c.short.as_str();
        let d_full = edit_distance(&query, name, limit_full);
        let last = last_component(name);
        let d_last = edit_distance(q_last, last, limit_last);
        let score = if d_full <= limit_full {
            Some(d_full)
        } else if d_last <= limit_last {
            // Same last component (or nearly): rank after whole-name matches.
            Some(limit_full + 1 + d_last)
        } else if q_last_lower.len() >= 3 && last.to_lowercase().contains(&q_last_lower) {
            Some(limit_full + limit_last + 2)
        } else {
            None
        };
        if let Some(score) = score {
            scored.push((score, name.len(), Cow::Borrowed(name)));
        }
    }
    scored.sort();
    let mut out: Vec<String> = Vec::new();
    for (_, _, name) in scored {
        if !out.iter().any(|o| o == name.as_ref()) {
            out.push(name.into_owned());
            if out.len() == max {
                break;
            }
        }
    }
    out
}

/// Whether an ELF file has a `.symtab` (or `.gnu_debugdata`, which blazesym reads too).
/// `None` when it cannot tell (not a 64-bit little-endian ELF file, I/O error).
fn has_symtab(path: &Path) -> Option<bool> {
    let mut f = File::open(path).ok()?;
    let mut ehdr = [0u8; 64];
    f.read_exact(&mut ehdr).ok()?;
    // ELF magic, ELFCLASS64, ELFDATA2LSB.
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&b[o..o + 4]);
        u32::from_le_bytes(w)
    };
    let u64_at = |b: &[u8], o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(w)
    };
    let shoff = u64_at(&ehdr, 0x28);
    let shentsize = usize::from(u16_at(&ehdr, 0x3a));
    let shnum = usize::from(u16_at(&ehdr, 0x3c));
    let shstrndx = usize::from(u16_at(&ehdr, 0x3e));
    if shoff == 0 || shnum == 0 || shentsize < 64 || shstrndx >= shnum {
        return Some(false);
    }
    let mut shdrs = vec![0u8; shentsize.checked_mul(shnum)?];
    f.seek(SeekFrom::Start(shoff)).ok()?;
    f.read_exact(&mut shdrs).ok()?;
    let sh = |i: usize| &shdrs[i * shentsize..(i + 1) * shentsize];
    let strtab_hdr = sh(shstrndx);
    let (str_off, str_size) = (u64_at(strtab_hdr, 0x18), u64_at(strtab_hdr, 0x20));
    if str_size > 16 << 20 {
        return None;
    }
    let mut names = vec![0u8; usize::try_from(str_size).ok()?];
    f.seek(SeekFrom::Start(str_off)).ok()?;
    f.read_exact(&mut names).ok()?;
    const SHT_SYMTAB: u32 = 2;
    for i in 0..shnum {
        let h = sh(i);
        let name_at = usize::try_from(u32_at(h, 0)).ok()?;
        let name = names
            .get(name_at..)
            .and_then(|n| n.split(|&b| b == 0).next())
            .unwrap_or(&[]);
        if u32_at(h, 4) == SHT_SYMTAB || name == b".gnu_debugdata" {
            return Some(true);
        }
    }
    Some(false)
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} @ {:#x} (file offset {:#x}, {} bytes)",
            self.demangled, self.address, self.file_offset, self.size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;

    /// A plain C symbol in the test binary.
    #[unsafe(no_mangle)]
    #[inline(never)]
    pub extern "C" fn ws_trace_symbols_test_c_target(x: u64) -> u64 {
        black_box(x).wrapping_mul(3).wrapping_add(1)
    }

    /// A Rust-mangled function in the test binary.
    #[inline(never)]
    pub fn rust_target_for_symbol_tests(x: u64) -> u64 {
        black_box(x).wrapping_mul(7) ^ 0x55
    }

    /// Monomorphized twice: two symbols with the same path (legacy mangling).
    #[inline(never)]
    pub fn generic_target_for_symbol_tests<T: std::fmt::Debug>(x: T) -> String {
        format!("{:?}", black_box(x))
    }

    fn exe() -> PathBuf {
        std::env::current_exe().unwrap()
    }

    /// The file offset at which the mapping of this process holds `addr`, from /proc/self/maps.
    fn runtime_file_offset(addr: usize) -> u64 {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let mut it = line.split_whitespace();
            let range = it.next().unwrap();
            let _perms = it.next();
            let off = u64::from_str_radix(it.next().unwrap(), 16).unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).unwrap(),
                usize::from_str_radix(hi, 16).unwrap(),
            );
            if (lo..hi).contains(&addr) {
                return (addr - lo) as u64 + off;
            }
        }
        panic!("{addr:#x} not mapped");
    }

    #[test]
    fn a_library_is_found_through_the_targets_maps() {
        let me = std::collections::BTreeSet::from([std::process::id()]);
        let (path, symbol) = parse_target_in("libc:getpid", &me).expect("libc is mapped");
        assert_eq!(symbol, "getpid");
        let shown = path.display().to_string();
        assert!(
            shown.starts_with(&format!("/proc/{}/root/", std::process::id()))
                && shown.contains("libc"),
            "{shown}"
        );
        assert!(path.is_file(), "{shown}");
        resolve(&path, "getpid").expect("getpid in libc");
        let err = parse_target_in("libnothere-ws-trace:f", &me).unwrap_err();
        assert!(matches!(err, SymbolError::NotMapped { .. }), "{err}");
        assert!(err.to_string().contains("give its path"), "{err}");
        // Paths and programs on PATH resolve as before.
        assert!(parse_target_in("sh:main", &me).is_ok());
    }

    #[test]
    fn resolves_c_symbol_at_its_runtime_place() {
        black_box(ws_trace_symbols_test_c_target(1));
        let r = resolve(&exe(), "ws_trace_symbols_test_c_target").unwrap();
        assert_eq!(r.elf_name, "ws_trace_symbols_test_c_target");
        assert_eq!(r.demangled, r.elf_name);
        assert!(r.size > 0);
        let addr = ws_trace_symbols_test_c_target as extern "C" fn(u64) -> u64 as usize;
        assert_eq!(r.file_offset, runtime_file_offset(addr));
    }

    #[test]
    fn resolves_rust_fn_by_demangled_path_with_and_without_hash() {
        black_box(rust_target_for_symbol_tests(2));
        let path = "ws_trace::symbols::tests::rust_target_for_symbol_tests";
        let r = resolve(&exe(), path).unwrap();
        assert_ne!(r.elf_name, path, "the ELF name should be mangled");
        assert!(r.elf_name.starts_with("_ZN") || r.elf_name.starts_with("_R"));
        assert!(r.demangled.starts_with(path) || r.demangled.contains("rust_target_for"));
        let addr = rust_target_for_symbol_tests as fn(u64) -> u64 as usize;
        assert_eq!(r.file_offset, runtime_file_offset(addr));

        // By the mangled name, and by the full demangled name (with hash for legacy).
        let by_mangled = resolve(&exe(), &r.elf_name).unwrap();
        assert_eq!(by_mangled, r);
        let by_full = resolve(&exe(), &r.demangled).unwrap();
        assert_eq!(by_full, r);
    }

    #[test]
    fn generic_instances_are_ambiguous() {
        black_box(generic_target_for_symbol_tests(1u32));
        black_box(generic_target_for_symbol_tests("x"));
        let path = "ws_trace::symbols::tests::generic_target_for_symbol_tests";
        match resolve(&exe(), path) {
            Err(SymbolError::Ambiguous { candidates, .. }) => {
                assert!(candidates.len() >= 2, "{candidates:?}");
                let msg = resolve(&exe(), path).unwrap_err().to_string();
                eprintln!("{msg}");
                assert!(msg.contains("matches"), "{msg}");
            }
            // v0 mangling tells the instances apart by their type arguments.
            Ok(r) => assert!(r.elf_name.starts_with("_R"), "{r:?}"),
            Err(e) => panic!("unexpected: {e}"),
        }
    }

    #[test]
    fn typo_lists_close_matches() {
        black_box(rust_target_for_symbol_tests(3));
        let err = resolve(
            &exe(),
            "ws_trace::symbols::tests::rust_targat_for_symbol_tests",
        )
        .unwrap_err();
        let SymbolError::NotFound { close, .. } = &err else {
            panic!("expected NotFound, got {err}");
        };
        assert_eq!(
            close.first().map(String::as_str),
            Some("ws_trace::symbols::tests::rust_target_for_symbol_tests"),
            "{close:?}"
        );
        assert!(close.len() <= MAX_CLOSE_MATCHES);
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(msg.contains("close matches"), "{msg}");
        assert!(msg.contains("rust_target_for_symbol_tests"), "{msg}");

        // A C name with a typo, matched on the last component.
        let err = resolve(&exe(), "ws_trace_symbols_test_c_targte").unwrap_err();
        assert!(
            err.to_string().contains("ws_trace_symbols_test_c_target"),
            "{err}"
        );
    }

    #[test]
    fn nothing_close_says_so() {
        let err = resolve(&exe(), "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqq").unwrap_err();
        assert!(matches!(err, SymbolError::NotFound { ref close, .. } if close.is_empty()));
        assert!(err.to_string().contains("nothing close"), "{err}");
    }

    #[test]
    fn stripped_copy_says_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("stripped");
        let status = std::process::Command::new("objcopy")
            .arg("--strip-all")
            .arg(exe())
            .arg(&copy)
            .status()
            .expect("objcopy is needed for this test (binutils)");
        assert!(status.success());
        assert_eq!(has_symtab(&exe()), Some(true));
        assert_eq!(has_symtab(&copy), Some(false));
        let err = resolve(
            &copy,
            "ws_trace::symbols::tests::rust_target_for_symbol_tests",
        )
        .unwrap_err();
        eprintln!("{err}");
        assert!(matches!(err, SymbolError::Stripped { .. }), "{err}");
        assert!(err.to_string().contains("stripped"), "{err}");
    }

    #[test]
    fn not_elf_and_missing_binary() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("notes.txt");
        std::fs::write(&txt, "hello, not an ELF file\n").unwrap();
        assert!(matches!(
            resolve(&txt, "main"),
            Err(SymbolError::Inspect { .. })
        ));
        assert!(matches!(
            resolve(&dir.path().join("nope"), "main"),
            Err(SymbolError::BinaryNotFound { .. })
        ));
    }

    #[test]
    fn matching_tiers_on_synthetic_symbols() {
        let mk = |elf: &str, addr: u64| {
            let (demangled, short) = demangle(elf);
            Candidate {
                elf_name: elf.to_string(),
                demangled,
                short,
                address: addr,
                file_offset: Some(addr),
                size: 8,
            }
        };
        let all = vec![
            mk("_ZN2ns3fooEi", 0x10),
            mk("_ZN2ns3barEv", 0x20),
            mk("_ZN5crate3mod4func17h0123456789abcdefE", 0x30),
            mk("_RNvCs1234_7mycrate3foo", 0x40),
            mk("plain_c", 0x50),
        ];
        let one = |q: &str| {
            let hits = find(q, &all).unwrap_or_default();
            assert_eq!(hits.len(), 1, "{q}: {hits:?}");
            hits[0].address
        };
        assert_eq!(one("ns::foo"), 0x10);
        assert_eq!(one("ns::foo(int)"), 0x10);
        assert_eq!(one("_ZN2ns3barEv"), 0x20);
        assert_eq!(one("crate::mod::func"), 0x30);
        assert_eq!(one("crate::mod::func::h0123456789abcdef"), 0x30);
        // A legacy-mangled query whose exact bytes differ (no hash) still matches.
        assert_eq!(one("_ZN5crate3mod4funcE"), 0x30);
        assert_eq!(one("mycrate::foo"), 0x40);
        assert_eq!(one("plain_c"), 0x50);
        assert!(find("ns::baz", &all).is_none());
        assert_eq!(
            strip_cpp_params("(anonymous namespace)::f(int)"),
            "(anonymous namespace)::f"
        );
        assert_eq!(
            strip_cpp_params("ns::foo<int (*)(int)>(int) const"),
            "ns::foo<int (*)(int)>"
        );
    }

    #[test]
    fn parse_target_splits_at_first_single_colon() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("app");
        std::fs::write(&bin, b"x").unwrap();
        let spec = format!("{}:my_crate::module::func", bin.display());
        let (b, s) = parse_target(&spec).unwrap();
        assert_eq!(b, bin);
        assert_eq!(s, "my_crate::module::func");

        let spec = format!("{}:<a::B as c::D>::e", bin.display());
        assert_eq!(parse_target(&spec).unwrap().1, "<a::B as c::D>::e");

        // A bare name is found on PATH.
        let (b, s) = parse_target("sh:main").unwrap();
        assert!(b.is_absolute() && b.ends_with("sh"), "{b:?}");
        assert_eq!(s, "main");
    }

    #[test]
    fn parse_target_rejects_bad_specs() {
        for spec in ["", "app", "a::b::c", ":sym", "/bin/sh:"] {
            let err = parse_target(spec).unwrap_err();
            assert!(
                matches!(err, SymbolError::BadSpec { .. }),
                "{spec:?}: {err}"
            );
            assert!(err.to_string().contains("BINARY:SYMBOL"), "{err}");
        }
        let err = parse_target("/no/such/binary:f").unwrap_err();
        assert!(matches!(err, SymbolError::BinaryNotFound { .. }), "{err}");
        let err = parse_target("no-such-binary-ws-trace-test:f").unwrap_err();
        assert!(err.to_string().contains("PATH"), "{err}");
    }
}
