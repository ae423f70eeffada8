//! The epoll event loop: many connections, `poll(timeout)`, `run()`, busy polling,
//! write interest for buffered sends, and the idle/close timers.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::callback::{CallbackKind, ConnCtx, ConnId, Handler, ProfilerScope, invoke};
use crate::channel::{ChannelError, StampChannel};
use crate::clock::Clock;
use crate::conn::{Conn, ConnConfig, ConnError, SendError, Status};
use crate::decoder::MsgKind;
use crate::frame::OpCode;
use crate::stamps::StampLog;
use crate::tls::TlsInfo;
use ws_abi::TlsPath;

/// Errors of the event loop itself.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// An epoll call failed.
    #[error("{op} failed: {source}")]
    Epoll {
        /// The call.
        op: &'static str,
        /// errno.
        source: std::io::Error,
    },
    /// Opening a connection failed.
    #[error("connect failed: {0}")]
    Connect(#[from] ConnError),
    /// The stamp channel could not be created.
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// Settings of an [`EventLoop`].
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// Largest number of events taken per `epoll_wait`.
    pub max_events: usize,
    /// Keep the stamps of the last N messages in [`EventLoop::stamp_log`] (0: off).
    pub stamp_log_capacity: usize,
    /// How often timers are checked while connections have them.
    pub timer_granularity: Duration,
    /// Times every callback the loop makes (per kind, and per connection when the
    /// profiler keeps connections). `None`: callbacks are not timed.
    pub profiler: Option<ws_profiler::Profiler>,
    /// Slots of the loop's stamp channel (a power of two; 0: no channel, so ws-trace can
    /// only take the engine's records with `--engine-uprobes`). Default
    /// [`ws_abi::channel::DEFAULT_CHANNEL_CAPACITY`].
    pub stamp_channel_capacity: u32,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            max_events: 256,
            stamp_log_capacity: 0,
            timer_granularity: Duration::from_millis(10),
            profiler: None,
            stamp_channel_capacity: ws_abi::channel::DEFAULT_CHANNEL_CAPACITY,
        }
    }
}

/// An epoll loop owning many connections.
pub struct EventLoop {
    epfd: OwnedFd,
    conns: Vec<Option<Conn>>,
    gens: Vec<u32>,
    free: Vec<usize>,
    events: Vec<libc::epoll_event>,
    clock: Clock,
    cfg: LoopConfig,
    log: StampLog,
    next_timer_ns: u64,
    live: usize,
}

fn epoll_err(op: &'static str) -> LoopError {
    LoopError::Epoll {
        op,
        source: std::io::Error::last_os_error(),
    }
}

const IN: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
const OUT: u32 = libc::EPOLLOUT as u32;

impl EventLoop {
    /// A new loop using the process-wide calibrated clock.
    pub fn new(cfg: LoopConfig) -> Result<EventLoop, LoopError> {
        Self::with_clock(cfg, *Clock::global())
    }

