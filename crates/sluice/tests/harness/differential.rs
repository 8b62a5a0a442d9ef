//! The differential test: seeded random inserts, updates and deletes into
//! tables; after every FLUSH, each materialized view must hold exactly what
//! DataFusion computes for the same SQL as a batch query over the tables.
//!
//! `SLUICE_DIFF_STEPS` (default 120) and `SLUICE_DIFF_SEED` (default 42)
//! make longer runs: `SLUICE_DIFF_STEPS=2000 cargo test -p sluice --test
//! sqllogictests -- differential`.

use anyhow::{bail, Context};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::server::{connect, TestServer};

/// Views and, where it differs, the batch query that must equal them.
const VIEWS: &[(&str, &str)] = &[
    ("v_groups", "SELECT g, count(*) AS n, sum(v) AS sv, min(v) AS mn, max(v) AS mx, count(DISTINCT s) AS ds, avg(v) AS av FROM a GROUP BY g"),
    ("v_inner", "SELECT a.id, a.g, b.w FROM a JOIN b ON a.id = b.a_id"),
    ("v_left", "SELECT a.id, b.id AS bid, b.w FROM a LEFT JOIN b ON a.id = b.a_id"),
    ("v_right", "SELECT a.id, b.id AS bid FROM a RIGHT JOIN b ON a.id = b.a_id"),
    ("v_full", "SELECT a.id, b.id AS bid FROM a FULL JOIN b ON a.id = b.a_id AND b.w > a.v"),
    ("v_top", "SELECT id, v FROM a ORDER BY v DESC, id LIMIT 3"),
    ("v_join_agg", "SELECT a.g, sum(b.w) AS total, count(*) AS n FROM a JOIN b ON a.id = b.a_id GROUP BY a.g"),
    ("v_distinct", "SELECT DISTINCT s FROM a"),
    ("v_union", "SELECT id FROM a WHERE v > 50 UNION ALL SELECT a_id FROM b WHERE w < 30"),
    ("v_first", "SELECT g, id FROM (SELECT g, id, ROW_NUMBER() OVER (PARTITION BY g ORDER BY v DESC, id) AS rn FROM a) t WHERE rn = 1"),
    ("v_global", "SELECT count(*) AS n, max(w) AS mw FROM b"),
];

