//! `aya::Pod` for every record, so user space can read them from maps and rings.
// SAFETY (for every impl below): each type is #[repr(C)], Copy, made of integers only, with
// explicit padding fields, so any bit pattern is a valid value.
use crate::*;

macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: see the module comment: #[repr(C)], integers only, no implicit padding.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

pod!(
    EventHeader,
    SkbEvent,
    SoftirqEvent,
    TcpEvent,
    SchedEvent,
    SyscallEvent,
    RecvEvent,
    CallbackEvent,
    UprobeEvent,
    CallbackDoneEvent,
    KernelOffsets,
    ProbeConfig,
    MsgProbe,
    ChannelHeader,
    ChannelRecord,
    ProfileConfig,
    StackKey,
    OffCpuStart,
    agg::StageHist,
    agg::NetRxCpu,
    agg::PacketKey,
    agg::PacketStamps,
    agg::PacketSlot,
    agg::Segment,
    agg::SocketState,
    agg::TaskStamps,
);
