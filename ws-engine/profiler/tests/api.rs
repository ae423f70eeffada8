//! The public API with a controlled clock: spans, switches, kinds, connections, windows,
//! alerts and the three report formats.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use ws_profiler::{Alert, AlertRule, CallbackKind, ClockSource, Profiler, ProfilerError, Report};

// One fake clock per test (tests run in parallel threads; a `fn() -> u64` cannot capture).
macro_rules! fake_clock {
    ($name:ident, $read:ident) => {
        static $name: AtomicU64 = AtomicU64::new(1_000_000);
        fn $read() -> u64 {
            $name.load(SeqCst)
        }
    };
}

fn build(b: ws_profiler::ProfilerBuilder) -> Profiler {
    match b.build() {
        Ok(p) => p,
        Err(e) => panic!("build failed: {e}"),
    }
}

fake_clock!(T_SPAN, t_span);

#[test]
fn spans_measure_the_clock_and_carry_bytes() {
    let p = build(Profiler::builder().clock(ClockSource::Custom(t_span)));
    for (dur, bytes) in [(1_000u64, 10u64), (3_000, 30), (2_000, 0)] {
        let g = p.start(CallbackKind::RECEIVE);
        T_SPAN.fetch_add(dur, SeqCst);
        g.stop(bytes);
    }
    {
        let mut g = p.start(CallbackKind::WRITABLE);
        g.add_bytes(5);
        g.add_bytes(6);
        T_SPAN.fetch_add(500, SeqCst);
    } // recorded on drop
    let g = p.start(CallbackKind::WRITABLE);
    T_SPAN.fetch_add(99_999, SeqCst);
    g.cancel();
    let v = p.time(CallbackKind::PING, 7, || {
        T_SPAN.fetch_add(250, SeqCst);
        "pong"
    });
    assert_eq!(v, "pong");

    let r = p.report();
    let rx = r.callback("receive").cloned();
    let Some(rx) = rx else { panic!("no receive") };
    assert_eq!(
        (
            rx.count,
            rx.total_ns,
            rx.min_ns,
            rx.max_ns,
            rx.avg_ns,
            rx.bytes
        ),
        (3, 6_000, 1_000, 3_000, 2_000, 40)
    );
    assert_eq!(rx.p50_ns, 2_000); // the median sample, 2000, is its bucket [1984, 2016)'s midpoint
    let w = r
        .callback("writable")
        .map(|c| (c.count, c.total_ns, c.bytes));
    assert_eq!(w, Some((1, 500, 11)), "the cancelled span is not recorded");
    let ping = r
        .callback("ping")
        .map(|c| (c.count, c.total_ns, c.bytes, c.last_ns));
    assert_eq!(
        ping,
        Some((1, 250, 7, T_SPAN.load(SeqCst))),
        "last_ns is the end of the last call"
    );
    assert_eq!(r.clock.source, "custom");
}

fake_clock!(T_OFF, t_off);

#[test]
fn off_means_off_and_kinds_can_be_filtered() {
    let p = build(
        Profiler::builder()
            .clock(ClockSource::Custom(t_off))
            .enabled(false),
    );
    assert!(!p.is_enabled());
    let g = p.start(CallbackKind::RECEIVE);
    assert!(!g.is_recording());
    p.set_enabled(true); // turned on mid-span: the span stays off
    g.stop(100);
    p.record(CallbackKind::RECEIVE, 5, 5);
    p.set_enabled(false);
    p.record(CallbackKind::RECEIVE, 5, 5);
    p.time(CallbackKind::RECEIVE, 5, || ());
    p.set_enabled(true);
    assert!(p.set_kind_enabled(CallbackKind::PONG, false).is_ok());
    p.record(CallbackKind::PONG, 1, 1);
    p.record(CallbackKind::PING, 1, 1);
    let r = p.report();
    let counts: Vec<(String, u64)> = r
        .callbacks
        .iter()
        .filter(|c| c.count > 0)
        .map(|c| (c.name.clone(), c.count))
        .collect();
    assert_eq!(
        counts,
        vec![("receive".to_string(), 1), ("ping".to_string(), 1)]
    );
    assert!(matches!(
        p.set_kind_enabled(CallbackKind::BUILTIN[0], true),
        Ok(())
    ));
}

