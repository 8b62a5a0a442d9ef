//! Arrow batches to Postgres rows, with `arrow-pg`, plus what it does not
//! do as Postgres does:
//!
//! - JSONB columns (stored as UTF-8 text, tagged in the field metadata) are
//!   reported with the `jsonb` type and sent in its binary format (a version
//!   byte, then the text) when the client asks for binary;
//! - floats in text format print as Postgres prints them: the shortest exact
//!   digits, `5` rather than `5.0`, exponents as `1e+20`, `Infinity`.

use std::error::Error;
use std::sync::Arc;

use arrow_pg::datatypes::arrow_schema_to_pg_fields;
use arrow_pg::encoder::encode_value;
use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{
    Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimeUnit};
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::api::Type;
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;
use pgwire::types::ToSqlText;
use postgres_types::{to_sql_checked, IsNull, ToSql};
use sluice_sql::types::SQL_TYPE_METADATA_KEY;

fn is_jsonb(field: &Field) -> bool {
    field
        .metadata()
        .get(SQL_TYPE_METADATA_KEY)
        .is_some_and(|t| t == "jsonb")
}

/// The Postgres fields (name, type OID, format) of a result with `schema`.
pub fn pg_fields(
    schema: &Schema,
    format: &Format,
    options: Option<Arc<FormatOptions>>,
) -> PgWireResult<Vec<FieldInfo>> {
    let mut fields = arrow_schema_to_pg_fields(schema, format, options.clone())?;
    for (i, field) in schema.fields().iter().enumerate() {
        if is_jsonb(field) {
            let mut info = FieldInfo::new(
                field.name().clone(),
                None,
                None,
                Type::JSONB,
                format.format_for(i),
            );
            if let Some(options) = &options {
                info = info.with_format_options(options.clone());
            }
            fields[i] = info;
        }
    }
    Ok(fields)
}

/// How one column is encoded where `arrow-pg` would not print what Postgres
/// prints.
enum Column<'a> {
    /// `arrow-pg` as it is.
    Default,
    /// A float in text format, widened to f64 (exactly), and the exponent
    /// from which Postgres prints it in exponent notation (float4 or float8).
    Float(Float64Array, i32),
    /// A timestamp in text format: microseconds since the epoch, and whether
    /// to print the (UTC) offset.
    Timestamp(Int64Array, bool),
    /// JSONB text, in either format.
    Jsonb(&'a StringArray),
}

/// Encodes every row of `batch` for `fields`.
pub fn encode_batch(
    fields: &Arc<Vec<FieldInfo>>,
    batch: &RecordBatch,
) -> Vec<PgWireResult<DataRow>> {
    let schema = batch.schema();
    let columns: Vec<Column> = batch
        .columns()
        .iter()
        .enumerate()
        .map(|(i, array)| {
            let text = fields[i].format() == FieldFormat::Text;
            match array.data_type() {
                _ if is_jsonb(schema.field(i)) => match array.as_string_opt::<i32>() {
                    Some(a) => Column::Jsonb(a),
                    None => Column::Default,
                },
                t @ (DataType::Float64 | DataType::Float32) if text => {
                    match cast(array, &DataType::Float64) {
                        Ok(f) => {
                            Column::Float(f.as_primitive::<Float64Type>().clone(), exponent_from(t))
                        }
                        Err(_) => Column::Default,
                    }
                }
                DataType::Timestamp(_, tz) if text => {
                    let micros = cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))
                        .and_then(|m| cast(&m, &DataType::Int64));
                    match micros {
                        Ok(m) => {
                            Column::Timestamp(m.as_primitive::<Int64Type>().clone(), tz.is_some())
                        }
                        Err(_) => Column::Default,
                    }
                }
                _ => Column::Default,
            }
        })
        .collect();

    let mut encoder = DataRowEncoder::new(fields.clone());
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let encoded = columns.iter().enumerate().try_for_each(|(col, column)| {
            let array = batch.column(col);
            let pg = &fields[col];
            let (ty, format, options) = (pg.datatype(), pg.format(), pg.format_options());
            if array.is_null(row) {
                // Some arrow-pg encoders ignore the null bitmap (intervals).
                return encoder.encode_field_with_type_and_format(&None::<i8>, ty, format, options);
            }
            match column {
                Column::Default => encode_value(&mut encoder, array, row, schema.field(col), pg),
                Column::Float(values, exponent_from) => {
                    let text = float_text(values.value(row), *exponent_from);
                    encoder.encode_field_with_type_and_format(&Text(text), ty, format, options)
                }
                Column::Timestamp(micros, with_offset) => {
                    let text = timestamp_text(micros.value(row), *with_offset);
                    encoder.encode_field_with_type_and_format(&Text(text), ty, format, options)
                }
                Column::Jsonb(texts) => encoder.encode_field_with_type_and_format(
                    &Jsonb(texts.value(row)),
                    ty,
                    format,
                    options,
                ),
            }
        });
        rows.push(encoded.map(|()| encoder.take_row()));
    }
    rows
}

