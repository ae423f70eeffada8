//! `ws-trace feed`: a WebSocket feed server to profile a client under load (and the
//! demo's feed).
//!
//! The thing profiled is the client: the feed accepts `--connections` WebSocket clients
//! (`ws://`, or `wss://` with a throwaway CA, [`throwaway_tls`]), then sends every client
//! the same schedule, **open loop**: message `i` is due at `start + ⌊i/burst⌋·burst/rate`
//! whatever happened before it. Nothing waits for a client: each has its own queue,
//! written without blocking, so a slow client gets its messages late, never fewer of them,
//! and the others are not held up. For each message the feed measures its **lateness**,
//! the time it was written in full to the socket minus the time it was due; its p50, p99
//! and max are in the [`FeedSummary`], so a sender that fell behind (coordinated omission)
//! shows instead of hiding in a lower rate.
//!
//! The schedule starts once all `--connections` clients have completed their upgrade;
//! then the listener is closed. A client that leaves (or whose queue passes
//! [`FeedConfig::max_backlog`]) is dropped and the others go on; the feed ends when the
//! schedule is done and every queue is written (or [`FeedConfig::drain_timeout`] has
//! passed), when every client has gone, or when `stop` is set (Ctrl-C). Each message's
//! payload layout is in [`payload`].
mod conn;
pub mod payload;

use std::{
    fmt, io,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde::Serialize;
use ws_engine::frame::{MAX_HEADER, OpCode, encode_header};

pub use conn::HandshakeError;
use conn::{Client, Ending, Upgraded, mono_ns};
pub use payload::{HEADER_LEN, SizeDist, SizeError, Stamp};

/// The largest lateness recorded (larger ones count as this): an hour.
const MAX_LATENESS_NS: u64 = 3_600_000_000_000;
/// Longest sleep between two looks at `stop`.
const STOP_POLL: Duration = Duration::from_millis(50);
/// After a Ctrl-C, how long clients get to take their closing frame.
const STOP_DRAIN: Duration = Duration::from_secs(1);
/// Frame bytes generated in one go while catching up, before the queues are written.
const CATCH_UP_BYTES: usize = 8 << 20;

/// Failures of the feed (a client's failure is no failure of the feed: it is counted).
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The settings cannot be used.
    #[error("invalid feed settings: {0}")]
    Config(String),
    /// The listening socket failed.
    #[error("listening socket: {0}")]
    Listen(io::Error),
    /// Not enough clients connected in time.
    #[error("{connected} of {wanted} clients connected within {} s", waited.as_secs_f64())]
    NoClients {
        /// Clients that completed their upgrade.
        connected: usize,
        /// Clients the feed waited for.
        wanted: usize,
        /// How long it waited.
        waited: Duration,
    },
    /// Waiting on the sockets failed.
    #[error("polling the client sockets: {0}")]
    Poll(io::Error),
    /// The throwaway CA or the server certificate could not be made.
    #[error("making the TLS certificates: {0}")]
    Tls(String),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The lateness histogram could not be made.
    #[error("lateness histogram: {0}")]
    Histogram(String),
}

/// What to send, to how many clients, for how long.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// Messages per second, to each client.
    pub rate: f64,
    /// Messages per tick: ticks come `rate / burst` times a second.
    pub burst: u32,
    /// Message sizes.
    pub sizes: SizeDist,
    /// Clients to wait for before the schedule starts (all are served concurrently).
    pub connections: usize,
    /// How long the schedule runs (`None`: until `stop`).
    pub duration: Option<Duration>,
    /// Serve `wss://` with this configuration (`None`: `ws://`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long to wait for the clients (`None`: for ever, or until `stop`).
    pub accept_timeout: Option<Duration>,
    /// After the schedule, how long slow clients get to take what is queued for them.
    pub drain_timeout: Duration,
    /// A client whose queue holds more bytes than this is dropped (the feed's memory is
    /// not unbounded).
    pub max_backlog: usize,
}

