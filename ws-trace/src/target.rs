//! What to trace: a running process (`--pid`), processes by name (`--comm`), or a
//! command ws-trace starts itself (`-- CMD ARGS`), held back until the probes are attached.
use std::{
    collections::BTreeSet,
    io::Write as _,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
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
    /// No such cgroup (v2) directory.
    #[error("no cgroup {} (give a directory under /sys/fs/cgroup, or a path relative to it)", .0.display())]
    NoCgroup(PathBuf),
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
    Pid {
        /// Its id.
        pid: u32,
        /// A pidfd of it (`pidfd_open`, Linux 5.3+): readable once it has exited, so
        /// [`Target::exited`] is one `poll` instead of reading `/proc` (and a reused pid
        /// cannot pass for it). `None` where the kernel has none.
        pidfd: Option<OwnedFd>,
    },
    /// Every process whose comm is this name, re-scanned while attached.
    Comm(String),
    /// Every process in this cgroup (v2) or below it (a container, a systemd unit),
    /// re-scanned while attached.
    Cgroup(PathBuf),
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
    /// `--cgroup`, else `-- CMD` (started held back), else every process.
    /// A started command is not told about a tracer (see [`Target::select_with`]).
    pub fn select(
        pid: Option<u32>,
        comm: Option<&str>,
        cgroup: Option<&Path>,
        command: &[String],
    ) -> Result<Target, TargetError> {
        Target::select_with(pid, comm, cgroup, command, false)
    }

    /// As [`select`](Self::select); with `engine_channel`, a started command's ws-engine
    /// event loops keep their stamp records for this process from the start (see
    /// [`Target::spawn_with`]).
    pub fn select_with(
        pid: Option<u32>,
        comm: Option<&str>,
        cgroup: Option<&Path>,
        command: &[String],
        engine_channel: bool,
    ) -> Result<Target, TargetError> {
        if let Some(pid) = pid {
            Target::pid(pid)
        } else if let Some(comm) = comm {
            Ok(Target::Comm(comm.to_string()))
        } else if let Some(cgroup) = cgroup {
            Target::cgroup(cgroup)
        } else if !command.is_empty() {
            Target::spawn_with(command, engine_channel)
        } else {
            Ok(Target::All)
        }
    }

    /// A running process.
    pub fn pid(pid: u32) -> Result<Target, TargetError> {
        if PathBuf::from(format!("/proc/{pid}")).exists() {
            Ok(Target::Pid {
                pid,
                pidfd: pidfd_open(pid),
            })
        } else {
            Err(TargetError::NoPid(pid))
        }
    }

    /// A cgroup (v2): an absolute directory, or a path relative to `/sys/fs/cgroup`.
    pub fn cgroup(path: &Path) -> Result<Target, TargetError> {
        let dir = if path.is_absolute() {
            path.to_path_buf()
        } else {
            Path::new(CGROUP_ROOT).join(path)
        };
        if dir.join("cgroup.procs").is_file() {
            Ok(Target::Cgroup(dir))
        } else {
            Err(TargetError::NoCgroup(dir))
        }
    }

    /// Starts `command` held back before its exec: it runs only after [`Target::release`].
    /// Its ws-engine event loops keep their stamp records for this process (see
    /// [`Target::spawn_with`]).
    pub fn spawn(command: &[String]) -> Result<Target, TargetError> {
        Target::spawn_with(command, true)
    }

    /// As [`spawn`](Self::spawn). With `engine_channel`, the command's environment names
    /// this process as its tracer (`ws_abi::channel::CHANNEL_TRACER_ENV`), so each
    /// ws-engine event loop it creates holds its stamp records for this process until it
    /// has found the loop's ring (a few seconds at most).
    pub fn spawn_with(command: &[String], engine_channel: bool) -> Result<Target, TargetError> {
        Target::spawn_with_output(command, engine_channel, None)
    }

    /// As [`spawn_with`](Self::spawn_with), the command's stdout and stderr going to
    /// `output` when given (a full-screen view that must not be drawn over).
    pub fn spawn_with_output(
        command: &[String],
        engine_channel: bool,
        output: Option<std::fs::File>,
    ) -> Result<Target, TargetError> {
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
        if let Some(out) = output {
            cmd.stdout(out.try_clone().map_err(spawn_err)?).stderr(out);
        }
        // The shell waits for one byte on fd 3 (the gate), closes it, then becomes the
        // command (same pid), so the probes are attached before the command's first
        // instruction.
        cmd.arg("-c")
            .arg("read -r _ <&3; exec 3<&-; exec \"$@\"")
            .arg("ws-trace-gate")
            .args(command);
        if engine_channel {
            cmd.env(
                ws_abi::channel::CHANNEL_TRACER_ENV,
                std::process::id().to_string(),
            );
        }
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

    /// Ends a spawned command that is still running as Ctrl-C in its terminal would
    /// (SIGINT), waiting up to `grace` for it to exit, then SIGKILL. No-op for other
    /// targets. Returns whether a command was ended.
    pub fn end_spawned(&mut self, grace: std::time::Duration) -> bool {
        let Target::Spawned { child, .. } = self else {
            return false;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let until = std::time::Instant::now() + grace;
        while matches!(child.try_wait(), Ok(None)) {
            if std::time::Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
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
            Target::Pid { pid, .. } => Ok(BTreeSet::from([*pid])),
            Target::Spawned { child, .. } => Ok(BTreeSet::from([child.id()])),
            Target::Comm(name) => processes_named(name),
            Target::Cgroup(dir) => processes_in_cgroup(dir),
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
            Target::All | Target::Comm(_) | Target::Cgroup(_) => false,
            Target::Pid { pid, pidfd } => match pidfd {
                Some(fd) => pidfd_exited(fd),
                None => !process_running(*pid),
            },
            Target::Spawned { child, .. } => !matches!(child.try_wait(), Ok(None)),
        }
    }

    /// How it is described in summaries and trace headers.
    pub fn describe(&self) -> String {
        match self {
            Target::All => "all processes".into(),
            Target::Pid { pid, .. } => format!("pid {pid}"),
            Target::Comm(name) => format!("comm {name:?}"),
            Target::Cgroup(dir) => format!("cgroup {}", dir.display()),
            Target::Spawned { command, child, .. } => {
                format!("pid {} ({})", child.id(), command.join(" "))
            }
        }
    }
}

/// Where cgroup v2 is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Processes in the cgroup `dir` and every cgroup below it (host pids, as
/// `cgroup.procs` gives them to a reader in the initial namespaces).
pub fn processes_in_cgroup(dir: &Path) -> Result<BTreeSet<u32>, TargetError> {
    let mut out = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        // A cgroup may be removed while it is walked: that is not an error.
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        pending.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    Ok(out)
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

/// Whether process `pid` exists and has not exited: a zombie (exited, not yet reaped by
/// its parent) keeps its `/proc` entry but runs nothing more.
/// A pidfd of process `pid`, if the kernel has `pidfd_open` and the process exists.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1; nothing is
    // borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall just returned this fd, which nothing else owns.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Whether the process behind `pidfd` has exited (a zombie counts): the pidfd polls
/// readable then.
fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(pidfd),
        nix::poll::PollFlags::POLLIN,
    )];
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
        Ok(n) => n > 0,
        // EINTR: ask again next time.
        Err(_) => false,
    }
}

fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which ends at the last ')'.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod running_tests {
    use super::process_running;

    #[test]
    fn a_zombie_is_not_running() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        // Unreaped after it exits: a zombie, its /proc entry still there.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_running(pid) {
            assert!(std::time::Instant::now() < until, "true never exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        child.wait().expect("reap");
        assert!(!process_running(pid));
        assert!(process_running(std::process::id()));
    }

    /// A `--pid` target is exited once its process is a zombie, as `process_running`
    /// says, through its pidfd.
    #[test]
    fn a_pid_target_sees_its_process_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .expect("spawn sleep");
        let mut target = super::Target::pid(child.id()).expect("target");
        assert!(
            matches!(&target, super::Target::Pid { pidfd: Some(_), .. }),
            "no pidfd on this kernel"
        );
        assert!(!target.exited());
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !target.exited() {
            assert!(std::time::Instant::now() < until, "sleep never exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Not reaped yet: a zombie.
        assert!(std::path::Path::new(&format!("/proc/{}", child.id())).exists());
        child.wait().expect("reap");
        assert!(target.exited());
    }
}
