//! The TLS record layer after the handshake, in user space: records are opened with
//! `ring`'s AEAD straight in the buffer they were read into (the receive ring), and the
//! plaintext is packed towards the front of that buffer by the same call
//! (`open_within`), so the frame decoder sees one contiguous plaintext stream.
//!
//! rustls does the handshake and the key schedule ([`rustls::kernel::KernelConnection`]
//! computes KeyUpdate secrets and takes session tickets); this module does what the
//! kernel does on the kTLS path: sequence numbers, nonces, additional data, content
//! types, padding, alerts and post-handshake handshake messages.

use ring::aead::{
    AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey,
};
use rustls::ConnectionTrafficSecrets;

use super::TlsError;

/// Content types (RFC 8446 §5.1).
pub(crate) const CT_CHANGE_CIPHER_SPEC: u8 = 20;
pub(crate) const CT_ALERT: u8 = 21;
pub(crate) const CT_HANDSHAKE: u8 = 22;
pub(crate) const CT_APPLICATION_DATA: u8 = 23;

/// Record header length.
pub(crate) const HEADER_LEN: usize = 5;
/// Largest plaintext of one record.
pub(crate) const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest record on the wire (header + TLS 1.2's allowance of 2048 bytes of expansion).
pub(crate) const MAX_RECORD: usize = HEADER_LEN + MAX_PLAINTEXT + 2048;
const TAG_LEN: usize = 16;
const EXPLICIT_NONCE_LEN: usize = 8;

/// Handshake message types handled after the handshake.
const HS_HELLO_REQUEST: u8 = 0;
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;

/// Negotiated protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    Tls12,
    Tls13,
}

/// AEAD of the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

/// Key material of one direction.
pub(crate) struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    /// Keys from rustls's extracted traffic secrets.
    pub(crate) fn new(
        secrets: &ConnectionTrafficSecrets,
        seq: u64,
    ) -> Result<(Cipher, Keys), TlsError> {
        let (cipher, alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (Cipher::Aes128Gcm, &AES_128_GCM, key, iv)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (Cipher::Aes256Gcm, &AES_256_GCM, key, iv)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Cipher::Chacha20Poly1305, &CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(TlsError::UnsupportedCipher),
        };
        let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| TlsError::UnsupportedCipher)?;
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| TlsError::UnsupportedCipher)?;
        Ok((
            cipher,
            Keys {
                key: LessSafeKey::new(key),
                iv,
                seq,
            },
        ))
    }

    /// `iv XOR seq` (TLS 1.3, and TLS 1.2 ChaCha20; TLS 1.2 GCM sends the last 8 bytes).
    fn xor_nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// The next sequence number (a connection must end before it wraps).
    fn advance(&mut self) -> Result<(), TlsError> {
        self.seq = self.seq.checked_add(1).ok_or(TlsError::SequenceExhausted)?;
        Ok(())
    }

    /// The raw secrets, for the kernel (`iv`, `seq`).
    pub(crate) fn iv_seq(&self) -> ([u8; 12], u64) {
        (self.iv, self.seq)
    }
}

/// What happened to one opened record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    /// Application data: this many plaintext bytes now sit at the output position.
    Data(usize),
    /// A record the layer consumed itself (handshake message, warning alert).
    Control,
    /// The peer sent `close_notify`.
    CloseNotify,
}

/// Handshake messages that need the caller (rustls's kernel connection).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PostHandshake {
    /// TLS 1.3 NewSessionTicket body.
    NewSessionTicket(Vec<u8>),
    /// TLS 1.3 KeyUpdate; `true` if the peer asks us to update our keys too.
    KeyUpdate(bool),
}

/// Record protection of an established session.
pub(crate) struct RecordLayer {
    pub(crate) version: Version,
    pub(crate) cipher: Cipher,
    pub(crate) rx: Keys,
    pub(crate) tx: Keys,
    /// Handshake bytes of a message spread over records.
    hs_buf: Vec<u8>,
    /// Messages waiting for the caller.
    pub(crate) post_handshake: Vec<PostHandshake>,
}