impl FeedConfig {
    /// `rate` messages per second of `sizes`, one client, until stopped; the other
    /// settings at their defaults (burst 1, plain `ws://`, wait for ever, 10 s drain,
    /// 256 MiB backlog).
    pub fn new(rate: f64, sizes: SizeDist) -> FeedConfig {
        FeedConfig {
            rate,
            burst: 1,
            sizes,
            connections: 1,
            duration: None,
            tls: None,
            accept_timeout: None,
            drain_timeout: Duration::from_secs(10),
            max_backlog: 256 << 20,
        }
    }

    /// Messages in the schedule: `⌈duration × rate⌉` rounded up to whole bursts (`None`
    /// without a duration).
    pub fn messages(&self) -> Option<u64> {
        let burst = u64::from(self.burst.max(1));
        self.duration
            .map(|d| ((d.as_secs_f64() * self.rate).ceil() as u64).div_ceil(burst) * burst)
    }

    /// Checks the settings ([`run`] does too): a positive rate, bursts and connections of at
    /// least one.
    pub fn validate(&self) -> Result<(), FeedError> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(FeedError::Config(format!(
                "the rate must be a positive number of messages per second, not {}",
                self.rate
            )));
        }
        if self.burst == 0 {
            return Err(FeedError::Config("the burst must be at least 1".into()));
        }
        if self.connections == 0 {
            return Err(FeedError::Config(
                "at least one connection is needed".into(),
            ));
        }
        Ok(())
    }
}

/// What happens while the feed runs, for a caller that shows progress.
#[derive(Clone, Debug)]
pub enum FeedEvent {
    /// A client completed its upgrade.
    Connected {
        /// Its address.
        peer: SocketAddr,
        /// Clients connected so far.
        connected: usize,
        /// Clients awaited.
        wanted: usize,
    },
    /// A connection failed its handshake (it does not count).
    Rejected {
        /// Its address.
        peer: SocketAddr,
        /// Why.
        error: String,
    },
    /// Every client is there: the schedule starts.
    Started {
        /// Clients served.
        connections: usize,
    },
    /// A client went away or was dropped before the end; the others go on.
    Left {
        /// Its address.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// Percentiles of lateness (written in full − due), ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Lateness {
    /// Messages measured.
    pub count: u64,
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Largest.
    pub max_ns: u64,
}

impl Lateness {
    fn of(h: &Histogram<u64>) -> Lateness {
        if h.is_empty() {
            return Lateness::default();
        }
        Lateness {
            count: h.len(),
            p50_ns: h.value_at_quantile(0.5),
            p99_ns: h.value_at_quantile(0.99),
            max_ns: h.max(),
        }
    }
}

/// What happened to one client.
#[derive(Clone, Debug, Serialize)]
pub struct ClientSummary {
    /// Its address.
    pub peer: String,
    /// Messages written to it in full.
    pub sent: u64,
    /// Their WebSocket frame bytes (headers included, TLS overhead not).
    pub bytes: u64,
    /// Messages queued for it but not written when it ended.
    pub unsent: u64,
    /// `complete`, or `left: …` (it went away), `dropped: …` (its queue grew too long),
    /// `cut: …` (still being written when the feed ended).
    pub ending: String,
    /// Its messages' lateness.
    pub lateness: Lateness,
}

/// The feed's summary (text with `Display`, JSON with serde).
#[derive(Clone, Debug, Serialize)]
pub struct FeedSummary {
    /// The listening address.
    pub listen: String,
    /// `wss://` (else `ws://`).
    pub tls: bool,
    /// The rate asked for, messages per second per client.
    pub rate_asked: f64,
    /// Messages per tick.
    pub burst: u32,
    /// The sizes, as given.
    pub sizes: String,
    /// Clients served.
    pub connections: usize,
    /// Of those, clients that went away (or were dropped) before the end.
    pub left_early: usize,
    /// Connections that failed their handshake.
    pub rejected: u64,
    /// Messages of the schedule that came due (each went to every client still there).
    pub scheduled: u64,
    /// Messages written in full, all clients together.
    pub sent: u64,
    /// Messages queued but never written (their client left or the feed ended first).
    pub unsent: u64,
    /// WebSocket frame bytes of the messages sent (headers included, TLS overhead not).
    pub bytes: u64,
    /// From the schedule's start to its end, or to the last write if that came later, s.
    pub elapsed_s: f64,
    /// Messages per second that each client that stayed to the end got (mean).
    pub rate_per_connection: f64,
    /// Messages per second, all clients together.
    pub rate_total: f64,
    /// Lateness of every message sent.
    pub lateness: Lateness,
    /// Ctrl-C (`stop`) ended the feed.
    pub interrupted: bool,
    /// Each client.
    pub clients: Vec<ClientSummary>,
}

fn us(ns: u64) -> String {
    let us = ns as f64 / 1000.0;
    if us < 10.0 {
        format!("{us:.1} µs")
    } else if us < 10_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

impl fmt::Display for FeedSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(
            f,
            "feed {scheme}://{}: {} msg/s",
            self.listen, self.rate_asked
        )?;
        if self.burst > 1 {
            write!(f, " in bursts of {}", self.burst)?;
        }
        writeln!(f, ", {}", self.sizes)?;
        if self.interrupted {
            writeln!(f, "stopped by Ctrl-C")?;
        }
        writeln!(
            f,
            "connections: {} ({} left early, {} rejected)",
            self.connections, self.left_early, self.rejected
        )?;
        writeln!(
            f,
            "sent: {} messages, {} bytes ({} scheduled per connection, {} unsent)",
            self.sent, self.bytes, self.scheduled, self.unsent
        )?;
        writeln!(
            f,
            "rate: {:.1} msg/s per connection (asked {}), {:.1} msg/s in all, over {:.3} s",
            self.rate_per_connection, self.rate_asked, self.rate_total, self.elapsed_s
        )?;
        let l = &self.lateness;
        write!(
            f,
            "lateness (written − due): p50 {}, p99 {}, max {} ({} messages)",
            us(l.p50_ns),
            us(l.p99_ns),
            us(l.max_ns),
            l.count
        )?;
        if self.clients.len() > 1 {
            for (i, c) in self.clients.iter().enumerate() {
                write!(
                    f,
                    "\n  client {i} {}: {} sent, {}, lateness p99 {} max {}",
                    c.peer,
                    c.sent,
                    c.ending,
                    us(c.lateness.p99_ns),
                    us(c.lateness.max_ns)
                )?;
            }
        }
        Ok(())
    }
}

