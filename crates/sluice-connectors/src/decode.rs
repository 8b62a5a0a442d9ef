//! Records to Arrow, a whole poll's records at once; when that fails,
//! record by record, so that only the bad ones are set aside (with the
//! reason). A [`RecordFormat`] says how one kind of record is checked
//! alone and how many are decoded into one batch: JSON with arrow-json and
//! CSV with arrow-csv ([`Encoding`], here), Avro with arrow-avro
//! (`formats/avro.rs`). A new format is one file implementing it.
//!
//! Each record is first checked alone ([`validate`]): one JSON object,
//! parsed strictly (no doubled or trailing commas, no missing ones,
//! nothing after it), whose integer columns hold integers that fit; or
//! one CSV row (no line break outside quotes, quotes balanced). So records
//! are never joined with their neighbours: a record that is bad alone is
//! bad, and row `i` of a poll is record `i`, whose metadata it carries.

use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, RecordBatch, StructArray, UInt32Array,
};
use datafusion::arrow::compute::{can_cast_types, cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use sluice_common::{Result, SluiceError};

/// The rows decoded from some records, and the records that failed.
#[derive(Debug)]
pub struct Decoded {
    /// The good records' rows, in record order.
    pub batch: RecordBatch,
    /// For each row of `batch`, the index of its record.
    pub rows_of: Vec<usize>,
    /// The bad records: index and reason.
    pub bad: Vec<(usize, String)>,
}

/// The text encodings records come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// One JSON object per record.
    Json,
    /// One CSV line per record, no header.
    Csv,
}

/// How one kind of record becomes Arrow rows.
pub trait RecordFormat: Send + Sync {
    /// Checks that `record` holds exactly one value of `schema`, on its own.
    fn validate(&self, schema: &SchemaRef, record: &[u8]) -> Result<()>;

    /// Decodes `records` (each valid alone) into one batch of `schema`,
    /// row `i` from record `i`, or fails as a whole.
    fn decode_all(&self, schema: &SchemaRef, records: &[&[u8]]) -> Result<RecordBatch>;
}

impl RecordFormat for Encoding {
    fn validate(&self, schema: &SchemaRef, record: &[u8]) -> Result<()> {
        validate(schema, *self, record)
    }

    fn decode_all(&self, schema: &SchemaRef, records: &[&[u8]]) -> Result<RecordBatch> {
        decode_text(schema, *self, records)
    }
}

fn decode_text(schema: &SchemaRef, encoding: Encoding, records: &[&[u8]]) -> Result<RecordBatch> {
    let mut buf = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum());
    for r in records {
        if r.iter().all(u8::is_ascii_whitespace) {
            return Err(SluiceError::InvalidText {
                message: "empty record".to_owned(),
            });
        }
        // One line per record: a CSV record's own line end is dropped.
        let line = match encoding {
            Encoding::Csv => r
                .strip_suffix(b"\r\n")
                .or_else(|| r.strip_suffix(b"\n"))
                .unwrap_or(r),
            Encoding::Json => r,
        };
        buf.extend_from_slice(line);
        buf.push(b'\n');
    }
    let batch = match encoding {
        Encoding::Json => {
            let mut decoder = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(records.len().max(1))
                .build_decoder()?;
            let used = decoder.decode(&buf)?;
            if used != buf.len() {
                return Err(SluiceError::InvalidText {
                    message: "trailing data after the record".to_owned(),
                });
            }
            decoder.flush()?
        }
        Encoding::Csv => {
            let mut decoder = datafusion::arrow::csv::ReaderBuilder::new(schema.clone())
                .with_header(false)
                .with_batch_size(records.len().max(1))
                .build_decoder();
            let used = decoder.decode(&buf)?;
            decoder.decode(&[])?;
            if used != buf.len() {
                return Err(SluiceError::InvalidText {
                    message: "trailing data after the record".to_owned(),
                });
            }
            decoder.flush()?
        }
    };
    let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
    if batch.num_rows() != records.len() {
        return Err(SluiceError::InvalidText {
            message: format!(
                "{} records held {} rows: each record must hold exactly one",
                records.len(),
                batch.num_rows()
            ),
        });
    }
    Ok(batch)
}

