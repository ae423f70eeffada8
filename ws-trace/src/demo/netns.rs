//! A throwaway network namespace joined to the host by a veth pair, so the demo's traffic
//! crosses a real (virtual) NIC instead of loopback. Everything is removed on drop.
use std::{
    net::Ipv4Addr,
    os::fd::AsFd as _,
    path::PathBuf,
    process::{Command, Stdio},
};

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
    /// The probe object could not be loaded for the wire program.
    #[error("loading the probe object for the veth wire program: {0}")]
    Load(#[from] aya::EbpfError),
    /// The tc program was missing, refused by the verifier, or could not be attached.
    #[error("tc egress program on {interface}: {detail}")]
    Wire {
        /// The interface it was meant for.
        interface: String,
        /// What went wrong.
        detail: String,
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

/// The host side's address.
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
/// The namespace side's address (the demo server listens there).
pub const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);

/// A network namespace with a veth pair to the host.
pub struct Netns {
    name: String,
    host_if: String,
    peer_if: String,
}

/// Keeps the wire program of [`Netns::wire_like`] attached; dropping it detaches it.
pub struct Wire {
    _ebpf: aya::Ebpf,
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
    /// Creates `wst-<pid>` with veth `wst<pid>h` (host, [`HOST_ADDR`]) and `wst<pid>n`
    /// (inside, [`PEER_ADDR`]), both up.
    pub fn create() -> Result<Netns, NetnsError> {
        let pid = std::process::id();
        let ns = Netns {
            name: format!("wst-{pid}"),
            host_if: format!("wst{pid}h"),
            peer_if: format!("wst{pid}n"),
        };
        let host = format!("{HOST_ADDR}/30");
        let peer = format!("{PEER_ADDR}/30");
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
            let wire_err = |detail: String| NetnsError::Wire {
                interface: interface.clone(),
                detail,
            };
            let mut ebpf = aya::Ebpf::load(crate::probes::PROBES_OBJECT)?;
            let program: &mut aya::programs::SchedClassifier = ebpf
                .program_mut("wire_clear_departure")
                .ok_or_else(|| wire_err("not in the probe object".into()))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| wire_err(e.to_string()))?;
            program.load().map_err(|e| wire_err(e.to_string()))?;
            program
                .attach(&interface, aya::programs::TcAttachType::Egress)
                .map_err(|e| wire_err(e.to_string()))?;
            Ok(Wire { _ebpf: ebpf })
        })
        .join()
        .map_err(|_| NetnsError::Wire {
            interface: self.peer_if.clone(),
            detail: "the attaching thread panicked".into(),
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

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the host end removes the pair; deleting the namespace removes the rest.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
