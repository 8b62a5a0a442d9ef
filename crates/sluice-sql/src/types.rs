//! The SQL column types Sluice accepts, and how each maps to Arrow.
//!
//! Arrow is the storage and execution type; the Postgres type a client sees
//! is derived from the Arrow type (and, for JSONB, from field metadata) by the
//! server.

use std::collections::HashMap;
use std::fmt;

use datafusion::arrow::datatypes::{DataType, Field, IntervalUnit, TimeUnit};
use datafusion::sql::sqlparser::ast;
use serde::{Deserialize, Serialize};
use sluice_common::{Result, SluiceError};

/// Field metadata key that records the SQL type of a column whose Arrow type
/// alone does not say it (JSONB is stored as UTF-8 text).
pub const SQL_TYPE_METADATA_KEY: &str = "sluice.sql_type";

/// Precision and scale of a bare `NUMERIC`.
pub const DEFAULT_NUMERIC: (u8, i8) = (38, 10);

/// A column type of a stream or table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlType {
    /// `BOOLEAN`
    Boolean,
    /// `SMALLINT`
    SmallInt,
    /// `INT` / `INTEGER`
    Int,
    /// `BIGINT`
    BigInt,
    /// `REAL`
    Real,
    /// `DOUBLE PRECISION`
    Double,
    /// `NUMERIC(p, s)`
    Numeric {
        /// Total digits, 1 to 38.
        precision: u8,
        /// Digits after the point.
        scale: i8,
    },
    /// `TEXT` / `VARCHAR`
    Text,
    /// `BYTEA`
    Bytea,
    /// `DATE`
    Date,
    /// `TIMESTAMP` (without time zone), microseconds
    Timestamp,
    /// `TIMESTAMPTZ`, microseconds, UTC
    TimestampTz,
    /// `INTERVAL`
    Interval,
    /// `JSONB`, stored as its text
    Jsonb,
}

impl SqlType {
    /// Maps a parsed SQL type to a Sluice type, or says why it cannot.
    pub fn from_ast(data_type: &ast::DataType) -> Result<SqlType> {
        use ast::DataType as D;
        let t =
            match data_type {
                D::Boolean | D::Bool => SqlType::Boolean,
                D::SmallInt(_) | D::Int2(_) => SqlType::SmallInt,
                D::Int(_) | D::Integer(_) | D::Int4(_) => SqlType::Int,
                D::BigInt(_) | D::Int8(_) => SqlType::BigInt,
                D::Real | D::Float4 => SqlType::Real,
                D::DoublePrecision | D::Double(_) | D::Float8 | D::Float(_) => SqlType::Double,
                D::Numeric(info) | D::Decimal(info) | D::Dec(info) => numeric(info)?,
                D::Text | D::Varchar(_) | D::CharacterVarying(_) | D::String(_) => SqlType::Text,
                D::Bytea => SqlType::Bytea,
                D::Date => SqlType::Date,
                D::Timestamp(_, tz) => match tz {
                    ast::TimezoneInfo::Tz | ast::TimezoneInfo::WithTimeZone => SqlType::TimestampTz,
                    _ => SqlType::Timestamp,
                },
                D::Interval { .. } => SqlType::Interval,
                D::JSONB | D::JSON => SqlType::Jsonb,
                other => return Err(SluiceError::not_supported(
                    format!("type {}", other.to_string().to_lowercase()),
                    Some(
                        "supported types: boolean, smallint, int, bigint, real, double precision, \
                         numeric(p,s), text, varchar, bytea, date, timestamp, timestamptz, \
                         interval, jsonb",
                    ),
                )),
            };
        Ok(t)
    }

    /// The Arrow type values of this SQL type are stored and computed as.
    pub fn to_arrow(self) -> DataType {
        match self {
            SqlType::Boolean => DataType::Boolean,
            SqlType::SmallInt => DataType::Int16,
            SqlType::Int => DataType::Int32,
            SqlType::BigInt => DataType::Int64,
            SqlType::Real => DataType::Float32,
            SqlType::Double => DataType::Float64,
            SqlType::Numeric { precision, scale } => DataType::Decimal128(precision, scale),
            SqlType::Text | SqlType::Jsonb => DataType::Utf8,
            SqlType::Bytea => DataType::Binary,
            SqlType::Date => DataType::Date32,
            SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            SqlType::TimestampTz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
            }
            SqlType::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
        }
    }

    /// An Arrow field for a column of this type. Fields are nullable as far
    /// as Arrow is concerned; `NOT NULL` and key columns are checked on write
    /// so the error names the column and relation.
    pub fn to_field(self, name: &str) -> Field {
        let field = Field::new(name, self.to_arrow(), true);
        if self == SqlType::Jsonb {
            field.with_metadata(HashMap::from([(
                SQL_TYPE_METADATA_KEY.to_owned(),
                "jsonb".to_owned(),
            )]))
        } else {
            field
        }
    }

    /// Whether values of this type can be compared for equality and so serve
    /// as (part of) a primary key.
    pub fn can_be_key(self) -> bool {
        !matches!(self, SqlType::Jsonb | SqlType::Real | SqlType::Double)
    }

    /// Whether this is an event-time type (usable in `WATERMARK FOR`).
    pub fn is_timestamp(self) -> bool {
        matches!(self, SqlType::Timestamp | SqlType::TimestampTz)
    }
}

