//! The byte source under the ring.
//!
//! The frame path only ever sees [`Transport::recv`] filling the ring's free space, so a
//! TLS transport (rustls decrypting straight into the ring, or kTLS where the kernel
//! decrypts and a plain `recv` returns plaintext) slots in without touching it. A
//! transport that decrypts in user space sets [`RecvStamps::decrypt_start`].

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use ws_abi::TlsPath;

/// Errors of connecting a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The host name did not resolve.
    #[error("cannot resolve {host}:{port}: {source}")]
    Resolve {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Cause.
        source: io::Error,
    },
    /// Every resolved address refused or timed out.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Last address tried.
        addr: String,
        /// Cause.
        source: io::Error,
    },
    /// Setting a socket option failed.
    #[error("socket option {op}: {source}")]
    SockOpt {
        /// Option.
        op: &'static str,
        /// Cause.
        source: io::Error,
    },
}

/// Extra stamps a transport may take inside one `recv` (raw [`crate::clock::Clock`] units).
#[derive(Clone, Copy, Debug, Default)]
pub struct RecvStamps {
    /// Userspace TLS: decryption of the record that ended this read started (else 0).
    pub decrypt_start: u64,
    /// TLS: bytes read from the socket since connect after this read, when that differs
    /// from the plaintext the ring received (userspace TLS: ciphertext, the kernel's TCP
    /// sequence space). `None`: the ring's own positions are socket bytes (plain TCP).
    pub socket_read_end: Option<u64>,
}

/// A byte source/sink under a connection.
pub trait Transport: Send {
    /// Reads into `dst` (the ring's free space): `Ok(0)` is end of stream,
    /// `ErrorKind::WouldBlock` means nothing is ready.
    fn recv(&mut self, dst: &mut [u8], stamps: &mut RecvStamps) -> io::Result<usize>;
    /// Writes from `src`; `ErrorKind::WouldBlock` when the socket buffer is full.
    fn send(&mut self, src: &[u8]) -> io::Result<usize>;
    /// The socket registered with epoll.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Which receive path the bytes take.
    fn tls_path(&self) -> TlsPath;
    /// Whether bytes are buffered inside the transport that epoll will not report (a
    /// userspace TLS record already read from the socket). Plain TCP: never.
    fn has_buffered(&self) -> bool {
        false
    }
    /// Writes bytes the transport queued itself (sealed TLS records); `Ok(true)` when
    /// none remain. Plain TCP queues nothing.
    fn flush(&mut self) -> io::Result<bool> {
        Ok(true)
    }
    /// Whether [`flush`](Self::flush) has bytes to write.
    fn wants_flush(&self) -> bool {
        false
    }
    /// TLS parameters and path, for TLS transports.
    fn tls_info(&self) -> Option<crate::tls::TlsInfo> {
        None
    }
}

/// Plain TCP.
#[derive(Debug)]
pub struct TcpTransport {
    fd: OwnedFd,
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

impl TcpTransport {
    /// Connects to `host:port` (blocking, bounded by `timeout`), sets `TCP_NODELAY`
    /// and makes the socket non-blocking.
    pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<Self, TransportError> {
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|source| TransportError::Resolve {
                host: host.to_string(),
                port,
                source,
            })?
            .collect();
        let mut last = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, timeout) {
                Ok(s) => return Self::from_stream(s),
                Err(e) => last = Some((addr.to_string(), e)),
            }
        }
        let (addr, source) = last.unwrap_or_else(|| {
            (
                format!("{host}:{port}"),
                io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            )
        });
        Err(TransportError::Connect { addr, source })
    }

    /// Wraps a connected stream (sets `TCP_NODELAY` and non-blocking mode).
    pub fn from_stream(s: TcpStream) -> Result<Self, TransportError> {
        s.set_nodelay(true)
            .map_err(|source| TransportError::SockOpt {
                op: "TCP_NODELAY",
                source,
            })?;
        s.set_nonblocking(true)
            .map_err(|source| TransportError::SockOpt {
                op: "O_NONBLOCK",
                source,
            })?;
        Ok(TcpTransport { fd: s.into() })
    }

    /// The socket, e.g. to run a TLS handshake on it.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl Transport for TcpTransport {
    #[inline]
    fn recv(&mut self, dst: &mut [u8], _stamps: &mut RecvStamps) -> io::Result<usize> {
        // SAFETY: `dst` is valid writable memory of `dst.len()` bytes; the fd is ours.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                dst.as_mut_ptr() as *mut libc::c_void,
                dst.len(),
                0,
            )
        };
        if n < 0 {
            Err(last_err())
        } else {
            Ok(n as usize)
        }
    }

    #[inline]
    fn send(&mut self, src: &[u8]) -> io::Result<usize> {
        // SAFETY: `src` is valid readable memory of `src.len()` bytes; the fd is ours.
        // MSG_NOSIGNAL turns a closed peer into EPIPE instead of SIGPIPE.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                src.as_ptr() as *const libc::c_void,
                src.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(last_err())
        } else {
            Ok(n as usize)
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn tls_path(&self) -> TlsPath {
        TlsPath::None
    }
}

/// `getsockopt(SO_COOKIE)`: the kernel's stable id of the socket (0 if unavailable).
pub fn sock_cookie(fd: BorrowedFd<'_>) -> u64 {
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `v`/`len` are valid for writes of the sizes given; the fd is borrowed live.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            &mut v as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if r == 0 { v } else { 0 }
}

/// Waits until `fd` is ready for `events` (POLLIN/POLLOUT) or `timeout` passes;
/// returns whether it became ready.
pub fn wait_fd(fd: BorrowedFd<'_>, events: i16, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = last_err();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(r > 0);
    }
}
