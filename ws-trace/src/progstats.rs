//! What the kernel counts for a loaded BPF program: run time and runs (with BPF stats on)
//! and recursion misses — the times it skipped the program because the program was already
//! running on that CPU (an interrupt arriving while it ran hit the same hook). A miss is an
//! event the probe never saw, so it is reported next to ring drops.
//!
//! aya 0.14's `ProgramInfo` does not expose the miss counter, so the info is read here
//! with `BPF_OBJ_GET_INFO_BY_FD` directly.
use std::{os::fd::AsRawFd as _, os::fd::BorrowedFd, time::Duration};

/// A program's kernel-side counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Total time in the program (0 unless BPF run-time stats are on).
    pub run_time: Duration,
    /// Runs (0 unless BPF run-time stats are on).
    pub runs: u64,
    /// Runs the kernel skipped because the program was already active on that CPU
    /// (counted whether or not BPF stats are on).
    pub recursion_misses: u64,
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The leading fields of the kernel's `struct bpf_prog_info` (uapi/linux/bpf.h), up to the
/// miss counter. The kernel copies at most `info_len` bytes, so a prefix is enough; each
/// field sits at its uapi offset (checked by the test below).
#[repr(C, align(8))]
#[derive(Default)]
struct ProgInfoPrefix {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    ifindex: u32,
    gpl_compatible: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
    func_info: u64,
    nr_func_info: u32,
    nr_line_info: u32,
    line_info: u64,
    jited_line_info: u64,
    nr_jited_line_info: u32,
    line_info_rec_size: u32,
    jited_line_info_rec_size: u32,
    nr_prog_tags: u32,
    prog_tags: u64,
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
}

/// The `info` member of `union bpf_attr` used by `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C, align(8))]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Reads the counters of the program behind `fd`.
pub fn program_stats(fd: BorrowedFd<'_>) -> std::io::Result<ProgramStats> {
    let mut info = ProgInfoPrefix::default();
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<ProgInfoPrefix>() as u32,
        info: &mut info as *mut ProgInfoPrefix as u64,
    };
    // SAFETY: `attr` is a valid BPF_OBJ_GET_INFO_BY_FD attribute whose `info` points to a
    // live, writable, 8-aligned buffer of `info_len` bytes; the kernel writes at most that
    // many bytes there and reads `size_of::<InfoAttr>()` bytes of `attr`. Both outlive the
    // call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            size_of::<InfoAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ProgramStats {
        run_time: Duration::from_nanos(info.run_time_ns),
        runs: info.run_cnt,
        recursion_misses: info.recursion_misses,
    })
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    #[test]
    fn the_prefix_matches_the_uapi_layout() {
        // Offsets from uapi/linux/bpf.h (stable ABI: the struct only grows at its end).
        assert_eq!(offset_of!(ProgInfoPrefix, name), 64);
        assert_eq!(offset_of!(ProgInfoPrefix, netns_dev), 88);
        assert_eq!(offset_of!(ProgInfoPrefix, btf_id), 128);
        assert_eq!(offset_of!(ProgInfoPrefix, prog_tags), 184);
        assert_eq!(offset_of!(ProgInfoPrefix, run_time_ns), 192);
        assert_eq!(offset_of!(ProgInfoPrefix, run_cnt), 200);
        assert_eq!(offset_of!(ProgInfoPrefix, recursion_misses), 208);
        assert_eq!(size_of::<InfoAttr>(), 16);
    }

    #[test]
    fn a_non_bpf_fd_is_an_error_not_a_crash() {
        let file = std::fs::File::open("/proc/self/stat").expect("open");
        let fd = std::os::fd::AsFd::as_fd(&file);
        assert!(program_stats(fd).is_err());
    }
}
