//! Does this process hold what loading and attaching probes needs?
//!
//! Root normally does; a process without root needs CAP_BPF and CAP_PERFMON (or
//! CAP_SYS_ADMIN). The check reads the effective capability set, so a root process whose
//! capabilities were dropped is refused too.

/// `CAP_SYS_ADMIN` bit number.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON` bit number.
const CAP_PERFMON: u32 = 38;
/// `CAP_BPF` bit number.
const CAP_BPF: u32 = 39;

/// Why tracing cannot start with the current privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The effective capability set lacks what BPF tracing needs.
    #[error(
        "ws-trace needs root: run it with sudo (or grant CAP_BPF+CAP_PERFMON); missing {missing}"
    )]
    Missing {
        /// The capabilities that are missing, by name.
        missing: String,
    },
    /// `/proc/self/status` could not be read or parsed.
    #[error("cannot read this process's capabilities from /proc/self/status: {0}")]
    Unreadable(String),
}

/// The privileges the current process has, as far as tracing is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Privileges {
    /// Effective user id is 0.
    pub root: bool,
    /// CAP_BPF is effective.
    pub cap_bpf: bool,
    /// CAP_PERFMON is effective.
    pub cap_perfmon: bool,
    /// CAP_SYS_ADMIN is effective (implies both of the above on older kernels).
    pub cap_sys_admin: bool,
}

impl Privileges {
    /// Reads the effective uid and capability set of this process.
    pub fn current() -> Result<Privileges, PrivilegeError> {
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| PrivilegeError::Unreadable(e.to_string()))?;
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .ok_or_else(|| PrivilegeError::Unreadable("no CapEff line".into()))?;
        let has = |bit: u32| eff & (1u64 << bit) != 0;
        Ok(Privileges {
            root: nix::unistd::geteuid().is_root(),
            cap_bpf: has(CAP_BPF),
            cap_perfmon: has(CAP_PERFMON),
            cap_sys_admin: has(CAP_SYS_ADMIN),
        })
    }

    /// Whether loading tracing programs and attaching them is allowed.
    pub fn can_trace(&self) -> bool {
        self.cap_sys_admin || (self.cap_bpf && self.cap_perfmon)
    }

    /// `Ok` when tracing is allowed, else an error that says what to do.
    pub fn require_tracing(&self) -> Result<(), PrivilegeError> {
        if self.can_trace() {
            return Ok(());
        }
        let mut missing = Vec::new();
        if !self.cap_bpf {
            missing.push("CAP_BPF");
        }
        if !self.cap_perfmon {
            missing.push("CAP_PERFMON");
        }
        Err(PrivilegeError::Missing {
            missing: missing.join("+"),
        })
    }
}

/// Checks the current process's privileges for tracing.
pub fn require_tracing() -> Result<Privileges, PrivilegeError> {
    let p = Privileges::current()?;
    p.require_tracing()?;
    Ok(p)
}

/// For test harnesses: whether a test that needs BPF privileges can run here.
///
/// With privileges: `true`. Without: under CI (`CI=true`) this panics, because a test that
/// cannot run there must fail, not pass silently; elsewhere it prints why the test is
/// skipped and returns `false`.
pub fn require_for_test(test: &str) -> bool {
    let reason = match require_tracing() {
        Ok(_) => return true,
        Err(e) => e.to_string(),
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{test}: cannot run under CI: {reason}");
    eprintln!("skipped {test}: {reason}");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_admin_or_bpf_plus_perfmon() {
        let none = Privileges {
            root: false,
            cap_bpf: false,
            cap_perfmon: false,
            cap_sys_admin: false,
        };
        let err = none.require_tracing().expect_err("no capabilities");
        assert!(err.to_string().contains("sudo"), "{err}");
        assert!(err.to_string().contains("CAP_BPF+CAP_PERFMON"), "{err}");
        assert!(
            Privileges {
                cap_bpf: true,
                ..none
            }
            .require_tracing()
            .is_err()
        );
        assert!(
            Privileges {
                cap_bpf: true,
                cap_perfmon: true,
                ..none
            }
            .can_trace()
        );
        assert!(
            Privileges {
                cap_sys_admin: true,
                ..none
            }
            .can_trace()
        );
    }
}
