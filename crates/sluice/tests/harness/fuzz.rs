//! A seeded fuzzer against a real `sluice serve` process (issue 17): random
//! statements over a small schema (expressions of every depth, windows of
//! every size, views, writes, garbage) and random protocol messages. It
//! fails on a crash (the process exits), a hang (no answer within
//! [`HANG`]), or an internal error (SQLSTATE XX000, which includes a panic
//! caught in a statement); at the end the server must answer `SELECT 1`.
//!
//! ```text
//! SLUICE_FUZZ_SECONDS=1800 SLUICE_FUZZ_SEED=7 cargo test -p sluice --test sqllogictests -- fuzz
//! ```
//!
//! Defaults: 60 seconds, seed 1. The counts by SQLSTATE are printed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::crash::spawn_at;
use super::limits::logged_in;

/// No statement may take longer to answer (queries are bounded by a
/// 5-second statement_timeout).
const HANG: Duration = Duration::from_secs(60);

/// SplitMix64: small, seeded, good enough to pick grammar branches.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const SCHEMA: &str = "
    CREATE TABLE ft (id BIGINT PRIMARY KEY, x BIGINT, y DOUBLE PRECISION, s TEXT, d NUMERIC(6,2), ts TIMESTAMP);
    CREATE STREAM fs (id BIGINT, x BIGINT, s TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5 seconds');
    INSERT INTO ft VALUES (1, 10, 1.5, 'a', 1.25, '2024-01-01 00:00:00'), (2, -3, -0.5, 'bb', 99.99, '2024-01-01 00:00:07');
    SET statement_timeout = '5s';";

const NUMERIC_COLUMNS: &[&str] = &["id", "x", "y", "d"];
const INTEGERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "7",
    "2147483647",
    "-2147483648",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999",
    "NULL",
];
const FLOATS: &[&str] = &[
    "0.0",
    "-0.0",
    "1.5",
    "1e308",
    "-1e308",
    "'NaN'::double precision",
    "1e-320",
];
const STRINGS: &[&str] = &[
    "''",
    "'a'",
    "'it''s'",
    "'héllo'",
    "'{\"k\": 1}'",
    "NULL",
    "'%'",
    "'\\x00'",
];
const INTERVALS: &[&str] = &[
    "INTERVAL '1 second'",
    "INTERVAL '2 seconds'",
    "INTERVAL '1 minute'",
    "INTERVAL '10 minutes'",
    "INTERVAL '1 hour'",
    "INTERVAL '1 day'",
    "INTERVAL '1 millisecond'",
    "INTERVAL '0 seconds'",
    "INTERVAL '-1 second'",
    "INTERVAL '1 month'",
    "INTERVAL '3 seconds'",
];

fn number(rng: &mut Rng, depth: usize) -> String {
    if depth == 0 || rng.chance(30) {
        return match rng.below(3) {
            0 => rng.pick(NUMERIC_COLUMNS).to_string(),
            1 => rng.pick(INTEGERS).to_string(),
            _ => rng.pick(FLOATS).to_string(),
        };
    }
    let d = depth - 1;
    match rng.below(10) {
        0 => format!("abs({})", number(rng, d)),
        1 => format!("sqrt({})", number(rng, d)),
        2 => format!("ln({})", number(rng, d)),
        3 => format!(
            "CAST({} AS {})",
            number(rng, d),
            rng.pick(&[
                "INT",
                "SMALLINT",
                "BIGINT",
                "NUMERIC(4,1)",
                "DOUBLE PRECISION",
                "TEXT"
            ])
        ),
        4 => format!("coalesce({}, {})", number(rng, d), number(rng, d)),
        5 => format!(
            "CASE WHEN {} THEN {} ELSE {} END",
            predicate(rng, d),
            number(rng, d),
            number(rng, d)
        ),
        6 => format!("length({})", text(rng, d)),
        _ => format!(
            "({} {} {})",
            number(rng, d),
            rng.pick(&["+", "-", "*", "/", "%"]),
            number(rng, d)
        ),
    }
}

fn text(rng: &mut Rng, depth: usize) -> String {
    if depth == 0 || rng.chance(40) {
        return if rng.chance(50) {
            "s".to_owned()
        } else {
            rng.pick(STRINGS).to_string()
        };
    }
    let d = depth - 1;
    match rng.below(5) {
        0 => format!("upper({})", text(rng, d)),
        1 => format!("({} || {})", text(rng, d), text(rng, d)),
        2 => format!(
            "substr({}, {}, {})",
            text(rng, d),
            rng.pick(INTEGERS),
            rng.pick(&["1", "3", "0", "-1"])
        ),
        3 => format!(
            "repeat({}, {})",
            text(rng, d),
            rng.pick(&["0", "3", "100", "-2"])
        ),
        _ => format!("CAST({} AS TEXT)", number(rng, d)),
    }
}