/// Makes a throwaway CA, writes its certificate to `DIR/ca.pem` (what a client trusts) and
/// returns a server configuration with a certificate for `names` (DNS names or IP
/// addresses) and the CA file's path.
pub fn throwaway_tls(
    names: &[String],
    dir: &Path,
) -> Result<(Arc<rustls::ServerConfig>, PathBuf), FeedError> {
    let ca = ws_engine::testca::TestCa::new().map_err(|e| FeedError::Tls(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|source| FeedError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("ca.pem");
    ca.write_ca_pem(&path).map_err(|source| FeedError::Write {
        path: path.clone(),
        source,
    })?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let config = ca
        .server_config(&names)
        .map_err(|e| FeedError::Tls(e.to_string()))?;
    Ok((config, path))
}

/// One message as a frame, and the offset of its `send_ns` in the frame.
fn frame(seq: u64, due_ns: u64, size: usize) -> (Vec<u8>, usize) {
    let mut header = [0u8; MAX_HEADER];
    let n = encode_header(&mut header, true, OpCode::Binary, size, None);
    let mut frame = vec![0u8; n + size];
    frame[..n].copy_from_slice(&header[..n]);
    Stamp {
        seq,
        send_ns: 0,
        due_ns,
    }
    .write(&mut frame[n..]);
    (frame, n + payload::SEND_NS_OFFSET)
}

/// Accepts connections until `cfg.connections` clients have upgraded (handshakes run on
/// threads of their own, so a stalled one holds up nobody), or `stop` is set (then the
/// flag is true and the clients so far are returned).
fn accept_clients(
    listener: &TcpListener,
    cfg: &FeedConfig,
    stop: &AtomicBool,
    lateness: &Histogram<u64>,
    rejected: &mut u64,
    on_event: &mut dyn FnMut(FeedEvent),
) -> Result<(Vec<Client>, bool), FeedError> {
    listener.set_nonblocking(true).map_err(FeedError::Listen)?;
    let (tx, rx) = mpsc::channel::<(SocketAddr, Result<Upgraded, HandshakeError>)>();
    let started = Instant::now();
    let mut clients = Vec::new();
    loop {
        while let Ok((peer, result)) = rx.try_recv() {
            match result {
                Ok(up) => {
                    clients.push(Client::new(up, lateness.clone()));
                    on_event(FeedEvent::Connected {
                        peer,
                        connected: clients.len(),
                        wanted: cfg.connections,
                    });
                }
                Err(e) => {
                    *rejected += 1;
                    on_event(FeedEvent::Rejected {
                        peer,
                        error: e.to_string(),
                    });
                }
            }
            if clients.len() == cfg.connections {
                return Ok((clients, false));
            }
        }
        if stop.load(Ordering::Relaxed) {
            return Ok((clients, true));
        }
        if let Some(limit) = cfg.accept_timeout
            && started.elapsed() >= limit
        {
            return Err(FeedError::NoClients {
                connected: clients.len(),
                wanted: cfg.connections,
                waited: limit,
            });
        }
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(listener),
            PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, PollTimeout::from(20u8)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(FeedError::Listen(e.into())),
        }
        loop {
            match listener.accept() {
                Ok((sock, peer)) => {
                    let tx = tx.clone();
                    let tls = cfg.tls.clone();
                    let spawned = std::thread::Builder::new()
                        .name("feed-handshake".into())
                        .spawn(move || {
                            let _ = tx.send((peer, conn::handshake(sock, peer, tls)));
                        });
                    if let Err(e) = spawned {
                        *rejected += 1;
                        on_event(FeedEvent::Rejected {
                            peer,
                            error: format!("no thread for its handshake: {e}"),
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => return Err(FeedError::Listen(e)),
            }
        }
    }
}

/// Runs the feed on `listener` (closed once the clients are there) until the schedule is
/// done, every client has gone, or `stop` is set; returns the summary. `on_event` hears of
/// clients connecting and leaving.
///
/// The calling thread's timer slack is set to 1 ns (its sleeps end on time).
pub fn run(
    listener: TcpListener,
    cfg: &FeedConfig,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(FeedEvent),
) -> Result<FeedSummary, FeedError> {
    cfg.validate()?;
    let listen = listener
        .local_addr()
        .map_err(FeedError::Listen)?
        .to_string();
    let lateness = Histogram::<u64>::new_with_bounds(1, MAX_LATENESS_NS, 3)
        .map_err(|e| FeedError::Histogram(e.to_string()))?;
    let mut rejected = 0;
    let (clients, stopped) =
        accept_clients(&listener, cfg, stop, &lateness, &mut rejected, on_event)?;
    drop(listener);
    // Best effort: without it sleeps may end up to 50 µs late, which lateness would show.
    let _ = nix::sys::prctl::set_timerslack(1);
    let mut feed = Feed {
        cfg,
        clients,
        start_ns: mono_ns(),
        tick_ns: f64::from(cfg.burst) * 1e9 / cfg.rate,
        ticks: cfg.messages().map(|m| m / u64::from(cfg.burst)),
        next_tick: 0,
        // Stopped before every client was there: those that were are told so.
        interrupted: stopped,
    };
    if !stopped {
        on_event(FeedEvent::Started {
            connections: feed.clients.len(),
        });
    }
    if !feed.clients.is_empty() {
        feed.run(stop, on_event)?;
    }
    let end_ns = feed
        .clients
        .iter()
        .map(|c| c.last_write_ns)
        .max()
        .unwrap_or(0)
        .max(feed.due(feed.next_tick));
    let elapsed_s = end_ns.saturating_sub(feed.start_ns) as f64 / 1e9;
    let mut all = lateness;
    let mut clients = Vec::new();
    for c in &feed.clients {
        let _ = all.add(&c.lateness);
        clients.push(ClientSummary {
            peer: c.peer.to_string(),
            sent: c.sent,
            bytes: c.bytes,
            unsent: c.unsent(),
            ending: match &c.ending {
                Ending::Open | Ending::Complete => "complete".to_string(),
                Ending::Left(why) => format!("left: {why}"),
                Ending::Dropped(why) => format!("dropped: {why}"),
                Ending::Cut(why) => format!("cut: {why}"),
            },
            lateness: Lateness::of(&c.lateness),
        });
    }
    let stayed: Vec<&Client> = feed
        .clients
        .iter()
        .filter(|c| !matches!(c.ending, Ending::Left(_) | Ending::Dropped(_)))
        .collect();
    let sent: u64 = feed.clients.iter().map(|c| c.sent).sum();
    let per_second = |n: u64| {
        if elapsed_s > 0.0 {
            n as f64 / elapsed_s
        } else {
            0.0
        }
    };
    Ok(FeedSummary {
        listen,
        tls: cfg.tls.is_some(),
        rate_asked: cfg.rate,
        burst: cfg.burst,
        sizes: cfg.sizes.to_string(),
        connections: feed.clients.len(),
        left_early: feed.clients.len() - stayed.len(),
        rejected,
        scheduled: feed.next_tick * u64::from(cfg.burst),
        sent,
        unsent: feed.clients.iter().map(Client::unsent).sum(),
        bytes: feed.clients.iter().map(|c| c.bytes).sum(),
        elapsed_s,
        rate_per_connection: if stayed.is_empty() {
            0.0
        } else {
            per_second(stayed.iter().map(|c| c.sent).sum::<u64>()) / stayed.len() as f64
        },
        rate_total: per_second(sent),
        lateness: Lateness::of(&all),
        interrupted: feed.interrupted,
        clients,
    })
}

/// The running schedule.
struct Feed<'a> {
    cfg: &'a FeedConfig,
    clients: Vec<Client>,
    start_ns: u64,
    tick_ns: f64,
    /// Ticks in the schedule (`None`: until stopped).
    ticks: Option<u64>,
    next_tick: u64,
    interrupted: bool,
}

impl Feed<'_> {
    fn due(&self, tick: u64) -> u64 {
        self.start_ns + (tick as f64 * self.tick_ns).round() as u64
    }

    fn schedule_done(&self) -> bool {
        self.ticks.is_some_and(|t| self.next_tick >= t)
    }

    /// Ends a client's part; says so when it ended early.
    fn end(c: &mut Client, ending: Ending, on_event: &mut dyn FnMut(FeedEvent)) {
        let reason = match &ending {
            Ending::Left(why) => Some(format!("left: {why}")),
            Ending::Dropped(why) => Some(format!("dropped: {why}")),
            _ => None,
        };
        c.ending = ending;
        c.shutdown();
        if let Some(reason) = reason {
            on_event(FeedEvent::Left {
                peer: c.peer,
                reason,
            });
        }
    }

    /// Queues every tick that is due by `now` (up to [`CATCH_UP_BYTES`] at a time).
    fn generate(&mut self, now: u64, on_event: &mut dyn FnMut(FeedEvent)) {
        let burst = u64::from(self.cfg.burst);
        let mut made = 0;
        let mut frames = Vec::with_capacity(self.cfg.burst as usize);
        while !self.schedule_done() && made < CATCH_UP_BYTES {
            let due = self.due(self.next_tick);
            if due > now {
                break;
            }
            frames.clear();
            for seq in self.next_tick * burst..(self.next_tick + 1) * burst {
                let f = frame(seq, due, self.cfg.sizes.size(seq));
                made += f.0.len();
                frames.push(f);
            }
            for c in self
                .clients
                .iter_mut()
                .filter(|c| c.is_open() && !c.close_sent)
            {
                if let Err(e) = c.queue_messages(&mut frames, due) {
                    Feed::end(c, Ending::Left(e.to_string()), on_event);
                } else if c.backlog() > self.cfg.max_backlog {
                    let why = format!("more than {} MiB queued for it", self.cfg.max_backlog >> 20);
                    Feed::end(c, Ending::Dropped(why), on_event);
                }
            }
            self.next_tick += 1;
        }
    }

    fn run(
        &mut self,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(FeedEvent),
    ) -> Result<(), FeedError> {
        let mut deadline: Option<u64> = None;
        loop {
            let now = mono_ns();
            if !self.interrupted && stop.load(Ordering::Relaxed) {
                // Ctrl-C, possibly while slow clients are still being written to.
                self.interrupted = true;
                let soon = now + STOP_DRAIN.as_nanos() as u64;
                deadline = deadline.map(|d| d.min(soon));
            }
            if !self.interrupted {
                self.generate(now, on_event);
            }
            if (self.interrupted || self.schedule_done())
                && self.clients.iter().any(|c| c.is_open() && !c.close_sent)
            {
                // 1001 "going away" on Ctrl-C, else 1000.
                let code = if self.interrupted { 1001 } else { 1000 };
                for c in self.clients.iter_mut().filter(|c| c.is_open()) {
                    if let Err(e) = c.queue_close(code) {
                        Feed::end(c, Ending::Left(e.to_string()), on_event);
                    }
                }
                let drain = if self.interrupted {
                    STOP_DRAIN
                } else {
                    self.cfg.drain_timeout
                };
                deadline.get_or_insert(now + drain.as_nanos() as u64);
            }
            for c in self.clients.iter_mut().filter(|c| c.is_open()) {
                if let Err(e) = c.flush() {
                    Feed::end(c, Ending::Left(e.to_string()), on_event);
                } else if c.done() {
                    // Everything written: its closing frame in answer, or a second's grace.
                    let since = *c.drained_ns.get_or_insert(now);
                    if c.close_received || now.saturating_sub(since) >= STOP_DRAIN.as_nanos() as u64
                    {
                        Feed::end(c, Ending::Complete, on_event);
                    }
                }
            }
            if let Some(d) = deadline
                && mono_ns() >= d
            {
                for c in self.clients.iter_mut().filter(|c| c.is_open()) {
                    let ending = if c.done() {
                        Ending::Complete
                    } else {
                        Ending::Cut(format!("{} B still queued", c.backlog()))
                    };
                    Feed::end(c, ending, on_event);
                }
            }
            if !self.clients.iter().any(Client::is_open) {
                return Ok(());
            }
            self.wait(deadline, on_event)?;
        }
    }

    /// Sleeps until the next tick is due (or the deadline, or [`STOP_POLL`]), or a client
    /// sends something or can take more; handles what clients sent.
    fn wait(
        &mut self,
        deadline: Option<u64>,
        on_event: &mut dyn FnMut(FeedEvent),
    ) -> Result<(), FeedError> {
        let now = mono_ns();
        let mut until = now + STOP_POLL.as_nanos() as u64;
        if let Some(d) = deadline {
            until = until.min(d);
        } else if !self.schedule_done() {
            until = until.min(self.due(self.next_tick));
        }
        let timeout = Duration::from_nanos(until.saturating_sub(now));
        let open: Vec<usize> = (0..self.clients.len())
            .filter(|i| self.clients[*i].is_open())
            .collect();
        let mut fds: Vec<PollFd<'_>> = open
            .iter()
            .map(|i| {
                let c = &self.clients[*i];
                let mut flags = PollFlags::POLLIN;
                if c.backlog() > 0 {
                    flags |= PollFlags::POLLOUT;
                }
                PollFd::new(c.fd(), flags)
            })
            .collect();
        match nix::poll::ppoll(
            &mut fds,
            Some(nix::sys::time::TimeSpec::from_duration(timeout)),
            None,
        ) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(FeedError::Poll(e.into())),
        }
        let readable: Vec<usize> = open
            .iter()
            .zip(&fds)
            .filter(|(_, fd)| {
                fd.revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                })
            })
            .map(|(i, _)| *i)
            .collect();
        drop(fds);
        let closing = self.interrupted || self.schedule_done();
        for i in readable {
            let c = &mut self.clients[i];
            match c.read() {
                Err(e) => Feed::end(c, Ending::Left(e.to_string()), on_event),
                Ok(open) => {
                    if c.close_received && !closing {
                        // It said goodbye first: answer (best effort) and let it go.
                        let _ = c.flush();
                        Feed::end(c, Ending::Left("it closed the connection".into()), on_event);
                    } else if !open {
                        let ending = if c.done() {
                            Ending::Complete
                        } else {
                            Ending::Left("end of stream".into())
                        };
                        Feed::end(c, ending, on_event);
                    }
                }
            }
        }
        Ok(())
    }
}
