//! The planner's translations, one plan shape a row: the SQL of a view and
//! the operator tree `EXPLAIN CREATE MATERIALIZED VIEW` prints for it; then
//! the shapes it refuses, with their SQLSTATE.

use std::sync::Arc;

use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::prelude::{SessionConfig, SessionContext};
use sluice_catalog::{Catalog, SluiceSchema};
use sluice_sql::Statement;
use sluice_state::MemoryBackend;

use crate::Planner;

const RELATIONS: &[&str] = &[
    "CREATE STREAM clicks (user_id BIGINT, url TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts)",
    "CREATE STREAM orders (id BIGINT, user_id BIGINT, currency TEXT, amount NUMERIC(10,2), \
     ts TIMESTAMP, WATERMARK FOR ts AS ts)",
    "CREATE STREAM untimed (id BIGINT, user_id BIGINT, v BIGINT)",
    "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT, country TEXT)",
    "CREATE TABLE accounts (id BIGINT PRIMARY KEY, user_id BIGINT, balance BIGINT)",
    "CREATE TABLE rates (currency TEXT PRIMARY KEY, rate NUMERIC(10,2), updated_at TIMESTAMP, \
     WATERMARK FOR updated_at AS updated_at)",
];

async fn planner() -> Planner {
    let catalog = Catalog::open(Arc::new(MemoryBackend::new())).expect("catalog");
    for sql in RELATIONS {
        match sluice_sql::parse(sql).expect("parses").remove(0) {
            Statement::CreateRelation(c) => {
                catalog.create(&c).await.expect("created");
            }
            _ => panic!("not a CREATE: {sql}"),
        }
    }
    let config = SessionConfig::new().with_default_catalog_and_schema("sluice", "public");
    let ctx = SessionContext::new_with_config(config);
    let provider = MemoryCatalogProvider::new();
    provider
        .register_schema("public", Arc::new(SluiceSchema::new(catalog.clone())))
        .expect("schema");
    ctx.register_catalog("sluice", Arc::new(provider));
    Planner::new(catalog, ctx)
}

fn create_view(sql: &str) -> sluice_sql::CreateView {
    match sluice_sql::parse(&format!("CREATE MATERIALIZED VIEW v AS {sql}"))
        .expect("parses")
        .remove(0)
    {
        Statement::CreateView(c) => *c,
        _ => panic!("not a view: {sql}"),
    }
}

