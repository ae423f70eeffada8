//! What each feed message carries, and the sizes it comes in.
//!
//! Every message is one binary WebSocket frame (FIN set, opcode 2, unmasked) whose payload
//! starts with a 24-byte header of three little-endian `u64`s:
//!
//! | offset | field     | meaning |
//! |-------:|-----------|---------|
//! | 0      | `seq`     | the message's index in the schedule: 0, 1, 2, … on every connection |
//! | 8      | `send_ns` | CLOCK_MONOTONIC ns when the feed queued the message for this connection's socket |
//! | 16     | `due_ns`  | CLOCK_MONOTONIC ns when the schedule said it was due (`start + ⌊seq/burst⌋·burst/rate`) |
//!
//! The rest of the payload, up to the message's size, is zero. On the same host a client
//! reads its own CLOCK_MONOTONIC on arrival: `now − send_ns` is the one-way latency from
//! the feed's hand-over to the kernel, `now − due_ns` adds the time the feed was late (the
//! latency without coordinated omission).
use std::fmt;

/// Bytes of the header at the start of every payload (and the smallest message size).
pub const HEADER_LEN: usize = 24;
/// Offset of `seq` in the payload.
pub const SEQ_OFFSET: usize = 0;
/// Offset of `send_ns` in the payload.
pub const SEND_NS_OFFSET: usize = 8;
/// Offset of `due_ns` in the payload.
pub const DUE_NS_OFFSET: usize = 16;
/// The largest message size the feed makes (16 MiB).
pub const MAX_SIZE: usize = 16 << 20;

/// The header of a feed message, as a client reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The message's index in the schedule.
    pub seq: u64,
    /// CLOCK_MONOTONIC ns when the feed queued it for the connection.
    pub send_ns: u64,
    /// CLOCK_MONOTONIC ns when it was due.
    pub due_ns: u64,
}

