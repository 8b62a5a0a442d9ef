//! How a partitioned input's rows are encoded in state.
//!
//! Rows are `arrow-row` encoded, so the entries of a key are in the order
//! of the encoded columns. An input may have a *leading* column, encoded
//! first: its rows of a key are then in that column's order, and a range
//! of its values is a range of keys (see [`super::ordered`]).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{take_record_batch, SortOptions};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::DFSchemaRef;
use datafusion::physical_plan::PhysicalExpr;
use sluice_common::{batch_with_rows, Result};

/// The column an input's encoded rows lead with.
pub(crate) struct Lead {
    /// Encodes values of it alone, exactly as they lead a row.
    pub value: RowConverter,
}

pub(crate) struct InputCodec {
    pub df_schema: DFSchemaRef,
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub key_codec: Option<RowConverter>,
    pub schema: SchemaRef,
    rows: RowConverter,
    /// The input's columns in encoded order (the leading column first).
    order: Vec<usize>,
    /// The schema in encoded order.
    stored: SchemaRef,
    pub lead: Option<Lead>,
}

impl InputCodec {
    /// Encodes rows of `df_schema` in its own column order.
    pub fn try_new(
        df_schema: DFSchemaRef,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        key_codec: Option<RowConverter>,
    ) -> Result<Self> {
        let schema: SchemaRef = Arc::new(df_schema.as_arrow().clone());
        let order: Vec<usize> = (0..schema.fields().len()).collect();
        Ok(InputCodec {
            rows: converter_of(&schema, &order, None)?,
            stored: schema.clone(),
            order,
            df_schema,
            keys,
            key_codec,
            schema,
            lead: None,
        })
    }

    /// Encodes rows leading with `column`, ascending, NULLs first or last.
    pub fn lead_with(&mut self, column: usize, nulls_first: bool) -> Result<()> {
        let options = SortOptions {
            descending: false,
            nulls_first,
        };
        let mut order = vec![column];
        order.extend((0..self.schema.fields().len()).filter(|c| *c != column));
        self.rows = converter_of(&self.schema, &order, Some(options))?;
        self.stored = Arc::new(Schema::new(
            order
                .iter()
                .map(|c| self.schema.field(*c).clone())
                .collect::<Vec<_>>(),
        ));
        self.order = order;
        self.lead = Some(Lead {
            value: RowConverter::new(vec![SortField::new_with_options(
                self.schema.field(column).data_type().clone(),
                options,
            )])?,
        });
        Ok(())
    }

    /// Each row of `batch`, encoded.
    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        if batch.num_columns() == 0 {
            return Ok(vec![Vec::new(); batch.num_rows()]);
        }
        let columns: Vec<ArrayRef> = self
            .order
            .iter()
            .map(|c| batch.column(*c).clone())
            .collect();
        let rows = self.rows.convert_columns(&columns)?;
        Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
    }

    /// Encoded rows, each repeated by its multiplicity, as a batch.
    pub fn decode<R: AsRef<[u8]>>(&self, rows: &[(R, i64)]) -> Result<RecordBatch> {
        let stored = decode_rows(&self.rows, &self.stored, rows)?;
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.order.len()];
        for (position, column) in self.order.iter().enumerate() {
            columns[*column] = Some(stored.column(position).clone());
        }
        let columns: Vec<ArrayRef> = columns.into_iter().flatten().collect();
        batch_with_rows(self.schema.clone(), columns, stored.num_rows())
    }
}

fn converter_of(
    schema: &SchemaRef,
    order: &[usize],
    lead: Option<SortOptions>,
) -> Result<RowConverter> {
    let fields = order
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let data_type = schema.field(*c).data_type().clone();
            match (i, lead) {
                (0, Some(options)) => SortField::new_with_options(data_type, options),
                _ => SortField::new(data_type),
            }
        })
        .collect();
    Ok(RowConverter::new(fields)?)
}

/// Encoded rows (each repeated by its multiplicity) as a batch of `schema`.
pub(crate) fn decode_rows<R: AsRef<[u8]>>(
    converter: &RowConverter,
    schema: &SchemaRef,
    rows: &[(R, i64)],
) -> Result<RecordBatch> {
    if rows.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    if schema.fields().is_empty() {
        // Rows without columns: only how many there are matters.
        let count = rows.iter().map(|(_, n)| n.unsigned_abs() as usize).sum();
        return batch_with_rows(schema.clone(), Vec::new(), count);
    }
    let parser = converter.parser();
    let distinct = converter.convert_rows(rows.iter().map(|(r, _)| parser.parse(r.as_ref())))?;
    let batch = RecordBatch::try_new(schema.clone(), distinct)?;
    if rows.iter().all(|(_, n)| n.unsigned_abs() == 1) {
        return Ok(batch);
    }
    let mut repeat = Vec::new();
    for (i, (_, n)) in rows.iter().enumerate() {
        repeat.extend(std::iter::repeat_n(i as u32, n.unsigned_abs() as usize));
    }
    Ok(take_record_batch(&batch, &UInt32Array::from(repeat))?)
}
