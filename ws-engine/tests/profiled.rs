//! The engine times every callback it makes with the loop's callback profiler.
use std::time::Duration;

use ws_engine::{
    ConnConfig, ConnCtx, EventLoop, Handler, LoopConfig, Message,
    profiler::Profiler,
    server::{Feed, FeedServer, Payload},
};

struct Count(u64);

impl Handler for Count {
    fn on_message(&mut self, _conn: &mut ConnCtx<'_>, _msg: Message<'_>) {
        self.0 += 1;
    }
}

#[test]
fn every_callback_is_counted_with_its_bytes() {
    let server = FeedServer::start(Feed {
        count: 250,
        size: 100,
        gap: Duration::ZERO,
        payload: Payload::Indexed,
    })
    .expect("feed server");
    let profiler = Profiler::builder()
        .connections(8)
        .build()
        .expect("profiler");
    let mut el = EventLoop::new(LoopConfig {
        profiler: Some(profiler.clone()),
        ..LoopConfig::default()
    })
    .expect("event loop");
    let id = el
        .connect(server.url(), &ConnConfig::default())
        .expect("connect");
    let mut count = Count(0);
    el.run(&mut count).expect("run");
    server.join().expect("feed server");
    assert_eq!(count.0, 250);

    let report = profiler.report();
    let get = |name: &str| {
        report
            .callbacks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
    };
    let receive = get("receive");
    assert_eq!((receive.count, receive.bytes), (250, 250 * 100), "{report}");
    assert!(receive.min_ns <= receive.p50_ns && receive.p50_ns <= receive.max_ns);
    assert_eq!(get("established").count, 1);
    let close = get("close_frame");
    assert_eq!((close.count, close.bytes), (1, 0), "{report}");
    assert_eq!(get("closed").count, 1);
    assert_eq!(get("connection_error").count, 0);
    // Per connection: the one connection, with the same receive count.
    let conn = report
        .connections
        .iter()
        .find(|c| c.id == id.0)
        .unwrap_or_else(|| panic!("connection {} not tracked: {report}", id.0));
    let receives: u64 = conn
        .callbacks
        .iter()
        .filter(|c| c.name == "receive")
        .map(|c| c.count)
        .sum();
    assert_eq!(receives, 250);
}

#[test]
fn without_a_profiler_nothing_is_recorded_elsewhere() {
    // A profiler that exists but is not given to the loop sees nothing.
    let server = FeedServer::start(Feed {
        count: 10,
        size: 10,
        gap: Duration::ZERO,
        payload: Payload::Indexed,
    })
    .expect("feed server");
    let bystander = Profiler::new();
    let mut el = EventLoop::new(LoopConfig::default()).expect("event loop");
    el.connect(server.url(), &ConnConfig::default())
        .expect("connect");
    let mut count = Count(0);
    el.run(&mut count).expect("run");
    server.join().expect("feed server");
    assert_eq!(count.0, 10);
    assert!(bystander.report().callbacks.iter().all(|c| c.count == 0));
}
