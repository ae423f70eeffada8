//! What user space writes into the probes before attaching: kernel struct offsets and
//! flags (the `CONFIG` map), and the filter maps' capacities.

/// Field offsets of kernel structs, read by user space from the running kernel's BTF
/// and handed to the probes, so one probe build works across kernel versions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `offsetof(struct sk_buff, len)`.
    pub sk_buff_len: u32,
    /// `offsetof(struct sk_buff, dev)`.
    pub sk_buff_dev: u32,
    /// `offsetof(struct sk_buff, data)`.
    pub sk_buff_data: u32,
    /// `offsetof(struct sk_buff, cb)`: `struct tcp_skb_cb` lives there.
    pub sk_buff_cb: u32,
    /// `offsetof(struct net_device, ifindex)`.
    pub net_device_ifindex: u32,
    /// `offsetof(struct tcp_skb_cb, seq)`.
    pub tcp_skb_cb_seq: u32,
    /// `offsetof(struct tcp_skb_cb, end_seq)`.
    pub tcp_skb_cb_end_seq: u32,
    /// `offsetof(struct tcp_skb_cb, tcp_flags)`.
    pub tcp_skb_cb_tcp_flags: u32,
    /// `offsetof(struct sock_common, skc_dport)` (`struct sock` starts with it).
    pub sock_dport: u32,
    /// `offsetof(struct sock_common, skc_num)`.
    pub sock_num: u32,
    /// `offsetof(struct sock, sk_cookie)` (in `sock_common`).
    pub sock_cookie: u32,
    /// `offsetof(struct sock, sk_protocol)`.
    pub sock_protocol: u32,
    /// `offsetof(struct tcp_sock, rcv_nxt)`.
    pub tcp_sock_rcv_nxt: u32,
    /// `offsetof(struct tcp_sock, copied_seq)`.
    pub tcp_sock_copied_seq: u32,
    /// `offsetof(struct task_struct, pid)`.
    pub task_pid: u32,
    /// `offsetof(struct task_struct, tgid)`.
    pub task_tgid: u32,
    /// Offset of the CPU number within `struct task_struct` (`thread_info.cpu`).
    pub task_cpu: u32,
    /// Offset of `ret` in the `syscalls:sys_exit_*` tracepoint record (from tracefs).
    pub sys_exit_ret: u32,
    /// Offset of `__syscall_nr` in the `syscalls:sys_exit_*` tracepoint record.
    pub sys_exit_nr: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// Configuration user space writes into the probes' `CONFIG` map (index 0)
/// before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// Kernel struct offsets (see [`KernelOffsets`]).
    pub offsets: KernelOffsets,
}

/// [`ProbeConfig::flags`]: the probes emit aya-log debug records.
pub const CONFIG_LOG: u32 = 1;
/// [`ProbeConfig::flags`]: the offsets are valid (user space read them from BTF).
pub const CONFIG_OFFSETS_VALID: u32 = 2;
/// [`ProbeConfig::flags`]: task-context probes keep only threads of processes in `TGIDS`.
pub const CONFIG_FILTER_TGID: u32 = 4;
/// [`ProbeConfig::flags`]: packet and socket probes keep only flows whose local port is
/// in `PORTS`. Reads by traced processes add their sockets' local ports to `PORTS`.
pub const CONFIG_FILTER_PORTS: u32 = 8;
/// [`ProbeConfig::flags`]: children forked by traced processes are traced too.
pub const CONFIG_FOLLOW_FORKS: u32 = 16;
/// [`ProbeConfig::flags`]: a read by a traced process adds its socket's local port to
/// `PORTS` (so `--pid` alone follows the process's own connections).
pub const CONFIG_LEARN_PORTS: u32 = 32;

/// [`ProbeConfig::flags`]: aggregate mode. The probes send nothing through the ring: they
/// keep per-socket, per-packet, per-thread and per-CPU state in the `AGG_*` maps and add
/// each traced read's kernel stages into the per-CPU `AGG_HIST` histograms (see
/// [`crate::agg`]).
pub const CONFIG_AGGREGATE: u32 = 64;
/// [`ProbeConfig::flags`], with [`CONFIG_AGGREGATE`]: the probes also write every record to
/// the ring, as without it (`serve`'s flight recorder keeps the last seconds of them for
/// captures); the histograms are filled either way.
pub const CONFIG_STREAM: u32 = 128;

/// Capacity of the `TGIDS` filter map.
pub const MAX_TGIDS: u32 = 1024;
/// Capacity of the `PORTS` filter map.
pub const MAX_PORTS: u32 = 1024;
/// Entries of `PORT_SET`: one byte per port number.
pub const PORT_SET_ENTRIES: u32 = 1 << 16;
/// The largest `/proc/sys/kernel/pid_max` Linux allows (`PID_MAX_LIMIT` on 64-bit): the
/// most entries `TGID_SET` is given (the loader sizes it to the running kernel's
/// `pid_max`, every process id below it).
pub const MAX_PID: u32 = 1 << 22;
/// Capacity of `AGG_SOCKETS` (sockets whose recent segments aggregate mode keeps).
pub const AGG_MAX_SOCKETS: u32 = 16384;
/// Slots of `AGG_PACKETS` (recent inbound packets by flow and end sequence, direct-mapped):
/// a power of two.
pub const AGG_MAX_PACKETS: u32 = 16384;
const _: () = assert!(AGG_MAX_PACKETS.is_power_of_two());
/// Capacity of `AGG_TASKS` (threads whose wake cycle aggregate mode keeps).
pub const AGG_MAX_TASKS: u32 = 8192;
