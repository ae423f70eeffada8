//! `ws-trace feed`: a WebSocket feed server to drive a client under load.
use std::{net::TcpListener, process::ExitCode, time::Duration};

use anyhow::Context as _;
use ws_trace::feed::{self, FeedConfig, FeedEvent, SizeDist};

use super::args::FeedArgs;

/// Serves the feed until its schedule ends, its clients have gone or Ctrl-C; prints the
/// summary (progress goes to stderr).
pub fn run(args: FeedArgs) -> anyhow::Result<ExitCode> {
    let sizes = match &args.size_dist {
        Some(spec) => SizeDist::parse(spec)?,
        None => SizeDist::fixed(args.size).context("--size")?,
    };
    let mut cfg = FeedConfig::new(args.rate, sizes);
    cfg.burst = args.burst;
    cfg.connections = args.connections;
    cfg.duration = args
        .duration
        .map(Duration::try_from_secs_f64)
        .transpose()
        .context("--duration must be a non-negative number of seconds")?;
    cfg.validate()?;
    let stop = super::stop_on_ctrl_c()?;
    let listener =
        TcpListener::bind(&args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().context("the listening address")?;
    if args.tls {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
        let ip = addr.ip().to_string();
        if !addr.ip().is_unspecified() && !names.contains(&ip) {
            names.push(ip);
        }
        for name in &args.tls_names {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let (config, ca) = feed::throwaway_tls(&names, &args.cert_out)?;
        cfg.tls = Some(config);
        eprintln!(
            "ws-trace feed: CA certificate for the client to trust: {} (certificate for {})",
            ca.display(),
            names.join(", ")
        );
    }
    let scheme = if args.tls { "wss" } else { "ws" };
    eprintln!(
        "ws-trace feed: {scheme}://{addr}/ waiting for {} client(s); then {} msg/s{} of {} to each, {}",
        cfg.connections,
        cfg.rate,
        if cfg.burst > 1 {
            format!(" in bursts of {}", cfg.burst)
        } else {
            String::new()
        },
        cfg.sizes,
        match cfg.duration {
            Some(d) => format!("for {} s", d.as_secs_f64()),
            None => "until Ctrl-C".to_string(),
        }
    );
    let mut on_event = |event: FeedEvent| match event {
        FeedEvent::Connected {
            peer,
            connected,
            wanted,
        } => eprintln!("ws-trace feed: client {connected}/{wanted} connected from {peer}"),
        FeedEvent::Rejected { peer, error } => {
            eprintln!("ws-trace feed: connection from {peer} refused: {error}")
        }
        FeedEvent::Started { connections } => {
            eprintln!("ws-trace feed: sending to {connections} client(s)")
        }
        FeedEvent::Left { peer, reason } => {
            eprintln!("ws-trace feed: client {peer} {reason}; the others go on")
        }
    };
    let summary = feed::run(listener, &cfg, &stop, &mut on_event).context("feed")?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).context("summary as JSON")?
        );
    } else {
        println!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}
