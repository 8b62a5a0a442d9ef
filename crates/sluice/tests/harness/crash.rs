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

async fn spawn(
    data_dir: &Path,
    checkpoint_interval_ms: u64,
) -> anyhow::Result<(Child, tokio_postgres::Client)> {
    let (child, client, _) = spawn_at(data_dir, checkpoint_interval_ms).await?;
    Ok((child, client))
}

/// Starts `sluice serve` on a free port; returns it, a client, and the
/// address.
pub(super) async fn spawn_at(
    data_dir: &Path,
    checkpoint_interval_ms: u64,
) -> anyhow::Result<(Child, tokio_postgres::Client, SocketAddr)> {
    let addr = free_port()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--checkpoint-interval-ms")
        .arg(checkpoint_interval_ms.to_string())
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start sluice serve")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match connect(addr).await {
            Ok(client) => return Ok((child, client, addr)),
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
    // No periodic checkpoint before the kill: what the views have not
    // checkpointed must come back from the changelog.
    let (mut child, client) = spawn(dir.path(), 3_600_000).await?;
    client
        .batch_execute(
            "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT);
             CREATE STREAM clicks (user_id BIGINT, ts TIMESTAMP,
                                   WATERMARK FOR ts AS ts - INTERVAL '5 seconds');
             CREATE MATERIALIZED VIEW names AS
               SELECT name, count(*) AS n, max(id) AS top FROM users GROUP BY name;
             CREATE MATERIALIZED VIEW clicks_per_user AS
               SELECT u.name, count(*) AS clicks FROM clicks c JOIN users u ON c.user_id = u.id
               GROUP BY u.name;",
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
    // Checkpointed; what follows is not.
    client.batch_execute("FLUSH").await?;
    client
        .batch_execute(
            "INSERT INTO users SELECT value + 100, 'bulk' FROM generate_series(1, 1000);
             UPDATE users SET name = 'renamed' WHERE id = 7;
             DELETE FROM users WHERE id = 8;
             INSERT INTO clicks VALUES (1, '2024-05-01 10:00:00'), (7, '2024-05-01 10:00:01');",
        )
        .await?;
    child.kill().await.context("kill -9")?;

    let (_child, client) = spawn(dir.path(), 1000).await?;
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
    // The views hold what they held, and equal their queries.
    let view = client
        .query("SELECT name, n, top FROM names ORDER BY name", &[])
        .await?;
    let batch = client
        .query(
            "SELECT name, count(*) AS n, max(id) AS top FROM users GROUP BY name ORDER BY name",
            &[],
        )
        .await?;
    ensure!(
        view.len() == batch.len() && view.len() == 50,
        "names view: {} rows",
        view.len()
    );
    for (v, b) in view.iter().zip(&batch) {
        let (vn, vc, vt): (String, i64, i64) = (v.get(0), v.get(1), v.get(2));
        let (bn, bc, bt): (String, i64, i64) = (b.get(0), b.get(1), b.get(2));
        ensure!(
            (vn.clone(), vc, vt) == (bn, bc, bt),
            "view row {vn} differs after the crash"
        );
    }
    let clicks = client
        .query(
            "SELECT name, clicks FROM clicks_per_user ORDER BY name",
            &[],
        )
        .await?;
    let got: Vec<(String, i64)> = clicks.iter().map(|r| (r.get(0), r.get(1))).collect();
    ensure!(
        got == vec![("renamed".to_owned(), 1), ("user 1".to_owned(), 1)],
        "clicks_per_user after the crash: {got:?}"
    );
    // And they keep following their inputs.
    client
        .batch_execute("INSERT INTO clicks VALUES (1, '2024-05-01 10:00:02'); FLUSH")
        .await?;
    let n: i64 = client
        .query_one(
            "SELECT clicks FROM clicks_per_user WHERE name = 'user 1'",
            &[],
        )
        .await?
        .get(0);
    ensure!(n == 2, "the view stopped following its stream: {n}");
    let streams = client.simple_query("SHOW STREAMS").await?;
    ensure!(
        streams.iter().any(|m| matches!(m,
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("clicks"))),
        "stream definition lost"
    );
    Ok(())
}
