//! Avro in the Confluent wire format (a zero byte, the writer schema's
//! 4-byte big-endian registry id, the Avro body), decoded with arrow-avro
//! straight into Arrow columns and encoded the same way for sinks.
//!
//! Decoding: the writer schema of each id is fetched from the registry
//! once ([`AvroFormat::prepare`], before a poll is decoded) and kept as an
//! arrow-avro decoder. A poll's records are decoded per writer schema, and
//! each batch is projected onto the declared columns by name: a column the
//! writer does not have is NULL (an optional field added or removed keeps
//! flowing), a writer field no column names is dropped, and values are
//! cast to the column's type. A record that is not one whole Avro value
//! of a known schema, or whose values do not convert, is a bad record
//! (`on_error`), never the end of the source.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{
    AvroSchema, Fingerprint, FingerprintAlgorithm, FingerprintStrategy, SchemaStore,
};
use arrow_avro::writer::format::AvroSoeFormat;
use arrow_avro::writer::{Encoder, WriterBuilder};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use sluice_common::{Result, SluiceError};
use sluice_sql::SqlType;

use crate::decode::{by_group, by_name, RecordFormat};
use crate::registry::{Registry, SchemaCache};

/// The most records one decoder batch holds (a poll is at most 10,000;
/// more are decoded in several batches). The decoder sizes its buffers by
/// it.
const MAX_ROWS: usize = 16_384;

fn bad(message: String) -> SluiceError {
    SluiceError::InvalidText { message }
}