    /// A new loop with the given clock.
    pub fn with_clock(cfg: LoopConfig, clock: Clock) -> Result<EventLoop, LoopError> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(epoll_err("epoll_create1"));
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut log = StampLog::with_clock(cfg.stamp_log_capacity, clock);
        if cfg.stamp_channel_capacity != 0 {
            log.set_channel(StampChannel::create(cfg.stamp_channel_capacity)?);
        }
        Ok(EventLoop {
            epfd,
            conns: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; cfg.max_events.max(1)],
            clock,
            log,
            cfg,
            next_timer_ns: 0,
            live: 0,
        })
    }

    /// The loop's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The engine's recorded stamps (see [`LoopConfig::stamp_log_capacity`]).
    pub fn stamp_log(&self) -> &StampLog {
        &self.log
    }

    /// The loop's stamp channel (`None` when [`LoopConfig::stamp_channel_capacity`] is 0).
    pub fn stamp_channel(&self) -> Option<&StampChannel> {
        self.log.channel()
    }

    /// Mutable access to the stamp log (e.g. to clear it between phases).
    pub fn stamp_log_mut(&mut self) -> &mut StampLog {
        &mut self.log
    }

    fn ctl(&self, op: i32, fd: i32, events: u32, slot: usize) -> Result<(), LoopError> {
        let mut ev = libc::epoll_event {
            events,
            u64: slot as u64,
        };
        // SAFETY: valid epoll fd, valid event struct.
        if unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) } != 0 {
            return Err(epoll_err("epoll_ctl"));
        }
        Ok(())
    }

    fn slot_of(&self, id: ConnId) -> Option<usize> {
        let slot = (id.0 & 0xFFFF_FFFF) as usize;
        let gen_ = (id.0 >> 32) as u32;
        match (self.gens.get(slot), self.conns.get(slot)) {
            (Some(&g), Some(Some(_))) if g == gen_ => Some(slot),
            _ => None,
        }
    }

    /// Connects to a `ws://` or `wss://` URL, performs the handshake (blocking, bounded by the
    /// config's timeouts) and adds the connection; `on_established` runs on the next
    /// poll.
    pub fn connect(&mut self, url: &str, cfg: &ConnConfig) -> Result<ConnId, LoopError> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.gens.push(0);
                self.conns.len() - 1
            }
        };
        self.gens[slot] = self.gens[slot].wrapping_add(1);
        let id = ConnId((u64::from(self.gens[slot]) << 32) | slot as u64);
        let conn = match Conn::connect(id, url, cfg, &self.clock) {
            Ok(c) => c,
            Err(e) => {
                self.free.push(slot);
                return Err(e.into());
            }
        };
        let fd = conn.out.transport.fd().as_raw_fd();
        if let Err(e) = self.ctl(libc::EPOLL_CTL_ADD, fd, IN, slot) {
            self.free.push(slot);
            return Err(e);
        }
        self.conns[slot] = Some(conn);
        self.live += 1;
        self.next_timer_ns = 0;
        Ok(id)
    }

    /// The subprotocol the server selected for a connection.
    pub fn subprotocol(&self, id: ConnId) -> Option<&str> {
        let slot = self.slot_of(id)?;
        self.conns[slot].as_ref()?.subprotocol.as_deref()
    }

    /// The kernel socket cookie of a connection.
    pub fn sock_cookie(&self, id: ConnId) -> Option<u64> {
        let slot = self.slot_of(id)?;
        Some(self.conns[slot].as_ref()?.sock_cookie())
    }

    /// Which receive path a connection's bytes take: [`TlsPath::None`] (ws://),
    /// [`TlsPath::Userspace`] or [`TlsPath::Ktls`]. The same value is in every
    /// message's `MsgProbe::tls_path`.
    pub fn tls_path(&self, id: ConnId) -> Option<TlsPath> {
        let slot = self.slot_of(id)?;
        Some(self.conns[slot].as_ref()?.out.transport.tls_path())
    }

    /// TLS version, cipher suite, ALPN, record path and why kTLS is not used, for a
    /// `wss://` connection.
    pub fn tls_info(&self, id: ConnId) -> Option<TlsInfo> {
        let slot = self.slot_of(id)?;
        self.conns[slot].as_ref()?.tls_info()
    }

    fn with_conn<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut Conn, &Clock) -> Result<R, SendError>,
    ) -> Result<R, SendError> {
        let slot = self.slot_of(id).ok_or(SendError::UnknownConn)?;
        let clock = self.clock;
        let conn = self.conns[slot].as_mut().ok_or(SendError::UnknownConn)?;
        let r = f(conn, &clock);
        let want = conn.out.wants_write();
        if want != conn.registered_out {
            conn.registered_out = want;
            let fd = conn.out.transport.fd().as_raw_fd();
            let ev = if want { IN | OUT } else { IN };
            // A failing epoll_ctl leaves the old interest; the data is still queued.
            let _ = self.ctl(libc::EPOLL_CTL_MOD, fd, ev, slot);
        }
        r
    }

    /// Sends a text message on a connection.
    pub fn send_text(&mut self, id: ConnId, text: &str) -> Result<(), SendError> {
        self.with_conn(id, |c, _| c.out.send_data(MsgKind::Text, text.as_bytes()))
    }

    /// Sends a binary message on a connection.
    pub fn send_binary(&mut self, id: ConnId, data: &[u8]) -> Result<(), SendError> {
        self.with_conn(id, |c, _| c.out.send_data(MsgKind::Binary, data))
    }

    /// Sends a ping on a connection.
    pub fn send_ping(&mut self, id: ConnId, payload: &[u8]) -> Result<(), SendError> {
        self.with_conn(id, |c, _| c.out.send_control(OpCode::Ping, payload))
    }

    /// Starts the close handshake on a connection.
    pub fn close(&mut self, id: ConnId, code: u16, reason: &str) -> Result<(), SendError> {
        self.next_timer_ns = 0;
        self.with_conn(id, |c, clock| c.close(code, reason, clock))
    }

    /// Runs `f` with a send context for a connection (outside of callbacks).
    pub fn with_ctx<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut ConnCtx<'_>) -> R,
    ) -> Result<R, SendError> {
        self.with_conn(id, |c, _| {
            let mut ctx = ConnCtx {
                id: c.id,
                out: &mut c.out,
            };
            Ok(f(&mut ctx))
        })
    }

    fn finish<H: Handler>(&mut self, h: &mut H, slot: usize) {
        if let Some(mut conn) = self.conns[slot].take() {
            // Flush what we can (e.g. our close frame); the socket closes on drop.
            let _ = conn.out.flush();
            let (err, info) = conn.take_outcome();
            let id = conn.id;
            drop(conn);
            self.free.push(slot);
            self.live -= 1;
            if let Some(e) = &err {
                invoke(CallbackKind::Error, id, 0, || h.on_error(id, e));
            }
            invoke(CallbackKind::Closed, id, 0, || h.on_closed(id, &info));
        }
    }

    fn settle<H: Handler>(&mut self, h: &mut H, slot: usize, status: Status) {
        if status == Status::Done {
            self.finish(h, slot);
            return;
        }
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let want = conn.out.wants_write();
        if want != conn.registered_out {
            conn.registered_out = want;
            let fd = conn.out.transport.fd().as_raw_fd();
            let ev = if want { IN | OUT } else { IN };
            let _ = self.ctl(libc::EPOLL_CTL_MOD, fd, ev, slot);
        }
    }

    /// Waits up to `timeout` (`None`: forever; zero: don't block) for socket events and
    /// handles them. Returns the number of events handled.
    pub fn poll<H: Handler>(
        &mut self,
        h: &mut H,
        timeout: Option<Duration>,
    ) -> Result<usize, LoopError> {
        let _profiler = ProfilerScope::enter(self.cfg.profiler.as_ref());
        // New connections: on_established, and frames that came with the handshake.
        for slot in 0..self.conns.len() {
            let pending = matches!(&self.conns[slot], Some(c) if c.established_pending);
            if pending {
                let status = match self.conns[slot].as_mut() {
                    Some(c) => c.establish(h, &self.clock, &mut self.log),
                    None => continue,
                };
                self.settle(h, slot, status);
            }
        }
        let timers = self.conns.iter().flatten().any(|c| c.has_timer());
        let mut wait_ms: i32 = match timeout {
            None => -1,
            Some(d) => d.as_millis().min(i32::MAX as u128) as i32,
        };
        if timers {
            let g = self.cfg.timer_granularity.as_millis().max(1) as i32;
            wait_ms = if wait_ms < 0 { g } else { wait_ms.min(g) };
        }
        // Keep the TSC conversion on CLOCK_MONOTONIC (every 100 ms), before waiting rather
        // than between a wakeup and the messages it brings.
        self.clock.maybe_refine();
        if self.log.enabled() {
            // The log converts its raw stamps when read: with the refined conversion.
            self.log.set_clock(self.clock);
        }
        // SAFETY: `events` has `len` valid slots for the kernel to fill.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                wait_ms,
            )
        };
        let event_raw = self.clock.raw();
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(LoopError::Epoll {
                op: "epoll_wait",
                source: e,
            });
        }
        for i in 0..n as usize {
            let ev = self.events[i];
            let slot = ev.u64 as usize;
            let flags = ev.events;
            let mut status = Status::Alive;
            if let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) {
                if flags & OUT != 0 {
                    status = conn.on_writable(h);
                }
                if status == Status::Alive
                    && flags & (IN | (libc::EPOLLHUP | libc::EPOLLERR) as u32) != 0
                {
                    status = conn.on_readable(h, &self.clock, event_raw, &mut self.log);
                }
            } else {
                continue;
            }
            self.settle(h, slot, status);
        }
        if timers {
            let now = Clock::monotonic_now_ns();
            if now >= self.next_timer_ns {
                self.next_timer_ns = now + self.cfg.timer_granularity.as_nanos() as u64;
                for slot in 0..self.conns.len() {
                    let status = match self.conns[slot].as_mut() {
                        Some(c) if c.has_timer() => c.check_timers(now),
                        _ => continue,
                    };
                    if status == Status::Done {
                        self.finish(h, slot);
                    }
                }
            }
        }
        Ok(n as usize)
    }

    /// Polls until every connection has ended.
    pub fn run<H: Handler>(&mut self, h: &mut H) -> Result<(), LoopError> {
        while !self.is_empty() {
            self.poll(h, None)?;
        }
        Ok(())
    }

    /// Like [`run`](Self::run) but never sleeps in `epoll_wait` (busy polling).
    pub fn run_busy<H: Handler>(&mut self, h: &mut H) -> Result<(), LoopError> {
        while !self.is_empty() {
            self.poll(h, Some(Duration::ZERO))?;
        }
        Ok(())
    }
}