#[test]
fn user_kinds_register_by_name() {
    let p = build(Profiler::builder().max_kinds(10));
    let a = p.register_kind("on_subscribe");
    let Ok(a) = a else { panic!("{a:?}") };
    assert_eq!(a.index(), 8);
    assert!(!a.is_builtin());
    assert_eq!(p.register_kind("on_subscribe").ok(), Some(a), "idempotent");
    assert_eq!(p.register_kind("receive").ok(), Some(CallbackKind::RECEIVE));
    assert_eq!(p.kind("on_subscribe"), Some(a));
    assert_eq!(p.kind_name(a).as_deref(), Some("on_subscribe"));
    assert!(matches!(
        p.register_kind("bad name"),
        Err(ProfilerError::InvalidKindName(_))
    ));
    assert!(p.register_kind("second").is_ok());
    assert!(matches!(
        p.register_kind("third"),
        Err(ProfilerError::TooManyKinds { max: 10 })
    ));
    assert_eq!(p.kinds().len(), 10);
    p.record(a, 42, 1);
    assert_eq!(
        p.report().callback("on_subscribe").map(|c| c.count),
        Some(1)
    );
    // A kind index another profiler never registered is ignored, not a panic.
    let q = Profiler::new();
    q.record(a, 42, 1);
    let g = q.start(a);
    g.stop(1);
    assert!(q.report().callbacks.iter().all(|c| c.count == 0));
    assert!(matches!(
        q.set_kind_enabled(a, false),
        Err(ProfilerError::UnknownKind(8))
    ));
}

#[test]
fn builder_rejects_bad_settings() {
    for b in [
        Profiler::builder().max_kinds(7),
        Profiler::builder().max_kinds(65),
        Profiler::builder().thread_slots(0),
        Profiler::builder().connections((1 << 20) + 1),
        Profiler::builder().windows(10, Duration::from_micros(10)),
    ] {
        assert!(matches!(b.build(), Err(ProfilerError::InvalidConfig(_))));
    }
}

fake_clock!(T_CONN, t_conn);

#[test]
fn per_connection_stats_with_spans_and_removal() {
    let p = build(
        Profiler::builder()
            .clock(ClockSource::Custom(t_conn))
            .connections(3),
    ); // rounds to 4
    for conn in [7u64, 8, 9] {
        let g = p.start_conn(CallbackKind::RECEIVE, conn);
        T_CONN.fetch_add(conn * 100, SeqCst);
        g.stop(conn);
    }
    p.record_conn(CallbackKind::PING, 7, 50, 0);
    assert_eq!(p.tracked_connections(), 3);
    let r = p.report();
    let c7 = r.connections.iter().find(|c| c.id == 7).cloned();
    let Some(c7) = c7 else {
        panic!("conn 7 missing")
    };
    assert_eq!(c7.total_ns, 750);
    let names: Vec<&str> = c7.callbacks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["receive", "ping"]);
    assert_eq!(c7.callbacks[0].bytes, 7);
    assert!(p.remove_connection(7));
    assert!(!p.remove_connection(7));
    assert_eq!(p.tracked_connections(), 2);
    // The global rows still hold everything.
    assert_eq!(p.report().callback("receive").map(|c| c.count), Some(3));
    // A profiler without tracking ignores connection ids.
    let q = Profiler::new();
    q.record_conn(CallbackKind::RECEIVE, 1, 1, 1);
    assert_eq!(
        (q.tracked_connections(), q.report().connections.len()),
        (0, 0)
    );
}

fake_clock!(T_WIN, t_win);

