//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find
//! where a field sits inside a kernel struct, so the probes can read it on any kernel.
//!
//! Format: a header, a type section (records of `struct btf_type` plus kind-specific
//! trailers) and a string section; see the kernel's `Documentation/bpf/btf.rst`.
use std::path::Path;

/// What can go wrong reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("cannot read BTF from {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not BTF, or are truncated.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// No struct of that name.
    #[error("struct {0} not found in the kernel's BTF")]
    NoStruct(String),
    /// The struct has no such field (searched through anonymous members too).
    #[error("struct {strukt} has no field {field} in the kernel's BTF")]
    NoField {
        /// The struct searched.
        strukt: String,
        /// The field asked for.
        field: String,
    },
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Parsed BTF: the raw sections plus the byte position of every type record.
pub struct Btf {
    data: Vec<u8>,
    strings_start: usize,
    strings_len: usize,
    /// `type_pos[id - 1]` is where type `id` starts in `data`.
    type_pos: Vec<usize>,
}

struct TypeRec {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    /// Position of the kind-specific trailer.
    trailer: usize,
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Btf::from_file("/sys/kernel/btf/vmlinux")
    }

    /// Reads BTF from a raw `.BTF`-format file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Btf, BtfError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(data)
    }

    /// The same types as aya's loader wants them, parsed from the same bytes (so the
    /// kernel's BTF is read once for both).
    pub fn to_aya(&self) -> Result<aya::Btf, aya::BtfError> {
        aya::Btf::parse(&self.data, aya::Endianness::default())
    }

    /// Parses raw BTF bytes (little-endian, as the kernel exposes it on x86 and arm64).
    pub fn parse(data: Vec<u8>) -> Result<Btf, BtfError> {
        let rd = |at: usize| -> Result<u32, BtfError> { read_u32(&data, at) };
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = rd(4)? as usize;
        let (type_off, type_len) = (rd(8)? as usize, rd(12)? as usize);
        let (str_off, str_len) = (rd(16)? as usize, rd(20)? as usize);
        let types_start = hdr_len + type_off;
        let strings_start = hdr_len + str_off;
        if types_start + type_len > data.len() || strings_start + str_len > data.len() {
            return Err(BtfError::Malformed("section past end of data"));
        }
        let mut btf = Btf {
            data,
            strings_start,
            strings_len: str_len,
            type_pos: Vec::new(),
        };
        let end = types_start + type_len;
        let mut pos = types_start;
        while pos < end {
            btf.type_pos.push(pos);
            let rec = btf.record_at(pos)?;
            pos = rec.trailer + trailer_len(rec.kind, rec.vlen);
        }
        if pos != end {
            return Err(BtfError::Malformed("type section does not end on a record"));
        }
        Ok(btf)
    }

    /// Number of types (ids run from 1 to this).
    pub fn type_count(&self) -> usize {
        self.type_pos.len()
    }

    /// Byte offset of `field` within `struct strukt`, looking through anonymous
    /// struct and union members. Bitfields are reported at their containing byte.
    pub fn field_offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let id = self.find_struct(strukt)?;
        self.member_bits(id, field)?
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoField {
                strukt: strukt.to_string(),
                field: field.to_string(),
            })
    }

    /// Whether the kernel has the BTF-typed tracepoint `name`: its BTF then holds the
    /// typedef `btf_trace_<name>`, which is what a `tp_btf` program attaches by.
    pub fn has_tracepoint(&self, name: &str) -> Result<bool, BtfError> {
        let want = format!("btf_trace_{name}");
        for &pos in &self.type_pos {
            let rec = self.record_at(pos)?;
            if rec.kind == KIND_TYPEDEF && self.name(rec.name_off)? == want {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The names of every BTF-typed tracepoint of the kernel (see
    /// [`Btf::has_tracepoint`]).
    pub fn tracepoints(&self) -> Result<std::collections::BTreeSet<String>, BtfError> {
        let mut out = std::collections::BTreeSet::new();
        for &pos in &self.type_pos {
            let rec = self.record_at(pos)?;
            if rec.kind == KIND_TYPEDEF
                && let Some(name) = self.name(rec.name_off)?.strip_prefix("btf_trace_")
            {
                out.insert(name.to_string());
            }
        }
        Ok(out)
    }

    fn find_struct(&self, name: &str) -> Result<u32, BtfError> {
        for (i, &pos) in self.type_pos.iter().enumerate() {
            let rec = self.record_at(pos)?;
            if rec.kind == KIND_STRUCT && rec.vlen > 0 && self.name(rec.name_off)? == name {
                return Ok(i as u32 + 1);
            }
        }
        Err(BtfError::NoStruct(name.to_string()))
    }

    /// Bit offset of `field` inside the struct/union `id`, recursing into anonymous members.
    fn member_bits(&self, id: u32, field: &str) -> Result<Option<u32>, BtfError> {
        let rec = self.record(self.skip_modifiers(id)?)?;
        if rec.kind != KIND_STRUCT && rec.kind != KIND_UNION {
            return Ok(None);
        }
        for m in 0..rec.vlen {
            let at = rec.trailer + m * 12;
            let name_off = read_u32(&self.data, at)?;
            let member_type = read_u32(&self.data, at + 4)?;
            let raw_offset = read_u32(&self.data, at + 8)?;
            let bits = if rec.kind_flag {
                raw_offset & 0x00ff_ffff
            } else {
                raw_offset
            };
            if name_off == 0 {
                if let Some(inner) = self.member_bits(member_type, field)? {
                    return Ok(Some(bits + inner));
                }
            } else if self.name(name_off)? == field {
                return Ok(Some(bits));
            }
        }
        Ok(None)
    }

    fn skip_modifiers(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..32 {
            let rec = self.record(id)?;
            match rec.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = rec.size_or_type
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::Malformed("modifier chain too long"))
    }

    fn record(&self, id: u32) -> Result<TypeRec, BtfError> {
        let pos = id
            .checked_sub(1)
            .and_then(|i| self.type_pos.get(i as usize))
            .ok_or(BtfError::Malformed("type id out of range"))?;
        self.record_at(*pos)
    }

    fn record_at(&self, pos: usize) -> Result<TypeRec, BtfError> {
        let info = read_u32(&self.data, pos + 4)?;
        Ok(TypeRec {
            name_off: read_u32(&self.data, pos)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: read_u32(&self.data, pos + 8)?,
            trailer: pos + 12,
        })
    }

    fn name(&self, off: u32) -> Result<&str, BtfError> {
        let off = off as usize;
        if off >= self.strings_len {
            return Err(BtfError::Malformed("string offset out of range"));
        }
        let bytes = &self.data[self.strings_start + off..self.strings_start + self.strings_len];
        let len = bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(BtfError::Malformed("unterminated string"))?;
        std::str::from_utf8(&bytes[..len]).map_err(|_| BtfError::Malformed("string not UTF-8"))
    }
}

fn trailer_len(kind: u32, vlen: usize) -> usize {
    match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
        _ => 0,
    }
}

fn read_u32(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct outer { int a; union { int b; long c; }; }`.
    fn tiny() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0".to_vec();
        let s = |name: &str| -> u32 {
            let hay = std::str::from_utf8(&strings).unwrap_or_default();
            hay.find(&format!("\0{name}\0"))
                .map(|p| p as u32 + 1)
                .unwrap_or(0)
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (size 4) + INT trailer
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: anonymous union { b at 0; c at 0 }, size 8
        push(&[0, (KIND_UNION << 24) | 2, 8]);
        push(&[s("b"), 1, 0]);
        push(&[s("c"), 1, 0]);
        // 3: struct outer { a at bit 0; <anon> at bit 64 }, size 16
        push(&[s("outer"), (KIND_STRUCT << 24) | 2, 16]);
        push(&[s("a"), 1, 0]);
        push(&[0, 2, 64]);
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_fields_through_anonymous_members() {
        let btf = Btf::parse(tiny()).expect("parse");
        assert_eq!(btf.type_count(), 3);
        assert_eq!(btf.field_offset("outer", "a").ok(), Some(0));
        assert_eq!(btf.field_offset("outer", "c").ok(), Some(8));
        assert!(matches!(
            btf.field_offset("outer", "zz"),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.field_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(Btf::parse(vec![0; 8]).is_err());
        let mut blob = tiny();
        blob.truncate(blob.len() - 20);
        assert!(Btf::parse(blob).is_err());
    }

    #[test]
    fn running_kernel_has_its_tracepoints_typed() {
        let Ok(btf) = Btf::from_sys_fs() else { return };
        assert_eq!(btf.has_tracepoint("sched_switch").ok(), Some(true));
        assert_eq!(btf.has_tracepoint("no_such_tracepoint").ok(), Some(false));
        let all = btf.tracepoints().expect("tracepoints");
        assert!(
            all.contains("sched_switch") && all.contains("tcp_probe"),
            "{all:?}"
        );
    }

    #[test]
    fn running_kernel_has_sk_buff_len() {
        // ws-trace requires a kernel with BTF; its absence is a failure, not a skip.
        let btf = Btf::from_sys_fs().expect("/sys/kernel/btf/vmlinux");
        let len = btf.field_offset("sk_buff", "len").expect("sk_buff.len");
        assert!(len > 0 && len < 512, "implausible offset {len}");
    }
}