/// Postgres' text form of a timestamp: `2020-10-10 00:00:01.2`, with `+00`
/// for a timestamptz (sessions run in UTC).
fn timestamp_text(micros: i64, with_offset: bool) -> String {
    let Some(ts) = chrono::DateTime::from_timestamp_micros(micros) else {
        return micros.to_string();
    };
    let mut s = ts.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string();
    let fraction = micros.rem_euclid(1_000_000);
    if fraction != 0 {
        s.push_str(format!(".{fraction:06}").trim_end_matches('0'));
    }
    if with_offset {
        s.push_str("+00");
    }
    s
}

/// A JSON document held as text.
#[derive(Debug)]
struct Jsonb<'a>(&'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        // jsonb's binary format: a version byte, then the text.
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

impl ToSqlText for Jsonb<'_> {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        _options: &FormatOptions,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        put_text(self.0, out)
    }
}

/// A value already in Postgres' text form (only ever sent as text).
#[derive(Debug)]
struct Text(String);

impl ToSql for Text {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl ToSqlText for Text {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        _options: &FormatOptions,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        put_text(&self.0, out)
    }
}

/// Text format of a value already in Postgres' text form.
fn put_text(text: &str, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
    out.put_slice(text.as_bytes());
    Ok(IsNull::No)
}

/// Postgres switches to exponent notation for float8 from 1e15 (DBL_DIG),
/// for float4 from 1e6 (FLT_DIG), and for both below 1e-4.
const F64_EXPONENT_FROM: i32 = 15;
const F32_EXPONENT_FROM: i32 = 6;

fn exponent_from(data_type: &DataType) -> i32 {
    if *data_type == DataType::Float32 {
        F32_EXPONENT_FROM
    } else {
        F64_EXPONENT_FROM
    }
}

/// A float as Postgres prints it: the shortest digits that read back as the
/// same value, in exponent notation below 1e-4 and from `exponent_from`.
fn float_text(v: f64, exponent_from: i32) -> String {
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // Rust's `{:e}` gives the shortest round-tripping digits at the value's
    // own precision.
    let shortest = if exponent_from == F32_EXPONENT_FROM {
        format!("{:e}", v as f32)
    } else {
        format!("{v:e}")
    };
    let (mantissa, exponent) = shortest.split_once('e').unwrap_or((shortest.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if v != 0.0 && (exponent < -4 || exponent >= exponent_from) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::new();
    if mantissa.starts_with('-') {
        out.push('-');
    }
    let point = exponent + 1; // digits before the decimal point
    if point <= 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat(point.unsigned_abs() as usize));
        out.push_str(&digits);
    } else if point as usize >= digits.len() {
        out.push_str(&digits);
        out.push_str(&"0".repeat(point as usize - digits.len()));
    } else {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f8(v: f64) -> String {
        float_text(v, F64_EXPONENT_FROM)
    }

    fn f4(v: f32) -> String {
        float_text(v.into(), F32_EXPONENT_FROM)
    }

    #[test]
    fn timestamps_print_like_postgres() {
        assert_eq!(
            timestamp_text(1_602_288_001_200_000, false),
            "2020-10-10 00:00:01.2"
        );
        assert_eq!(
            timestamp_text(1_602_288_001_000_000, true),
            "2020-10-10 00:00:01+00"
        );
        assert_eq!(timestamp_text(-1, false), "1969-12-31 23:59:59.999999");
    }

    #[test]
    fn floats_print_like_postgres() {
        // Expected values are what PostgreSQL 16 prints.
        assert_eq!(f8(5.0), "5");
        assert_eq!(f8(0.1), "0.1");
        assert_eq!(f8(-0.25), "-0.25");
        assert_eq!(f8(1.5e20), "1.5e+20");
        assert_eq!(f8(123456789012345.0), "123456789012345");
        assert_eq!(f8(1e15), "1e+15");
        assert_eq!(f8(0.0001), "0.0001");
        assert_eq!(f8(0.00001), "1e-05");
        assert_eq!(f8(0.0), "0");
        assert_eq!(f8(f64::INFINITY), "Infinity");
        assert_eq!(f8(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(f8(f64::NAN), "NaN");
        assert_eq!(f8(100.0), "100");
        assert_eq!(f4(1.5), "1.5");
        assert_eq!(f4(0.1), "0.1");
        assert_eq!(f4(123456.0), "123456");
        assert_eq!(f4(1000000.0), "1e+06");
    }
}
