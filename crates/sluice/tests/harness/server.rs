//! A Sluice server running inside the test process, restartable on the same
//! data directory.

use std::net::SocketAddr;

use sluice_common::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running in-process server with its own data directory.
pub struct TestServer {
    _dir: tempfile::TempDir,
    config: Config,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<sluice_common::Result<()>>>,
}

impl TestServer {
    /// Starts a server on a free loopback port and a fresh data directory.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Config::default()).await
    }

    /// Starts a server with `config`, but on a free loopback port and a
    /// fresh data directory.
    pub async fn start_with(config: Config) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut server = TestServer {
            config: Config {
                listen: "127.0.0.1:0".to_owned(),
                data_dir: dir.path().join("data"),
                ..config
            },
            _dir: dir,
            addr: "127.0.0.1:0".parse()?,
            stop: None,
            task: None,
        };
        server.boot().await?;
        Ok(server)
    }

    async fn boot(&mut self) -> anyhow::Result<()> {
        let server = sluice_server::Server::bind(&self.config).await?;
        self.addr = server.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(server.run(async move {
            let _ = stopped.await;
        })));
        Ok(())
    }

    /// Stops the server (closing every connection) and starts it again on
    /// the same data directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.boot().await
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Connects tokio-postgres to `addr`, driving the connection in the background.
pub async fn connect(addr: SocketAddr) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_as(addr, "sluice", "").await
}

/// Connects as `user` with `password` (empty: none).
pub async fn connect_as(
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut params = format!(
        "host={} port={} user={user} dbname=sluice",
        addr.ip(),
        addr.port()
    );
    if !password.is_empty() {
        params.push_str(&format!(" password={password}"));
    }
    let (client, connection) = tokio_postgres::connect(&params, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}
