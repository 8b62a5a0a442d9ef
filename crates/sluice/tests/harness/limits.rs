//! One client must not take the server from the others (issue 17): a
//! CancelRequest and `statement_timeout` stop a running query, a writer
//! never waits behind one, connections past `max_connections` are refused
//! with 53300, and a connection that never logs in is closed.
//!
//! The timeouts below only detect a hang (the server stopped answering);
//! nothing here measures speed.

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use sluice_common::Config;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

use super::server::{connect, TestServer};

/// Long enough that only a hang exceeds it.
const HANG: Duration = Duration::from_secs(60);

/// A query that runs for hours unless stopped.
const ENDLESS: &str =
    "SELECT count(*) FROM generate_series(1, 1000000000000) AS g(v) WHERE v % 7 = 3";

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_default()
}

/// Cancel and statement_timeout stop a query; meanwhile writes and other
/// queries go on.
pub async fn cancel_and_timeout_stop_queries() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let reader = connect(server.addr()).await?;
    let writer = connect(server.addr()).await?;
    writer
        .batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)")
        .await?;

    let cancel = reader.cancel_token();
    let running = tokio::spawn(async move {
        let result = reader.simple_query(ENDLESS).await;
        (reader, result)
    });
    // The endless query runs; a writer and another query do not wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    timeout(HANG, writer.execute("INSERT INTO t VALUES (1, 'a')", &[]))
        .await
        .context("an INSERT waited behind a running query")??;
    let one: i64 = timeout(HANG, writer.query_one("SELECT count(*) FROM t", &[]))
        .await
        .context("a SELECT waited behind a running query")??
        .get(0);
    ensure!(one == 1, "count(*) = {one}");

    cancel.cancel_query(tokio_postgres::NoTls).await?;
    let (reader, result) = timeout(HANG, running)
        .await
        .context("the canceled query did not stop")??;
    match result {
        Ok(_) => bail!("the endless query finished"),
        Err(e) => ensure!(sqlstate(&e) == "57014", "cancel gave {e:?}"),
    }
    // The canceled session carries on.
    let n: i64 = reader
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    ensure!(n == 1);

    // statement_timeout, in both protocols.
    reader
        .batch_execute("SET statement_timeout = '200ms'")
        .await?;
    let shown: String = reader
        .query_one("SHOW statement_timeout", &[])
        .await?
        .get(0);
    ensure!(shown == "200ms", "SHOW statement_timeout = {shown}");
    for extended in [false, true] {
        let result = if extended {
            timeout(HANG, reader.query(ENDLESS, &[])).await?.map(|_| ())
        } else {
            timeout(HANG, reader.simple_query(ENDLESS))
                .await?
                .map(|_| ())
        };
        match result {
            Ok(()) => bail!("the endless query finished"),
            Err(e) => {
                ensure!(sqlstate(&e) == "57014", "timeout gave {e:?}");
                let message = e.as_db_error().map(|d| d.message().to_owned());
                ensure!(
                    message.as_deref() == Some("canceling statement due to statement timeout"),
                    "timeout message: {message:?}"
                );
            }
        }
    }
    // A write is not stopped by the timeout, and the session is usable.
    reader.execute("INSERT INTO t VALUES (2, 'b')", &[]).await?;
    reader
        .batch_execute("SET statement_timeout TO DEFAULT")
        .await?;
    let shown: String = reader
        .query_one("SHOW statement_timeout", &[])
        .await?
        .get(0);
    ensure!(shown == "0", "SHOW statement_timeout = {shown}");
    let err = reader
        .batch_execute("SET statement_timeout = 'soon'")
        .await
        .err()
        .context("a bad timeout was accepted")?;
    ensure!(sqlstate(&err) == "22023", "{err:?}");

    // The server's default applies to sessions that set none.
    let server = TestServer::start_with(Config {
        statement_timeout_ms: 200,
        ..Config::default()
    })
    .await?;
    let client = connect(server.addr()).await?;
    let err = timeout(HANG, client.simple_query(ENDLESS))
        .await?
        .err()
        .context("the default timeout did not apply")?;
    ensure!(sqlstate(&err) == "57014", "{err:?}");
    Ok(())
}

