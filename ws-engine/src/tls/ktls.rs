//! kTLS: handing the session keys to the kernel (`TCP_ULP "tls"`, `TLS_RX`, `TLS_TX`).
//!
//! Own `setsockopt` code with the kernel's `tls12_crypto_info_*` layouts
//! (`include/uapi/linux/tls.h`), not the `ktls` crate: that crate's entry points wrap
//! tokio-rustls streams, and the engine is a plain epoll loop over an `OwnedFd`. The
//! secrets come from rustls's kernel-connection API.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::record::{Cipher, Keys, Version};

const SOL_TCP: libc::c_int = 6;
const TCP_ULP: libc::c_int = 31;
/// `SOL_TLS` socket level.
pub(crate) const SOL_TLS: libc::c_int = 282;
const TLS_TX: libc::c_int = 1;
const TLS_RX: libc::c_int = 2;
/// cmsg type carrying a received record's content type.
pub(crate) const TLS_GET_RECORD_TYPE: libc::c_int = 2;

const TLS_1_2_VERSION: u16 = 0x0303;
const TLS_1_3_VERSION: u16 = 0x0304;
const TLS_CIPHER_AES_GCM_128: u16 = 51;
const TLS_CIPHER_AES_GCM_256: u16 = 52;
const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

#[repr(C)]
#[derive(Clone, Copy)]
struct CryptoInfo {
    version: u16,
    cipher_type: u16,
}

/// `tls12_crypto_info_aes_gcm_128` (`K` = 16) and `tls12_crypto_info_aes_gcm_256` (`K` = 32).
#[repr(C)]
struct AesGcm<const K: usize> {
    info: CryptoInfo,
    iv: [u8; 8],
    key: [u8; K],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

type AesGcm128 = AesGcm<16>;
type AesGcm256 = AesGcm<32>;

impl<const K: usize> AesGcm<K> {
    /// The 12-byte IV splits into the kernel's 4-byte salt and 8-byte explicit part.
    fn new(info: CryptoInfo, iv: [u8; 12], key: [u8; K], rec_seq: [u8; 8]) -> Self {
        let mut v = AesGcm {
            info,
            iv: [0; 8],
            key,
            salt: [0; 4],
            rec_seq,
        };
        v.salt.copy_from_slice(&iv[..4]);
        v.iv.copy_from_slice(&iv[4..]);
        v
    }
}

#[repr(C)]
struct Chacha20Poly1305 {
    info: CryptoInfo,
    iv: [u8; 12],
    key: [u8; 32],
    rec_seq: [u8; 8],
}

/// Why kTLS was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KtlsUnavailable {
    /// The kernel has no `tls` ULP (`setsockopt(TCP_ULP, "tls")`: ENOENT).
    #[error("kernel has no `tls` ULP (TCP_ULP \"tls\": {0})")]
    NoUlp(String),
    /// The kernel refused the keys (cipher or version not offloadable).
    #[error("kernel refused {dir} keys: {err}")]
    Keys {
        /// `TLS_RX` or `TLS_TX`.
        dir: &'static str,
        /// errno text.
        err: String,
    },
    /// kTLS was turned off in the configuration.
    #[error("disabled in ConnConfig")]
    Disabled,
    /// Records read past the handshake were already in user space.
    #[error("ciphertext already read past the handshake")]
    BufferedRecords,
}

fn setsockopt<T>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    opt: libc::c_int,
    v: &T,
) -> io::Result<()> {
    // SAFETY: `v` points to a live `T` of `size_of::<T>()` bytes; the fd is borrowed live.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            v as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Attaches the `tls` ULP to a connected TCP socket.
pub(crate) fn attach_ulp(fd: BorrowedFd<'_>) -> Result<(), KtlsUnavailable> {
    setsockopt(fd, SOL_TCP, TCP_ULP, b"tls\0").map_err(|e| KtlsUnavailable::NoUlp(e.to_string()))
}

/// Installs one direction's keys (`rx`: `TLS_RX`, else `TLS_TX`).
pub(crate) fn install(
    fd: BorrowedFd<'_>,
    version: Version,
    cipher: Cipher,
    keys: &Keys,
    key: &[u8],
    rx: bool,
) -> Result<(), KtlsUnavailable> {
    let (opt, dir) = if rx {
        (TLS_RX, "TLS_RX")
    } else {
        (TLS_TX, "TLS_TX")
    };
    let (iv, seq) = keys.iv_seq();
    let version = match version {
        Version::Tls12 => TLS_1_2_VERSION,
        Version::Tls13 => TLS_1_3_VERSION,
    };
    let rec_seq = seq.to_be_bytes();
    let bad = |_| KtlsUnavailable::Keys {
        dir,
        err: "key length".into(),
    };
    let info = |cipher_type| CryptoInfo {
        version,
        cipher_type,
    };
    let r = match cipher {
        Cipher::Aes128Gcm => {
            let info = info(TLS_CIPHER_AES_GCM_128);
            let v = AesGcm128::new(info, iv, key.try_into().map_err(bad)?, rec_seq);
            setsockopt(fd, SOL_TLS, opt, &v)
        }
        Cipher::Aes256Gcm => {
            let info = info(TLS_CIPHER_AES_GCM_256);
            let v = AesGcm256::new(info, iv, key.try_into().map_err(bad)?, rec_seq);
            setsockopt(fd, SOL_TLS, opt, &v)
        }
        Cipher::Chacha20Poly1305 => {
            let v = Chacha20Poly1305 {
                info: info(TLS_CIPHER_CHACHA20_POLY1305),
                iv,
                key: key.try_into().map_err(bad)?,
                rec_seq,
            };
            setsockopt(fd, SOL_TLS, opt, &v)
        }
    };
    r.map_err(|e| KtlsUnavailable::Keys {
        dir,
        err: e.to_string(),
    })
}

/// Whether this kernel offers kTLS, checked without a connection: attaching a ULP to an
/// unconnected TCP socket fails with ENOENT when the ULP does not exist (after the kernel
/// tried to load `tcp-ulp-tls`) and with ENOTCONN when it does.
pub fn probe() -> Result<(), KtlsUnavailable> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(KtlsUnavailable::NoUlp(
            io::Error::last_os_error().to_string(),
        ));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    use std::os::fd::AsFd;
    match setsockopt(fd.as_fd(), SOL_TCP, TCP_ULP, b"tls\0") {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
        Err(e) => Err(KtlsUnavailable::NoUlp(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layouts match `include/uapi/linux/tls.h`.
    #[test]
    fn crypto_info_sizes() {
        assert_eq!(std::mem::size_of::<AesGcm128>(), 40);
        assert_eq!(std::mem::size_of::<AesGcm256>(), 56);
        assert_eq!(std::mem::size_of::<Chacha20Poly1305>(), 56);
    }
}
