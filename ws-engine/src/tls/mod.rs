//! TLS for `wss://`: rustls (crypto provider pinned to `ring`) for the handshake and key
//! schedule, then one of two record paths (see `docs/ktls.md`):
//!
//! - **kTLS** ([`TlsPath::Ktls`]): the session keys go to the kernel (`TCP_ULP "tls"`,
//!   `TLS_RX`/`TLS_TX`); `recv` returns plaintext, non-data records arrive with their
//!   content type in a control message.
//! - **userspace** ([`TlsPath::Userspace`]): ciphertext is read from the socket straight
//!   into the receive ring and each record is opened in place there (`ring` AEAD); the
//!   plaintext is packed over the record headers by the same call, so no buffer sits
//!   between the socket and the ring. Used where the kernel has no `tls` ULP (say so once
//!   per process on stderr) or the ring has less free space than one record (then one
//!   record is staged and copied).
//!
//! Stream offsets: on the userspace path [`RecvStamps::socket_read_end`] counts ciphertext
//! bytes read from the socket since connect (TLS handshake included), the space of the
//! kernel's TCP `copied_seq`. On the kTLS path it counts plaintext bytes returned by the
//! kernel after the handshake (plus the handshake's ciphertext), which is *not* the
//! kernel's TCP sequence space: the kernel consumes whole records.

mod ktls;
pub(crate) mod record;

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once, OnceLock};
use std::time::Duration;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::unbuffered::{ConnectionState, EncodeError, InsufficientSizeError};
use rustls::{ClientConfig, ConnectionTrafficSecrets, ProtocolVersion, RootCertStore};
use ws_abi::TlsPath;

pub use ktls::{KtlsUnavailable, probe as ktls_probe};
use record::{
    CT_ALERT, CT_APPLICATION_DATA, CT_HANDSHAKE, Keys, MAX_PLAINTEXT, MAX_RECORD, Opened,
    PostHandshake, RecordLayer, Version,
};

use crate::clock::Clock;
use crate::transport::{RecvStamps, Transport, wait_fd};

/// TLS errors: configuration, handshake (certificate problems included) and records.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or held no certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Neither system roots nor a CA file gave a trust anchor.
    #[error("no trust anchors: no system root certificates found and no CA file given")]
    NoTrustAnchors,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    /// The host is not a valid DNS name or IP address for SNI / verification.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// The handshake failed; certificate problems (unknown issuer, wrong host name,
    /// expired) show here with rustls's description.
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    /// The server closed the TCP connection before the handshake completed.
    #[error("server closed the connection during the TLS handshake ({received} bytes received)")]
    HandshakeEof {
        /// Bytes received from the server.
        received: u64,
    },
    /// The handshake did not finish in time.
    #[error("TLS handshake timed out after {0:?} ({1} bytes received)")]
    HandshakeTimeout(Duration, u64),
    /// Socket error during the handshake.
    #[error("socket error during the TLS handshake: {0}")]
    Io(#[from] io::Error),
    /// Secrets could not be taken from rustls after the handshake.
    #[error("extracting session secrets: {0}")]
    Secrets(rustls::Error),
    /// The negotiated cipher suite has no record implementation here.
    #[error("unsupported cipher suite")]
    UnsupportedCipher,
    /// A record failed authentication.
    #[error("TLS record failed authentication (bad_record_mac)")]
    BadRecordMac,
    /// A record longer than TLS allows.
    #[error("TLS record too long ({0} bytes)")]
    RecordOverflow(usize),
    /// A malformed record.
    #[error("malformed TLS record: {0}")]
    BadRecord(&'static str),
    /// A message not allowed at this point.
    #[error("unexpected TLS message: {0}")]
    UnexpectedMessage(&'static str),
    /// The peer sent a fatal alert.
    #[error("peer sent TLS alert {0}")]
    Alert(u8),
    /// The TCP connection ended inside a TLS record.
    #[error("peer closed the TCP connection inside a TLS record ({0} bytes of it received)")]
    Truncated(usize),
    /// Record sequence numbers ran out.
    #[error("TLS record sequence number exhausted")]
    SequenceExhausted,
    /// Encryption failed.
    #[error("TLS record encryption failed")]
    SealFailed,
    /// Post-handshake key schedule (rustls) failed.
    #[error("TLS post-handshake message: {0}")]
    PostHandshake(rustls::Error),
    /// kTLS: the peer updated its keys; the engine does not re-key a kTLS socket.
    #[error("peer sent a TLS 1.3 KeyUpdate on a kTLS connection (re-keying kTLS is not supported)")]
    KtlsKeyUpdate,
}

impl TlsError {
    fn into_io(self) -> io::Error {
        io::Error::other(self)
    }
}

/// TLS settings of a connection (part of [`crate::ConnConfig`]).
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// Trust the system's root certificates (`rustls-native-certs`: `/etc/ssl/certs`,
    /// `SSL_CERT_FILE`/`SSL_CERT_DIR`).
    pub system_roots: bool,
    /// Also trust the certificates in this PEM file.
    pub ca_file: Option<PathBuf>,
    /// Try kTLS after the handshake (falls back to userspace where the kernel lacks it).
    pub ktls: bool,
    /// Use this rustls configuration as is instead of building one (it must have
    /// `enable_secret_extraction = true`).
    pub client_config: Option<Arc<ClientConfig>>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            system_roots: true,
            ca_file: None,
            ktls: true,
            client_config: None,
        }
    }
}

