//! The HTTP API (axum on a single-threaded tokio runtime, in a thread of its own):
//!
//! | method and path           | answer                                                  |
//! |---------------------------|---------------------------------------------------------|
//! | `GET /metrics`            | Prometheus text ([`super::metrics`])                    |
//! | `GET /api/status`         | JSON: target, pids, state, mode, uptime, programs, drops, captures |
//! | `GET /api/captures`       | JSON list of captures                                   |
//! | `POST /api/captures`      | takes a capture of the last seconds: 201 and its JSON   |
//! | `GET /api/captures/ID`    | the trace file                                          |
//! | `DELETE /api/captures/ID` | 204                                                     |
//!
//! With a token, every request needs `Authorization: Bearer TOKEN` (else 401). Errors are
//! JSON `{"error": "..."}`: 400 for a malformed ID or request, 401, 404, 405, 409 when
//! there is nothing to capture, 507 when the capture quota is reached, 500 otherwise.
use std::{
    net::TcpListener,
    sync::{Arc, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, Request, State, rejection::PathRejection},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::captures::{CaptureError, CaptureId};

use super::{CaptureRequest, CaptureStatus, Shared, metrics};

/// How long `POST /api/captures` waits for the session thread.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(30);

/// A JSON error answer.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<CaptureError> for ApiError {
    fn from(e: CaptureError) -> ApiError {
        let status = match &e {
            CaptureError::InvalidId(_) => StatusCode::BAD_REQUEST,
            CaptureError::NotFound(_) => StatusCode::NOT_FOUND,
            CaptureError::Empty { .. } => StatusCode::CONFLICT,
            CaptureError::QuotaReached { .. } => StatusCode::INSUFFICIENT_STORAGE,
            CaptureError::Io { .. } | CaptureError::Trace(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

/// How long requests in flight may take to finish once the server is told to stop;
/// connections still open then are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The running server: its thread and the way to stop it.
pub struct Server {
    thread: JoinHandle<()>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Server {
    /// Serves the API on `listener` (already bound) from a new thread.
    pub fn start(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<Server> {
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (shutdown, stopped) = tokio::sync::watch::channel(false);
        let app = router(shared);
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let thread = std::thread::Builder::new()
            .name("ws-trace-http".into())
            .spawn(move || {
                let mut graceful = stopped.clone();
                let mut deadline = stopped;
                let served = runtime.block_on(async move {
                    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = graceful.wait_for(|stop| *stop).await;
                    });
                    tokio::select! {
                        served = server => served,
                        // A client that keeps its request open does not hold serve up.
                        _ = async {
                            let _ = deadline.wait_for(|stop| *stop).await;
                            tokio::time::sleep(SHUTDOWN_GRACE).await;
                        } => Ok(()),
                    }
                });
                if let Err(e) = served {
                    eprintln!("ws-trace: HTTP server: {e}");
                }
            })?;
        Ok(Server { thread, shutdown })
    }

    /// Stops accepting, lets the requests in flight finish (for up to
    /// [`SHUTDOWN_GRACE`]) and joins the thread.
    pub fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.thread.join();
    }
}

/// The API's routes, behind the token check.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/api/status", get(get_status))
        .route("/api/captures", get(list_captures).post(take_capture))
        .route(
            "/api/captures/{id}",
            get(download_capture).delete(delete_capture),
        )
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed here".into(),
            )
        })
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ))
        .with_state(shared)
}

/// Equal without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(token) = shared.token.as_deref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if given.is_some_and(|g| constant_time_eq(g, token.as_bytes())) {
        return next.run(req).await;
    }
    let mut resp = ApiError(
        StatusCode::UNAUTHORIZED,
        "this serve needs Authorization: Bearer TOKEN".into(),
    )
    .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

async fn get_metrics(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let view = shared.published().view;
    let text = metrics::encode(view).map_err(|_| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed".into(),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

async fn get_status(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let p = shared.published();
    let status = p.view.status.as_ref();
    let captures = CaptureStatus {
        dir: shared.captures.dir().to_path_buf(),
        usage: p.view.captures,
        last_error: p.capture_error.clone(),
        trigger: p.trigger.clone(),
    };
    Json(json!({
        "target": shared.target,
        "pids": p.pids,
        "state": p.state,
        "mode": status.map(|s| s.mode),
        "uptime_s": shared.started.elapsed().as_secs_f64(),
        "attached_programs": status.map(|s| s.programs.iter().map(|p| p.probe).collect::<Vec<_>>()),
        "programs": status.map(|s| &s.programs),
        "drops": status.map(|s| json!({
            "ring": s.ring_drops(),
            "channel": s.channel.map(|c| c.drops),
            "channel_lease_lapses": s.channel.map(|c| c.lapses),
        })),
        "missed_hits": status.map(|s| s.missed_hits()),
        "decode_errors": status.map(|s| s.decode_errors),
        "callbacks": status.and_then(|s| s.callbacks),
        "channel": status.and_then(|s| s.channel),
        "aggregate": status.and_then(|s| s.aggregate),
        "messages": p.view.snapshot.total.count(),
        "connections_over_cap": status.map(|s| s.connections_over_cap),
        "traced_pids": status.map(|s| &s.tgids),
        "captures": captures,
        "notes": status.map(|s| &s.notes),
    }))
}

async fn list_captures(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let list = shared.captures.list()?;
    Ok(Json(json!({ "captures": list })).into_response())
}

async fn take_capture(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let sent = shared
        .capture_requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send(CaptureRequest {
            reason: "api".into(),
            reply,
        });
    let unavailable = || {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session is not running".into(),
        )
    };
    sent.map_err(|_| unavailable())?;
    let info = tokio::time::timeout(CAPTURE_TIMEOUT, answer)
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the session did not answer in time".into(),
            )
        })?
        .map_err(|_| unavailable())??;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

