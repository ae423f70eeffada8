//! A small hand-made profile for the output tests.

use super::{Frame, Profile, Stack};

fn frame(name: &str, kernel: bool) -> Frame {
    Frame {
        name: name.into(),
        module: if kernel { "[kernel]" } else { "/bin/app" }.into(),
        addr: 0x1000 + name.len() as u64,
        line: (!kernel).then(|| ("src/main.rs".to_string(), 10)),
        kernel,
        known: true,
    }
}

fn stack(frames: &[(&str, bool)], value: u64) -> Stack {
    Stack {
        tgid: 42,
        process: "app".into(),
        frames: frames.iter().map(|(n, k)| frame(n, *k)).collect(),
        value,
    }
}

/// 7 samples in `burn`, 3 in a read syscall; 2 ms waiting in `wait`.
pub fn profile() -> Profile {
    Profile {
        on_cpu: vec![
            stack(&[("main", false), ("burn", false)], 7),
            stack(&[("main", false), ("read", false), ("sys_read", true)], 3),
        ],
        off_cpu: vec![stack(
            &[("main", false), ("wait", false), ("schedule", true)],
            2_000_000,
        )],
        freq: 99,
        duration_ns: 1_000_000_000,
        start_unix_ns: 1,
        warnings: Vec::new(),
        stats: Default::default(),
    }
}
