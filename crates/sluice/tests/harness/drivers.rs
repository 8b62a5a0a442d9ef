//! What a driver does beyond sqllogictest: prepared statements with typed
//! parameters sent in binary, and logging in with a password.

use anyhow::{ensure, Context};
use chrono::{NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;
use sluice_common::{AuthMethod, Config};

use super::server::{connect, connect_as, TestServer};

/// Parameters of every type bind, in binary, in INSERT, WHERE and UPDATE.
pub async fn binary_parameters_round_trip() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = connect(server.addr()).await?;
    client
        .batch_execute(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, b BOOLEAN, i INT, s SMALLINT, f DOUBLE PRECISION,
                             r REAL, n NUMERIC(10,2), txt TEXT, bin BYTEA, d DATE, ts TIMESTAMP)",
        )
        .await?;
    let ts = NaiveDate::from_ymd_opt(2020, 10, 10)
        .and_then(|d| d.and_hms_micro_opt(0, 0, 1, 200_000))
        .context("timestamp")?;
    let day = NaiveDate::from_ymd_opt(2024, 2, 29).context("date")?;
    let n = Decimal::new(1110, 2);
    let insert = client
        .prepare("INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
        .await?;
    for id in [1i64, 2] {
        let inserted = client
            .execute(
                &insert,
                &[
                    &id,
                    &true,
                    &42i32,
                    &7i16,
                    &0.5f64,
                    &1.5f32,
                    &n,
                    &"héllo",
                    &vec![0u8, 255, 16],
                    &day,
                    &ts,
                ],
            )
            .await?;
        ensure!(inserted == 1, "INSERT reported {inserted} rows");
    }
    let row = client
        .query_one(
            "SELECT * FROM t WHERE id = $1 AND txt = $2",
            &[&2i64, &"héllo"],
        )
        .await?;
    ensure!(row.get::<_, i64>(0) == 2);
    ensure!(row.get::<_, bool>(1));
    ensure!(row.get::<_, i32>(2) == 42);
    ensure!(row.get::<_, i16>(3) == 7);
    ensure!(row.get::<_, f64>(4) == 0.5);
    ensure!(row.get::<_, f32>(5) == 1.5);
    ensure!(
        row.get::<_, Decimal>(6) == n,
        "numeric came back as {}",
        row.get::<_, Decimal>(6)
    );
    ensure!(row.get::<_, String>(7) == "héllo");
    ensure!(
        row.get::<_, Vec<u8>>(8) == vec![0u8, 255, 16],
        "bytea: {:?}",
        row.get::<_, Vec<u8>>(8)
    );
    ensure!(row.get::<_, NaiveDate>(9) == day);
    ensure!(row.get::<_, NaiveDateTime>(10) == ts);

    let updated = client
        .execute("UPDATE t SET txt = $1 WHERE id = $2", &[&"changed", &1i64])
        .await?;
    ensure!(updated == 1, "UPDATE reported {updated} rows");
    let txt: String = client
        .query_one("SELECT txt FROM t WHERE id = 1", &[])
        .await?
        .get(0);
    ensure!(txt == "changed");

    // Result columns are named as Postgres names them.
    let statement = client
        .prepare("SELECT count(*), 1 + 1, upper(txt), txt FROM t GROUP BY txt")
        .await?;
    let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    ensure!(
        names == ["count", "?column?", "upper", "txt"],
        "column names: {names:?}"
    );

    // A bad parameter value is an error, and the connection carries on.
    let err = client
        .query("SELECT * FROM t WHERE d = $1", &[&"not a date"])
        .await
        .err()
        .context("a text parameter for a date column should fail")?;
    ensure!(
        err.as_db_error().is_some() || err.to_string().contains("error"),
        "{err}"
    );
    let count: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    ensure!(count == 2);
    Ok(())
}

async fn login(
    server: &TestServer,
    user: &str,
    password: &str,
) -> Result<(), tokio_postgres::Error> {
    let client = connect_as(server.addr(), user, password).await?;
    client.simple_query("SELECT 1").await.map(|_| ())
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|db| db.code().code().to_owned())
}

/// A configured user and password are enforced, with MD5 and cleartext.
pub async fn passwords_are_enforced() -> anyhow::Result<()> {
    for method in [AuthMethod::Md5, AuthMethod::Cleartext] {
        let server = TestServer::start_with(Config {
            user: Some("app".into()),
            password: Some("s3cret".into()),
            auth_method: method,
            ..Config::default()
        })
        .await?;
        login(&server, "app", "s3cret")
            .await
            .with_context(|| format!("{method:?}: right password refused"))?;
        let wrong = login(&server, "app", "nope").await.err();
        ensure!(
            wrong.as_ref().and_then(sqlstate).as_deref() == Some("28P01"),
            "{method:?}: wrong password: {wrong:?}"
        );
        let other = login(&server, "mallory", "s3cret").await.err();
        ensure!(
            other.as_ref().and_then(sqlstate).as_deref() == Some("28P01"),
            "{method:?}: wrong user: {other:?}"
        );
    }
    // Trust mode (no password) accepts anyone.
    let server = TestServer::start().await?;
    login(&server, "anyone", "whatever").await?;
    Ok(())
}
