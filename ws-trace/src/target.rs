//! What to trace: a running process (`--pid`), processes by name (`--comm`), or a
//! command ws-trace starts itself (`-- CMD ARGS`), held back until the probes are attached.
use std::{
    collections::BTreeSet,
    io::Write as _,
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
    process::{Child, Command},
};

/// Failures finding or starting the target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No such process.
    #[error("no process with pid {0}")]
    NoPid(u32),
    /// No process has that name (yet).
    #[error("no running process is named {0:?} (names are the kernel's 15-character comm)")]
    NoComm(String),
    /// The command could not be started.
    #[error("starting {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Releasing the held-back command failed.
    #[error("releasing the started command: {0}")]
    Release(std::io::Error),
    /// Reading /proc failed.
    #[error("reading /proc: {0}")]
    Proc(std::io::Error),
}

/// The processes being traced.
pub enum Target {
    /// Every process, no filter.
    All,
    /// One running process and its threads.
    Pid(u32),
    /// Every process whose comm is this name, re-scanned while attached.
    Comm(String),
    /// A command started by ws-trace, waiting to exec until [`Target::release`].
    Spawned {
        /// The child (a shell that execs the command once released).
        child: Child,
        /// Write end of the pipe the child waits on.
        gate: Option<OwnedFd>,
        /// The command line, for display.
        command: Vec<String>,
        /// The program the command runs, resolved on PATH.
        program: PathBuf,
    },
}

impl Target {
    /// What the CLI's target options name, first match wins: `--pid`, else `--comm`, else
    /// `-- CMD` (started held back), else every process.
    pub fn select(
        pid: Option<u32>,
        comm: Option<&str>,
        command: &[String],
    ) -> Result<Target, TargetError> {
        if let Some(pid) = pid {
            Target::pid(pid)
        } else if let Some(comm) = comm {
            Ok(Target::Comm(comm.to_string()))
        } else if !command.is_empty() {
            Target::spawn(command)
        } else {
            Ok(Target::All)
        }
    }

    /// A running process.
    pub fn pid(pid: u32) -> Result<Target, TargetError> {
        if PathBuf::from(format!("/proc/{pid}")).exists() {
            Ok(Target::Pid(pid))
        } else {
            Err(TargetError::NoPid(pid))
        }
    }

    /// Starts `command` held back before its exec: it runs only after [`Target::release`].
    pub fn spawn(command: &[String]) -> Result<Target, TargetError> {
        let shown = command.join(" ");
        let spawn_err = |source| TargetError::Spawn {
            command: shown.clone(),
            source,
        };
        let Some(first) = command.first() else {
            return Err(spawn_err(std::io::Error::other("empty command")));
        };
        let program = which::which(first).map_err(|e| spawn_err(std::io::Error::other(e)))?;
        let (read, write) = nix::unistd::pipe().map_err(|e| spawn_err(e.into()))?;
        let read_fd = read.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        // The shell waits for one byte on fd 3 (the gate), closes it, then becomes the
        // command (same pid), so the probes are attached before the command's first
        // instruction.
        cmd.arg("-c")
            .arg("read -r _ <&3; exec 3<&-; exec \"$@\"")
            .arg("ws-trace-gate")
            .args(command);
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // dup2, which is async-signal-safe; `read_fd` stays open in the parent until spawn
        // returns, so it is valid in the child.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(move || {
                if libc::dup2(read_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        drop(read);
        Ok(Target::Spawned {
            child,
            gate: Some(write),
            command: command.to_vec(),
            program,
        })
    }

    /// Lets a spawned command run (no-op for other targets).
    pub fn release(&mut self) -> Result<(), TargetError> {
        if let Target::Spawned { gate, .. } = self
            && let Some(fd) = gate.take()
        {
            let mut file = std::fs::File::from(fd);
            file.write_all(b"\n").map_err(TargetError::Release)?;
        }
        Ok(())
    }

    /// The processes matching the target now.
    pub fn tgids(&self) -> Result<BTreeSet<u32>, TargetError> {
        match self {
            Target::All => Ok(BTreeSet::new()),
            Target::Pid(pid) => Ok(BTreeSet::from([*pid])),
            Target::Spawned { child, .. } => Ok(BTreeSet::from([child.id()])),
            Target::Comm(name) => processes_named(name),
        }
    }

    /// Executables whose engine probe function should get the callback uprobes.
    pub fn binaries(&self) -> Result<BTreeSet<PathBuf>, TargetError> {
        match self {
            Target::All => Ok(BTreeSet::new()),
            Target::Spawned { program, .. } => Ok(BTreeSet::from([program.clone()])),
            _ => Ok(self
                .tgids()?
                .into_iter()
                .filter_map(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
                .collect()),
        }
    }

    /// Whether the traced process has gone (always false for `All` and `Comm`).
    pub fn exited(&mut self) -> bool {
        match self {
            Target::All | Target::Comm(_) => false,
            Target::Pid(pid) => !PathBuf::from(format!("/proc/{pid}")).exists(),
            Target::Spawned { child, .. } => !matches!(child.try_wait(), Ok(None)),
        }
    }

    /// How it is described in summaries and trace headers.
    pub fn describe(&self) -> String {
        match self {
            Target::All => "all processes".into(),
            Target::Pid(pid) => format!("pid {pid}"),
            Target::Comm(name) => format!("comm {name:?}"),
            Target::Spawned { command, child, .. } => {
                format!("pid {} ({})", child.id(), command.join(" "))
            }
        }
    }
}

/// Processes whose `comm` is `name`.
pub fn processes_named(name: &str) -> Result<BTreeSet<u32>, TargetError> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").map_err(TargetError::Proc)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between listing and reading: that is not an error.
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm"))
            && comm.trim_end_matches('\n') == name
        {
            out.insert(pid);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_itself_by_comm_and_pid() {
        let me = std::process::id();
        let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");
        let found = processes_named(comm.trim_end()).expect("scan /proc");
        assert!(found.contains(&me), "{found:?} lacks {me}");
        assert!(Target::pid(me).is_ok());
        assert!(matches!(
            Target::pid(u32::MAX - 1),
            Err(TargetError::NoPid(_))
        ));
        assert!(
            processes_named("no-such-process-name")
                .expect("scan")
                .is_empty()
        );
    }

    #[test]
    fn a_spawned_command_waits_for_release() {
        let dir = std::env::temp_dir().join(format!("ws-trace-gate-{}", std::process::id()));
        let marker = dir.join("ran");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let cmd = vec!["touch".to_string(), marker.display().to_string()];
        let mut target = Target::spawn(&cmd).expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!marker.exists(), "the command ran before release");
        assert!(!target.exited());
        target.release().expect("release");
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !target.exited() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(marker.exists(), "the command did not run after release");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
