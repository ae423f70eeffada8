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
}

/// The host side's address.
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
/// The namespace side's address (the demo server listens there).
pub const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);

/// A network namespace with a veth pair to the host.
pub struct Netns {
    name: String,
    host_if: String,
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
        };
        let peer_if = format!("wst{pid}n");
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
            &peer_if,
        ])?;
        ip(&["link", "set", &peer_if, "netns", &ns.name])?;
        ip(&["addr", "add", &host, "dev", &ns.host_if])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &peer, "dev", &peer_if])?;
        ip(&["-n", &ns.name, "link", "set", &peer_if, "up"])?;
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