/// Connects, retrying while the server's connection slots are taken
/// (a closed client's slot frees once the server notices the close).
async fn connect_when_free(addr: std::net::SocketAddr) -> anyhow::Result<tokio_postgres::Client> {
    let mut last = None;
    for _ in 0..200 {
        match connect(addr).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Err(last.context("no attempt")?.into())
}

/// Past `max_connections` a client is refused with 53300 at once; a
/// connection that never logs in is closed after `startup_timeout_ms`.
pub async fn connection_limits() -> anyhow::Result<()> {
    let server = TestServer::start_with(Config {
        max_connections: 3,
        startup_timeout_ms: 300,
        ..Config::default()
    })
    .await?;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(server.addr()).await?);
    }
    let err = timeout(HANG, connect(server.addr()))
        .await?
        .err()
        .context("a fourth connection was accepted")?;
    ensure!(sqlstate(&err) == "53300", "refused with {err:?}");
    // The three still work; once one closes, a new client gets in.
    for client in &open {
        client.simple_query("SELECT 1").await?;
    }
    drop(open.pop());
    let admitted = connect_when_free(server.addr())
        .await
        .context("no slot came free after a client left")?;
    admitted.simple_query("SELECT 1").await?;
    drop(admitted);
    drop(open);

    // A socket that sends nothing is closed; a logged-in idle one is not.
    // (The server frees the slots of the clients just closed as it notices.)
    let idle = connect_when_free(server.addr()).await?;
    let mut silent = tokio::net::TcpStream::connect(server.addr()).await?;
    let mut buf = [0u8; 16];
    let read = timeout(HANG, silent.read(&mut buf))
        .await
        .context("a connection that never logged in stayed open")?;
    ensure!(matches!(read, Ok(0) | Err(_)), "got {read:?}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    idle.simple_query("SELECT 1").await?;
    Ok(())
}

/// Reads backend messages until one of type `until`; returns them all as
/// (type, body).
async fn read_until(
    socket: &mut tokio::net::TcpStream,
    until: u8,
) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; 5];
        if socket.read_exact(&mut head).await.is_err() {
            return Ok(out);
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        socket.read_exact(&mut body).await?;
        out.push((head[0], body));
        if head[0] == until {
            return Ok(out);
        }
    }
}

/// A logged-in raw connection.
pub(super) async fn logged_in(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let mut body = 196608u32.to_be_bytes().to_vec();
    for part in ["user", "sluice", "database", "sluice", ""] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    socket.write_all(&message).await?;
    let messages = timeout(HANG, read_until(&mut socket, b'Z')).await??;
    ensure!(
        messages.last().is_some_and(|m| m.0 == b'Z'),
        "no ReadyForQuery: {messages:?}"
    );
    Ok(socket)
}

/// Malformed Parse and Bind messages (fields longer than the message,
/// counts past its end) close that connection with FATAL 08P01; the server
/// and its other sessions carry on.
pub async fn malformed_messages_close_with_08p01() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await?;
    let other = connect(server.addr()).await?;
    // (what, message type, body)
    let mut bind_huge = vec![0u8, 0, 0, 0, 0, 1];
    bind_huge.extend_from_slice(&i32::MAX.to_be_bytes());
    bind_huge.extend_from_slice(b"abc");
    let cases: Vec<(&str, u8, Vec<u8>)> = vec![
        ("a Bind parameter longer than the message", b'B', bind_huge),
        ("a Bind that ends inside its counts", b'B', vec![0, 0, 0]),
        (
            "a Parse whose type count runs past its end",
            b'P',
            vec![0, b'S', b'E', b'L', 0, 0x7f, 0xff],
        ),
        ("a Parse without its type count", b'P', vec![0, b'x', 0]),
        ("an Execute without its row limit", b'E', vec![0, 0]),
    ];
    for (what, kind, body) in cases {
        let mut socket = logged_in(server.addr()).await?;
        let mut message = vec![kind];
        message.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        message.extend_from_slice(&body);
        message.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        socket.write_all(&message).await?;
        let replies = timeout(HANG, read_until(&mut socket, b'E'))
            .await
            .with_context(|| format!("{what}: no answer"))??;
        let error = replies
            .iter()
            .find(|m| m.0 == b'E')
            .with_context(|| format!("{what}: no ErrorResponse, got {replies:?}"))?;
        let text = String::from_utf8_lossy(&error.1);
        ensure!(text.contains("C08P01"), "{what}: {text}");
        ensure!(text.contains("SFATAL"), "{what}: {text}");
        // The server closed this connection.
        let mut rest = Vec::new();
        let closed = timeout(HANG, socket.read_to_end(&mut rest)).await?;
        ensure!(closed.is_ok() || rest.is_empty(), "{what}: still open");
    }
    // The other session, and new ones, are unaffected.
    other.simple_query("SELECT 1").await?;
    connect(server.addr())
        .await?
        .simple_query("SELECT 1")
        .await?;
    Ok(())
}
