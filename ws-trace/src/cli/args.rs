//! The command line's argument types (clap); each command's arguments go to its `run`.
//!
//! A command's description is its [`Command`] variant's doc comment (clap takes the
//! variant's over its arguments struct's).
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ws_trace::{export, probes::DEFAULT_RING_BYTES, profile};

/// Where every microsecond of a WebSocket message goes, from the NIC to the callback.
#[derive(Parser)]
#[command(name = "ws-trace", version, about)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Check what this machine allows: kernel, BTF, privileges, each hook type, kTLS, clocks.
    Doctor(DoctorArgs),
    /// Attach the probes and show what arrives; Ctrl-C, --duration or the target's exit
    /// ends it and detaches everything.
    Attach(AttachArgs),
    /// Like attach, recording every event to a trace file (-o is required).
    Record(AttachArgs),
    /// A live view refreshed every second: per stage p50/p99/max over the last interval,
    /// end to end, per connection, drops and each probe's BPF CPU %; q, Ctrl-C or the
    /// target's exit ends it. Plain text, one table per interval, when stdout is not a
    /// terminal.
    Top(TopArgs),
    /// A real traced WebSocket session: a feed server in a network namespace, a ws-engine
    /// client, every probe attached; prints the stage table, writes trace and exports.
    Demo(DemoArgs),
    /// The demo's client process (internal).
    #[command(hide = true)]
    DemoClient(DemoClientArgs),
    /// A WebSocket feed server to profile a client under load: an exact open-loop
    /// schedule, each message stamped (sequence, send and due CLOCK_MONOTONIC ns), and how
    /// late the feed sent them (p50/p99/max).
    Feed(FeedArgs),
    /// Export a recorded trace: Perfetto, Chrome JSON, JSON lines, folded stacks, SVG.
    Export(ExportArgs),
    /// Read a recorded trace: events, one NIC→callback row per message, stage tables.
    Report(ReportArgs),
    /// Sample where a process spends its CPU (perf-event stacks counted in the kernel), and
    /// with --off-cpu where it waits; write a flamegraph (.svg), folded stacks (.folded) or
    /// pprof (.pb.gz).
    Profile(ProfileArgs),
    /// Compare two profiles (differential flamegraph, -o OUT.svg) or two recorded traces
    /// (.wstrace: stage tables side by side with deltas and a verdict per stage).
    Diff(DiffArgs),
    /// An always-on agent: trace the target and serve its per-stage latencies over HTTP
    /// (Prometheus /metrics, /api/status, /api/captures); Ctrl-C or SIGTERM detaches.
    Serve(ServeArgs),
}

