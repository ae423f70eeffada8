//! Empty library target: lets user-space crates list `ws-ebpf` as a build-dependency so
//! cargo rebuilds the probes when they change. The probes are the `ws-ebpf` binary.
#![no_std]
