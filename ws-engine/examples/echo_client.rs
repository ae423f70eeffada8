//! `echo_client <url>`: sends each line of stdin as a text message and prints every
//! message received; at end of input it closes (1000) and exits when the peer answers.
use std::io::BufRead;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use ws_engine::{
    CloseInfo, ConnConfig, ConnCtx, ConnError, ConnId, EventLoop, Handler, LoopConfig, Message,
};

struct Print {
    received: u64,
    failed: bool,
}

impl Handler for Print {
    fn on_message(&mut self, _conn: &mut ConnCtx<'_>, msg: Message<'_>) {
        self.received += 1;
        match msg.text() {
            Some(t) => println!("{t}"),
            None => println!("<binary {} bytes>", msg.data.len()),
        }
    }
    fn on_error(&mut self, _id: ConnId, err: &ConnError) {
        eprintln!("error: {err}");
        self.failed = true;
    }
    fn on_closed(&mut self, _id: ConnId, info: &CloseInfo) {
        eprintln!(
            "closed: peer code {:?} reason {:?}, sent {:?}, clean {}",
            info.peer_code, info.peer_reason, info.sent_code, info.clean
        );
    }
}

fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: echo_client <url>");
        return ExitCode::from(2);
    };
    let mut el = match EventLoop::new(LoopConfig::default()) {
        Ok(el) => el,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let id = match el.connect(&url, &ConnConfig::default()) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (tx, rx) = mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    let mut h = Print {
        received: 0,
        failed: false,
    };
    let mut closing = false;
    while !el.is_empty() {
        while let Ok(line) = rx.try_recv() {
            match line {
                Some(l) => {
                    if let Err(e) = el.send_text(id, &l) {
                        eprintln!("send: {e}");
                    }
                }
                None if !closing => {
                    closing = true;
                    // Give the echoes of the last lines a moment before closing.
                    let _ = el.poll(&mut h, Some(Duration::from_millis(200)));
                    if let Err(e) = el.close(id, 1000, "bye") {
                        eprintln!("close: {e}");
                    }
                }
                None => {}
            }
        }
        if let Err(e) = el.poll(&mut h, Some(Duration::from_millis(10))) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    eprintln!("{} messages received", h.received);
    if h.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