/// Checks that `record` holds exactly one value of `schema` in `encoding`,
/// on its own.
pub fn validate(schema: &SchemaRef, encoding: Encoding, record: &[u8]) -> Result<()> {
    let bad = |message: String| SluiceError::InvalidText { message };
    match encoding {
        Encoding::Json => {
            if record.trim_ascii_start().first() != Some(&b'{') {
                return Err(bad("a JSON record must be one object".to_owned()));
            }
            let mut de = serde_json::Deserializer::from_slice(record);
            serde::de::DeserializeSeed::deserialize(Fields { schema }, &mut de)
                .and_then(|()| de.end())
                .map_err(|e| bad(format!("invalid JSON record: {e}")))
        }
        Encoding::Csv => {
            let line = record
                .strip_suffix(b"\r\n")
                .or_else(|| record.strip_suffix(b"\n"))
                .unwrap_or(record);
            let mut quoted = false;
            for &b in line {
                match b {
                    b'"' => quoted = !quoted,
                    b'\n' | b'\r' if !quoted => {
                        return Err(bad("a CSV record must hold one line".to_owned()))
                    }
                    _ => {}
                }
            }
            if quoted {
                return Err(bad("a CSV record has an unterminated quote".to_owned()));
            }
            Ok(())
        }
    }
}

/// Walks one JSON object, checking that the values of integer columns are
/// integers in the column's range (arrow-json would truncate `1.5`).
struct Fields<'a> {
    schema: &'a SchemaRef,
}

impl<'de> serde::de::DeserializeSeed<'de> for Fields<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Fields<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<(), A::Error> {
        use datafusion::arrow::datatypes::DataType;
        use serde::de::Error;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let data_type = self
                .schema
                .field_with_name(&key)
                .map(|f| f.data_type().clone());
            let range: Option<(i128, i128)> = match data_type {
                Ok(DataType::Int8) => Some((i8::MIN.into(), i8::MAX.into())),
                Ok(DataType::Int16) => Some((i16::MIN.into(), i16::MAX.into())),
                Ok(DataType::Int32) => Some((i32::MIN.into(), i32::MAX.into())),
                Ok(DataType::Int64) => Some((i64::MIN.into(), i64::MAX.into())),
                Ok(DataType::UInt8) => Some((0, u8::MAX.into())),
                Ok(DataType::UInt16) => Some((0, u16::MAX.into())),
                Ok(DataType::UInt32) => Some((0, u32::MAX.into())),
                Ok(DataType::UInt64) => Some((0, u64::MAX.into())),
                _ => None,
            };
            if let Ok(DataType::Struct(children)) = &data_type {
                // A nested object (a Debezium row): the same checks inside.
                let schema: SchemaRef =
                    Arc::new(datafusion::arrow::datatypes::Schema::new(children.clone()));
                map.next_value_seed(Nested { schema: &schema })?;
                continue;
            }
            let Some((min, max)) = range else {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            };
            match map.next_value::<serde_json::Value>()? {
                serde_json::Value::Number(n) => {
                    let v = n
                        .as_i64()
                        .map(i128::from)
                        .or_else(|| n.as_u64().map(i128::from));
                    match v {
                        Some(v) if (min..=max).contains(&v) => {}
                        Some(_) => {
                            return Err(A::Error::custom(format!(
                                "{n} is out of range for integer column \"{key}\""
                            )))
                        }
                        None => {
                            return Err(A::Error::custom(format!(
                                "{n} is not an integer, for integer column \"{key}\""
                            )))
                        }
                    }
                }
                // NULL, or text that arrow-json parses (or refuses) itself.
                _ => {}
            }
        }
        Ok(())
    }
}