/// Arguments of `ws-trace doctor`.
#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What to trace and how to attach: the options `attach`, `record` and `top` share.
#[derive(clap::Args)]
pub struct TargetArgs {
    /// Trace this process (all its threads, and the children it forks).
    #[arg(long, conflicts_with_all = ["comm", "command"])]
    pub pid: Option<u32>,
    /// Trace every process with this name (new ones join while attached).
    #[arg(long, conflicts_with = "command")]
    pub comm: Option<String>,
    /// Trace every process in this cgroup or below it (v2, or a v1 hierarchy), e.g. a container's
    /// (`system.slice/docker-ID.scope`, relative to /sys/fs/cgroup, or absolute); new ones
    /// join while attached.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pid", "comm", "command"])]
    pub cgroup: Option<PathBuf>,
    /// Keep only packets and segments of sockets with this local port (repeatable).
    /// Without it, --pid/--comm/CMD follow the sockets the traced processes read.
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Also place a uprobe and uretprobe on BINARY:SYMBOL (repeatable; Rust names may be
    /// given mangled or demangled). BINARY may be a shared library the target has mapped,
    /// by its file name or a prefix of it (`libssl:SSL_read`).
    #[arg(long = "uprobe", value_name = "BINARY:SYMBOL")]
    pub uprobes: Vec<String>,
    /// Event ring size in bytes (a power of two, at least 4096).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES)]
    pub ring_size: u32,
    /// Take ws-engine's per-message records with uprobes on its probe and done functions
    /// instead of its shared-memory stamp channel: two kernel entries per message (about
    /// 0.4 µs each on x86-64), for engines built without the channel.
    #[arg(long)]
    pub engine_uprobes: bool,
    /// Forward the probes' aya-log debug records to stderr.
    #[arg(long)]
    pub log: bool,
    /// Start this command and trace it (it runs once the probes are attached).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Arguments of `ws-trace attach` and `ws-trace record`.
#[derive(clap::Args)]
pub struct AttachArgs {
    /// The target and the probes.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print the final summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print every event as a line on stdout while attached.
    #[arg(long)]
    pub print: bool,
    /// Record every event to this trace file (`.wstrace`), or write an export at the end
    /// when the extension names one (`.pftrace`, `.json`, `.jsonl`, `.folded`, `.svg`).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Arguments of `ws-trace top`.
#[derive(clap::Args)]
pub struct TopArgs {
    /// The target and the probes.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Seconds between two screens (each shows the interval between them).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,
    /// Connections shown at most (the busiest of the interval first).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub connections: usize,
    /// Print one plain-text table per interval even on a terminal (the view used when
    /// stdout is not a terminal).
    #[arg(long)]
    pub plain: bool,
    /// Full mode: every event crosses the ring and each message is joined from NIC to
    /// its callback's end (an end to end per message, per-connection lines, --uprobe);
    /// costs what `attach` costs. Without it, aggregate mode: the kernel sums its stages
    /// per read in the kernel and nothing per event crosses the ring.
    #[arg(long)]
    pub full: bool,
}

/// Arguments of `ws-trace demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// How long the feed runs.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub duration: f64,
    /// Messages per second.
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// Bytes per message.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Folder for the trace and its exports.
    #[arg(long, value_name = "DIR", default_value = "ws-trace-demo")]
    pub out: PathBuf,
    /// Stay on loopback instead of a network namespace with a veth pair.
    #[arg(long)]
    pub loopback: bool,
    /// Plain ws:// instead of wss://.
    #[arg(long)]
    pub plain: bool,
}

/// Arguments of `ws-trace demo-client` (the demo's traced client).
#[derive(clap::Args)]
pub struct DemoClientArgs {
    /// CA certificate (PEM) to trust for wss://.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Server URL.
    pub url: String,
}

/// Arguments of `ws-trace feed`.
#[derive(clap::Args)]
pub struct FeedArgs {
    /// Address to listen on (any path is accepted in the URL).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9001")]
    pub listen: String,
    /// Serve wss:// with a certificate from a throwaway CA (its certificate goes to
    /// --cert-out DIR/ca.pem for the client to trust).
    #[arg(long)]
    pub tls: bool,
    /// Where the CA certificate (ca.pem) is written with --tls.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "ws-trace-feed",
        requires = "tls"
    )]
    pub cert_out: PathBuf,
    /// Another name (DNS name or IP address) for the --tls certificate, besides
    /// localhost, 127.0.0.1, ::1 and the listening address (repeatable).
    #[arg(long = "tls-name", value_name = "NAME", requires = "tls")]
    pub tls_names: Vec<String>,
    /// Messages per second to each client, on an exact schedule (message i due at
    /// start + i/rate).
    #[arg(long, value_name = "MSG/S", default_value_t = 1000.0)]
    pub rate: f64,
    /// Bytes per message (payload; at least 24).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 256,
        conflicts_with = "size_dist"
    )]
    pub size: usize,
    /// Message sizes from a distribution: uniform:MIN..MAX, or SIZE:WEIGHT,… (e.g.
    /// 64:90,1024:9,65536:1).
    #[arg(long, value_name = "SPEC")]
    pub size_dist: Option<String>,
    /// Clients to wait for; the schedule starts when all are connected and each gets all
    /// of it.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub connections: usize,
    /// How long the schedule runs (default: until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Messages per tick (ticks come rate/N times a second).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub burst: u32,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `ws-trace export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The trace file.
    pub file: PathBuf,
    /// Output format (default: from the output file's extension).
    #[arg(long, value_name = "perfetto|chrome-json|jsonl|folded|svg")]
    pub format: Option<export::Format>,
    /// Output file.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
}

/// Arguments of `ws-trace report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// The trace file (from `attach -o` or `record -o`).
    pub file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// How many of the slowest messages to show in full.
    #[arg(long, default_value_t = 5)]
    pub slowest: usize,
}

