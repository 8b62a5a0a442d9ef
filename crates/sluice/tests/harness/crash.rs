//! `kill -9` of a real `sluice serve` process loses no acknowledged INSERT
//! and no definition.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use tokio::process::{Child, Command};

use super::server::connect;

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn spawn(data_dir: &Path) -> anyhow::Result<(Child, tokio_postgres::Client)> {
    let addr = free_port()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start sluice serve")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match connect(addr).await {
            Ok(client) => return Ok((child, client)),
            Err(e) if Instant::now() > deadline => bail!("sluice did not come up: {e}"),
            Err(_) => {
                if let Some(status) = child.try_wait()? {
                    bail!("sluice serve exited early: {status}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub async fn kill_9_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut child, client) = spawn(dir.path()).await?;
    client
        .batch_execute(
            "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT);
             CREATE STREAM clicks (user_id BIGINT, ts TIMESTAMP,
                                   WATERMARK FOR ts AS ts - INTERVAL '5 seconds');",
        )
        .await?;
    // One statement per row (each acknowledged on its own), then a bulk one.
    for id in 1..=50i64 {
        client
            .execute(
                "INSERT INTO users VALUES ($1, $2)",
                &[&id, &format!("user {id}")],
            )
            .await?;
    }
    client
        .batch_execute(
            "INSERT INTO users SELECT value + 100, 'bulk' FROM generate_series(1, 1000);
             UPDATE users SET name = 'renamed' WHERE id = 7;
             DELETE FROM users WHERE id = 8;
             INSERT INTO clicks VALUES (1, '2024-05-01 10:00:00');",
        )
        .await?;
    child.kill().await.context("kill -9")?;

    let (_child, client) = spawn(dir.path()).await?;
    let row = client
        .query_one("SELECT count(*), sum(id) FROM users", &[])
        .await?;
    let (count, sum): (i64, i64) = (row.get(0), row.get(1));
    let expected_sum: i64 = (1..=50).sum::<i64>() - 8 + (101..=1100).sum::<i64>();
    ensure!(
        count == 1049,
        "expected 1049 users after the crash, found {count}"
    );
    ensure!(
        sum == expected_sum,
        "expected id sum {expected_sum}, found {sum}"
    );
    let name: String = client
        .query_one("SELECT name FROM users WHERE id = 7", &[])
        .await?
        .get(0);
    ensure!(name == "renamed", "update lost: {name}");
    let streams = client.simple_query("SHOW STREAMS").await?;
    ensure!(
        streams.iter().any(|m| matches!(m,
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("clicks"))),
        "stream definition lost"
    );
    Ok(())
}