/// The Postgres name of an Arrow type, for columns that are not declared
/// (a view's): `bigint`, `text`, `numeric(10,2)`, `bigint[]`, ...
pub fn pg_type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "numeric".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Interval(_) | DataType::Duration(_) => "interval".into(),
        DataType::List(f) | DataType::LargeList(f) => format!("{}[]", pg_type_name(f.data_type())),
        other => other.to_string().to_lowercase(),
    }
}

fn numeric(info: &ast::ExactNumberInfo) -> Result<SqlType> {
    let (precision, scale) = match info {
        ast::ExactNumberInfo::None => (DEFAULT_NUMERIC.0 as u64, DEFAULT_NUMERIC.1 as i64),
        ast::ExactNumberInfo::Precision(p) => (*p, 0),
        ast::ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s),
    };
    if !(1..=38).contains(&precision) {
        return Err(SluiceError::InvalidDefinition {
            message: format!("NUMERIC precision {precision} must be between 1 and 38"),
            hint: None,
        });
    }
    if scale < 0 || scale as u64 > precision {
        return Err(SluiceError::InvalidDefinition {
            message: format!("NUMERIC scale {scale} must be between 0 and precision {precision}"),
            hint: None,
        });
    }
    Ok(SqlType::Numeric {
        precision: precision as u8,
        scale: scale as i8,
    })
}

impl fmt::Display for SqlType {
    /// The type as Postgres names it (`information_schema` style).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::Boolean => f.write_str("boolean"),
            SqlType::SmallInt => f.write_str("smallint"),
            SqlType::Int => f.write_str("integer"),
            SqlType::BigInt => f.write_str("bigint"),
            SqlType::Real => f.write_str("real"),
            SqlType::Double => f.write_str("double precision"),
            SqlType::Numeric { precision, scale } => write!(f, "numeric({precision},{scale})"),
            SqlType::Text => f.write_str("text"),
            SqlType::Bytea => f.write_str("bytea"),
            SqlType::Date => f.write_str("date"),
            SqlType::Timestamp => f.write_str("timestamp without time zone"),
            SqlType::TimestampTz => f.write_str("timestamp with time zone"),
            SqlType::Interval => f.write_str("interval"),
            SqlType::Jsonb => f.write_str("jsonb"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn parse(t: &str) -> Result<SqlType> {
        let mut p = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(t)
            .expect("tokenizes");
        SqlType::from_ast(&p.parse_data_type().expect("parses"))
    }

    #[test]
    fn every_documented_type_maps() {
        let cases = [
            ("BOOLEAN", SqlType::Boolean),
            ("SMALLINT", SqlType::SmallInt),
            ("INT", SqlType::Int),
            ("INTEGER", SqlType::Int),
            ("BIGINT", SqlType::BigInt),
            ("REAL", SqlType::Real),
            ("DOUBLE PRECISION", SqlType::Double),
            (
                "NUMERIC(10,2)",
                SqlType::Numeric {
                    precision: 10,
                    scale: 2,
                },
            ),
            ("TEXT", SqlType::Text),
            ("VARCHAR(20)", SqlType::Text),
            ("BYTEA", SqlType::Bytea),
            ("DATE", SqlType::Date),
            ("TIMESTAMP", SqlType::Timestamp),
            ("TIMESTAMP WITH TIME ZONE", SqlType::TimestampTz),
            ("TIMESTAMPTZ", SqlType::TimestampTz),
            ("INTERVAL", SqlType::Interval),
            ("JSONB", SqlType::Jsonb),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).expect(text), expected, "{text}");
        }
    }

    #[test]
    fn bad_numeric_and_unknown_types_are_rejected() {
        assert_eq!(parse("NUMERIC(50,2)").unwrap_err().sqlstate(), "42P16");
        assert_eq!(parse("NUMERIC(5,7)").unwrap_err().sqlstate(), "42P16");
        assert_eq!(parse("POINT").unwrap_err().sqlstate(), "0A000");
    }
}
