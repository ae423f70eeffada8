//! The terminal while `top` shows: raw mode and the alternate screen, given back on every
//! way out (a [`TerminalGuard`] dropped on return or unwind, and a panic hook that
//! restores before the panic message prints), and the keys that end the view.
use std::{
    io::{self, Stdout},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{Terminal, backend::CrosstermBackend};

/// Puts the terminal back: main screen, cooked mode, cursor shown. Safe to call twice.
pub fn restore() -> io::Result<()> {
    let raw = terminal::disable_raw_mode();
    execute!(io::stdout(), LeaveAlternateScreen, cursor::Show)?;
    raw
}

/// Owns the terminal in raw mode on the alternate screen; dropping it restores both.
pub struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    /// Enters raw mode and the alternate screen, and installs (once per process) a panic
    /// hook that restores the terminal before the default hook prints.
    pub fn enter() -> io::Result<TerminalGuard> {
        install_panic_hook();
        terminal::enable_raw_mode()?;
        let entered = execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)
            .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())));
        match entered {
            Ok(mut terminal) => {
                terminal.clear()?;
                Ok(TerminalGuard { terminal })
            }
            Err(e) => {
                let _ = restore();
                Err(e)
            }
        }
    }

    /// The terminal to draw on.
    pub fn terminal(&mut self) -> &mut Terminal<CrosstermBackend<Stdout>> {
        &mut self.terminal
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = restore();
    }
}

fn install_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = restore();
            previous(info);
        }));
    });
}

/// What the key reader saw.
#[derive(Debug, Default)]
pub struct Keys {
    /// The terminal was resized: redraw now.
    pub resized: AtomicBool,
}

/// Reads keys on its own thread until `stop` is set: `q`, Esc and Ctrl-C (raw mode turns
/// it into a key) set `stop`; a resize sets [`Keys::resized`]. Join it after `stop` is
/// set (it notices within 100 ms).
pub fn read_keys(stop: Arc<AtomicBool>) -> (Arc<Keys>, JoinHandle<io::Result<()>>) {
    let keys = Arc::new(Keys::default());
    let seen = keys.clone();
    let handle = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if !event::poll(Duration::from_millis(100))? {
                continue;
            }
            match event::read()? {
                Event::Key(k) if k.kind != KeyEventKind::Release => {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                Event::Resize(..) => seen.resized.store(true, Ordering::Relaxed),
                _ => {}
            }
        }
        Ok(())
    });
    (keys, handle)
}