/// Views over the stream `e`, and the same query over `e_mirror`, a table
/// that receives the same rows (a stream cannot be queried ad hoc).
const STREAM_VIEWS: &[(&str, &str, &str)] = &[
    (
        "vs_groups",
        "SELECT k, count(*) AS n, sum(x) AS sx, min(x) AS mn, max(x) AS mx FROM e GROUP BY k",
        "SELECT k, count(*) AS n, sum(x) AS sx, min(x) AS mn, max(x) AS mx FROM e_mirror GROUP BY k",
    ),
    (
        "vs_global",
        "SELECT count(*) AS n, max(x) AS mx FROM e WHERE x > 10",
        "SELECT count(*) AS n, max(x) AS mx FROM e_mirror WHERE x > 10",
    ),
    (
        "vs_distinct",
        "SELECT k, count(DISTINCT x) AS dx FROM e GROUP BY k",
        "SELECT k, count(DISTINCT x) AS dx FROM e_mirror GROUP BY k",
    ),
    // Windows over in-order event time, against date_bin over all rows.
    (
        "vs_tumble",
        "SELECT window_start, window_end, k, count(*) AS n, sum(x) AS sx \
         FROM TUMBLE(e, ts, INTERVAL '5 seconds') GROUP BY window_start, window_end, k",
        "SELECT date_bin(INTERVAL '5 seconds', ts, TIMESTAMP '1970-01-01 00:00:00') AS ws, \
                date_bin(INTERVAL '5 seconds', ts, TIMESTAMP '1970-01-01 00:00:00') + INTERVAL '5 seconds' AS we, \
                k, count(*) AS n, sum(x) AS sx FROM e_mirror \
         GROUP BY date_bin(INTERVAL '5 seconds', ts, TIMESTAMP '1970-01-01 00:00:00'), k",
    ),
    (
        "vs_tumble_closed",
        "SELECT window_end, k, max(x) AS mx FROM TUMBLE(e, ts, INTERVAL '5 seconds') \
         GROUP BY window_start, window_end, k EMIT ON WINDOW CLOSE",
        "SELECT we, k, mx FROM (SELECT date_bin(INTERVAL '5 seconds', ts, TIMESTAMP '1970-01-01 00:00:00') + INTERVAL '5 seconds' AS we, \
                k, max(x) AS mx FROM e_mirror \
                GROUP BY date_bin(INTERVAL '5 seconds', ts, TIMESTAMP '1970-01-01 00:00:00'), k) w \
         WHERE we <= (SELECT max(ts) FROM e_mirror)",
    ),
    (
        "vs_hop",
        "SELECT window_start, k, count(*) AS n FROM HOP(e, ts, INTERVAL '2 seconds', INTERVAL '6 seconds') \
         GROUP BY window_start, window_end, k",
        "SELECT ws, k, count(*) AS n FROM ( \
           SELECT date_bin(INTERVAL '2 seconds', ts, TIMESTAMP '1970-01-01 00:00:00') AS ws, k FROM e_mirror \
           UNION ALL SELECT date_bin(INTERVAL '2 seconds', ts, TIMESTAMP '1970-01-01 00:00:00') - INTERVAL '2 seconds', k FROM e_mirror \
           UNION ALL SELECT date_bin(INTERVAL '2 seconds', ts, TIMESTAMP '1970-01-01 00:00:00') - INTERVAL '4 seconds', k FROM e_mirror) h \
         GROUP BY ws, k",
    ),
    // The Session operator against DataFusion's window functions in batch.
    (
        "vs_session",
        "SELECT window_start, window_end, k, count(*) AS n, sum(x) AS sx \
         FROM SESSION(e, ts, INTERVAL '3 seconds') GROUP BY window_start, window_end, k",
        "SELECT window_start, window_end, k, count(*) AS n, sum(x) AS sx \
         FROM SESSION(e_mirror, ts, INTERVAL '3 seconds') GROUP BY window_start, window_end, k",
    ),
];