impl RecordLayer {
    /// A record layer with both directions' keys.
    pub(crate) fn new(version: Version, cipher: Cipher, rx: Keys, tx: Keys) -> Self {
        RecordLayer {
            version,
            cipher,
            rx,
            tx,
            hs_buf: Vec::new(),
            post_handshake: Vec::new(),
        }
    }

    /// The length of the complete record at `buf[0..]`, or `None` if it is not complete.
    pub(crate) fn complete_record(buf: &[u8]) -> Result<Option<usize>, TlsError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let body = u16::from_be_bytes([buf[3], buf[4]]) as usize;
        if body > MAX_RECORD - HEADER_LEN {
            return Err(TlsError::RecordOverflow(body));
        }
        if buf[1] != 3 {
            return Err(TlsError::BadRecord("record version is not TLS"));
        }
        Ok((buf.len() >= HEADER_LEN + body).then_some(HEADER_LEN + body))
    }

    /// Opens the complete record at `buf[rec..rec + len]`, writing its plaintext to
    /// `buf[out..]` (`out <= rec`). Returns what it was.
    pub(crate) fn open(
        &mut self,
        buf: &mut [u8],
        out: usize,
        rec: usize,
        len: usize,
    ) -> Result<Opened, TlsError> {
        debug_assert!(out <= rec);
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&buf[rec..rec + HEADER_LEN]);
        let body = len - HEADER_LEN;
        let (nonce, aad, src, outer_type) = match (self.version, self.cipher) {
            (Version::Tls13, _) => {
                if header[0] == CT_CHANGE_CIPHER_SPEC {
                    return Err(TlsError::UnexpectedMessage(
                        "change_cipher_spec after handshake",
                    ));
                }
                if header[0] != CT_APPLICATION_DATA {
                    return Err(TlsError::BadRecord("unprotected TLS 1.3 record"));
                }
                if !(TAG_LEN + 1..=MAX_PLAINTEXT + 256).contains(&body) {
                    return Err(TlsError::BadRecord("TLS 1.3 record length"));
                }
                let mut aad = [0u8; 13];
                aad[..HEADER_LEN].copy_from_slice(&header);
                (
                    self.rx.xor_nonce(),
                    (aad, HEADER_LEN),
                    rec + HEADER_LEN,
                    None,
                )
            }
            (Version::Tls12, cipher) => {
                let explicit = cipher != Cipher::Chacha20Poly1305;
                let overhead = TAG_LEN + if explicit { EXPLICIT_NONCE_LEN } else { 0 };
                if body < overhead {
                    return Err(TlsError::BadRecord(
                        "TLS 1.2 record shorter than its overhead",
                    ));
                }
                let plain = body - overhead;
                if plain > MAX_PLAINTEXT {
                    return Err(TlsError::RecordOverflow(plain));
                }
                let nonce = if explicit {
                    let mut n = [0u8; 12];
                    n[..4].copy_from_slice(&self.rx.iv[..4]);
                    let e = rec + HEADER_LEN;
                    n[4..].copy_from_slice(&buf[e..e + EXPLICIT_NONCE_LEN]);
                    n
                } else {
                    self.rx.xor_nonce()
                };
                let mut aad = [0u8; 13];
                aad[..8].copy_from_slice(&self.rx.seq.to_be_bytes());
                aad[8..11].copy_from_slice(&header[..3]);
                aad[11..].copy_from_slice(&(plain as u16).to_be_bytes());
                let src = rec + HEADER_LEN + if explicit { EXPLICIT_NONCE_LEN } else { 0 };
                (nonce, (aad, 13), src, Some(header[0]))
            }
        };
        let in_out = &mut buf[out..rec + len];
        let plain = self
            .rx
            .key
            .open_within(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad.0[..aad.1]),
                in_out,
                (src - out)..,
            )
            .map_err(|_| TlsError::BadRecordMac)?;
        let (ctype, plen) = match outer_type {
            Some(t) => (t, plain.len()),
            None => {
                // TLS 1.3 inner plaintext: content || type || zeros.
                let Some(pos) = plain.iter().rposition(|&b| b != 0) else {
                    return Err(TlsError::BadRecord("TLS 1.3 record without content type"));
                };
                if pos > MAX_PLAINTEXT {
                    return Err(TlsError::RecordOverflow(pos));
                }
                (plain[pos], pos)
            }
        };
        self.rx.advance()?;
        let plain = &buf[out..out + plen];
        match ctype {
            CT_APPLICATION_DATA => Ok(Opened::Data(plen)),
            CT_ALERT => self.on_alert(plain),
            CT_HANDSHAKE => {
                self.hs_buf.extend_from_slice(plain);
                self.parse_handshake()?;
                Ok(Opened::Control)
            }
            CT_CHANGE_CIPHER_SPEC => Err(TlsError::UnexpectedMessage(
                "change_cipher_spec after handshake",
            )),
            _ => Err(TlsError::BadRecord("unknown content type")),
        }
    }

    /// An alert's plaintext (level, description).
    pub(crate) fn on_alert(&mut self, plain: &[u8]) -> Result<Opened, TlsError> {
        if plain.len() != 2 {
            return Err(TlsError::BadRecord("alert of the wrong length"));
        }
        match (plain[0], plain[1]) {
            (_, 0) => Ok(Opened::CloseNotify),
            // user_canceled and other warnings (TLS 1.2) are not fatal.
            (1, desc) if self.version == Version::Tls12 || desc == 90 => Ok(Opened::Control),
            (_, desc) => Err(TlsError::Alert(desc)),
        }
    }

    /// Takes complete handshake messages out of `hs_buf`.
    fn parse_handshake(&mut self) -> Result<(), TlsError> {
        while self.hs_buf.len() >= 4 {
            let typ = self.hs_buf[0];
            let len = u32::from_be_bytes([0, self.hs_buf[1], self.hs_buf[2], self.hs_buf[3]]);
            let len = len as usize;
            if len > 1 << 16 {
                return Err(TlsError::BadRecord("post-handshake message too long"));
            }
            if self.hs_buf.len() < 4 + len {
                return Ok(());
            }
            let body: Vec<u8> = self.hs_buf[4..4 + len].to_vec();
            self.hs_buf.drain(..4 + len);
            match (self.version, typ) {
                (Version::Tls13, HS_NEW_SESSION_TICKET) => {
                    self.post_handshake
                        .push(PostHandshake::NewSessionTicket(body));
                }
                (Version::Tls13, HS_KEY_UPDATE) => {
                    // A KeyUpdate must end its record (RFC 8446 §5.1).
                    if !self.hs_buf.is_empty() || body.len() != 1 || body[0] > 1 {
                        return Err(TlsError::BadRecord("malformed KeyUpdate"));
                    }
                    self.post_handshake
                        .push(PostHandshake::KeyUpdate(body[0] == 1));
                }
                // Renegotiation is not supported; RFC 5246 lets a client ignore HelloRequest.
                (Version::Tls12, HS_HELLO_REQUEST) if body.is_empty() => {}
                _ => {
                    return Err(TlsError::UnexpectedMessage(
                        "handshake message after the handshake",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Wire size of a record carrying `n` plaintext bytes of type `ctype`.
    pub(crate) fn sealed_len(&self, n: usize) -> usize {
        HEADER_LEN
            + n
            + TAG_LEN
            + match (self.version, self.cipher) {
                (Version::Tls13, _) => 1,
                (Version::Tls12, Cipher::Chacha20Poly1305) => 0,
                (Version::Tls12, _) => EXPLICIT_NONCE_LEN,
            }
    }

    /// Appends one record with `plain` (≤ 16 KiB) of type `ctype` to `out`.
    pub(crate) fn seal(
        &mut self,
        ctype: u8,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
        debug_assert!(plain.len() <= MAX_PLAINTEXT);
        let total = self.sealed_len(plain.len());
        let start = out.len();
        let body = (total - HEADER_LEN) as u16;
        match self.version {
            Version::Tls13 => {
                let header = [CT_APPLICATION_DATA, 3, 3, (body >> 8) as u8, body as u8];
                out.extend_from_slice(&header);
                let p = out.len();
                out.extend_from_slice(plain);
                out.push(ctype);
                let nonce = Nonce::assume_unique_for_key(self.tx.xor_nonce());
                let tag = self
                    .tx
                    .key
                    .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[p..])
                    .map_err(|_| TlsError::SealFailed)?;
                out.extend_from_slice(tag.as_ref());
            }
            Version::Tls12 => {
                let header = [ctype, 3, 3, (body >> 8) as u8, body as u8];
                out.extend_from_slice(&header);
                let nonce = self.tx.xor_nonce();
                if self.cipher != Cipher::Chacha20Poly1305 {
                    out.extend_from_slice(&nonce[4..]);
                }
                let mut aad = [0u8; 13];
                aad[..8].copy_from_slice(&self.tx.seq.to_be_bytes());
                aad[8..11].copy_from_slice(&header[..3]);
                aad[11..].copy_from_slice(&(plain.len() as u16).to_be_bytes());
                let p = out.len();
                out.extend_from_slice(plain);
                let tag = self
                    .tx
                    .key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut out[p..],
                    )
                    .map_err(|_| TlsError::SealFailed)?;
                out.extend_from_slice(tag.as_ref());
            }
        }
        debug_assert_eq!(out.len() - start, total);
        self.tx.advance()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn layer(version: Version, secrets: fn() -> ConnectionTrafficSecrets) -> RecordLayer {
        let (c, rx) = Keys::new(&secrets(), 0).expect("keys");
        let (_, tx) = Keys::new(&secrets(), 0).expect("keys");
        RecordLayer::new(version, c, rx, tx)
    }

    fn gcm() -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([7u8; 32]),
            iv: Iv::new([3u8; 12]),
        }
    }

    fn chacha() -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from([9u8; 32]),
            iv: Iv::new([5u8; 12]),
        }
    }

    /// Sealing with tx and opening with rx (same keys) round-trips, packing plaintext
    /// of back-to-back records to the front of the buffer.
    #[test]
    fn seal_open_round_trip_all_versions_and_ciphers() {
        for version in [Version::Tls12, Version::Tls13] {
            for secrets in [gcm as fn() -> _, chacha] {
                let mut l = layer(version, secrets);
                let mut wire = Vec::new();
                let msgs: [&[u8]; 3] = [b"hello", &[0xAB; 1000], b"x"];
                for m in msgs {
                    l.seal(CT_APPLICATION_DATA, m, &mut wire).expect("seal");
                }
                let mut out = 0;
                let mut rec = 0;
                while let Some(len) = RecordLayer::complete_record(&wire[rec..]).expect("hdr") {
                    match l.open(&mut wire, out, rec, len).expect("open") {
                        Opened::Data(n) => out += n,
                        other => panic!("{other:?}"),
                    }
                    rec += len;
                }
                assert_eq!(rec, wire.len());
                let want: Vec<u8> = msgs.concat();
                assert_eq!(&wire[..out], &want[..], "{version:?}");
            }
        }
    }

    #[test]
    fn tampered_record_is_rejected() {
        let mut l = layer(Version::Tls13, gcm);
        let mut wire = Vec::new();
        l.seal(CT_APPLICATION_DATA, b"data", &mut wire)
            .expect("seal");
        wire[7] ^= 1;
        let len = wire.len();
        assert!(matches!(
            l.open(&mut wire, 0, 0, len),
            Err(TlsError::BadRecordMac)
        ));
    }

    #[test]
    fn alerts_and_key_update_are_control_records() {
        let mut l = layer(Version::Tls13, chacha);
        let mut wire = Vec::new();
        l.seal(CT_HANDSHAKE, &[HS_KEY_UPDATE, 0, 0, 1, 1], &mut wire)
            .expect("seal");
        l.seal(CT_ALERT, &[1, 0], &mut wire).expect("seal");
        let first = RecordLayer::complete_record(&wire)
            .expect("hdr")
            .expect("complete");
        assert_eq!(
            l.open(&mut wire, 0, 0, first).expect("open"),
            Opened::Control
        );
        assert_eq!(l.post_handshake, vec![PostHandshake::KeyUpdate(true)]);
        let second = wire.len() - first;
        assert_eq!(
            l.open(&mut wire, 0, first, second).expect("open"),
            Opened::CloseNotify
        );
    }
}