fn predicate(rng: &mut Rng, depth: usize) -> String {
    let d = depth.saturating_sub(1);
    match rng.below(5) {
        0 if depth > 0 => format!(
            "({} {} {})",
            predicate(rng, d),
            rng.pick(&["AND", "OR"]),
            predicate(rng, d)
        ),
        1 => format!("{} IS NULL", number(rng, d)),
        2 => format!("{} LIKE {}", text(rng, d), rng.pick(STRINGS)),
        _ => format!(
            "{} {} {}",
            number(rng, d),
            rng.pick(&["=", "<", ">=", "<>"]),
            number(rng, d)
        ),
    }
}

/// `a op a op ... op a`, `n` terms: deep left-nested trees.
fn chain(rng: &mut Rng) -> String {
    let n = *rng.pick(&[2usize, 50, 150, 199, 201, 400, 1000, 3000]);
    let term = rng.pick(&["x", "1", "y"]).to_string();
    let op = rng.pick(&[" + ", " * ", " - "]).to_string();
    vec![term; n].join(&op)
}

fn window(rng: &mut Rng, source: &str) -> String {
    let a = rng.pick(INTERVALS);
    let b = rng.pick(INTERVALS);
    match rng.below(4) {
        0 => format!("TUMBLE({source}, ts, {a})"),
        1 => format!("HOP({source}, ts, {a}, {b})"),
        2 => format!("CUMULATE({source}, ts, {a}, {b})"),
        _ => format!("SESSION({source}, ts, {a})"),
    }
}

fn query(rng: &mut Rng, source: &str) -> String {
    let depth = rng.below(5);
    match rng.below(8) {
        0 => format!("SELECT {} FROM {source}", chain(rng)),
        1 => format!(
            "SELECT window_start, window_end, count(*) AS n, sum(x) AS total FROM {} GROUP BY window_start, window_end",
            window(rng, source)
        ),
        2 => format!(
            "SELECT window_start AS ws, x, count(*) FROM {} GROUP BY window_start, x",
            window(rng, source)
        ),
        3 => format!(
            "SELECT s, count(*) AS n, max({}) AS m FROM {source} WHERE {} GROUP BY s",
            number(rng, depth),
            predicate(rng, depth)
        ),
        4 => {
            let n = *rng.pick(&[2usize, 20, 199, 250, 1000]);
            vec![format!("SELECT id, x FROM {source}"); n].join(" UNION ALL ")
        }
        5 => format!(
            "SELECT a.id, b.x FROM {source} a JOIN ft b ON a.id = b.id WHERE {}",
            predicate(rng, depth)
        ),
        _ => format!(
            "SELECT {}, {} FROM {source} WHERE {}",
            number(rng, depth),
            text(rng, depth),
            predicate(rng, depth)
        ),
    }
}

/// Drops a token, doubles one, or cuts the statement short.
fn mangle(rng: &mut Rng, sql: &str) -> String {
    let words: Vec<&str> = sql.split_whitespace().collect();
    if words.len() < 2 {
        return sql.to_owned();
    }
    let at = rng.below(words.len());
    let mut out: Vec<&str> = words.clone();
    match rng.below(3) {
        0 => {
            out.remove(at);
        }
        1 => out.insert(at, words[at]),
        _ => out.truncate(at.max(1)),
    }
    out.join(" ")
}

fn statement(rng: &mut Rng, views: &mut Vec<String>, next_view: &mut usize) -> String {
    let sql = match rng.below(12) {
        0..=2 => query(rng, "ft"),
        3 | 4 => {
            let name = format!("fv{next_view}");
            *next_view += 1;
            let source = if rng.chance(60) { "fs" } else { "ft" };
            let sql = format!("CREATE MATERIALIZED VIEW {name} AS {}", query(rng, source));
            views.push(name);
            sql
        }
        5 => match views.is_empty() {
            true => "FLUSH".to_owned(),
            false => {
                let name = views.remove(rng.below(views.len()));
                format!("DROP MATERIALIZED VIEW IF EXISTS {name} CASCADE")
            }
        },
        6 | 7 => format!(
            "INSERT INTO fs VALUES ({}, {}, {}, TIMESTAMP '2024-01-01 00:00:00' + INTERVAL '{} seconds')",
            rng.pick(INTEGERS),
            rng.pick(INTEGERS),
            rng.pick(STRINGS),
            rng.below(3600)
        ),
        8 => format!(
            "INSERT INTO ft VALUES ({}, {}, {}, {}, {}, TIMESTAMP '2024-01-01 00:00:00' + INTERVAL '{} seconds')",
            rng.below(50),
            rng.pick(INTEGERS),
            rng.pick(FLOATS),
            rng.pick(STRINGS),
            rng.pick(&["1.5", "9999.99", "12345678.5", "NULL", "-0.01"]),
            rng.below(3600)
        ),
        9 => format!("UPDATE ft SET x = {} WHERE {}", number(rng, 2), predicate(rng, 2)),
        10 => match views.last() {
            Some(v) => format!("SELECT * FROM {v} LIMIT 5"),
            None => "FLUSH".to_owned(),
        },
        _ => format!("DELETE FROM ft WHERE {}", predicate(rng, 2)),
    };
    if rng.chance(8) {
        mangle(rng, &sql)
    } else {
        sql
    }
}