/// Views over views, with their batch equivalent.
const VIEWS_ON_VIEWS: &[(&str, &str, &str)] = &[
    (
        "vv_busy",
        "SELECT g, n FROM v_groups WHERE n > 1",
        "SELECT g, n FROM (SELECT g, count(*) AS n FROM a GROUP BY g) x WHERE n > 1",
    ),
    (
        "vv_join",
        "SELECT v.g, j.total FROM v_groups v JOIN v_join_agg j ON v.g = j.g",
        "SELECT x.g, y.total FROM (SELECT g FROM a GROUP BY g) x JOIN (SELECT a.g, sum(b.w) AS total FROM a JOIN b ON a.id = b.a_id GROUP BY a.g) y ON x.g = y.g",
    ),
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn rows(client: &Client, sql: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for message in client
        .simple_query(sql)
        .await
        .with_context(|| sql.to_owned())?
    {
        if let SimpleQueryMessage::Row(row) = message {
            let cells: Vec<String> = (0..row.len())
                .map(|i| row.get(i).unwrap_or("NULL").to_owned())
                .collect();
            out.push(cells.join("|"));
        }
    }
    out.sort();
    Ok(out)
}

fn random_statement(rng: &mut Rng, step: usize) -> String {
    let text = ["x", "y", "z"];
    match rng.below(12) {
        10..=11 => {
            let (k, x) = (rng.below(4), rng.below(40));
            let k = if rng.below(10) == 0 {
                "NULL".to_owned()
            } else {
                k.to_string()
            };
            // In event-time order: one second per step.
            let ts = format!(
                "2024-01-01 {:02}:{:02}:{:02}",
                step / 3600,
                step / 60 % 60,
                step % 60
            );
            format!(
                "INSERT INTO e VALUES ({k}, {x}, '{ts}'); \
                 INSERT INTO e_mirror VALUES ({step}, {k}, {x}, '{ts}')"
            )
        }
        0..=3 => {
            let n = 1 + rng.below(3);
            let values: Vec<String> = (0..n)
                .map(|_| {
                    let s = text[rng.below(3) as usize];
                    let s = if rng.below(8) == 0 {
                        "NULL".to_owned()
                    } else {
                        format!("'{s}'")
                    };
                    format!(
                        "({}, {}, {}, {s})",
                        rng.below(20),
                        rng.below(5),
                        rng.below(100)
                    )
                })
                .collect();
            format!("INSERT INTO a VALUES {}", values.join(", "))
        }
        4..=5 => format!(
            "INSERT INTO b VALUES ({}, {}, {})",
            rng.below(30),
            rng.below(22),
            rng.below(60)
        ),
        6 => format!(
            "UPDATE a SET v = v + {} WHERE g = {}",
            rng.below(30),
            rng.below(5)
        ),
        7 => format!(
            "UPDATE b SET a_id = {} WHERE id % 7 = {}",
            rng.below(22),
            rng.below(7)
        ),
        8 => format!(
            "DELETE FROM a WHERE id % 5 = {} AND v < {}",
            rng.below(5),
            rng.below(100)
        ),
        _ => format!("DELETE FROM b WHERE w > {}", 30 + rng.below(40)),
    }
}

/// Runs the random steps and compares every view after each FLUSH.
pub async fn random_changes_match_batch() -> anyhow::Result<()> {
    let steps: usize = std::env::var("SLUICE_DIFF_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let seed: u64 = std::env::var("SLUICE_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(42);
    let server = TestServer::start().await?;
    let client = connect(server.addr()).await?;
    client
        .batch_execute(
            "CREATE TABLE a (id BIGINT PRIMARY KEY, g BIGINT, v BIGINT, s TEXT);
             CREATE TABLE b (id BIGINT PRIMARY KEY, a_id BIGINT, w BIGINT);
             CREATE STREAM e (k BIGINT, x BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts);
             CREATE TABLE e_mirror (id BIGINT PRIMARY KEY, k BIGINT, x BIGINT, ts TIMESTAMP);
             INSERT INTO a VALUES (1, 1, 10, 'x'), (2, 1, 20, 'y'), (3, 2, 30, NULL);
             INSERT INTO b VALUES (1, 1, 5), (2, 3, 50);",
        )
        .await?;
    for (name, sql) in VIEWS {
        client
            .batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {sql}"))
            .await
            .with_context(|| format!("creating {name}"))?;
    }
    for (name, sql, _) in STREAM_VIEWS.iter().chain(VIEWS_ON_VIEWS) {
        client
            .batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {sql}"))
            .await
            .with_context(|| format!("creating {name}"))?;
    }
    let mut rng = Rng(seed.max(1));
    for step in 0..steps {
        let statement = random_statement(&mut rng, step);
        client
            .batch_execute(&statement)
            .await
            .with_context(|| format!("step {step}: {statement}"))?;
        if step % 3 != 2 && step + 1 != steps {
            continue;
        }
        client.batch_execute("FLUSH").await?;
        let checks = VIEWS.iter().map(|(name, sql)| (*name, *sql)).chain(
            STREAM_VIEWS
                .iter()
                .chain(VIEWS_ON_VIEWS)
                .map(|(name, _, batch)| (*name, *batch)),
        );
        for (name, batch) in checks {
            let view = rows(&client, &format!("SELECT * FROM {name}")).await?;
            let expected = rows(&client, batch).await?;
            if view != expected {
                bail!(
                    "seed {seed}, step {step} ({statement}): view {name} differs from its batch query\n  view:  {view:?}\n  batch: {expected:?}"
                );
            }
        }
    }
    Ok(())
}
