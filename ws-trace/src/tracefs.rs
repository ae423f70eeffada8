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
