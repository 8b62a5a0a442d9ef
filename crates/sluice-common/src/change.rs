//! The change batch: what flows between operators.
//!
//! An Arrow `RecordBatch` plus a sign per row: `+1` inserts the row, `-1`
//! deletes it (an update is a delete followed by an insert). Append-only
//! inputs carry no signs (`signs: None`, every row an insert).

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int8Array, RecordBatch, RecordBatchOptions,
};
use datafusion::arrow::compute::{concat_batches, filter, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;

use crate::Result;

/// A batch of `rows` rows; unlike `RecordBatch::try_new`, also when there
/// are no columns at all (`count(*)` reads rows, not columns).
pub fn batch_with_rows(
    schema: SchemaRef,
    columns: Vec<ArrayRef>,
    rows: usize,
) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new_with_options(
        schema,
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// Rows with a sign each.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeBatch {
    /// The rows.
    pub batch: RecordBatch,
    /// `+1` or `-1` per row; `None` means all inserts.
    pub signs: Option<Int8Array>,
}

impl ChangeBatch {
    /// Inserts of every row of `batch`.
    pub fn inserts(batch: RecordBatch) -> Self {
        ChangeBatch { batch, signs: None }
    }

    /// Rows with explicit signs (`+1` / `-1`).
    pub fn new(batch: RecordBatch, signs: Vec<i8>) -> Self {
        ChangeBatch {
            batch,
            signs: Some(Int8Array::from(signs)),
        }
    }

    /// No rows.
    pub fn empty(schema: SchemaRef) -> Self {
        ChangeBatch::inserts(RecordBatch::new_empty(schema))
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    /// Whether every row is an insert.
    pub fn is_append_only(&self) -> bool {
        match &self.signs {
            None => true,
            Some(s) => s.values().iter().all(|&v| v > 0),
        }
    }

    /// The sign of row `i`.
    pub fn sign(&self, i: usize) -> i8 {
        self.signs.as_ref().map_or(1, |s| s.value(i))
    }

    /// The rows of the schema's columns, same signs.
    pub fn with_columns(&self, schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<Self> {
        Ok(ChangeBatch {
            batch: batch_with_rows(schema, columns, self.num_rows())?,
            signs: self.signs.clone(),
        })
    }

    /// The rows where `mask` is true (NULL counts as false).
    pub fn filter(&self, mask: &BooleanArray) -> Result<Self> {
        let mask = if mask.null_count() > 0 {
            BooleanArray::from(
                mask.iter()
                    .map(|v| Some(v == Some(true)))
                    .collect::<Vec<_>>(),
            )
        } else {
            mask.clone()
        };
        let batch = filter_record_batch(&self.batch, &mask)?;
        let signs = match &self.signs {
            Some(s) => Some(
                filter(s, &mask)?
                    .as_any()
                    .downcast_ref::<Int8Array>()
                    .cloned()
                    .ok_or_else(|| crate::SluiceError::internal("filtered signs are not Int8"))?,
            ),
            None => None,
        };
        Ok(ChangeBatch { batch, signs })
    }

    /// All rows of `parts`, in order, as one batch.
    pub fn concat(schema: SchemaRef, parts: &[ChangeBatch]) -> Result<Self> {
        let batch = concat_batches(&schema, parts.iter().map(|p| &p.batch))?;
        if parts.iter().all(|p| p.signs.is_none()) {
            return Ok(ChangeBatch::inserts(batch));
        }
        let mut signs = Vec::with_capacity(batch.num_rows());
        for p in parts {
            signs.extend((0..p.num_rows()).map(|i| p.sign(i)));
        }
        Ok(ChangeBatch::new(batch, signs))
    }

    /// Same rows, every sign flipped.
    pub fn negated(&self) -> Self {
        let signs: Vec<i8> = (0..self.num_rows()).map(|i| -self.sign(i)).collect();
        ChangeBatch::new(self.batch.clone(), signs)
    }

    /// The schema of the rows.
    pub fn schema(&self) -> SchemaRef {
        self.batch.schema()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(values: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).expect("batch")
    }

    #[test]
    fn concat_filter_and_negate_keep_signs_aligned() {
        let inserts = ChangeBatch::inserts(batch(vec![1, 2]));
        let mixed = ChangeBatch::new(batch(vec![3, 4]), vec![-1, 1]);
        let all = ChangeBatch::concat(inserts.schema(), &[inserts.clone(), mixed]).expect("concat");
        assert_eq!(
            all,
            ChangeBatch::new(batch(vec![1, 2, 3, 4]), vec![1, 1, -1, 1])
        );
        assert!(inserts.is_append_only());
        assert!(!all.is_append_only());
        let mask = BooleanArray::from(vec![Some(false), None, Some(true), Some(true)]);
        let kept = all.filter(&mask).expect("filter");
        assert_eq!(kept, ChangeBatch::new(batch(vec![3, 4]), vec![-1, 1]));
        assert_eq!(
            kept.negated(),
            ChangeBatch::new(batch(vec![3, 4]), vec![1, -1])
        );
    }
}
