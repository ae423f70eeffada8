//! Masking of outgoing frames (RFC 6455 §5.3), eight bytes at a time.
//!
//! The 4-byte key is widened to a `u64` (rotated to the buffer's phase) and XORed a word
//! at a time; the compiler turns the word loop into SIMD on x86_64. Only the unaligned
//! head/tail (<8 bytes) is done byte-wise.

/// Masks (or unmasks) `buf` in place with `key`, as if `buf` started at payload offset
/// `phase` (so a payload can be masked in pieces).
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    let mut key = key;
    key.rotate_left(phase & 3);
    let k64 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let v = u64::from_ne_bytes(w) ^ k64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Copies `src` into `dst` (same length) masked with `key`, in one pass.
#[inline]
pub fn copy_masked(dst: &mut [u8], src: &[u8], key: [u8; 4]) {
    debug_assert_eq!(dst.len(), src.len());
    let k64 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let mut w = [0u8; 8];
        w.copy_from_slice(sc);
        dc.copy_from_slice(&(u64::from_ne_bytes(w) ^ k64).to_ne_bytes());
    }
    for (i, (db, sb)) in d.into_remainder().iter_mut().zip(s.remainder()).enumerate() {
        *db = *sb ^ key[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], phase: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(i + phase) & 3];
        }
    }

    #[test]
    fn matches_bytewise_for_all_lengths_and_phases() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..70 {
            for phase in 0..4 {
                let orig: Vec<u8> = (0..len as u8).map(|x| x.wrapping_mul(31)).collect();
                let mut a = orig.clone();
                let mut b = orig.clone();
                apply_mask(&mut a, key, phase);
                naive(&mut b, key, phase);
                assert_eq!(a, b, "len {len} phase {phase}");
                let mut c = vec![0u8; len];
                copy_masked(&mut c, &orig, key);
                let mut d = orig.clone();
                naive(&mut d, key, 0);
                assert_eq!(c, d);
            }
        }
    }

    #[test]
    fn rfc_example() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut b = *b"Hello";
        apply_mask(&mut b, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(b, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn pieces_equal_whole() {
        let key = [1, 2, 3, 4];
        let orig: Vec<u8> = (0..50u8).collect();
        let mut whole = orig.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = orig.clone();
        let (a, b) = pieces.split_at_mut(13);
        apply_mask(a, key, 0);
        apply_mask(b, key, 13);
        assert_eq!(whole, pieces);
    }
}
