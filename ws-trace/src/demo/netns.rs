//! A throwaway network namespace joined to the host by a veth pair, so the demo's traffic
//! crosses a real (virtual) NIC instead of loopback. Everything is removed on drop.
use std::{
    net::Ipv4Addr,
    os::fd::AsFd as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use aya::programs::TcAttachType;

use crate::loader::{MIN_RING_BYTES, ProbeError, ProbeObject, Program};

/// Failures creating or entering the namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {detail}")]
    Ip {
        /// Its arguments.
        args: String,
        /// Its stderr or the OS error.
        detail: String,
    },
    /// The probe object could not be loaded, or its tc program was refused by the
    /// verifier or could not be attached.
    #[error("tc egress program on {interface}: {source}")]
    Wire {
        /// The interface it was meant for.
        interface: String,
        /// What went wrong.
        #[source]
        source: Box<ProbeError>,
    },
    /// The thread attaching the wire program panicked.
    #[error("tc egress program on {interface}: the attaching thread panicked")]
    WirePanicked {
        /// The interface it was meant for.
        interface: String,
    },
    /// The namespace could not be entered.
    #[error("entering network namespace {name}: {source}")]
    Enter {
        /// The namespace.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A network namespace with a veth pair to the host.
pub struct Netns {
    name: String,
    host_if: String,
    peer_if: String,
    host_addr: Ipv4Addr,
    peer_addr: Ipv4Addr,
}

/// Namespaces made by this process so far (names and subnets stay distinct).
static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Prefix of the namespaces this module makes: `wst-<pid>-<n>`.
const PREFIX: &str = "wst-";

/// Keeps the wire program of [`Netns::wire_like`] attached; dropping it detaches it.
pub struct Wire {
    _object: ProbeObject,
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetnsError::Ip {
            args: args.join(" "),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Ip {
            args: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl Netns {
    /// Creates `wst-<pid>-<n>` with veth `wst<pid>-<n>h` (host side) and `wst<pid>-<n>n`
    /// (inside), both up, on a /30 of 169.254.0.0/16 of their own: processes (a demo next
    /// to a test run) and namespaces of one process never share addresses. Namespaces left
    /// by a process that is gone (killed before its drop ran) are removed first.
    pub fn create() -> Result<Netns, NetnsError> {
        remove_stale();
        let pid = std::process::id();
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // 16128 /30 subnets in 169.254.1.0 – 169.254.252.255.
        let subnet = (pid.wrapping_mul(16).wrapping_add(n)) % 16128;
        let base = u32::from(Ipv4Addr::new(169, 254, 1, 0)) + subnet * 4;
        let ns = Netns {
            name: format!("{PREFIX}{pid}-{n}"),
            host_if: format!("wst{pid}-{n}h"),
            peer_if: format!("wst{pid}-{n}n"),
            host_addr: Ipv4Addr::from(base + 1),
            peer_addr: Ipv4Addr::from(base + 2),
        };
        let host = format!("{}/30", ns.host_addr);
        let peer = format!("{}/30", ns.peer_addr);
        ip(&["netns", "add", &ns.name])?;
        // From here on, Drop cleans up whatever was made.
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.peer_if,
        ])?;
        ip(&["link", "set", &ns.peer_if, "netns", &ns.name])?;
        ip(&["addr", "add", &host, "dev", &ns.host_if])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &peer, "dev", &ns.peer_if])?;
        ip(&["-n", &ns.name, "link", "set", &ns.peer_if, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host-side interface.
    pub fn host_interface(&self) -> &str {
        &self.host_if
    }

    /// The interface inside the namespace.
    pub fn peer_interface(&self) -> &str {
        &self.peer_if
    }

    /// The host side's address.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.host_addr
    }

    /// The namespace side's address (a server inside listens there).
    pub fn peer_addr(&self) -> Ipv4Addr {
        self.peer_addr
    }

    /// Makes packets sent from inside the namespace reach the host as if off a wire.
    ///
    /// TCP gives each skb its departure time and a veth pair carries that stamp across,
    /// so the host's stack skips its receive stamp at the device and takes it only at IP
    /// local delivery (`SO_TIMESTAMPING` then measures something a NIC never shows). A tc
    /// egress program on the inside end clears the departure time, and the host stamps
    /// the packet when it enters the stack, as it does a NIC's. Needs root.
    pub fn wire_like(&self) -> Result<Wire, NetnsError> {
        let enter = self.enter_handle();
        let name = self.name.clone();
        let interface = self.peer_if.clone();
        // The interface name resolves in the calling thread's namespace: attach from a
        // thread that has entered it (the link then lives on with the returned fds).
        std::thread::spawn(move || {
            enter().map_err(|source| NetnsError::Enter { name, source })?;
            // The program's event ring is never read: keep it minimal.
            let attach = || -> Result<ProbeObject, ProbeError> {
                let mut object = ProbeObject::load(MIN_RING_BYTES)?;
                object.attach_tc(Program::Wire, &interface, TcAttachType::Egress)?;
                Ok(object)
            };
            match attach() {
                Ok(object) => Ok(Wire { _object: object }),
                Err(e) => Err(NetnsError::Wire {
                    interface,
                    source: Box::new(e),
                }),
            }
        })
        .join()
        .map_err(|_| NetnsError::WirePanicked {
            interface: self.peer_if.clone(),
        })?
    }

    /// A function that moves the thread calling it into the namespace (sockets it then
    /// creates live there); it can be sent to another thread.
    pub fn enter_handle(&self) -> impl Fn() -> std::io::Result<()> + Send + 'static {
        let path = PathBuf::from("/run/netns").join(&self.name);
        move || {
            let file = std::fs::File::open(&path)?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        }
    }
}

/// Removes namespaces (and their host-side veth) of processes that no longer exist.
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `wst-<pid>-<n>`, and `wst-<pid>` as earlier versions named them.
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split_once('-').map_or(rest, |(pid, _)| pid);
        if pid.parse::<u32>().is_err() || PathBuf::from("/proc").join(pid).exists() {
            continue;
        }
        // The host end is `wst<pid>[-<n>]h`; deleting the namespace removes its end.
        let _ = ip(&["link", "del", &format!("wst{}h", &rest)]);
        let _ = ip(&["netns", "del", &name]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the host end removes the pair; deleting the namespace removes the rest.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
