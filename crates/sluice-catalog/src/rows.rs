//! Encoding of table rows for the state store, with `arrow-row`.
//!
//! Key: the primary key columns in `arrow-row`'s memcomparable form, so keys
//! sort like the values. Value: every column, in the same form (decodable
//! back into Arrow arrays in one vectorised pass).

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use sluice_common::Result;

/// Encodes and decodes the rows of one table.
#[derive(Debug)]
pub struct RowCodec {
    schema: SchemaRef,
    key_indices: Vec<usize>,
    keys: RowConverter,
    values: RowConverter,
}

impl RowCodec {
    /// A codec for rows of `schema` keyed by the columns at `key_indices`.
    pub fn try_new(schema: SchemaRef, key_indices: Vec<usize>) -> Result<Self> {
        let fields = |indices: &mut dyn Iterator<Item = usize>| -> Vec<SortField> {
            indices
                .map(|i| SortField::new(schema.field(i).data_type().clone()))
                .collect()
        };
        let keys = RowConverter::new(fields(&mut key_indices.iter().copied()))?;
        let values = RowConverter::new(fields(&mut (0..schema.fields().len())))?;
        Ok(RowCodec {
            schema,
            key_indices,
            keys,
            values,
        })
    }

    /// The encoded key of every row of `batch`.
    pub fn encode_keys(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let columns: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let rows = self.keys.convert_columns(&columns)?;
        Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
    }

    /// The encoded key of every row, given the key columns alone (in key
    /// order).
    pub fn encode_key_columns(&self, columns: &[ArrayRef]) -> Result<Vec<Vec<u8>>> {
        let rows = self.keys.convert_columns(columns)?;
        Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
    }

    /// The positions of the key columns in a row.
    pub fn key_indices(&self) -> &[usize] {
        &self.key_indices
    }

    /// The encoded value (all columns) of every row of `batch`.
    pub fn encode_values(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let rows = self.values.convert_columns(batch.columns())?;
        Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
    }

    /// Decodes values written by [`Self::encode_values`] back into a batch.
    pub fn decode_values<'a>(
        &self,
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<RecordBatch> {
        let parser = self.values.parser();
        let rows: Vec<_> = values.into_iter().map(|v| parser.parse(v)).collect();
        if rows.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let columns = self.values.convert_rows(rows)?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array,
        IntervalMonthDayNanoArray, StringArray, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::{
        DataType, Field, IntervalMonthDayNano, IntervalUnit, Schema, TimeUnit,
    };

    use super::*;

    #[test]
    fn values_round_trip_and_keys_sort_like_values() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("f", DataType::Float64, true),
            Field::new("n", DataType::Decimal128(10, 2), true),
            Field::new("b", DataType::Binary, true),
            Field::new("d", DataType::Date32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("i", DataType::Interval(IntervalUnit::MonthDayNano), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![10, -3])),
                Arc::new(StringArray::from(vec![Some("ada"), None])),
                Arc::new(BooleanArray::from(vec![Some(true), None])),
                Arc::new(Float64Array::from(vec![5.0, -0.5])),
                Arc::new(
                    Decimal128Array::from(vec![1110, -5])
                        .with_precision_and_scale(10, 2)
                        .expect("decimal"),
                ),
                Arc::new(BinaryArray::from(vec![Some(&b"\x00\xff"[..]), None])),
                Arc::new(Date32Array::from(vec![Some(19000), None])),
                Arc::new(TimestampMicrosecondArray::from(vec![Some(1), None])),
                Arc::new(IntervalMonthDayNanoArray::from(vec![
                    Some(IntervalMonthDayNano::new(1, 2, 3)),
                    None,
                ])),
            ],
        )
        .expect("batch");
        let codec = RowCodec::try_new(schema, vec![0]).expect("codec");
        let values = codec.encode_values(&batch).expect("encode");
        let back = codec
            .decode_values(values.iter().map(Vec::as_slice))
            .expect("decode");
        assert_eq!(back, batch);
        let keys = codec.encode_keys(&batch).expect("keys");
        assert!(keys[1] < keys[0], "-3 sorts before 10");
        let empty = codec.decode_values(std::iter::empty()).expect("empty");
        assert_eq!(empty.num_rows(), 0);
    }
}