/// (shape, the view's query, its operators as EXPLAIN prints them below
/// `Materialize: v`).
const SHAPES: &[(&str, &str, &str)] = &[
    (
        "filter and project",
        "SELECT user_id, upper(url) AS u FROM clicks WHERE user_id > 10",
        r#"
Project: clicks.user_id, upper(clicks.url) AS u (stateless)
  Filter: clicks.user_id > Int64(10) (stateless)
    Scan: clicks (stateless)
      Source: stream clicks
"#,
    ),
    (
        "group by on a stream",
        "SELECT user_id, count(*) AS n, sum(amount) AS total FROM orders GROUP BY user_id",
        r#"
Project: orders.user_id, count(Int64(1)) AS count(*) AS n, sum(orders.amount) AS total (stateless)
  GroupBy: [orders.user_id] aggregates [count(Int64(1)), sum(orders.amount)] (state: output row per group, merged with each change)
    Scan: orders (stateless)
      Source: stream orders
"#,
    ),
    (
        "global aggregate",
        "SELECT count(*) AS n FROM orders",
        r#"
Project: count(Int64(1)) AS count(*) AS n (stateless)
  GroupBy: [] aggregates [count(Int64(1))] (state: output row per group, merged with each change)
    Scan: orders (stateless)
      Source: stream orders
"#,
    ),
    (
        "group by with extremes",
        "SELECT user_id, max(amount) AS top, min(amount) AS low FROM orders GROUP BY user_id",
        r#"
Project: orders.user_id, max(orders.amount) AS top, min(orders.amount) AS low (stateless)
  GroupBy: [orders.user_id] aggregates [max(orders.amount), min(orders.amount)] (state: output row per group, merged with each change)
    Scan: orders (stateless)
      Source: stream orders
"#,
    ),
    (
        "group by on a table (retractions)",
        "SELECT country, count(*) AS n FROM users GROUP BY country",
        r#"
Project: users.country, count(Int64(1)) AS count(*) AS n (stateless)
  GroupBy: [users.country] aggregates [count(Int64(1))] (state: running totals per group)
    Scan: users (stateless)
      Source: table users
"#,
    ),
    (
        "distinct",
        "SELECT DISTINCT country FROM users",
        r#"
GroupBy: [users.country] aggregates [] (state: running totals per group)
  Scan: users (stateless)
    Source: table users
"#,
    ),
    (
        "count distinct",
        "SELECT user_id, count(DISTINCT url) AS urls FROM clicks GROUP BY user_id",
        r#"
Project: clicks.user_id, count(alias1) AS urls (stateless)
  GroupBy: [clicks.user_id] aggregates [count(alias1)] (state: running totals per group)
    GroupBy: [clicks.user_id, clicks.url AS alias1] aggregates [] (state: output row per group, merged with each change)
      Scan: clicks (stateless)
        Source: stream clicks
"#,
    ),
    (
        "tumble",
        "SELECT window_start, window_end, user_id, count(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '1 minute') GROUP BY window_start, window_end, user_id",
        r#"
Project: clicks.window_start, clicks.window_end, clicks.user_id, count(Int64(1)) AS count(*) AS n (stateless)
  GroupBy: [clicks.window_start, clicks.window_end, clicks.user_id] aggregates [count(Int64(1))] (state: output row per group, merged with each change; frees a window when the watermark closes it)
    Alias: clicks (stateless)
      Project: clicks.user_id, __common_expr_1 AS window_start, __common_expr_1 + IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 60000000000 }") AS window_end, ts AS ts (stateless)
        Project: date_bin(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 60000000000 }"), clicks.ts, TimestampNanosecond(0, None)) AS __common_expr_1, clicks.user_id, clicks.ts AS ts (stateless)
          Scan: clicks (stateless)
            Source: stream clicks
"#,
    ),
    (
        "tumble, emit on window close",
        "SELECT window_start, window_end, user_id, count(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '1 minute') GROUP BY window_start, window_end, user_id EMIT ON WINDOW CLOSE",
        r#"
Project: clicks.window_start, clicks.window_end, clicks.user_id, count(Int64(1)) AS count(*) AS n (stateless)
  GroupBy: [clicks.window_start, clicks.window_end, clicks.user_id] aggregates [count(Int64(1))] (state: output row per group, merged with each change; emits each window's row when the watermark closes it, then frees it)
    Alias: clicks (stateless)
      Project: clicks.user_id, __common_expr_1 AS window_start, __common_expr_1 + IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 60000000000 }") AS window_end, ts AS ts (stateless)
        Project: date_bin(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 60000000000 }"), clicks.ts, TimestampNanosecond(0, None)) AS __common_expr_1, clicks.user_id, clicks.ts AS ts (stateless)
          Scan: clicks (stateless)
            Source: stream clicks
"#,
    ),
    (
        "hop",
        "SELECT window_start, window_end, count(*) AS n FROM HOP(clicks, ts, INTERVAL '1 minute', INTERVAL '5 minutes') GROUP BY window_start, window_end",
        r#"
Project: clicks.window_start, clicks.window_end, count(Int64(1)) AS count(*) AS n (stateless)
  GroupBy: [clicks.window_start, clicks.window_end] aggregates [count(Int64(1))] (state: output row per group, merged with each change; frees a window when the watermark closes it)
    Alias: clicks (stateless)
      Project: __sluice_windows.__sluice_window AS window_start, __sluice_windows.__sluice_window + IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 300000000000 }") AS window_end, __sluice_windows.ts AS ts (stateless)
        Alias: __sluice_windows (stateless)
          Project: __unnest_placeholder(sluice_hop_windows(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 60000000000 }"),IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 300000000000 }"),clicks.ts,Utf8("1970-01-01 00:00:00")),depth=1) AS UNNEST(sluice_hop_windows(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 60000000000 }"),IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 300000000000 }"),clicks.ts,Utf8("1970-01-01 00:00:00"))) AS __sluice_window, ts AS ts (stateless)
            Unnest: __unnest_placeholder(sluice_hop_windows(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 60000000000 }"),IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 300000000000 }"),clicks.ts,Utf8("1970-01-01 00:00:00"))) (stateless)
              Project: sluice_hop_windows(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 60000000000 }"), IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 300000000000 }"), clicks.ts, TimestampNanosecond(0, None)) AS __unnest_placeholder(sluice_hop_windows(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 60000000000 }"),IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 300000000000 }"),clicks.ts,Utf8("1970-01-01 00:00:00"))), clicks.ts AS ts (stateless)
                Scan: clicks (stateless)
                  Source: stream clicks