fn le_u64(data: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = data.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

impl Stamp {
    /// Reads the header of a message payload; `None` when it is shorter than
    /// [`HEADER_LEN`].
    pub fn parse(payload: &[u8]) -> Option<Stamp> {
        Some(Stamp {
            seq: le_u64(payload, SEQ_OFFSET)?,
            send_ns: le_u64(payload, SEND_NS_OFFSET)?,
            due_ns: le_u64(payload, DUE_NS_OFFSET)?,
        })
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `payload` (which must be
    /// at least that long; shorter ones are left as they are).
    pub fn write(&self, payload: &mut [u8]) {
        if let Some(h) = payload.get_mut(..HEADER_LEN) {
            h[SEQ_OFFSET..SEQ_OFFSET + 8].copy_from_slice(&self.seq.to_le_bytes());
            h[SEND_NS_OFFSET..SEND_NS_OFFSET + 8].copy_from_slice(&self.send_ns.to_le_bytes());
            h[DUE_NS_OFFSET..DUE_NS_OFFSET + 8].copy_from_slice(&self.due_ns.to_le_bytes());
        }
    }
}

/// A size specification that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("size {spec:?}: {reason}")]
pub struct SizeError {
    /// What was given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

/// How big each message is; message `seq` gets the same size on every connection and in
/// every run (sizes are drawn from a hash of `seq`, not a random generator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeDist {
    /// Every message this many bytes.
    Fixed(usize),
    /// Uniform between the two bounds, both included.
    Uniform {
        /// The smallest size.
        min: usize,
        /// The largest size.
        max: usize,
    },
    /// Each size with its weight (a size with weight 3 is three times as frequent as one
    /// with weight 1).
    Weighted(Vec<(usize, u64)>),
}

fn check(spec: &str, size: usize) -> Result<usize, SizeError> {
    if size < HEADER_LEN {
        return Err(SizeError {
            spec: spec.to_string(),
            reason: format!("{size} B is less than the {HEADER_LEN}-byte header"),
        });
    }
    if size > MAX_SIZE {
        return Err(SizeError {
            spec: spec.to_string(),
            reason: format!("{size} B is more than the {MAX_SIZE}-byte maximum"),
        });
    }
    Ok(size)
}

fn number<T: std::str::FromStr>(spec: &str, s: &str, what: &str) -> Result<T, SizeError> {
    s.trim().parse().map_err(|_| SizeError {
        spec: spec.to_string(),
        reason: format!("{what} {:?} is not a whole number", s.trim()),
    })
}

/// splitmix64: a well-mixed 64-bit hash of `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SizeDist {
    /// Every message `size` bytes (at least [`HEADER_LEN`], at most [`MAX_SIZE`]).
    pub fn fixed(size: usize) -> Result<SizeDist, SizeError> {
        Ok(SizeDist::Fixed(check(&size.to_string(), size)?))
    }

    /// Parses `uniform:MIN..MAX` (both included) or a weighted list
    /// `SIZE[:WEIGHT],SIZE[:WEIGHT],…` (weight 1 when left out), e.g. `64:90,1024:9,65536:1`.
    pub fn parse(spec: &str) -> Result<SizeDist, SizeError> {
        let err = |reason: &str| SizeError {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if let Some(range) = spec.trim().strip_prefix("uniform:") {
            let (lo, hi) = range
                .split_once("..")
                .ok_or_else(|| err("expected uniform:MIN..MAX"))?;
            let min = check(spec, number(spec, lo, "MIN")?)?;
            let max = check(spec, number(spec, hi.trim_start_matches('='), "MAX")?)?;
            if min > max {
                return Err(err("MIN is larger than MAX"));
            }
            return Ok(SizeDist::Uniform { min, max });
        }
        let mut sizes = Vec::new();
        for item in spec.split(',').filter(|s| !s.trim().is_empty()) {
            let (size, weight) = match item.split_once(':') {
                Some((s, w)) => (s, number::<u64>(spec, w, "weight")?),
                None => (item, 1),
            };
            let size = check(spec, number(spec, size, "size")?)?;
            if weight == 0 {
                return Err(err("a weight must be at least 1"));
            }
            sizes.push((size, weight));
        }
        if sizes.is_empty() {
            return Err(err(
                "expected uniform:MIN..MAX or SIZE[:WEIGHT],… (e.g. 64:90,1024:10)",
            ));
        }
        if sizes
            .iter()
            .try_fold(0u64, |t, (_, w)| t.checked_add(*w))
            .is_none()
        {
            return Err(err("the weights add up to more than 2^64"));
        }
        Ok(SizeDist::Weighted(sizes))
    }

    /// The size of message `seq`.
    pub fn size(&self, seq: u64) -> usize {
        match self {
            SizeDist::Fixed(size) => *size,
            SizeDist::Uniform { min, max } => {
                let span = (max - min) as u64 + 1;
                min + (mix(seq) % span) as usize
            }
            SizeDist::Weighted(sizes) => {
                let total: u64 = sizes.iter().map(|(_, w)| w).sum();
                let mut pick = mix(seq) % total.max(1);
                for (size, weight) in sizes {
                    if pick < *weight {
                        return *size;
                    }
                    pick -= weight;
                }
                sizes.last().map_or(HEADER_LEN, |(s, _)| *s)
            }
        }
    }

    /// The mean size.
    pub fn mean(&self) -> f64 {
        match self {
            SizeDist::Fixed(size) => *size as f64,
            SizeDist::Uniform { min, max } => (*min + *max) as f64 / 2.0,
            SizeDist::Weighted(sizes) => {
                let total: u64 = sizes.iter().map(|(_, w)| w).sum();
                sizes
                    .iter()
                    .map(|(s, w)| *s as f64 * *w as f64)
                    .sum::<f64>()
                    / total as f64
            }
        }
    }
}

impl fmt::Display for SizeDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeDist::Fixed(size) => write!(f, "{size} B"),
            SizeDist::Uniform { min, max } => write!(f, "uniform {min}..{max} B"),
            SizeDist::Weighted(sizes) => {
                let list: Vec<String> = sizes.iter().map(|(s, w)| format!("{s}:{w}")).collect();
                write!(f, "{} B (size:weight)", list.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_at_its_documented_offsets() {
        let mut payload = vec![0u8; 40];
        let stamp = Stamp {
            seq: 0x0102_0304_0506_0708,
            send_ns: 42,
            due_ns: u64::MAX - 1,
        };
        stamp.write(&mut payload);
        assert_eq!(&payload[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(payload[8], 42);
        assert_eq!(&payload[16..24], &(u64::MAX - 1).to_le_bytes());
        assert!(payload[24..].iter().all(|b| *b == 0));
        assert_eq!(Stamp::parse(&payload), Some(stamp));
        assert_eq!(Stamp::parse(&payload[..23]), None);
    }

    #[test]
    fn sizes_parse_and_stay_in_range() {
        assert_eq!(
            SizeDist::parse("uniform:64..4096"),
            Ok(SizeDist::Uniform { min: 64, max: 4096 })
        );
        assert_eq!(
            SizeDist::parse("64:90, 1024:9,65536"),
            Ok(SizeDist::Weighted(vec![(64, 90), (1024, 9), (65536, 1)]))
        );
        for bad in [
            "",
            "uniform:64",
            "uniform:100..50",
            "10",
            "64:0",
            "x:1",
            "uniform:64..1G",
        ] {
            assert!(SizeDist::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SizeDist::fixed(23).is_err());
        assert!(SizeDist::fixed(MAX_SIZE + 1).is_err());
        let uniform = SizeDist::Uniform { min: 64, max: 80 };
        let seen: std::collections::BTreeSet<usize> = (0..2000).map(|i| uniform.size(i)).collect();
        assert_eq!(seen, (64..=80).collect());
    }

    #[test]
    fn weighted_sizes_follow_their_weights() {
        let dist = SizeDist::parse("64:90,1024:9,4096:1").expect("parse");
        let n = 100_000;
        let count = |size| (0..n).filter(|i| dist.size(*i) == size).count() as f64 / n as f64;
        assert!((count(64) - 0.90).abs() < 0.01, "{}", count(64));
        assert!((count(1024) - 0.09).abs() < 0.01, "{}", count(1024));
        assert!((count(4096) - 0.01).abs() < 0.005, "{}", count(4096));
        assert!((dist.mean() - (64.0 * 0.9 + 1024.0 * 0.09 + 40.96)).abs() < 1e-9);
        // The same message has the same size every time.
        assert_eq!(dist.size(12345), dist.size(12345));
    }
}
