//! Turns result values into PostgreSQL's text format, so that a file's
//! expected output is the same whether the rows came as text (simple
//! protocol) or binary (extended protocol, which tokio-postgres uses).

use chrono::{DateTime, NaiveDate, NaiveDateTime, Timelike, Utc};
use rust_decimal::Decimal;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::Row;

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// Any value, as its raw bytes.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A binary `interval`: microseconds, days, months.
struct Interval {
    micros: i64,
    days: i32,
    months: i32,
}

impl<'a> FromSql<'a> for Interval {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        if raw.len() != 16 {
            return Err("interval must be 16 bytes".into());
        }
        Ok(Interval {
            micros: i64::from_be_bytes(raw[0..8].try_into()?),
            days: i32::from_be_bytes(raw[8..12].try_into()?),
            months: i32::from_be_bytes(raw[12..16].try_into()?),
        })
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}

/// PostgreSQL's `postgres` interval style: `1 year 2 mons 3 days 04:05:06.5`.
fn interval_text(i: &Interval) -> String {
    let mut parts = Vec::new();
    let plural = |n: i64, unit: &str| {
        if n == 1 || n == -1 {
            format!("{n} {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    let (years, months) = (i.months / 12, i.months % 12);
    if years != 0 {
        parts.push(plural(years.into(), "year"));
    }
    if months != 0 {
        parts.push(plural(months.into(), "mon"));
    }
    if i.days != 0 {
        parts.push(plural(i.days.into(), "day"));
    }
    if i.micros != 0 || parts.is_empty() {
        let sign = if i.micros < 0 { "-" } else { "" };
        let m = i.micros.unsigned_abs();
        let (h, rest) = (m / 3_600_000_000, m % 3_600_000_000);
        let (min, rest) = (rest / 60_000_000, rest % 60_000_000);
        let (s, frac) = (rest / 1_000_000, rest % 1_000_000);
        let mut t = format!("{sign}{h:02}:{min:02}:{s:02}");
        if frac != 0 {
            t.push_str(format!(".{frac:06}").trim_end_matches('0'));
        }
        parts.push(t);
    }
    parts.join(" ")
}

fn timestamp_text(ts: &NaiveDateTime) -> String {
    let mut s = ts.format("%Y-%m-%d %H:%M:%S").to_string();
    let micros = ts.nanosecond() / 1000;
    if micros != 0 {
        s.push_str(format!(".{micros:06}").trim_end_matches('0'));
    }
    s
}

fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        format!("{f}")
    }
}

/// A one-dimensional array as Postgres prints it: `{1,2,NULL}`.
fn array_text<T: std::fmt::Display>(values: Vec<Option<T>>) -> String {
    let items: Vec<String> = values
        .into_iter()
        .map(|v| v.map_or_else(|| "NULL".to_owned(), |v| v.to_string()))
        .collect();
    format!("{{{}}}", items.join(","))
}

fn text<'a, T: FromSql<'a>>(
    row: &'a Row,
    i: usize,
    f: impl FnOnce(T) -> String,
) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(row.try_get::<_, Option<T>>(i)?.map(f))
}

/// The value at column `i` of `row` in PostgreSQL's text format, `None` for NULL.
pub fn cell(row: &Row, i: usize) -> Result<Option<String>, tokio_postgres::Error> {
    let ty = row.columns()[i].type_().clone();
    match ty {
        Type::BOOL => text(row, i, |b: bool| if b { "t" } else { "f" }.to_owned()),
        Type::INT2 => text(row, i, |v: i16| v.to_string()),
        Type::INT4 => text(row, i, |v: i32| v.to_string()),
        Type::INT8 => text(row, i, |v: i64| v.to_string()),
        Type::FLOAT4 => text(row, i, |v: f32| float_text(v.into())),
        Type::FLOAT8 => text(row, i, float_text),
        Type::NUMERIC => text(row, i, |v: Decimal| v.to_string()),
        Type::DATE => text(row, i, |d: NaiveDate| d.format("%Y-%m-%d").to_string()),
        Type::TIMESTAMP => text(row, i, |t: NaiveDateTime| timestamp_text(&t)),
        Type::TIMESTAMPTZ => text(row, i, |t: DateTime<Utc>| {
            format!("{}+00", timestamp_text(&t.naive_utc()))
        }),
        Type::INTERVAL => text(row, i, |v: Interval| interval_text(&v)),
        Type::BYTEA => text(row, i, |v: Vec<u8>| {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            format!("\\x{hex}")
        }),
        Type::JSONB => text(row, i, |v: Raw| {
            // Binary jsonb is a version byte (1) followed by the text.
            String::from_utf8_lossy(v.0.get(1..).unwrap_or_default()).into_owned()
        }),
        Type::INT8_ARRAY => text(row, i, |v: Vec<Option<i64>>| array_text(v)),
        Type::INT4_ARRAY => text(row, i, |v: Vec<Option<i32>>| array_text(v)),
        Type::FLOAT8_ARRAY => text(row, i, |v: Vec<Option<f64>>| {
            array_text(v.into_iter().map(|f| f.map(float_text)).collect())
        }),
        Type::TEXT_ARRAY => text(row, i, |v: Vec<Option<String>>| array_text(v)),
        _ => text(row, i, |v: Raw| String::from_utf8_lossy(&v.0).into_owned()),
    }
}
