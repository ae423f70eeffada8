//! The one place where the kernel/user ABI of ws-trace is defined.
//!
//! Everything that crosses the boundary between the eBPF probes (`ws-ebpf`), the
//! user-space tracer (`ws-trace`) and the WebSocket engine (`ws-engine`) is a
//! `#[repr(C)]` type in this crate. Probes write records into one BPF ring buffer;
//! every record starts with an [`EventHeader`] whose `kind` says which record
//! follows. Records only grow at the end and [`ABI_VERSION`] changes whenever a
//! layout changes or a record kind is added, so a recorded trace says which layout it
//! holds.
//!
//! - [`events`]: the ring-buffer records.
//! - [`kinds`]: the probes ([`ProbeKind`]), one record kind and one program each.
//! - [`config`]: what user space writes into the probes before attaching.
//! - [`engine`]: the engine's probe functions and the [`MsgProbe`] struct they pass.
//! - [`channel`]: the engine's shared-memory stamp channel (its header and record).
//! - [`profile`]: `ws-trace profile`'s configuration and aggregation keys.
//! - [`doctor`]: `ws-trace doctor`'s hit counters.
//! - [`agg`]: aggregate mode's maps and its stage computation.
//! - [`hist`]: the log-linear latency histogram layout (kernel, engine and tracer).
//! - [`names`]: the names of the probe object's maps and programs.
#![no_std]
#![deny(missing_docs)]

pub mod agg;
pub mod channel;
pub mod config;
pub mod doctor;
pub mod engine;
pub mod events;
pub mod hist;
pub mod kinds;
pub mod names;
#[cfg(feature = "user")]
mod pod;
pub mod profile;

pub use channel::{ChannelHeader, ChannelRecord};
pub use config::*;
pub use doctor::doctor_hit;
pub use engine::*;
pub use events::*;
pub use kinds::*;
pub use profile::*;

/// Version of the record layouts. Bump it when any layout changes or a kind is added.
/// (5: the callback's end is a uprobe on [`ENGINE_DONE_SYMBOL`], not a uretprobe;
/// 6: that probe records a [`CallbackDoneEvent`]; 7: [`ProbeKind::SchedWaking`]; 8: a
/// [`RecvEvent`]'s `ret` may be [`RECV_LEN_UNKNOWN`], from the reads' fallback on kernels
/// before 6.3.)
pub const ABI_VERSION: u32 = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_padding_free() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<Flow>(), 24);
        assert_eq!(size_of::<SkbEvent>(), 64);
        assert_eq!(size_of::<SoftirqEvent>(), 32);
        assert_eq!(size_of::<TcpEvent>(), 72);
        assert_eq!(size_of::<SchedEvent>(), 48);
        assert_eq!(size_of::<SyscallEvent>(), 40);
        assert_eq!(size_of::<RecvEvent>(), 64);
        assert_eq!(size_of::<CallbackEvent>(), 144);
        assert_eq!(size_of::<UprobeEvent>(), 40);
        assert_eq!(size_of::<CallbackDoneEvent>(), 56);
        assert_eq!(size_of::<KernelOffsets>(), 80);
        assert_eq!(size_of::<ProbeConfig>(), 88);
        assert_eq!(size_of::<MsgStamps>(), 48);
        assert_eq!(size_of::<MsgProbe>(), 112);
        assert_eq!(size_of::<ProfileConfig>(), 16);
        assert_eq!(size_of::<StackKey>(), 16);
        assert_eq!(size_of::<OffCpuStart>(), 24);
        assert_eq!(size_of::<agg::StageHist>(), 8 * (hist::BUCKETS + 2));
        assert_eq!(size_of::<agg::NetRxCpu>(), 24);
        assert_eq!(size_of::<agg::PacketKey>(), 8);
        assert_eq!(size_of::<agg::PacketStamps>(), 24);
        assert_eq!(size_of::<agg::PacketSlot>(), 32);
        assert_eq!(size_of::<agg::Segment>(), 32);
        assert_eq!(size_of::<agg::SocketState>(), 136);
        assert_eq!(size_of::<agg::TaskStamps>(), 32);
    }

    #[test]
    fn kinds_round_trip() {
        for (i, k) in ProbeKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
            assert_eq!(ProbeKind::from_u16(i as u16), Some(*k));
        }
        assert_eq!(ProbeKind::from_u16(PROBE_COUNT as u16), None);
    }

    #[test]
    fn names_are_distinct() {
        let mut programs = [""; PROBE_COUNT + names::programs::ALL.len()];
        for (i, k) in ProbeKind::ALL.iter().enumerate() {
            programs[i] = k.program();
        }
        programs[PROBE_COUNT..].copy_from_slice(&names::programs::ALL);
        for (i, a) in programs.iter().enumerate() {
            assert!(programs[i + 1..].iter().all(|b| a != b), "{a} twice");
        }
        let maps = names::maps::ALL;
        for (i, a) in maps.iter().enumerate() {
            assert!(maps[i + 1..].iter().all(|b| a != b), "{a} twice");
        }
    }
}