"#,
    ),
    (
        "cumulate",
        "SELECT window_start, window_end, sum(amount) AS total FROM CUMULATE(orders, ts, INTERVAL '1 hour', INTERVAL '1 day') GROUP BY window_start, window_end",
        r#"
Project: orders.window_start, orders.window_end, sum(orders.amount) AS total (stateless)
  GroupBy: [orders.window_start, orders.window_end] aggregates [sum(orders.amount)] (state: output row per group, merged with each change; frees a window when the watermark closes it)
    Alias: orders (stateless)
      Project: __sluice_windows.amount, __sluice_windows.__sluice_period AS window_start, __sluice_windows.__sluice_window AS window_end, __sluice_windows.ts AS ts (stateless)
        Alias: __sluice_windows (stateless)
          Project: orders.amount, __sluice_period, __unnest_placeholder(sluice_cumulate_windows(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 3600000000000 }"),IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 86400000000000 }"),orders.ts,Utf8("1970-01-01 00:00:00")),depth=1) AS UNNEST(sluice_cumulate_windows(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 3600000000000 }"),IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 86400000000000 }"),orders.ts,Utf8("1970-01-01 00:00:00"))) AS __sluice_window, ts AS ts (stateless)
            Unnest: __unnest_placeholder(sluice_cumulate_windows(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 3600000000000 }"),IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 86400000000000 }"),orders.ts,Utf8("1970-01-01 00:00:00"))) (stateless)
              Project: orders.amount, date_bin(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 86400000000000 }"), orders.ts, TimestampNanosecond(0, None)) AS __sluice_period, sluice_cumulate_windows(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 3600000000000 }"), IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 86400000000000 }"), orders.ts, TimestampNanosecond(0, None)) AS __unnest_placeholder(sluice_cumulate_windows(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 3600000000000 }"),IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 86400000000000 }"),orders.ts,Utf8("1970-01-01 00:00:00"))), orders.ts AS ts (stateless)
                Scan: orders (stateless)
                  Source: stream orders
