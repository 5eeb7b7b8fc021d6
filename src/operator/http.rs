//! The operator's one small HTTP server: liveness, readiness and metrics.
//!
//! - `GET /healthz` — 200 `ok` while the process serves requests at all.
//! - `GET /readyz` — 200 `ok` once [`HttpState::set_ready`] was called with
//!   `true` (after the watches have synced), else 503. A standby replica that
//!   waits for the leader lease is ready too: readiness says "this pod works",
//!   not "this pod leads", so a rollout is not blocked by standbys.
//! - `GET /metrics` — [`Metrics::encode`] as OpenMetrics text.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::{self, Metrics};

/// What the handlers read; cheap to clone, shared with the rest of main.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// The registry served on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Whether `/readyz` answers 200.
    pub ready: Arc<AtomicBool>,
}

impl HttpState {
    /// A state that is not ready yet.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the process ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// What `/readyz` currently answers.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Binds `addr` and serves until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP server to {addr}"))?;
    serve_listener(listener, state, shutdown).await
}

/// Serves on an already bound listener until `shutdown` is cancelled; lets
/// tests bind port 0 and learn the port first.
pub async fn serve_listener(
    listener: TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("HTTP server failed")
}

fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;

    struct Server {
        addr: SocketAddr,
        state: HttpState,
        shutdown: CancellationToken,
        task: JoinHandle<anyhow::Result<()>>,
    }

    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = HttpState::new(Arc::new(Metrics::default()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_listener(listener, state.clone(), shutdown.clone()));
        Server {
            addr,
            state,
            shutdown,
            task,
        }
    }

    /// A response as a client sees it: status code, headers (lower-cased
    /// names) and body.
    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// HTTP/1.1 GET with `Connection: close`, so the body ends at EOF.
    async fn get(addr: SocketAddr, path: &str) -> Response {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();

        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Response {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    #[tokio::test]
    async fn healthz_answers_ok() {
        let server = start().await;
        let response = get(server.addr, "/healthz").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "ok");
    }

    #[tokio::test]
    async fn readyz_follows_the_ready_flag() {
        let server = start().await;
        let response = get(server.addr, "/readyz").await;
        assert_eq!(response.status, 503);
        assert_eq!(response.body, "not ready");

        server.state.set_ready(true);
        let response = get(server.addr, "/readyz").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "ok");

        server.state.set_ready(false);
        assert_eq!(get(server.addr, "/readyz").await.status, 503);
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let server = start().await;
        server.state.metrics.set_leader(true);
        drop(server.state.metrics.reconcile_started("servicedatabase"));

        let response = get(server.addr, "/metrics").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some(metrics::CONTENT_TYPE));
        assert!(
            response.body.contains("\nservicedb_leader 1\n"),
            "{}",
            response.body
        );
        assert!(
            response
                .body
                .contains("servicedb_reconcile_total{controller=\"servicedatabase\"} 1\n"),
            "{}",
            response.body
        );
        assert!(response.body.ends_with("# EOF\n"), "{}", response.body);
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let server = start().await;
        assert_eq!(get(server.addr, "/").await.status, 404);
    }

    #[tokio::test]
    async fn cancelling_shuts_the_server_down() {
        let server = start().await;
        assert_eq!(get(server.addr, "/healthz").await.status, 200);

        server.shutdown.cancel();
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), server.task)
            .await
            .expect("server did not stop within 5s after cancellation")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert!(TcpStream::connect(server.addr).await.is_err());
    }

    #[tokio::test]
    async fn serve_reports_an_address_in_use() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let state = HttpState::new(Arc::new(Metrics::default()));
        let error = serve(addr, state, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains(&addr.to_string()),
            "{error:#}"
        );
    }
}