/// The writer schema id of a record in the Confluent wire format.
pub fn schema_id(record: &[u8]) -> Result<u32> {
    match record {
        [0, a, b, c, d, _rest @ ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        [0, ..] => Err(bad("an Avro record shorter than its 5-byte header".to_owned())),
        _ => Err(bad(
            "not an Avro record in the schema registry's wire format (it must start with a zero byte)"
                .to_owned(),
        )),
    }
}

fn decoder(id: u32, schema: &str) -> Result<Decoder> {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store
        .set(Fingerprint::Id(id), AvroSchema::new(schema.to_owned()))
        .map_err(|e| {
            bad(format!(
                "schema {id} from the registry is not valid Avro: {e}"
            ))
        })?;
    ReaderBuilder::new()
        .with_batch_size(MAX_ROWS)
        .with_writer_schema_store(store)
        .with_active_fingerprint(Fingerprint::Id(id))
        .build_decoder()
        .map_err(|e| bad(format!("schema {id} from the registry cannot be read: {e}")))
}

/// The Arrow schema an Avro schema decodes to.
pub fn arrow_schema(id: u32, schema: &str) -> Result<SchemaRef> {
    Ok(decoder(id, schema)?.schema())
}

/// The SQL type of a column decoded as `data_type`, or why there is none.
pub fn sql_type(name: &str, data_type: &DataType) -> Result<SqlType> {
    Ok(match data_type {
        DataType::Boolean => SqlType::Boolean,
        DataType::Int8 | DataType::Int16 => SqlType::SmallInt,
        DataType::Int32 => SqlType::Int,
        DataType::Int64 => SqlType::BigInt,
        DataType::Float16 | DataType::Float32 => SqlType::Real,
        DataType::Float64 => SqlType::Double,
        DataType::Decimal128(p, s) if *p <= 38 => SqlType::Numeric {
            precision: *p,
            scale: *s,
        },
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => SqlType::Text,
        // An Avro enum: its symbol.
        DataType::Dictionary(_, value) if value.as_ref() == &DataType::Utf8 => SqlType::Text,
        DataType::Binary | DataType::LargeBinary | DataType::FixedSizeBinary(_) => SqlType::Bytea,
        DataType::Date32 => SqlType::Date,
        DataType::Timestamp(_, Some(_)) => SqlType::TimestampTz,
        DataType::Timestamp(_, None) => SqlType::Timestamp,
        DataType::Interval(_) | DataType::Duration(_) => SqlType::Interval,
        other => {
            return Err(SluiceError::not_supported(
                format!("Avro field \"{name}\" of Arrow type {other}"),
                Some(
                    "records, arrays, maps and enums have no column type yet: declare the \
                     columns you need (fields not declared are skipped)",
                ),
            ))
        }
    })
}

/// Decodes Confluent-framed Avro for one source.
#[derive(Debug)]
pub struct AvroFormat {
    registry: Registry,
    /// A decoder per writer schema id seen, with the schema.
    decoders: SchemaCache<(Arc<str>, Decoder)>,
}

impl AvroFormat {
    /// Decodes with writer schemas from `registry`.
    pub fn new(registry: Registry) -> Self {
        AvroFormat {
            registry,
            decoders: SchemaCache::default(),
        }
    }

    /// Fetches the writer schemas of `records` not seen yet. Fails only
    /// when the registry cannot be asked (the poll is then retried); an id
    /// the registry does not have makes its records bad.
    pub async fn prepare(&self, records: &[&[u8]]) -> Result<()> {
        let ids: HashSet<u32> = records.iter().filter_map(|r| schema_id(r).ok()).collect();
        let registry = &self.registry;
        self.decoders
            .prepare(ids, registry, "Avro writer", |id| async move {
                let schema = registry.by_id(id).await?;
                Ok(decoder(id, &schema).map(|d| (schema, d)))
            })
            .await
    }

    /// Decodes records all of writer schema `id` into one batch (in the
    /// writer's columns), checking that each record is one whole value.
    fn decode_one_schema(&self, id: u32, records: &[&[u8]]) -> Result<RecordBatch> {
        let mut decoders = self.decoders.ready()?;
        let (schema, decoder) = decoders
            .get_mut(&id)
            .ok_or_else(|| bad(format!("schema id {id} is unknown")))?;
        let result = (|| {
            let mut parts = Vec::new();
            for chunk in records.chunks(MAX_ROWS) {
                for record in chunk {
                    let room = decoder.capacity();
                    let used = decoder
                        .decode(record)
                        .map_err(|e| bad(format!("invalid Avro record: {e}")))?;
                    if used != record.len() || decoder.capacity() + 1 != room {
                        return Err(bad(
                            "invalid Avro record: it does not hold exactly one value of its schema \
                             (truncated, or bytes left over)"
                                .to_owned(),
                        ));
                    }
                }
                if let Some(batch) = decoder
                    .flush()
                    .map_err(|e| bad(format!("invalid Avro record: {e}")))?
                {
                    parts.push(batch);
                }
            }
            match parts.as_slice() {
                [] => Ok(None),
                [one] => Ok(Some(one.clone())),
                [first, ..] => Ok(Some(concat_batches(&first.schema(), &parts)?)),
            }
        })();
        match result {
            Ok(Some(batch)) => Ok(batch),
            Ok(None) => Err(bad("no Avro rows decoded".to_owned())),
            Err(e) => {
                // The decoder may be mid-record: start it afresh.
                *decoder = crate::avro::decoder(id, schema)?;
                Err(e)
            }
        }
    }
}

impl RecordFormat for AvroFormat {
    fn validate(&self, _schema: &SchemaRef, record: &[u8]) -> Result<()> {
        let id = schema_id(record)?;
        if let Some(why) = self.decoders.unusable(id) {
            return Err(bad(why));
        }
        Ok(())
    }

    fn decode_all(&self, schema: &SchemaRef, records: &[&[u8]]) -> Result<RecordBatch> {
        by_group(schema, records, schema_id, |id, group| {
            by_name(&self.decode_one_schema(*id, group)?, schema, "Avro field")
        })
    }
}

/// The Avro schema a sink registers for rows of `schema`: Arrow's types,
/// with timestamps as `timestamp-micros` (UTC adjusted or local).
pub fn avro_schema_for(schema: &Schema) -> Result<(SchemaRef, AvroSchema)> {
    // arrow-avro writes the types it can name in Avro; a few Sluice types
    // are widened first (none today besides the checks below).
    for field in schema.fields() {
        if let DataType::Timestamp(unit, _) = field.data_type() {
            if *unit == TimeUnit::Nanosecond || *unit == TimeUnit::Second {
                return Err(SluiceError::not_supported(
                    format!(
                        "Avro sink column \"{}\" of type {}",
                        field.name(),
                        field.data_type()
                    ),
                    None,
                ));
            }
        }
    }
    let schema = Arc::new(Schema::new(schema.fields().clone()));
    let avro = AvroSchema::try_from(schema.as_ref()).map_err(|e| {
        SluiceError::not_supported(format!("an Avro schema for these columns ({e})"), None)
    })?;
    Ok((schema, avro))
}

/// Encodes rows as Confluent-framed Avro records of registered schema `id`.
pub struct AvroEncoder {
    encoder: Encoder,
}

impl std::fmt::Debug for AvroEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroEncoder").finish_non_exhaustive()
    }
}