"#,
    ),
    (
        "session",
        "SELECT window_start, window_end, user_id, count(*) AS n FROM SESSION(clicks, ts, INTERVAL '30 minutes') GROUP BY window_start, window_end, user_id",
        r#"
Project: clicks.window_start, clicks.window_end, clicks.user_id, count(Int64(1)) AS count(*) AS n (stateless)
  GroupBy: [clicks.window_start, clicks.window_end, clicks.user_id] aggregates [count(Int64(1))] (state: input rows and output row per group; frees a window when the watermark closes it)
    Alias: clicks (stateless)
      Session: gap 1800 s, partitioned by [user_id], on ts (state: the rows of open sessions; frees a session when the watermark passes its end)
        Scan: clicks (stateless)
          Source: stream clicks
"#,
    ),
    (
        "lookup join, stream with table",
        "SELECT c.user_id, u.name FROM clicks c JOIN users u ON c.user_id = u.id",
        r#"
Project: c.user_id, u.name (stateless)
  LookupJoin Inner: on [c.user_id = u.id] (state: the table side's rows per key)
    Alias: c (stateless)
      Scan: clicks (stateless)
        Source: stream clicks
    Alias: u (stateless)
      Scan: users (stateless)
        Source: table users
"#,
    ),
    (
        "left lookup join",
        "SELECT c.user_id, u.name FROM clicks c LEFT JOIN users u ON c.user_id = u.id",
        r#"
Project: c.user_id, u.name (stateless)
  LookupJoin Left: on [c.user_id = u.id] (state: the table side's rows per key)
    Alias: c (stateless)
      Scan: clicks (stateless)
        Source: stream clicks
    Alias: u (stateless)
      Scan: users (stateless)
        Source: table users
"#,
    ),
    (
        "regular join, table with table",
        "SELECT u.name, a.balance FROM users u JOIN accounts a ON u.id = a.user_id",
        r#"
Project: u.name, a.balance (stateless)
  Join Inner: on [u.id = a.user_id] (state: both sides' rows per key)
    Alias: u (stateless)
      Scan: users (stateless)
        Source: table users
    Alias: a (stateless)
      Scan: accounts (stateless)
        Source: table accounts
"#,
    ),
    (
        "regular join, streams without watermarks",
        "SELECT a.id, b.v FROM untimed a JOIN untimed b ON a.user_id = b.user_id",
        r#"
Project: a.id, b.v (stateless)
  Join Inner: on [a.user_id = b.user_id] (state: both sides' rows per key)
    Alias: a (stateless)
      Scan: untimed (stateless)
        Source: stream untimed
    Alias: b (stateless)
      Scan: untimed (stateless)
        Source: stream untimed
"#,
    ),
    (
        "interval join",
        "SELECT c.user_id, o.amount FROM clicks c JOIN orders o ON c.user_id = o.user_id AND o.ts BETWEEN c.ts AND c.ts + INTERVAL '1 hour'",
        r#"
Project: c.user_id, o.amount (stateless)
  IntervalJoin Inner: on [c.user_id = o.user_id] filter o.ts >= c.ts AND o.ts <= c.ts + IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 3600000000000 }") (state: both sides' rows per key, in order of the compared columns; frees rows the watermark puts out of reach)
    Alias: c (stateless)
      Scan: clicks (stateless)
        Source: stream clicks
    Alias: o (stateless)
      Scan: orders (stateless)
        Source: stream orders
"#,
    ),
    (
        "window join",
        "SELECT c.window_start, c.user_id, o.amount FROM TUMBLE(clicks, ts, INTERVAL '1 minute') c JOIN TUMBLE(orders, ts, INTERVAL '1 minute') o ON c.user_id = o.user_id AND c.window_start = o.window_start",
        r#"
Project: c.window_start, c.user_id, o.amount (stateless)
  IntervalJoin Inner: on [c.window_start = o.window_start, c.user_id = o.user_id] (state: both sides' rows per key; frees rows the watermark puts out of reach)
    Alias: c (stateless)
      Project: clicks.user_id, date_bin(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 60000000000 }"), clicks.ts, TimestampNanosecond(0, None)) AS window_start (stateless)
        Scan: clicks (stateless)
          Source: stream clicks
    Alias: o (stateless)
      Project: orders.user_id, orders.amount, date_bin(IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 60000000000 }"), orders.ts, TimestampNanosecond(0, None)) AS window_start (stateless)
        Scan: orders (stateless)
          Source: stream orders
"#,
    ),
    (
        "temporal join",
        "SELECT o.id, o.amount * r.rate AS converted FROM orders o JOIN rates FOR SYSTEM_TIME AS OF o.ts AS r ON o.currency = r.currency",
        r#"
Project: o.id, o.amount * r.rate AS converted (stateless)
  TemporalJoin Inner: on [o.currency = r.currency] as of o.ts (state: the table's versions per key until the watermark passes them, and the events waiting for the table's watermark)
    Alias: o (stateless)
      Scan: orders (stateless)
        Source: stream orders
    Alias: r (stateless)
      Scan: rates (stateless)
        Source: table rates
"#,
    ),
    (
        "order by limit on a table",
        "SELECT id, balance FROM accounts ORDER BY balance DESC LIMIT 5",
        r#"
TopN: Sort: accounts.balance DESC NULLS FIRST, fetch=5 (state: input rows and output rows per key)
  Scan: accounts (stateless)
    Source: table accounts
"#,
    ),
    (
        "row_number per partition",
        "SELECT user_id, id, amount FROM (SELECT user_id, id, amount, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY amount DESC) AS rn FROM orders) s WHERE rn <= 3",
        r#"
Alias: s (stateless)
  Project: orders.user_id, orders.id, orders.amount (stateless)
    Filter: row_number() PARTITION BY [orders.user_id] ORDER BY [orders.amount DESC NULLS FIRST] RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW <= UInt64(3) (stateless)
      Window: [row_number() PARTITION BY [orders.user_id] ORDER BY [orders.amount DESC NULLS FIRST] RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW] partitioned by [orders.user_id] (state: input rows and output rows per key)
        Scan: orders (stateless)
          Source: stream orders
"#,
    ),
    (
        "window function",
        "SELECT id, user_id, sum(amount) OVER (PARTITION BY user_id ORDER BY ts) AS running FROM orders",
        r#"
Project: orders.id, orders.user_id, sum(orders.amount) PARTITION BY [orders.user_id] ORDER BY [orders.ts ASC NULLS LAST] RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW AS running (stateless)
  Window: [sum(orders.amount) PARTITION BY [orders.user_id] ORDER BY [orders.ts ASC NULLS LAST] RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW] partitioned by [orders.user_id] (state: input rows and output rows per key)
    Scan: orders (stateless)
      Source: stream orders
"#,
    ),
    (
        "union all",
        "SELECT user_id FROM clicks UNION ALL SELECT user_id FROM orders",
        r#"
Union (stateless)
  Scan: clicks (stateless)
    Source: stream clicks
  Scan: orders (stateless)
    Source: stream orders
"#,
    ),
    (
        "aggregate over a join",
        "SELECT u.country, count(*) AS n FROM clicks c JOIN users u ON c.user_id = u.id GROUP BY u.country",
        r#"
Project: u.country, count(Int64(1)) AS count(*) AS n (stateless)
  GroupBy: [u.country] aggregates [count(Int64(1))] (state: output row per group, merged with each change)
    Project: u.country (stateless)
      LookupJoin Inner: on [c.user_id = u.id] (state: the table side's rows per key)
        Alias: c (stateless)
          Scan: clicks (stateless)
            Source: stream clicks
        Alias: u (stateless)
          Scan: users (stateless)
            Source: table users
"#,
    ),
];

#[tokio::test]
async fn explain_snapshots_per_plan_shape() {
    let planner = planner().await;
    let mut failures = Vec::new();
    for (shape, sql, expected) in SHAPES {
        let lines = match planner.explain(&create_view(sql)).await {
            Ok(lines) => lines,
            Err(e) => {
                failures.push(format!("{shape}: refused: {e}"));
                continue;
            }
        };
        assert_eq!(lines[0], "Materialize: v", "{shape}");
        let actual = lines[1..]
            .iter()
            .map(|l| l.strip_prefix("  ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        if actual != expected.trim() {
            failures.push(format!(
                "{shape}:\n--- expected\n{}\n--- actual\n{actual}",
                expected.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// (shape, the view's query, the SQLSTATE it is refused with).
const REFUSED: &[(&str, &str, &str)] = &[
    (
        "a constant query",
        "SELECT 1 AS one",
        "0A000",
    ),
    (
        "emit on window close without a window",
        "SELECT user_id, count(*) AS n FROM clicks GROUP BY user_id EMIT ON WINDOW CLOSE",
        "42P16",
    ),
    (
        "a temporal join with the table on the left",
        "SELECT r.rate FROM rates r JOIN orders FOR SYSTEM_TIME AS OF r.updated_at AS o ON o.currency = r.currency",
        "0A000",
    ),
    (
        "order by limit over a stream",
        "SELECT user_id, amount FROM orders ORDER BY amount DESC LIMIT 5",
        "0A000",
    ),
];

#[tokio::test]
async fn refused_shapes_say_why() {
    let planner = planner().await;
    for (shape, sql, sqlstate) in REFUSED {
        match planner.explain(&create_view(sql)).await {
            Ok(lines) => panic!("{shape}: planned as {lines:?}"),
            Err(e) => assert_eq!(e.sqlstate(), *sqlstate, "{shape}: {e}"),
        }
    }
}