#[test]
fn windows_show_degradation_and_alerts_fire() {
    let p = build(
        Profiler::builder()
            .clock(ClockSource::Custom(t_win))
            .windows(3, Duration::from_secs(1)),
    );
    let alerts: Arc<Mutex<Vec<Alert>>> = Arc::default();
    let sink = Arc::clone(&alerts);
    let rule = AlertRule {
        kind: CallbackKind::RECEIVE,
        quantile: 0.99,
        threshold_ns: 50_000,
        min_count: 100,
    };
    assert!(
        p.add_alert(rule, move |a| sink
            .lock()
            .map(|mut v| v.push(a.clone()))
            .unwrap_or(()))
            .is_ok()
    );
    assert!(!p.tick(), "first window not over yet");

    // Four one-second windows: receive gets slower each second.
    for (w, slow) in [(0u64, 1_000u64), (1, 10_000), (2, 100_000), (3, 2_000)] {
        for i in 0..1000u64 {
            // 1% of the calls are 'slow', the rest 1 us
            let ns = if i % 100 == 0 { slow } else { 1_000 };
            p.record(CallbackKind::RECEIVE, ns, 10);
        }
        T_WIN.fetch_add(1_000_000_000, SeqCst);
        assert!(p.tick(), "window {w} closes");
        assert!(!p.tick(), "and only once");
    }
    let r = p.report();
    assert_eq!(r.windows.len(), 3, "ring keeps the last 3");
    let p999: Vec<u64> = r.windows.iter().map(|w| w.callbacks[0].p999_ns).collect();
    let max: Vec<u64> = r.windows.iter().map(|w| w.callbacks[0].max_ns).collect();
    assert_eq!(max, [10_000, 100_000, 2_000]);
    // p99.9 is the slow value (within the histogram error); p99 stays at 1 us
    for (got, want) in p999.iter().zip([10_000u64, 100_000, 2_000]) {
        assert!(got.abs_diff(want) * 64 <= want, "p99.9 {got} vs {want}");
    }
    assert!(
        r.windows
            .iter()
            .all(|w| w.callbacks[0].count == 1000 && w.callbacks[0].bytes == 10_000)
    );
    assert!(
        r.windows
            .iter()
            .all(|w| w.end_ns - w.start_ns == 1_000_000_000)
    );
    assert!(
        r.windows
            .iter()
            .all(|w| (w.callbacks[0].calls_per_sec - 1000.0).abs() < 1e-6)
    );

    // p99 of 1000 calls with 10 slow ones is the 990th value: 1 us. Make one window
    // with 2% slow calls, which pushes p99 over the threshold.
    assert!(
        alerts.lock().map(|v| v.is_empty()).unwrap_or(false),
        "p99 stayed at 1 us"
    );
    for i in 0..1000u64 {
        p.record(
            CallbackKind::RECEIVE,
            if i % 50 == 0 { 80_000 } else { 1_000 },
            0,
        );
    }
    T_WIN.fetch_add(1_000_000_000, SeqCst);
    assert!(p.tick());
    let fired = alerts.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(fired.len(), 1);
    let a = &fired[0];
    assert_eq!((a.name.as_str(), a.count), ("receive", 1000));
    assert!(a.observed_ns.abs_diff(80_000) * 64 <= 80_000);
    assert!(a.to_string().contains("receive p99"));
    assert_eq!(p.report().alerts_fired, 1);

    // Too few calls: no alert even when slow.
    p.record(CallbackKind::RECEIVE, 1_000_000, 0);
    T_WIN.fetch_add(1_000_000_000, SeqCst);
    assert!(p.tick());
    assert_eq!(p.report().alerts_fired, 1);

    // An idle window is recorded with no rows.
    T_WIN.fetch_add(1_000_000_000, SeqCst);
    assert!(p.close_window_now());
    assert_eq!(
        p.report().windows.last().map(|w| w.callbacks.len()),
        Some(0)
    );
}

#[test]
fn alerts_need_windows_and_a_valid_rule() {
    let p = Profiler::new();
    let rule = AlertRule {
        kind: CallbackKind::RECEIVE,
        quantile: 0.99,
        threshold_ns: 1,
        min_count: 1,
    };
    assert!(matches!(
        p.add_alert(rule, |_| ()),
        Err(ProfilerError::WindowsDisabled)
    ));
    assert!(p.spawn_ticker().is_err());
    assert!(!p.tick());
    let w = build(Profiler::builder().windows(2, Duration::from_secs(1)));
    let bad = AlertRule {
        quantile: 1.5,
        ..rule
    };
    assert!(matches!(
        w.add_alert(bad, |_| ()),
        Err(ProfilerError::InvalidQuantile(_))
    ));
    let unknown = AlertRule {
        kind: CallbackKind::BUILTIN[7],
        ..rule
    };
    assert!(w.add_alert(unknown, |_| ()).is_ok());
}

#[test]
fn ticker_thread_closes_windows() {
    let p = build(Profiler::builder().windows(100, Duration::from_millis(5)));
    let t = p.spawn_ticker();
    let Ok(t) = t else { panic!("ticker") };
    p.record(CallbackKind::RECEIVE, 100, 1);
    // Wait (bounded) until the ticker has closed a window holding the record.
    let mut seen = false;
    for _ in 0..2000 {
        std::thread::sleep(Duration::from_millis(5));
        if p.report()
            .windows
            .iter()
            .any(|w| w.callbacks.iter().any(|c| c.count == 1))
        {
            seen = true;
            break;
        }
    }
    drop(t); // joins the thread
    assert!(seen, "no window closed by the ticker within 10 s");
}

fake_clock!(T_REP, t_rep);

fn sample_profiler() -> Profiler {
    let p = build(
        Profiler::builder()
            .clock(ClockSource::Custom(t_rep))
            .connections(16)
            .windows(4, Duration::from_secs(1)),
    );
    let custom = p.register_kind("on_book_update");
    let Ok(custom) = custom else {
        panic!("register")
    };
    for i in 0..100u64 {
        p.record_conn(CallbackKind::RECEIVE, 1 + i % 2, 2_000 + i * 10, 64);
        p.record_conn(custom, 1, 500, 0);
    }
    p.record(CallbackKind::ESTABLISHED, 40_000, 0);
    T_REP.fetch_add(1_000_000_000, SeqCst);
    p.tick();
    p
}

