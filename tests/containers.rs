//! Targets the way containers present them: a process in its own PID namespace, traced by
//! its host PID, and the processes of one cgroup.
use std::{path::PathBuf, sync::atomic::AtomicBool, time::Duration};

use ws_engine::server::{Feed, FeedServer, Payload};
use ws_tests::require_for_test;
use ws_trace::{
    attach::{self, AttachOptions, Plan},
    correlate::correlate,
    decode::Event,
    target::Target,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_feed_client");

/// The two tests share the machine's scheduling: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Messages the feed sends: 5 s of them, so the tests find the client and attach
/// mid-stream. Attaching takes about a second on a busy machine; with two busy loops on
/// this 2-vCPU machine it once took over 1.8 s, and a 2 s feed left 76 messages.
const MESSAGES: usize = 2500;

fn feed() -> FeedServer {
    FeedServer::start(Feed {
        count: MESSAGES,
        size: 128,
        gap: Duration::from_millis(2),
        payload: Payload::Indexed,
    })
    .expect("feed server")
}

/// Traces `target` until it exits; returns its events.
fn trace(mut target: Target, tgid: u32) -> Vec<Event> {
    let opts = AttachOptions {
        plan: Plan::process(tgid, vec![CLIENT.into()]),
        duration: Some(Duration::from_secs(60)),
        refresh: None,
    };
    let mut events = Vec::new();
    let never = AtomicBool::new(false);
    attach::run(&opts, &mut target, &never, |_| {}, |_, e| events.push(*e)).expect("attach");
    events
}

/// Every message seen after attaching is joined (but a few at the session's edges), and
/// only the client's own process shows up in task events.
fn check(events: &[Event], tgid: u32) {
    let c = correlate(events);
    eprintln!(
        "{} messages seen after attaching, {} joined: {:?}",
        c.messages,
        c.rows.len(),
        c.unjoined
    );
    assert!(c.messages >= 100, "only {} messages traced", c.messages);
    // A callback whose exit probe was not placed yet (attaching mid-stream places the entry
    // uprobe first), or that ran past the session's end, has no exit; nothing else may
    // break a row.
    let u = &c.unjoined;
    assert_eq!(
        u.total(),
        u.no_exit,
        "messages unjoined for other reasons: {u:?}"
    );
    assert!(
        u.no_exit * 50 <= c.messages.max(250),
        "{} of {} messages have no exit",
        u.no_exit,
        c.messages
    );
    for e in events {
        if matches!(e, Event::Callback(_) | Event::Recv(_)) {
            assert_eq!(e.header().tgid, tgid, "{e}");
        }
    }
}

/// The pid of `parent`'s only child, once it has one.
fn child_of(parent: u32) -> u32 {
    for _ in 0..200 {
        let path = format!("/proc/{parent}/task/{parent}/children");
        if let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
        {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{parent} started no child");
}

#[test]
fn a_client_in_its_own_pid_namespace_is_traced_by_its_host_pid() {
    if !require_for_test("a_client_in_its_own_pid_namespace_is_traced_by_its_host_pid") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = feed();
    // unshare forks the client as pid 1 of a new PID namespace.
    let mut unshare = std::process::Command::new("unshare")
        .args(["--pid", "--fork", CLIENT, server.url()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("unshare");
    let host_pid = child_of(unshare.id());
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid");
    assert!(
        nspid.split_whitespace().last() == Some("1"),
        "not pid 1 of its own namespace: {nspid}"
    );
    let events = trace(Target::pid(host_pid).expect("target"), host_pid);
    let _ = unshare.wait();
    assert_eq!(server.join().expect("feed server").messages, MESSAGES);
    check(&events, host_pid);
}

/// Removes a cgroup once its processes have gone.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn the_processes_of_a_cgroup_are_traced() {
    if !require_for_test("the_processes_of_a_cgroup_are_traced") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // cgroup v2 where the machine mounts it (a hybrid layout puts it under unified/).
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").is_file())
        .expect("a cgroup hierarchy");
    let cgroup = Cgroup(root.join(format!("wst-test-{}", std::process::id())));
    std::fs::create_dir(&cgroup.0).expect("create a cgroup");
    let server = feed();
    let mut client = std::process::Command::new(CLIENT)
        .arg(server.url())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("client");
    std::fs::write(cgroup.0.join("cgroup.procs"), client.id().to_string())
        .expect("move the client into the cgroup");
    let target = Target::cgroup(&cgroup.0).expect("cgroup target");
    assert_eq!(
        target.tgids().expect("cgroup.procs"),
        [client.id()].into(),
        "the cgroup's processes"
    );
    // The session ends with the feed (a cgroup target does not exit by itself).
    let opts = AttachOptions {
        plan: Plan::process(client.id(), vec![CLIENT.into()]),
        duration: Some(Duration::from_millis(2500)),
        refresh: None,
    };
    let mut events = Vec::new();
    let never = AtomicBool::new(false);
    let mut target = target;
    attach::run(&opts, &mut target, &never, |_| {}, |_, e| events.push(*e)).expect("attach");
    let _ = client.wait();
    assert_eq!(server.join().expect("feed server").messages, MESSAGES);
    check(&events, client.id());
    // Nothing else in the machine was traced.
    let other = events
        .iter()
        .filter(|e| matches!(e, Event::Recv(_) | Event::Syscall(_)))
        .filter(|e| e.header().tgid != client.id())
        .count();
    assert_eq!(other, 0);
}
