//! What the coordinator and the workers expose for operators: the Prometheus text format
//! ([`prom`]), the small HTTP server that carries `/healthz`, `/metrics` and `/status`
//! ([`serve_http`]), and rate-limited logging of repeating errors ([`rate_limit`]).
//!
//! The HTTP endpoints are read-only and carry no job token (a Prometheus scrape or a Kubernetes
//! probe cannot present one); they say how the job goes, never what the data or model is. Bind
//! them to the cluster network, not to the internet (docs/operations.md).

pub mod prom;
pub mod rate_limit;

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Binds the HTTP listener (port 0 = ephemeral), naming the flag in the error.
pub async fn bind_http(addr: SocketAddr) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("--http-listen {addr}: cannot listen: {e}"),
        )
    })
}

/// Serves `router` on `listener` until `shutdown` resolves, on its own task: a slow scrape
/// never holds up training, and a failed HTTP server is logged, not fatal to the job.
pub fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let addr = listener.local_addr().ok();
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(addr = ?addr, error = %e, "the HTTP endpoint stopped");
        }
    })
}

/// The address to show users for `listener` (`0.0.0.0` as `127.0.0.1`, so the URL works from
/// the same machine).
pub fn http_url(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    format!("http://{host}:{}", addr.port())
}
