//! Helpers shared by the cross-crate integration tests.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    thread,
};

pub use ws_trace::privileges::require_for_test;

/// CLOCK_MONOTONIC now, in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Sends `rounds` messages of `size` bytes over a loopback TCP connection and waits for
/// each to be echoed back. Returns the bytes echoed.
pub fn loopback_echo(rounds: usize, size: usize) -> std::io::Result<u64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..n])?;
        }
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let msg = vec![0xa5u8; size];
    let mut back = vec![0u8; size];
    let mut total = 0;
    for _ in 0..rounds {
        c.write_all(&msg)?;
        c.read_exact(&mut back)?;
        total += size as u64;
    }
    drop(c);
    server
        .join()
        .map_err(|_| std::io::Error::other("echo server panicked"))??;
    Ok(total)
}