fn capture_id(path: Result<Path<String>, PathRejection>) -> Result<CaptureId, ApiError> {
    let Path(id) = path.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok(CaptureId::parse(&id)?)
}

async fn download_capture(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = capture_id(path)?;
    let bytes = shared.captures.read(&id)?;
    let disposition = format!("attachment; filename=\"{id}.wstrace\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

async fn delete_capture(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = capture_id(path)?;
    shared.captures.delete(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::captures::Captures;
    use std::{
        io::{Read as _, Write as _},
        sync::{Mutex, mpsc},
        time::Instant,
    };

    /// A server on a free loopback port with an empty capture directory.
    fn serve(token: Option<&str>) -> (Server, std::net::SocketAddr, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let captures = Captures::open(dir.path(), 1 << 20).expect("captures");
        let (tx, _rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            published: Mutex::new(super::super::Published {
                view: Arc::default(),
                state: super::super::SessionState::Waiting,
                pids: Default::default(),
                capture_error: None,
                trigger: None,
            }),
            captures,
            capture_requests: Mutex::new(tx),
            token: token.map(str::to_string),
            started: Instant::now(),
            target: "test".into(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        (Server::start(listener, shared).expect("start"), addr, dir)
    }

    /// Sends `request` as is and returns the status code and the body.
    fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(request).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).to_string();
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (code, body)
    }

    fn get(addr: std::net::SocketAddr, path: &str, extra: &str) -> (u16, String) {
        raw(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
                .as_bytes(),
        )
    }

    #[test]
    fn malformed_requests_and_ids_get_4xx_with_json() {
        let (server, addr, dir) = serve(None);
        assert_eq!(get(addr, "/metrics", "").0, 200);
        let (code, body) = get(addr, "/api/captures/..%2F..%2Fetc%2Fpasswd", "");
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("invalid capture id"), "{body}");
        assert_eq!(get(addr, "/api/captures/../../etc/passwd", "").0, 404);
        assert_eq!(get(addr, "/api/captures/a%00b", "").0, 400);
        assert_eq!(get(addr, "/api/captures/%ff%fe", "").0, 400);
        let (code, body) = get(addr, "/api/captures/nope", "");
        assert_eq!(code, 404);
        assert!(body.contains("\"error\""), "{body}");
        assert_eq!(get(addr, "/nowhere", "").0, 404);
        let (code, body) = raw(
            addr,
            b"PUT /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(code, 405, "{body}");
        assert!(body.contains("\"error\""), "{body}");
        // Not HTTP at all, and a broken request line: hyper answers 400 or closes.
        for junk in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        ] {
            let (code, _) = raw(addr, junk);
            assert!(code == 400 || code == 0, "{code} for {junk:?}");
        }
        // The server is still up.
        assert_eq!(get(addr, "/api/status", "").0, 200);
        // Capture listing: a stray file is not a capture.
        std::fs::write(dir.path().join("x.txt"), b"x").expect("write");
        let (code, body) = get(addr, "/api/captures", "");
        assert_eq!((code, body.as_str()), (200, r#"{"captures":[]}"#));
        server.stop();
    }

    #[test]
    fn a_client_that_never_finishes_its_request_does_not_hold_up_the_stop() {
        let (server, addr, _dir) = serve(None);
        let mut slow = std::net::TcpStream::connect(addr).expect("connect");
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .expect("half a request");
        // The server has the connection before it is told to stop.
        assert_eq!(get(addr, "/api/status", "").0, 200);
        let (done, stopped) = mpsc::channel();
        std::thread::spawn(move || {
            server.stop();
            let _ = done.send(());
        });
        // Without the grace period's bound, stop would wait for this client forever; the
        // guard only keeps a failure from hanging the test run.
        assert!(
            stopped.recv_timeout(SHUTDOWN_GRACE * 12).is_ok(),
            "stop waited on a client that never finished its request"
        );
        // And the server let go of the connection.
        let mut rest = Vec::new();
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = slow.read_to_end(&mut rest);
        assert!(
            String::from_utf8_lossy(&rest).is_empty() || !rest.starts_with(b"HTTP/1.1 200"),
            "the half request was answered"
        );
    }

    #[test]
    fn a_token_is_required_when_set() {
        let (server, addr, _dir) = serve(Some("s3cret"));
        for path in ["/metrics", "/api/status", "/api/captures"] {
            let (code, body) = get(addr, path, "");
            assert_eq!(code, 401, "{path}: {body}");
            assert_eq!(get(addr, path, "Authorization: Bearer wrong\r\n").0, 401);
            assert_eq!(get(addr, path, "Authorization: Bearer s3cre\r\n").0, 401);
            assert_eq!(get(addr, path, "Authorization: s3cret\r\n").0, 401);
            assert_eq!(get(addr, path, "Authorization: Bearer s3cret\r\n").0, 200);
        }
        server.stop();
    }
}