/// Arguments of `ws-trace profile`.
#[derive(clap::Args)]
pub struct ProfileArgs {
    /// Profile this process (all its threads).
    #[arg(long, conflicts_with_all = ["comm", "command"])]
    pub pid: Option<u32>,
    /// Profile every process with this name (new ones join while profiling).
    #[arg(long, conflicts_with = "command")]
    pub comm: Option<String>,
    /// Stop after this many seconds (default: Ctrl-C, or when the target exits).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Samples per second on each CPU.
    #[arg(long, value_name = "HZ", default_value_t = 99)]
    pub freq: u64,
    /// Output file; the format follows the extension (.svg, .folded/.txt, .pb.gz/.pprof).
    /// With --off-cpu, OUT.offcpu.EXT and OUT.combined.EXT are written next to it.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "OUT",
        default_value = "profile.svg"
    )]
    pub output: PathBuf,
    /// Output format, when the extension does not say.
    #[arg(long, value_enum)]
    pub format: Option<profile::Format>,
    /// Also record time spent off CPU (blocked, waiting, preempted) per stack.
    #[arg(long)]
    pub off_cpu: bool,
    /// Also sample CPU % (user/system), RSS and context switches every SECS (default 1):
    /// OUT.series.csv and a chart OUT.series.svg.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
    pub series: Option<f64>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Start this command and profile it (it runs once sampling has started; it is
    /// stopped when --duration ends).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Arguments of `ws-trace diff`.
#[derive(clap::Args)]
pub struct DiffArgs {
    /// The baseline: a profile (.folded or .pb.gz) or a trace (.wstrace).
    pub base: PathBuf,
    /// The new run, same kind as BASE.
    pub new: PathBuf,
    /// Where the differential flamegraph goes (profiles only).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "OUT.svg",
        default_value = "diff.svg"
    )]
    pub output: PathBuf,
    /// Print the trace comparison as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `ws-trace serve`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "comm", "command"])))]
pub struct ServeArgs {
    /// Address of the HTTP API. A non-loopback address needs --allow-remote.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9477")]
    pub listen: std::net::SocketAddr,
    /// Allow a non-loopback --listen (the API has no TLS: put it behind a proxy, and use
    /// --token).
    #[arg(long)]
    pub allow_remote: bool,
    /// Trace this process (all its threads, and the children it forks).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Trace every process with this name; processes that start later (a restarted
    /// target) are picked up within a second.
    #[arg(long)]
    pub comm: Option<String>,
    /// Require `Authorization: Bearer TOKEN` on every request (visible in ps: prefer
    /// --token-file).
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the bearer token from this file (its first line).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Directory of captures (trace files of the last seconds).
    #[arg(long, value_name = "DIR", default_value = "ws-trace-captures")]
    pub capture_dir: PathBuf,
    /// Bytes the captures may take (suffixes K, M, G: powers of 1024).
    #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = parse_bytes)]
    pub capture_quota: u64,
    /// Capture the last seconds around a message slower than this, nic → callback_done
    /// (reads: nic → read): a duration (`200us`, `1.5ms`) or a percentile of the last
    /// minute (`p99.9`). In aggregate mode the probes then also stream every record to
    /// serve (full mode's cost); captures are also taken on SIGUSR1 and POST /api/captures.
    #[arg(long, value_name = "THRESHOLD")]
    pub capture_over: Option<ws_trace::flight::Threshold>,
    /// Least time between two automatic captures, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub capture_min_gap: f64,
    /// How latencies are computed: `aggregate` (in the kernel and from the engine's stamp
    /// channels; nothing per event crosses the ring) or `full` (every event through the
    /// ring, joined once a second: attach's cost; per-connection histograms, captures of
    /// every event).
    #[arg(long, value_enum, default_value = "aggregate")]
    pub mode: ServeMode,
    /// Also export one histogram per connection (wstrace_connection_seconds; --mode full).
    #[arg(long)]
    pub per_connection: bool,
    /// With --per-connection: at most this many connections get their own histogram.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub max_connections: usize,
    /// Event ring size in bytes (a power of two, at least 4096).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES)]
    pub ring_size: u32,
    /// Aggregate mode: attach the stage probes one second in N and weight the kernel's
    /// counts by N (sampling in time: their cost divided by N, reads in the other seconds
    /// not seen). 1: always attached.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub kernel_duty: u32,
    /// Start this command and trace it (it runs once the probes are attached).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `ws-trace serve --mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeMode {
    /// In-kernel histograms.
    Aggregate,
    /// Every event through the ring.
    Full,
}

/// `1234`, `64K`, `256M`, `2G` (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    ws_trace::flight::parse_size(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_take_binary_suffixes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("256m"), Ok(256 << 20));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("99999999999999G").is_err());
    }

    #[test]
    fn serve_needs_a_target_and_listens_on_loopback_by_default() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        assert!(parse(&["ws-trace", "serve"]).is_err());
        assert!(parse(&["ws-trace", "serve", "--pid", "1", "--comm", "x"]).is_err());
        let Ok(Cli {
            command: Command::Serve(a),
        }) = parse(&["ws-trace", "serve", "--comm", "client"])
        else {
            panic!("serve --comm parses");
        };
        assert!(a.listen.ip().is_loopback());
        assert_eq!(a.capture_quota, 256 << 20);
        assert_eq!(a.max_connections, 32);
    }
}
