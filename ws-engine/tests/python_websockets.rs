//! Against a real Python `websockets` server: many messages of mixed sizes and kinds
//! (some fragmented), verified byte for byte, then a clean close initiated by the server.
//!
//! Needs `python3` with `websockets` (`pip install websockets`). Without it the test
//! skips, except when `CI=true`, where it fails.

mod common;

use common::{MixedCheck, have_python, python_server_script, run_until_done, start_python_server};
use ws_engine::{ConnConfig, EventLoop, LoopConfig};

/// The server script's `handler(ws)` and `main()` (see `python_server_script`).
const SERVER: &str = r#"
async def handler(ws):
    start = await ws.recv()
    n = int(start.split()[1])
    for i in range(n):
        p = payload(i)
        if i % 10 == 5 and len(p) >= 3:
            k = len(p) // 3
            await ws.send([p[:k], p[k:2 * k], p[2 * k:]])
        else:
            await ws.send(p)
    reply = await ws.recv()
    if reply == f"got {n}":
        await ws.close(1000, "done")
    else:
        await ws.close(4000, "mismatch: " + reply[:60])

async def main():
    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
"#;

const SIZES: [usize; 9] = [0, 1, 64, 125, 126, 1000, 65535, 65536, 100000];
const N: usize = 1500;

#[test]
fn python_websockets_server_streams_mixed_messages() {
    if !have_python("websockets.asyncio.server") {
        return;
    }
    let (child, port) = start_python_server(&python_server_script(&SIZES, SERVER), &[]);
    let mut el = EventLoop::new(LoopConfig::default()).unwrap();
    el.connect(&format!("ws://127.0.0.1:{port}/"), &ConnConfig::default())
        .unwrap();
    let mut h = MixedCheck::new(&SIZES, N, None);
    run_until_done(&mut el, &mut h);
    drop(child);
    let info = h.assert_complete();
    assert_eq!(info.peer_reason, "done");
}
