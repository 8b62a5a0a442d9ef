//! Sluice's pgwire endpoint: accepts Postgres connections, authenticates
//! them, and runs their statements on the shared [`Engine`].
//!
//! Statement handlers live in `handlers/` (one file per Sluice statement);
//! `session` speaks the simple and extended query protocols; `auth` decides
//! who may log in.

mod auth;
mod encode;
pub mod engine;
mod handlers;
mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pgwire::api::auth::StartupHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ClientInfo, ErrorHandler, PgWireServerHandlers};
use pgwire::error::PgWireError;
use sluice_common::{Config, Result, SluiceError};
use sluice_state::{RocksBackend, StateBackend};
use tokio::net::TcpListener;

pub use auth::AuthSettings;
pub use engine::{Engine, Output};
pub use session::SessionService;
pub use sluice_planner::DataflowOptions;

/// A bound, ready Sluice server.
pub struct Server {
    listener: TcpListener,
    engine: Arc<Engine>,
    handlers: Arc<Handlers>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.listener.local_addr().ok())
            .finish()
    }
}

impl Server {
    /// Opens the data directory and binds the listen address.
    pub async fn bind(config: &Config) -> Result<Server> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            SluiceError::Storage(format!(
                "cannot create data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let store: Arc<dyn StateBackend> = Arc::new(RocksBackend::open_with_cache(
            &config.data_dir.join("state"),
            config.state_cache_mb.max(1) << 20,
        )?);
        let options = DataflowOptions {
            checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms.max(1)),
            operator_cache_bytes: config.operator_cache_mb << 20,
            late_events_retention: config.late_events_retention,
        };
        let engine = Arc::new(Engine::open(store, options).await?);
        let listener = TcpListener::bind(&config.listen).await.map_err(|e| {
            SluiceError::Storage(format!("cannot listen on {}: {e}", config.listen))
        })?;
        Ok(Server {
            listener,
            engine: engine.clone(),
            handlers: Arc::new(Handlers {
                service: Arc::new(SessionService::new(engine)),
                auth: AuthSettings::from_config(config),
            }),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| SluiceError::internal(format!("listener has no address: {e}")))
    }

    /// Serves connections until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        tracing::info!(addr = %self.local_addr()?, "sluice is ready for connections");
        tokio::pin!(shutdown);
        let mut connections = tokio::task::JoinSet::new();
        let mut accept_errors = ThrottledLog::new(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let handlers = self.handlers.clone();
                        connections.spawn(async move {
                            tracing::debug!(%peer, "connection opened");
                            if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                                tracing::warn!(%peer, error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors (a connection flood) fails
                        // every accept at once: log once a second with a
                        // count, and back off instead of spinning.
                        if let Some(count) = accept_errors.record(std::time::Instant::now()) {
                            tracing::warn!(error = %e, count, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.shutdown().await;
        self.engine.shutdown().await;
        tracing::info!("sluice stopped");
        Ok(())
    }
}

/// Lets one log line through per `every`, counting the events in between.
#[derive(Debug)]
struct ThrottledLog {
    every: Duration,
    last: Option<std::time::Instant>,
    count: u64,
}

impl ThrottledLog {
    fn new(every: Duration) -> Self {
        ThrottledLog {
            every,
            last: None,
            count: 0,
        }
    }

    /// Records one event at `now`; returns how many events the line to log
    /// now stands for (this one included), or `None` to stay quiet.
    fn record(&mut self, now: std::time::Instant) -> Option<u64> {
        self.count += 1;
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

struct Handlers {
    service: Arc<SessionService>,
    auth: AuthSettings,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(self.auth.handler())
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }
}

struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C: ClientInfo>(&self, client: &C, error: &mut PgWireError) {
        tracing::debug!(peer = %client.socket_addr(), %error, "error sent to client");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_log_lets_one_line_a_second_through_with_a_count() {
        let start = std::time::Instant::now();
        let mut log = ThrottledLog::new(Duration::from_secs(1));
        // (milliseconds after start, what record returns)
        let table = [
            (0, Some(1)),
            (1, None),
            (500, None),
            (999, None),
            (1000, Some(4)),
            (1500, None),
            (3000, Some(2)),
        ];
        for (ms, expected) in table {
            assert_eq!(
                log.record(start + Duration::from_millis(ms)),
                expected,
                "at {ms} ms"
            );
        }
    }
}