/// A nested object's value: null, or an object checked like the record.
struct Nested<'a> {
    schema: &'a SchemaRef,
}

impl<'de> serde::de::DeserializeSeed<'de> for Nested<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Nested<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object or null")
    }

    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> std::result::Result<(), A::Error> {
        serde::de::Visitor::visit_map(
            Fields {
                schema: self.schema,
            },
            map,
        )
    }
}

/// Checks decoded rows, given the index of each row's record.
pub type Check<'a> = &'a dyn Fn(&RecordBatch, &[usize]) -> Result<()>;

/// Decodes `records` into rows of `schema`; `check` may reject rows (NOT
/// NULL, keys), which counts their records as bad too.
pub fn decode(
    schema: &SchemaRef,
    format: &dyn RecordFormat,
    records: &[&[u8]],
    check: Check<'_>,
) -> Result<Decoded> {
    let mut bad = Vec::new();
    let mut valid = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        match format.validate(schema, record) {
            Ok(()) => valid.push(i),
            Err(e) => bad.push((i, e.to_string())),
        }
    }
    if bad.is_empty() {
        if let Ok(batch) = format.decode_all(schema, records) {
            if check(&batch, &valid).is_ok() {
                return Ok(Decoded {
                    batch,
                    rows_of: valid,
                    bad,
                });
            }
        }
    }
    let mut good = Vec::new();
    let mut rows_of = Vec::new();
    for i in valid {
        let record = &records[i];
        match format
            .decode_all(schema, std::slice::from_ref(record))
            .and_then(|b| {
                check(&b, &[i])?;
                Ok(b)
            }) {
            Ok(b) => {
                good.push(b);
                rows_of.push(i);
            }
            Err(e) => bad.push((i, e.to_string())),
        }
    }
    bad.sort_by_key(|(i, _)| *i);
    Ok(Decoded {
        batch: concat_batches(schema, &good)?,
        rows_of,
        bad,
    })
}

/// A Kafka key as the JSON object of a table's key columns: an object is
/// taken as is, anything else is the bare value of a one-column key (JSON
/// if it parses, else text).
pub fn key_record(key: &[u8], key_columns: &[String]) -> Result<Vec<u8>> {
    let trimmed = key.trim_ascii();
    if trimmed.first() == Some(&b'{') {
        return Ok(trimmed.to_vec());
    }
    let [column] = key_columns else {
        return Err(SluiceError::InvalidText {
            message: format!(
                "the key must be a JSON object with {}: the primary key has several columns",
                key_columns.join(", ")
            ),
        });
    };
    let value = if serde_json::from_slice::<serde_json::Value>(trimmed).is_ok() {
        String::from_utf8_lossy(trimmed).into_owned()
    } else {
        serde_json::Value::String(String::from_utf8_lossy(key).into_owned()).to_string()
    };
    let name = serde_json::Value::String(column.clone()).to_string();
    Ok(format!("{{{name}:{value}}}").into_bytes())
}

/// Replaces columns of `batch` (at `indices`) with `columns`, cast to their
/// types.
pub fn with_columns(
    batch: &RecordBatch,
    indices: &[usize],
    columns: &[ArrayRef],
) -> Result<RecordBatch> {
    let mut all = batch.columns().to_vec();
    for (&i, column) in indices.iter().zip(columns) {
        all[i] = cast(column, batch.schema().field(i).data_type())?;
    }
    Ok(RecordBatch::try_new(batch.schema(), all)?)
}

/// Makes `schema` hold only `indices`, for decoding keys.
pub fn project(schema: &SchemaRef, indices: &[usize]) -> Result<SchemaRef> {
    Ok(Arc::new(schema.project(indices)?))
}