/// A random frontend message: a real type byte, a body that lies about
/// its fields.
fn garbage(rng: &mut Rng) -> Vec<u8> {
    let kind = *rng.pick(b"PBEDCSHQdfc");
    let len = rng.below(40);
    let mut body: Vec<u8> = (0..len).map(|_| (rng.next() & 0xff) as u8).collect();
    if rng.chance(50) {
        // Plausible strings first, then numbers.
        body.splice(0..0, b"\0SELECT 1\0".iter().copied());
    }
    let mut message = vec![kind];
    let declared = if rng.chance(10) {
        rng.below(8) as u32
    } else {
        (body.len() + 4) as u32
    };
    message.extend_from_slice(&declared.to_be_bytes());
    message.extend_from_slice(&body);
    message.extend_from_slice(&[b'S', 0, 0, 0, 4]);
    message
}

/// Sends one garbage message; the server may answer or close, but must
/// answer within [`HANG`] and must not send an internal error.
async fn protocol_case(
    addr: std::net::SocketAddr,
    message: &[u8],
) -> anyhow::Result<Option<String>> {
    let mut socket = logged_in(addr).await?;
    socket.write_all(message).await?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match timeout(HANG, socket.read(&mut buf)).await {
            Err(_) => bail!("no answer to a garbage message {message:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                reply.extend_from_slice(&buf[..n]);
                if reply.ends_with(&[b'Z', 0, 0, 0, 5, b'I'])
                    || reply.ends_with(&[b'Z', 0, 0, 0, 5, b'E'])
                {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&reply);
    if text.contains("CXX000") {
        bail!("an internal error for garbage message {message:?}: {text}");
    }
    // The SQLSTATE field of an ErrorResponse: `C` after a field's NUL.
    Ok(text
        .find("\0C")
        .and_then(|at| text.get(at + 2..at + 7))
        .map(str::to_owned))
}

pub async fn random_statements_never_break_the_server() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("SLUICE_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let dir = tempfile::tempdir()?;
    let (mut child, client, addr) = spawn_at(dir.path(), 200).await?;
    client
        .batch_execute(SCHEMA)
        .await
        .context("the fuzz schema")?;
    let mut rng = Rng(seed);
    let mut views = Vec::new();
    let mut next_view = 0;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut statements = 0u64;
    while Instant::now() < deadline {
        statements += 1;
        if rng.chance(10) {
            let message = garbage(&mut rng);
            let code = protocol_case(addr, &message).await?;
            *counts
                .entry(format!(
                    "protocol {}",
                    code.unwrap_or_else(|| "ok/closed".into())
                ))
                .or_default() += 1;
        } else {
            let sql = statement(&mut rng, &mut views, &mut next_view);
            let result = if rng.chance(50) {
                timeout(HANG, client.simple_query(&sql))
                    .await
                    .map(|r| r.map(|_| ()))
            } else {
                timeout(HANG, client.query(&sql, &[]))
                    .await
                    .map(|r| r.map(|_| ()))
            };
            let code = match result {
                Err(_) => bail!("seed {seed}: no answer within {HANG:?} to: {sql}"),
                Ok(Ok(())) => "ok".to_owned(),
                Ok(Err(e)) => match e.code() {
                    Some(code) if code.code() == "XX000" => {
                        bail!("seed {seed}: internal error {e:?} for: {sql}")
                    }
                    Some(code) => code.code().to_owned(),
                    None => {
                        if let Some(status) = child.try_wait()? {
                            bail!("seed {seed}: the server exited ({status}) at: {sql}");
                        }
                        bail!("seed {seed}: the connection broke ({e}) at: {sql}");
                    }
                },
            };
            *counts.entry(code).or_default() += 1;
        }
        if let Some(status) = child.try_wait()? {
            bail!("seed {seed}: the server exited ({status})");
        }
    }
    let one = timeout(HANG, client.query_one("SELECT 1", &[]))
        .await
        .context("the server stopped answering")??;
    anyhow::ensure!(one.get::<_, i64>(0) == 1);
    println!("fuzz: seed {seed}, {seconds} s, {statements} statements, by SQLSTATE: {counts:?}");
    child.kill().await.ok();
    Ok(())
}
