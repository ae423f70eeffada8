//! tracefs: classic tracepoints need it mounted (the kernel's event ids live there).
//! It is not mounted by default on these machines; ws-trace mounts it where it belongs.
use std::path::{Path, PathBuf};

/// Where tracefs is mounted when ws-trace mounts it.
pub const TRACEFS_PATH: &str = "/sys/kernel/tracing";

/// A failure to mount tracefs.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot mount tracefs at {TRACEFS_PATH}: {0} (mount it with `mount -t tracefs nodev {TRACEFS_PATH}`)"
)]
pub struct MountError(#[from] nix::Error);

/// The directory where tracefs is mounted now, if it is.
pub fn mounted() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "tracefs").then(|| PathBuf::from(dir))
    })
}

/// Mounts tracefs at [`TRACEFS_PATH`] unless it is mounted already; returns its directory
/// and whether this call mounted it.
pub fn ensure_mounted() -> Result<(PathBuf, bool), MountError> {
    if let Some(dir) = mounted() {
        return Ok((dir, false));
    }
    nix::mount::mount(
        Some("nodev"),
        Path::new(TRACEFS_PATH),
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )?;
    Ok((PathBuf::from(TRACEFS_PATH), true))
}

/// A field of a tracepoint's record, from its `format` file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The format file could not be read (tracefs not mounted, or no such event).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The format file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The event has no such field.
    #[error("tracepoint {event} has no field {field}")]
    NoField {
        /// `category/name`.
        event: String,
        /// The field asked for.
        field: String,
    },
}

/// Byte offset of `field` in the records of tracepoint `category:name`, read from
/// `<tracefs>/events/<category>/<name>/format` (lines like
/// `field:long ret; offset:16; size:8; signed:1;`).
pub fn field_offset(
    tracefs: &Path,
    category: &str,
    name: &str,
    field: &str,
) -> Result<u32, FormatError> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = std::fs::read_to_string(&path).map_err(|source| FormatError::Io {
        path: path.display().to_string(),
        source,
    })?;
    text.lines()
        .find_map(|line| {
            let mut parts = line.trim().split(';').map(str::trim);
            let decl = parts.next()?.strip_prefix("field:")?;
            // The declaration ends with the field's name (possibly an array: name[N]).
            let declared = decl.rsplit([' ', '*']).next()?.split('[').next()?;
            if declared != field {
                return None;
            }
            parts.find_map(|p| p.strip_prefix("offset:")?.parse().ok())
        })
        .ok_or_else(|| FormatError::NoField {
            event: format!("{category}/{name}"),
            field: field.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_offsets_from_a_format_file() {
        let dir = std::env::temp_dir().join(format!("ws-trace-fmt-{}", std::process::id()));
        let ev = dir.join("events/syscalls/sys_exit_x");
        std::fs::create_dir_all(&ev).expect("mkdir");
        std::fs::write(
            ev.join("format"),
            "name: sys_exit_x\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n",
        )
        .expect("write");
        assert_eq!(
            field_offset(&dir, "syscalls", "sys_exit_x", "ret").ok(),
            Some(16)
        );
        assert_eq!(
            field_offset(&dir, "syscalls", "sys_exit_x", "__syscall_nr").ok(),
            Some(8)
        );
        assert!(matches!(
            field_offset(&dir, "syscalls", "sys_exit_x", "nope"),
            Err(FormatError::NoField { .. })
        ));
        assert!(matches!(
            field_offset(&dir, "syscalls", "missing", "ret"),
            Err(FormatError::Io { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