/// Decodes `records` in groups of the same `key` (the records of one
/// writer schema, say), each group with `decode_group` into rows of
/// `schema`, and returns the rows in record order.
pub fn by_group<K: PartialEq>(
    schema: &SchemaRef,
    records: &[&[u8]],
    key: impl Fn(&[u8]) -> Result<K>,
    mut decode_group: impl FnMut(&K, &[&[u8]]) -> Result<RecordBatch>,
) -> Result<RecordBatch> {
    if records.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    let mut groups: Vec<(K, Vec<usize>)> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let k = key(r)?;
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, members)) => members.push(i),
            None => groups.push((k, vec![i])),
        }
    }
    if let [(k, _)] = groups.as_slice() {
        return decode_group(k, records);
    }
    let mut parts = Vec::with_capacity(groups.len());
    let mut order = Vec::with_capacity(records.len());
    for (k, members) in &groups {
        let of: Vec<&[u8]> = members.iter().map(|&i| records[i]).collect();
        parts.push(decode_group(k, &of)?);
        order.extend(members.iter().copied());
    }
    let all = concat_batches(schema, &parts)?;
    // Row j of `all` is record order[j]: put the rows in record order.
    let mut at = vec![0u32; order.len()];
    for (j, &i) in order.iter().enumerate() {
        at[i] = u32::try_from(j).map_err(|_| SluiceError::internal("too many records"))?;
    }
    Ok(take_record_batch(&all, &UInt32Array::from(at))?)
}

