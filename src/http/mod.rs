//! The HTTP server of every long-running command (`demo`, `run`): the dashboard, `/metrics`,
//! `/health`, `/ready` and the JSON API (docs/http.md).
//!
//! It runs axum on a tokio runtime of its own thread, and reads only what the run already keeps
//! for it ([`Status`] and its [`Observed`](crate::runtime::observed::Observed)): serving a request never touches a
//! worker.

pub mod api;
pub mod assets;
pub mod health;
pub mod metrics;
pub mod rows;

use std::future::IntoFuture as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

pub use crate::config::http::HttpConfig;
use crate::runtime::Status;

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address cannot be bound.
    #[error("cannot listen on {address} (http.listen, --http): {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime or its thread could not start.
    #[error("cannot start the HTTP server: {0}")]
    Start(std::io::Error),
}

/// What every handler reads.
#[derive(Clone)]
pub struct AppState {
    status: Arc<Status>,
    config: Arc<HttpConfig>,
    registry: Arc<Registry>,
}

/// An API error: a status and a one-line JSON `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// The routes.
pub fn router(status: Arc<Status>, config: &HttpConfig) -> Router {
    let state = AppState {
        registry: Arc::new(metrics::registry(&status)),
        status,
        config: Arc::new(config.clone()),
    };
    Router::new()
        .route("/health", get(health::get_health))
        .route("/ready", get(health::get_ready))
        .route("/metrics", get(metrics::get_metrics))
        .route("/api/measurements", get(api::list_measurements))
        .route("/api/rows", get(api::rows))
        .route("/api/windows", get(api::windows))
        .route("/api/pipeline", get(api::pipeline))
        .route("/api/stream", get(api::stream))
        .fallback(get(asset).fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: "only GET".into(),
            }
        }))
        .with_state(state)
}

/// The dashboard's files ([`assets::asset`]), or a 404.
async fn asset(uri: Uri) -> Response {
    match assets::asset(uri.path()) {
        Some((content_type, bytes)) => {
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        None => ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no such path: {}", uri.path()),
        }
        .into_response(),
    }
}

/// A running server; it stops when dropped.
pub struct Server {
    requested: SocketAddr,
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Listens on `address` (a busy port falls back to any free one, with a warning) and serves
    /// `status` on a thread of its own.
    pub fn start(
        address: SocketAddr,
        status: Arc<Status>,
        config: &HttpConfig,
    ) -> Result<Server, HttpError> {
        let listener = match TcpListener::bind(address) {
            Ok(listener) => listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && address.port() != 0 => {
                let any = SocketAddr::new(address.ip(), 0);
                let listener =
                    TcpListener::bind(any).map_err(|source| HttpError::Bind { address, source })?;
                tracing::info!(%address, "the HTTP port is busy: listening on another one");
                listener
            }
            Err(source) => return Err(HttpError::Bind { address, source }),
        };
        let bound = listener.local_addr().map_err(HttpError::Start)?;
        listener.set_nonblocking(true).map_err(HttpError::Start)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .thread_name("shopflow-http")
            .build()
            .map_err(HttpError::Start)?;
        let app = router(status, config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("shopflow-http".into())
            .spawn(move || {
                let _span = tracing::info_span!("http", address = %bound).entered();
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!(%error, "cannot serve HTTP");
                            return;
                        }
                    };
                    let serve = std::pin::pin!(axum::serve(listener, app).into_future());
                    // Stops at once, open streams included: they would keep a graceful
                    // shutdown waiting forever.
                    if let futures_util::future::Either::Left((Err(error), _)) =
                        futures_util::future::select(serve, stopped).await
                    {
                        tracing::error!(%error, "the HTTP server failed");
                    }
                });
                runtime.shutdown_timeout(Duration::from_millis(200));
            })
            .map_err(HttpError::Start)?;
        Ok(Server {
            requested: address,
            address: bound,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its base URL, e.g. `http://127.0.0.1:8080/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the server `listen` asks for (`None` for `off`) and, if `announce`, says where on
/// standard error: the first thing a command prints.
pub fn start(
    listen: crate::config::http::Listen,
    status: &Arc<Status>,
    config: &HttpConfig,
    announce: bool,
) -> Result<Option<Server>, HttpError> {
    match listen {
        crate::config::http::Listen::Off => Ok(None),
        crate::config::http::Listen::On(address) => {
            let server = Server::start(address, Arc::clone(status), config)?;
            if announce {
                crate::logging::report(tracing::Level::INFO, &server.announcement());
            }
            Ok(Some(server))
        }
    }
}

impl Server {
    /// The line that says where the server is (and that the port asked for was busy).
    pub fn announcement(&self) -> String {
        let busy = if self.requested.port() != 0 && self.requested != self.address {
            format!(" ({} was busy)", self.requested)
        } else {
            String::new()
        };
        format!(
            "dashboard, metrics and API at {}{busy} (/metrics, /health, /ready, /api)",
            self.url()
        )
    }
}