impl AvroEncoder {
    /// An encoder for rows of `schema` (as [`avro_schema_for`] made it),
    /// framed with schema id `id`.
    pub fn new(schema: &SchemaRef, id: u32) -> Result<Self> {
        let encoder = WriterBuilder::new(schema.as_ref().clone())
            .with_fingerprint_strategy(FingerprintStrategy::Id(id))
            .build_encoder::<AvroSoeFormat>()
            .map_err(|e| SluiceError::internal(format!("avro encoder: {e}")))?;
        Ok(AvroEncoder { encoder })
    }

    /// One record per row of `batch`.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let batch = RecordBatch::try_new(self.encoder.schema(), batch.columns().to_vec())?;
        self.encoder
            .encode(&batch)
            .map_err(|e| SluiceError::internal(format!("avro encode: {e}")))?;
        Ok(self.encoder.flush().iter().map(|b| b.to_vec()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Field;

    /// Frames `rows` (id, name) as records of writer schema `id`.
    fn frames(schema: &Schema, id: u32, batch: &RecordBatch) -> Vec<Vec<u8>> {
        let mut e = AvroEncoder::new(&Arc::new(schema.clone()), id).expect("encoder");
        e.encode(batch).expect("encode")
    }

    #[test]
    fn records_of_two_writer_schemas_project_onto_the_columns() {
        let v1 = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]);
        let v2 = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("email", DataType::Utf8, true),
        ]);
        let b1 = RecordBatch::try_new(
            Arc::new(v1.clone()),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("a"), None])),
            ],
        )
        .expect("batch");
        let b2 = RecordBatch::try_new(
            Arc::new(v2.clone()),
            vec![
                Arc::new(Int64Array::from(vec![3])),
                Arc::new(StringArray::from(vec!["c"])),
                Arc::new(StringArray::from(vec!["c@x"])),
            ],
        )
        .expect("batch");
        let f1 = frames(&v1, 1, &b1);
        let f2 = frames(&v2, 2, &b2);
        let format = AvroFormat::new(
            Registry::new(crate::registry::RegistryOptions {
                url: "http://127.0.0.1:1".into(),
                auth: None,
                ca_pem: None,
            })
            .expect("client"),
        );
        for (id, s) in [(1, &v1), (2, &v2)] {
            let (_, avro) = avro_schema_for(s).expect("avro");
            let d = decoder(id, &avro.json_string).expect("decoder");
            format
                .decoders
                .insert(id, (Arc::from(avro.json_string.as_str()), d));
        }
        // Declared: id, email (added later), score (never written).
        let declared = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("email", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
        ]));
        // Interleaved: v1, v2, v1.
        let records: Vec<&[u8]> = vec![&f1[0], &f2[0], &f1[1]];
        let out = format.decode_all(&declared, &records).expect("decode");
        let ids = out
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("ids");
        assert_eq!(ids.values().to_vec(), vec![1, 3, 2], "rows in record order");
        let emails = out
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("emails");
        assert_eq!(
            (0..3)
                .map(|i| emails.is_valid(i).then(|| emails.value(i)))
                .collect::<Vec<_>>(),
            vec![None, Some("c@x"), None]
        );
        assert_eq!(out.column(2).null_count(), 3);

        // Truncated, with bytes left over, without the header, of an
        // unknown id: each is bad alone, and the good ones still decode.
        let truncated = &f1[0][..f1[0].len() - 1];
        let mut extra = f1[0].clone();
        extra.push(0);
        let unknown = [0u8, 0, 0, 0, 9, 2];
        let cases: Vec<(&[u8], &str)> = vec![
            (truncated, "exactly one value"),
            (&extra, "invalid Avro record"),
            (b"{\"id\": 1}", "zero byte"),
            (&[0, 0, 1], "shorter than its 5-byte header"),
            (&unknown, "unknown"),
        ];
        for (record, needle) in cases {
            let e = format
                .validate(&declared, record)
                .and_then(|()| format.decode_all(&declared, &[record]))
                .expect_err(needle);
            assert!(e.to_string().contains(needle), "{needle}: {e}");
            // The decoder is usable afterwards.
            let again = format
                .decode_all(&declared, &[&f1[0]])
                .expect("still decodes");
            assert_eq!(again.num_rows(), 1);
        }
    }
}