/// What a TLS connection negotiated and which record path it uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// Receive path ([`TlsPath::Ktls`] or [`TlsPath::Userspace`]).
    pub path: TlsPath,
    /// Whether the kernel also encrypts what is sent.
    pub ktls_tx: bool,
    /// `"TLSv1.3"` or `"TLSv1.2"`.
    pub version: &'static str,
    /// Cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// ALPN protocol the server chose.
    pub alpn: Option<String>,
    /// Why kTLS is not used (userspace path).
    pub ktls_unavailable: Option<KtlsUnavailable>,
}

/// The crypto provider: `ring`, pinned (no aws-lc-rs, no process default needed).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// Reads every certificate of a PEM file.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The client configuration for `opts`: TLS 1.3 and 1.2, AES-GCM and ChaCha20-Poly1305
/// (ring), ALPN `http/1.1`, secret extraction on (for kTLS and the userspace record path).
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, TlsError> {
    if let Some(c) = &opts.client_config {
        return Ok(c.clone());
    }
    let mut roots = RootCertStore::empty();
    if opts.system_roots {
        roots.add_parsable_certificates(system_roots().iter().cloned());
    }
    if let Some(path) = &opts.ca_file {
        for cert in load_ca_file(path)? {
            roots.add(cert).map_err(|e| TlsError::CaFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    let mut cfg = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.enable_secret_extraction = true;
    Ok(Arc::new(cfg))
}

fn key_bytes(s: &ConnectionTrafficSecrets) -> &[u8] {
    match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, .. }
        | ConnectionTrafficSecrets::Aes256Gcm { key, .. }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, .. } => key.as_ref(),
        _ => &[],
    }
}

fn raw_recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid writable memory of `buf.len()` bytes; the fd is borrowed live.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn raw_send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid readable memory of `buf.len()` bytes; the fd is borrowed live.
    // MSG_NOSIGNAL turns a closed peer into EPIPE instead of SIGPIPE.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn ktls_notice(why: &KtlsUnavailable) {
    static ONCE: Once = Once::new();
    if *why == KtlsUnavailable::Disabled {
        return;
    }
    ONCE.call_once(|| {
        eprintln!(
            "ws-engine: kTLS not used ({why}); TLS records are decrypted in user space \
             (tls_path=userspace). Said once per process."
        );
    });
}

