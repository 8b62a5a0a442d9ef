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
mod limits;
mod protocol;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ClientInfo, ConnectionManager, ErrorHandler, PgWireServerHandlers};
use pgwire::error::PgWireError;
use sluice_common::{Config, Result, SluiceError};
use sluice_state::{RocksBackend, StateBackend};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use auth::AuthSettings;
pub use engine::{Engine, Output};
pub use protocol::QueryService;
pub use sluice_dataflow::DataflowOptions;
pub use sluice_planner::register_functions;

/// A bound, ready Sluice server.
pub struct Server {
    listener: TcpListener,
    engine: Arc<Engine>,
    service: Arc<QueryService>,
    auth: AuthSettings,
    /// Logged-in connections by backend key, for CancelRequests.
    cancel: Arc<ConnectionManager>,
    /// One permit per open connection (`max_connections`).
    connection_slots: Arc<Semaphore>,
    startup_timeout: Duration,
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
        let engine = Arc::new(
            Engine::open(
                store,
                options,
                sluice_connectors::Policy {
                    extra_properties: config.kafka_allowed_properties.clone(),
                    file_dirs: config.client_file_dirs.clone(),
                    source_dirs: config.source_file_dirs.clone(),
                },
            )
            .await?,
        );
        let listener = TcpListener::bind(&config.listen).await.map_err(|e| {
            SluiceError::external("network", format!("cannot listen on {}", config.listen), e)
        })?;
        let limits = limits::Limits {
            statement_timeout: Duration::from_millis(config.statement_timeout_ms),
        };
        Ok(Server {
            listener,
            engine: engine.clone(),
            service: Arc::new(QueryService::new(engine).with_limits(limits)),
            auth: AuthSettings::from_config(config),
            cancel: Arc::new(ConnectionManager::new()),
            connection_slots: Arc::new(Semaphore::new(config.max_connections)),
            startup_timeout: Duration::from_millis(config.startup_timeout_ms.max(1)),
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
        let mut refused = ThrottledLog::new(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let Ok(slot) = self.connection_slots.clone().try_acquire_owned() else {
                            refuse_connection(&socket);
                            if let Some(count) = refused.record(std::time::Instant::now()) {
                                tracing::warn!(count, "refused connections: max_connections reached");
                            }
                            continue;
                        };
                        let startup = self.auth.handler(self.cancel.clone());
                        let logged_in = startup.logged_in();
                        let handlers = Handlers {
                            service: self.service.clone(),
                            startup: Arc::new(startup),
                            cancel: self.cancel.clone(),
                        };
                        let startup_timeout = self.startup_timeout;
                        connections.spawn(async move {
                            let _slot = slot;
                            tracing::debug!(%peer, "connection opened");
                            let serve = pgwire::tokio::process_socket(socket, None, handlers);
                            let deadline = async {
                                tokio::time::sleep(startup_timeout).await;
                                if logged_in.load(Ordering::SeqCst) {
                                    std::future::pending::<()>().await;
                                }
                            };
                            tokio::select! {
                                result = serve => if let Err(e) = result {
                                    tracing::warn!(%peer, error = %e, "connection ended with an error");
                                },
                                _ = deadline => {
                                    tracing::debug!(%peer, "closed a connection that did not log in in time");
                                }
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

/// Tells a client that connected past `max_connections` why it is
/// refused, as Postgres does (FATAL, 53300), without waiting for it: the
/// socket is closed right after.
fn refuse_connection(socket: &tokio::net::TcpStream) {
    let mut fields = Vec::new();
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "53300"),
        (b'M', "sorry, too many clients already"),
    ] {
        fields.push(code);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    message.extend_from_slice(&fields);
    // A fresh socket's send buffer takes these few bytes at once; if it
    // does not, the client only misses the reason.
    let _ = socket.try_write(&message);
}

/// The handlers of one connection.
struct Handlers {
    service: Arc<QueryService>,
    startup: Arc<auth::Startup>,
    cancel: Arc<ConnectionManager>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.cancel.clone()))
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