/// `batch` (decoded with the writer's own columns: an Avro writer schema,
/// a Parquet file) as rows of `schema`: columns matched by name and cast to
/// the declared types, missing ones NULL, and records (structs) matched
/// field by field the same way, so nested rows evolve like the top level.
/// `what` names the source's fields in errors ("Avro field").
pub fn by_name(batch: &RecordBatch, schema: &SchemaRef, what: &str) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        columns.push(match batch.column_by_name(field.name()) {
            Some(c) => conform(what, field.name(), c, field.data_type())?,
            None => new_null_array(field.data_type(), rows),
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn conform(what: &str, name: &str, column: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    let bad = |message: String| SluiceError::InvalidText { message };
    if column.data_type() == to {
        return Ok(column.clone());
    }
    if let (DataType::Struct(_), DataType::Struct(targets)) = (column.data_type(), to) {
        let source = column
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| SluiceError::internal("a struct column is not a StructArray"))?;
        let mut children = Vec::with_capacity(targets.len());
        for target in targets {
            children.push(match source.column_by_name(target.name()) {
                Some(c) => conform(what, target.name(), c, target.data_type())?,
                None => new_null_array(target.data_type(), source.len()),
            });
        }
        return Ok(Arc::new(StructArray::try_new(
            targets.clone(),
            children,
            source.nulls().cloned(),
        )?));
    }
    if can_cast_types(column.data_type(), to) {
        return cast(column, to).map_err(|e| {
            bad(format!(
                "{what} \"{name}\" ({}) does not convert to {}: {e}",
                column.data_type(),
                sluice_sql::pg_type_name(to)
            ))
        });
    }
    Err(bad(format!(
        "{what} \"{name}\" is {}, which cannot be a {} column (an incompatible schema change)",
        column.data_type(),
        sluice_sql::pg_type_name(to)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn good_records_decode_together_and_bad_ones_are_set_aside() {
        let ok: Check<'_> = &|_, _| Ok(());
        let records: Vec<&[u8]> = vec![br#"{"id": 1, "name": "a"}"#, br#"{"id": 2}"#];
        let d = decode(&schema(), &Encoding::Json, &records, ok).expect("decode");
        assert_eq!(d.batch.num_rows(), 2);
        assert!(d.bad.is_empty());

        let records: Vec<&[u8]> = vec![
            br#"{"id": 1, "name": "a"}"#,
            b"not json",
            br#"{"id": "x"}"#,
            b"",
            br#"{"id": 4, "name": "d"}"#,
        ];
        let d = decode(&schema(), &Encoding::Json, &records, ok).expect("decode");
        assert_eq!(d.rows_of, vec![0, 4]);
        assert_eq!(
            d.bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let ids = d
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("ids");
        assert_eq!(ids.values(), &[1, 4]);

        let no_null_ids: Check<'_> = &|b, _| {
            if b.column(0).null_count() > 0 {
                return Err(SluiceError::internal("null id"));
            }
            Ok(())
        };
        let records: Vec<&[u8]> = vec![br#"{"name": "a"}"#, br#"{"id": 2}"#];
        let d = decode(&schema(), &Encoding::Json, &records, no_null_ids).expect("decode");
        assert_eq!(d.rows_of, vec![1]);

        let records: Vec<&[u8]> = vec![b"1,a", b"2,b,c", b"3,c"];
        let d = decode(&schema(), &Encoding::Csv, &records, ok).expect("decode");
        assert_eq!(d.rows_of, vec![0, 2]);
        let names = d
            .batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("names");
        assert_eq!(names.value(1), "c");
    }

    #[test]
    fn each_record_is_one_value_on_its_own() {
        let ok: Check<'_> = &|_, _| Ok(());
        // (records, the indices decoded, the indices refused)
        let json: Vec<(Vec<&[u8]>, Vec<usize>, Vec<usize>)> = vec![
            // Invalid alone, valid joined: both refused.
            (
                vec![
                    br#"{"id": 900001, "name": "a"} {"id": 900002, "name": "b""#,
                    b"}",
                ],
                vec![],
                vec![0, 1],
            ),
            (
                vec![
                    br#"{"id": 1,, "name": "x"}"#,
                    br#"{"id": 1 "name": "y"}"#,
                    br#"{"id": 1, "name": "z",}"#,
                    br#"{,"id": 1}"#,
                    br#"{"id": 5, "name": "ok"}"#,
                ],
                vec![4],
                vec![0, 1, 2, 3],
            ),
            (
                vec![
                    br#"{"id": 1.5}"#,
                    br#"{"id": 1e3}"#,
                    br#"{"id": 2}"#,
                    br#"{"id": null}"#,
                ],
                vec![2, 3],
                vec![0, 1],
            ),
            (
                vec![
                    br#"{"id": 99999999999999999999}"#,
                    b"[1, 2]",
                    b"7",
                    br#"{"id": -9223372036854775808}"#,
                ],
                vec![3],
                vec![0, 1, 2],
            ),
        ];
        for (records, good, refused) in json {
            let d = decode(&schema(), &Encoding::Json, &records, ok).expect("decode");
            assert_eq!(d.rows_of, good, "{records:?}");
            assert_eq!(
                d.bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                refused,
                "{records:?}"
            );
            assert_eq!(d.batch.num_rows(), good.len());
        }
        let csv: Vec<(Vec<&[u8]>, Vec<usize>, Vec<usize>)> = vec![
            (vec![b"1,a\n2,b", b"3,c\n"], vec![1], vec![0]),
            (vec![b"1,\"a", b"2,b\""], vec![], vec![0, 1]),
            (vec![b"1,\"line\nbreak\"", b"2,b"], vec![0, 1], vec![]),
        ];
        for (records, good, refused) in csv {
            let d = decode(&schema(), &Encoding::Csv, &records, ok).expect("decode");
            assert_eq!(d.rows_of, good, "{records:?}");
            assert_eq!(
                d.bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                refused,
                "{records:?}"
            );
        }
    }

    #[test]
    fn keys_are_objects_or_bare_values() {
        let cols = vec!["user_id".to_owned()];
        assert_eq!(
            key_record(b"1234", &cols).expect("key"),
            br#"{"user_id":1234}"#
        );
        assert_eq!(
            key_record(br#"{"user_id": 7}"#, &cols).expect("key"),
            br#"{"user_id": 7}"#
        );
        assert_eq!(
            key_record(b"alice", &cols).expect("key"),
            br#"{"user_id":"alice"}"#
        );
        let two = vec!["a".to_owned(), "b".to_owned()];
        assert!(key_record(b"1", &two).is_err());
    }
}