/// A TLS connection after its handshake.
pub struct TlsTransport {
    fd: OwnedFd,
    layer: RecordLayer,
    kconn: KernelConnection<ClientConnectionData>,
    rx_kernel: bool,
    tx_kernel: bool,
    /// Staging: ciphertext of an incomplete record (and, when the ring had no room for a
    /// whole record, one opened record's pending plaintext).
    carry: Vec<u8>,
    ct: Range<usize>,
    pt: Range<usize>,
    tx_buf: Vec<u8>,
    tx_pos: usize,
    sock_read: u64,
    peer_closed: bool,
    failed: bool,
    maybe_more: bool,
    clock: Clock,
    info: TlsInfo,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("fd", &self.fd)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

enum Step {
    Read,
    Done,
    Continue,
}

impl TlsTransport {
    /// Performs the TLS handshake on a connected non-blocking TCP socket (SNI and
    /// certificate verification for `host`, which may be an IP address), bounded by
    /// `timeout`, then sets up kTLS or the userspace record path.
    pub fn handshake(
        fd: OwnedFd,
        host: &str,
        opts: &TlsOptions,
        timeout: Duration,
        clock: Clock,
    ) -> Result<TlsTransport, TlsError> {
        let config = client_config(opts)?;
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|_| TlsError::ServerName(host.to_string()))?
            .to_owned();
        let mut conn = UnbufferedClientConnection::new(config, name).map_err(TlsError::Config)?;
        let deadline = Clock::monotonic_now_ns() + timeout.as_nanos() as u64;
        let mut inbuf = vec![0u8; 2 * MAX_RECORD];
        let mut in_len = 0usize;
        let mut out = vec![0u8; 4096];
        let mut out_len = 0usize;
        let mut received = 0u64;
        let wait = |events: i16, received: u64| -> Result<(), TlsError> {
            let now = Clock::monotonic_now_ns();
            let left = Duration::from_nanos(deadline.saturating_sub(now));
            if now >= deadline || !wait_fd(fd.as_fd(), events, left)? {
                return Err(TlsError::HandshakeTimeout(timeout, received));
            }
            Ok(())
        };
        loop {
            let (discard, step) = {
                let st = conn.process_tls_records(&mut inbuf[..in_len]);
                let discard = st.discard;
                let step = match st.state.map_err(TlsError::Handshake)? {
                    ConnectionState::EncodeTlsData(mut e) => loop {
                        match e.encode(&mut out[out_len..]) {
                            Ok(n) => {
                                out_len += n;
                                break Step::Continue;
                            }
                            Err(EncodeError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) => out.resize(out_len + required_size, 0),
                            Err(e) => {
                                return Err(TlsError::Handshake(rustls::Error::General(
                                    e.to_string(),
                                )));
                            }
                        }
                    },
                    ConnectionState::TransmitTlsData(t) => {
                        let mut sent = 0;
                        while sent < out_len {
                            match raw_send(fd.as_fd(), &out[sent..out_len]) {
                                Ok(n) => sent += n,
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    wait(libc::POLLOUT, received)?
                                }
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                        out_len = 0;
                        t.done();
                        Step::Continue
                    }
                    ConnectionState::BlockedHandshake => Step::Read,
                    ConnectionState::WriteTraffic(_) => Step::Done,
                    ConnectionState::PeerClosed | ConnectionState::Closed => {
                        return Err(TlsError::HandshakeEof { received });
                    }
                    _ => {
                        return Err(TlsError::UnexpectedMessage(
                            "application data during the handshake",
                        ));
                    }
                };
                (discard, step)
            };
            inbuf.copy_within(discard..in_len, 0);
            in_len -= discard;
            match step {
                Step::Continue => {}
                Step::Done => break,
                Step::Read => {
                    if in_len == inbuf.len() {
                        inbuf.resize(inbuf.len() * 2, 0);
                    }
                    wait(libc::POLLIN, received)?;
                    match raw_recv(fd.as_fd(), &mut inbuf[in_len..]) {
                        Ok(0) => return Err(TlsError::HandshakeEof { received }),
                        Ok(n) => {
                            in_len += n;
                            received += n as u64;
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                            ) => {}
                        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                            return Err(TlsError::HandshakeEof { received });
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        let alpn = conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let (secrets, kconn) = conn
            .dangerous_into_kernel_connection()
            .map_err(TlsError::Secrets)?;
        let version = match kconn.protocol_version() {
            ProtocolVersion::TLSv1_3 => Version::Tls13,
            ProtocolVersion::TLSv1_2 => Version::Tls12,
            _ => return Err(TlsError::UnsupportedCipher),
        };
        let suite = format!("{:?}", kconn.negotiated_cipher_suite().suite());
        let (cipher, rx) = Keys::new(&secrets.rx.1, secrets.rx.0)?;
        let (_, tx) = Keys::new(&secrets.tx.1, secrets.tx.0)?;
        let layer = RecordLayer::new(version, cipher, rx, tx);
        // kTLS: RX first (the hot direction); if the kernel refuses TX after taking RX,
        // sends stay in user space.
        let (rx_kernel, tx_kernel, why) = if !opts.ktls {
            (false, false, Some(KtlsUnavailable::Disabled))
        } else if in_len > 0 {
            (false, false, Some(KtlsUnavailable::BufferedRecords))
        } else {
            match ktls::attach_ulp(fd.as_fd()).and_then(|()| {
                ktls::install(
                    fd.as_fd(),
                    version,
                    cipher,
                    &layer.rx,
                    key_bytes(&secrets.rx.1),
                    true,
                )
            }) {
                Err(e) => (false, false, Some(e)),
                Ok(()) => {
                    let tx = ktls::install(
                        fd.as_fd(),
                        version,
                        cipher,
                        &layer.tx,
                        key_bytes(&secrets.tx.1),
                        false,
                    );
                    (true, tx.is_ok(), None)
                }
            }
        };
        if let Some(w) = &why {
            ktls_notice(w);
        }
        let path = if rx_kernel {
            TlsPath::Ktls
        } else {
            TlsPath::Userspace
        };
        let carry_len = inbuf.len().max(2 * MAX_RECORD);
        inbuf.resize(carry_len, 0);
        Ok(TlsTransport {
            fd,
            layer,
            kconn,
            rx_kernel,
            tx_kernel,
            carry: inbuf,
            ct: 0..in_len,
            pt: 0..0,
            tx_buf: Vec::with_capacity(64 * 1024),
            tx_pos: 0,
            sock_read: received,
            peer_closed: false,
            failed: false,
            maybe_more: false,
            clock,
            info: TlsInfo {
                path,
                ktls_tx: tx_kernel,
                version: match version {
                    Version::Tls13 => "TLSv1.3",
                    Version::Tls12 => "TLSv1.2",
                },
                cipher_suite: suite,
                alpn,
                ktls_unavailable: why,
            },
        })
    }

    /// What was negotiated and which path the records take.
    pub fn info(&self) -> &TlsInfo {
        &self.info
    }

    fn fail(&mut self, e: TlsError) -> io::Error {
        self.failed = true;
        e.into_io()
    }

    /// Handles messages the record layer passed up (session tickets, KeyUpdate).
    fn post_handshake(&mut self) -> Result<(), TlsError> {
        for m in std::mem::take(&mut self.layer.post_handshake) {
            match m {
                PostHandshake::NewSessionTicket(body) => {
                    self.kconn
                        .handle_new_session_ticket(&body)
                        .map_err(TlsError::PostHandshake)?;
                }
                PostHandshake::KeyUpdate(requested) => {
                    let (seq, s) = self
                        .kconn
                        .update_rx_secret()
                        .map_err(TlsError::PostHandshake)?;
                    self.layer.rx = Keys::new(&s, seq)?.1;
                    if requested {
                        // Answer under the old key, then switch (RFC 8446 §4.6.3).
                        self.layer
                            .seal(CT_HANDSHAKE, &[24, 0, 0, 1, 0], &mut self.tx_buf)?;
                        let (seq, s) = self
                            .kconn
                            .update_tx_secret()
                            .map_err(TlsError::PostHandshake)?;
                        self.layer.tx = Keys::new(&s, seq)?.1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens every complete record of `buf[..filled]` (one at offset 0), packing the
    /// plaintext to `buf[..p]`. Returns `(p, end of the last complete record)`.
    fn open_all(&mut self, buf: &mut [u8], filled: usize) -> Result<(usize, usize), TlsError> {
        let mut out = 0;
        let mut rec = 0;
        while !self.peer_closed
            && let Some(len) = RecordLayer::complete_record(&buf[rec..filled])?
        {
            match self.layer.open(buf, out, rec, len)? {
                Opened::Data(n) => out += n,
                Opened::Control => self.post_handshake()?,
                Opened::CloseNotify => {
                    // Anything after close_notify is ignored.
                    self.peer_closed = true;
                    return Ok((out, filled));
                }
            }
            rec += len;
        }
        Ok((out, rec))
    }

    fn recv_user(&mut self, dst: &mut [u8], st: &mut RecvStamps) -> io::Result<usize> {
        if !self.pt.is_empty() {
            st.decrypt_start = self.clock.raw();
            let n = self.pt.len().min(dst.len());
            dst[..n].copy_from_slice(&self.carry[self.pt.start..self.pt.start + n]);
            self.pt.start += n;
            if self.pt.is_empty() {
                self.pt = 0..0;
            }
            return Ok(n);
        }
        if self.peer_closed {
            return Ok(0);
        }
        loop {
            // Keep the partial record at the front of the staging buffer.
            if self.ct.start > 0 {
                self.carry.copy_within(self.ct.clone(), 0);
                self.ct = 0..self.ct.len();
            }
            let c = self.ct.len();
            let (p, n, eof) = if dst.len() >= c + MAX_RECORD {
                // Straight into the ring: the partial record first, then the socket.
                dst[..c].copy_from_slice(&self.carry[..c]);
                let space = dst.len() - c;
                let (n, eof) = match raw_recv(self.fd.as_fd(), &mut dst[c..]) {
                    Ok(0) => (0, true),
                    Ok(n) => (n, false),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, false),
                    Err(e) => return Err(e),
                };
                self.sock_read += n as u64;
                self.maybe_more = n == space;
                st.decrypt_start = self.clock.raw();
                let (p, end) = self.open_all(dst, c + n).map_err(|e| self.fail(e))?;
                let rest = c + n - end;
                self.carry[..rest].copy_from_slice(&dst[end..c + n]);
                self.ct = 0..rest;
                (p, n, eof)
            } else {
                // The ring has less room than one record: stage, open, copy what fits.
                let mut carry = std::mem::take(&mut self.carry);
                let r = raw_recv(self.fd.as_fd(), &mut carry[c..]);
                let (n, eof) = match r {
                    Ok(0) => (0, true),
                    Ok(n) => (n, false),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, false),
                    Err(e) => {
                        self.carry = carry;
                        return Err(e);
                    }
                };
                self.sock_read += n as u64;
                self.maybe_more = c + n == carry.len();
                st.decrypt_start = self.clock.raw();
                let opened = self.open_all(&mut carry, c + n);
                let (p, end) = match opened {
                    Ok(v) => v,
                    Err(e) => {
                        self.carry = carry;
                        return Err(self.fail(e));
                    }
                };
                let k = p.min(dst.len());
                dst[..k].copy_from_slice(&carry[..k]);
                self.carry = carry;
                self.pt = k..p;
                self.ct = end..c + n;
                (k, n, eof)
            };
            st.socket_read_end = Some(self.sock_read);
            if p > 0 {
                return Ok(p);
            }
            if self.peer_closed {
                return Ok(0);
            }
            if eof {
                if !self.ct.is_empty() {
                    return Err(self.fail(TlsError::Truncated(self.ct.len())));
                }
                return Ok(0);
            }
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            // Part of a record arrived: try for the rest.
        }
    }

    fn recv_kernel(&mut self, dst: &mut [u8], st: &mut RecvStamps) -> io::Result<usize> {
        if self.peer_closed {
            return Ok(0);
        }
        loop {
            let mut iov = libc::iovec {
                iov_base: dst.as_mut_ptr().cast(),
                iov_len: dst.len(),
            };
            let mut cbuf = [0u64; 8];
            // SAFETY: zeroed msghdr is a valid "no name, no iov" header; fields set below.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&cbuf);
            // SAFETY: `msg` points to a live iovec over `dst` and a live control buffer.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EBADMSG) {
                    return Err(self.fail(TlsError::BadRecordMac));
                }
                return Err(e);
            }
            let n = n as usize;
            if n == 0 {
                return Ok(0);
            }
            self.sock_read += n as u64;
            st.socket_read_end = Some(self.sock_read);
            let mut ctype = CT_APPLICATION_DATA;
            // SAFETY: CMSG_* walk the control buffer the kernel filled, within
            // `msg_controllen`.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == ktls::SOL_TLS
                        && (*c).cmsg_type == ktls::TLS_GET_RECORD_TYPE
                    {
                        ctype = *libc::CMSG_DATA(c);
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            match ctype {
                CT_APPLICATION_DATA => return Ok(n),
                CT_ALERT => match self.layer.on_alert(&dst[..n]).map_err(|e| self.fail(e))? {
                    Opened::CloseNotify => {
                        self.peer_closed = true;
                        return Ok(0);
                    }
                    _ => continue,
                },
                // One record may hold several handshake messages (servers send their
                // session tickets together): each is type, 24-bit length, body.
                CT_HANDSHAKE => {
                    let mut rest = &dst[..n];
                    while !rest.is_empty() {
                        let Some(&[typ, a, b, c]) = rest.get(..4) else {
                            return Err(self.fail(TlsError::BadRecord(
                                "post-handshake message split across records",
                            )));
                        };
                        let len = u32::from_be_bytes([0, a, b, c]) as usize;
                        let Some(body) = rest.get(4..4 + len) else {
                            return Err(self.fail(TlsError::BadRecord(
                                "post-handshake message split across records",
                            )));
                        };
                        match typ {
                            // NewSessionTicket: keep it (resumption), go on reading.
                            4 => self
                                .kconn
                                .handle_new_session_ticket(body)
                                .map_err(|e| self.fail(TlsError::PostHandshake(e)))?,
                            24 => return Err(self.fail(TlsError::KtlsKeyUpdate)),
                            _ => {
                                return Err(self.fail(TlsError::UnexpectedMessage(
                                    "handshake message after the handshake",
                                )));
                            }
                        }
                        rest = &rest[4 + len..];
                    }
                }
                _ => return Err(self.fail(TlsError::BadRecord("unknown content type"))),
            }
        }
    }

    fn flush_tx(&mut self) -> io::Result<bool> {
        while self.tx_pos < self.tx_buf.len() {
            match raw_send(self.fd.as_fd(), &self.tx_buf[self.tx_pos..]) {
                Ok(n) => self.tx_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.tx_buf.clear();
        self.tx_pos = 0;
        Ok(true)
    }
}

impl Transport for TlsTransport {
    fn recv(&mut self, dst: &mut [u8], stamps: &mut RecvStamps) -> io::Result<usize> {
        stamps.decrypt_start = 0;
        if self.failed {
            return Err(io::Error::other("TLS session failed earlier"));
        }
        if self.rx_kernel {
            self.recv_kernel(dst, stamps)
        } else {
            self.recv_user(dst, stamps)
        }
    }

    fn send(&mut self, src: &[u8]) -> io::Result<usize> {
        if !self.flush_tx()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.tx_kernel {
            return raw_send(self.fd.as_fd(), src);
        }
        let take = src.len().min(4 * MAX_PLAINTEXT);
        for chunk in src[..take].chunks(MAX_PLAINTEXT) {
            self.layer
                .seal(CT_APPLICATION_DATA, chunk, &mut self.tx_buf)
                .map_err(TlsError::into_io)?;
        }
        self.flush_tx()?;
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<bool> {
        self.flush_tx()
    }

    fn wants_flush(&self) -> bool {
        self.tx_pos < self.tx_buf.len()
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn tls_path(&self) -> TlsPath {
        self.info.path
    }

    fn has_buffered(&self) -> bool {
        !self.pt.is_empty() || self.maybe_more
    }

    fn tls_info(&self) -> Option<TlsInfo> {
        Some(self.info.clone())
    }
}

impl Drop for TlsTransport {
    fn drop(&mut self) {
        // Best effort close_notify (non-blocking). With kTLS TX it would need a
        // TLS_SET_RECORD_TYPE control message; the TCP FIN follows instead.
        if self.tx_kernel || self.failed {
            return;
        }
        let _ = self.flush_tx();
        if self.layer.seal(CT_ALERT, &[1, 0], &mut self.tx_buf).is_ok() {
            let _ = self.flush_tx();
        }
    }
}