#[test]
fn json_keeps_the_seed_field_names_and_round_trips() {
    let p = sample_profiler();
    let r = p.report();
    let json = r.to_json().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    let rx = &v["callbacks"][1];
    for field in [
        "name", "count", "total_ns", "min_ns", "max_ns", "avg_ns", "bytes", "last_ns",
    ] {
        assert!(rx.get(field).is_some(), "seed field {field} missing");
    }
    for field in [
        "p50_ns",
        "p90_ns",
        "p99_ns",
        "p999_ns",
        "calls_per_sec",
        "bytes_per_sec",
    ] {
        assert!(rx.get(field).is_some(), "extension {field} missing");
    }
    assert_eq!(rx["name"], "receive");
    assert_eq!(rx["count"], 100);
    assert_eq!(rx["bytes"], 6400);
    assert_eq!(v["callbacks"][8]["name"], "on_book_update");
    assert_eq!(v["windows"][0]["callbacks"][0]["name"], "established");
    // A window holding one sample reports it (exact max) at every percentile.
    assert_eq!(v["windows"][0]["callbacks"][0]["p50_ns"], 40_000);
    assert_eq!(v["windows"][0]["callbacks"][0]["p999_ns"], 40_000);
    assert_eq!(v["connections"][0]["id"], 1);
    assert_eq!(v["histogram"]["relative_error"], 0.015625);
    assert_eq!(v["schema_version"], 1);
    let back = Report::from_json(&json);
    assert_eq!(back.ok(), Some(r));
}

#[test]
fn prometheus_exposition_is_well_formed() {
    let p = sample_profiler();
    let text = p.report().to_prometheus();
    let mut typed = std::collections::HashSet::new();
    let mut samples = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                panic!("bad TYPE line {line}")
            };
            assert!(["counter", "gauge", "summary"].contains(&kind));
            assert!(typed.insert(name.to_string()), "duplicate TYPE for {name}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').unwrap_or(("", ""));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
        let name = series.split('{').next().unwrap_or("");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name {name}"
        );
        let family = name.trim_end_matches("_sum").trim_end_matches("_count");
        assert!(
            typed.contains(name) || typed.contains(family),
            "{name} has no TYPE"
        );
        if series.contains('{') {
            assert!(
                series.ends_with('}') && series.contains("=\""),
                "bad labels in {line}"
            );
        }
        samples += 1;
    }
    assert!(samples > 50);
    assert!(text.contains("ws_profiler_callback_calls_total{kind=\"receive\"} 100\n"));
    assert!(
        text.contains("ws_profiler_callback_duration_seconds_count{kind=\"on_book_update\"} 100\n")
    );
    assert!(text.contains(
        "ws_profiler_callback_duration_seconds{kind=\"receive\",quantile=\"0.99\"} 0.0000029"
    ));
}

#[test]
fn text_table_has_the_seed_columns_and_percentiles() {
    let p = sample_profiler();
    let text = p.report().to_text();
    let header = text
        .lines()
        .find(|l| l.starts_with("Callback "))
        .unwrap_or("");
    for col in [
        "Count",
        "Total(ms)",
        "Avg(us)",
        "Min(us)",
        "Max(us)",
        "p50(us)",
        "p99(us)",
        "p99.9(us)",
        "Bytes",
        "Calls/s",
        "MB/s",
    ] {
        assert!(header.contains(col), "column {col} missing in {header}");
    }
    let rx = text
        .lines()
        .find(|l| l.starts_with("receive "))
        .unwrap_or("");
    let cols: Vec<&str> = rx.split_whitespace().collect();
    assert_eq!(cols.get(1), Some(&"100"));
    assert_eq!(cols.get(4), Some(&"2.000"), "min 2 us");
    assert_eq!(cols.get(5), Some(&"2.990"), "max 2.99 us");
    assert!(text.contains("Time windows"));
    assert!(text.contains("Connections by callback time"));
    assert!(
        !text.contains("\nping "),
        "kinds with no calls are left out of the table"
    );
}

#[test]
fn reset_zeroes_everything() {
    let p = sample_profiler();
    p.reset();
    let r = p.report();
    assert!(
        r.callbacks
            .iter()
            .all(|c| c.count == 0 && c.bytes == 0 && c.max_ns == 0)
    );
    assert!(r.windows.is_empty() && r.connections.is_empty());
    p.record(CallbackKind::RECEIVE, 9, 9);
    assert_eq!(
        p.report().callback("receive").map(|c| (c.count, c.min_ns)),
        Some((1, 9))
    );
}
