//! Records to Arrow: JSON with arrow-json and CSV with arrow-csv, a whole
//! poll's records at once; when that fails, record by record, so that only
//! the bad ones are set aside (with the reason).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::SchemaRef;
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

fn decode_all(schema: &SchemaRef, encoding: Encoding, records: &[&[u8]]) -> Result<RecordBatch> {
    let mut buf = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum());
    for r in records {
        if r.iter().all(u8::is_ascii_whitespace) {
            return Err(SluiceError::InvalidText {
                message: "empty record".to_owned(),
            });
        }
        buf.extend_from_slice(r);
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

/// Checks decoded rows, given the index of each row's record.
pub type Check<'a> = &'a dyn Fn(&RecordBatch, &[usize]) -> Result<()>;

/// Decodes `records` into rows of `schema`; `check` may reject rows (NOT
/// NULL, keys), which counts their records as bad too.
pub fn decode(
    schema: &SchemaRef,
    encoding: Encoding,
    records: &[&[u8]],
    check: Check<'_>,
) -> Result<Decoded> {
    if let Ok(batch) = decode_all(schema, encoding, records) {
        let all: Vec<usize> = (0..records.len()).collect();
        if check(&batch, &all).is_ok() {
            return Ok(Decoded {
                batch,
                rows_of: (0..records.len()).collect(),
                bad: Vec::new(),
            });
        }
    }
    let mut good = Vec::new();
    let mut rows_of = Vec::new();
    let mut bad = Vec::new();
    for (i, record) in records.iter().enumerate() {
        match decode_all(schema, encoding, std::slice::from_ref(record)).and_then(|b| {
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
        let d = decode(&schema(), Encoding::Json, &records, ok).expect("decode");
        assert_eq!(d.batch.num_rows(), 2);
        assert!(d.bad.is_empty());

        let records: Vec<&[u8]> = vec![
            br#"{"id": 1, "name": "a"}"#,
            b"not json",
            br#"{"id": "x"}"#,
            b"",
            br#"{"id": 4, "name": "d"}"#,
        ];
        let d = decode(&schema(), Encoding::Json, &records, ok).expect("decode");
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
        let d = decode(&schema(), Encoding::Json, &records, no_null_ids).expect("decode");
        assert_eq!(d.rows_of, vec![1]);

        let records: Vec<&[u8]> = vec![b"1,a", b"2,b,c", b"3,c"];
        let d = decode(&schema(), Encoding::Csv, &records, ok).expect("decode");
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
