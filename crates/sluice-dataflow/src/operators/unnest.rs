//! `Unnest`: one output row per element of a list column, the other
//! columns repeated. Stateless: every output row keeps its input row's
//! sign, so a retracted row retracts all the rows it expanded into. HOP and
//! CUMULATE windows are planned as an unnest of each row's windows.

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int8Array, UInt64Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Int8Type, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use sluice_common::{ChangeBatch, Result, SluiceError};

use crate::{OpContext, Operator};

/// Expands the list column `list` of its input.
pub struct Unnest {
    list: usize,
    /// For each output column, the input column it comes from (`list` for
    /// the expanded elements).
    sources: Vec<usize>,
    /// A NULL list gives one row with a NULL element (DataFusion's
    /// default); otherwise it gives no row, as an empty list does.
    preserve_nulls: bool,
    schema: SchemaRef,
    label: String,
}

impl Unnest {
    /// Checks that input column `list` is a list and that `sources` names
    /// one input column per output column.
    pub fn try_new(
        input: &SchemaRef,
        list: usize,
        sources: Vec<usize>,
        preserve_nulls: bool,
        schema: SchemaRef,
        label: String,
    ) -> Result<Self> {
        let list_type = input
            .fields()
            .get(list)
            .map(|f| f.data_type().clone())
            .ok_or_else(|| SluiceError::internal("unnest of a column the input lacks"))?;
        if !matches!(list_type, DataType::List(_) | DataType::LargeList(_)) {
            return Err(SluiceError::internal(format!(
                "unnest of a {list_type} column"
            )));
        }
        if sources.len() != schema.fields().len()
            || sources.iter().any(|&s| s >= input.fields().len())
        {
            return Err(SluiceError::internal(
                "unnest columns do not match its schema",
            ));
        }
        Ok(Unnest {
            list,
            sources,
            preserve_nulls,
            schema,
            label,
        })
    }

    /// For each output row, the input row it repeats and the index of its
    /// element in the list's values (`None` for the NULL of a NULL list).
    fn plan(&self, list: &ArrayRef) -> (UInt64Array, UInt64Array) {
        let (offsets, nulls): (Vec<(usize, usize)>, _) = match list.data_type() {
            DataType::LargeList(_) => {
                let l = list.as_list::<i64>();
                (
                    l.offsets()
                        .windows(2)
                        .map(|w| (w[0] as usize, w[1] as usize))
                        .collect(),
                    l.nulls().cloned(),
                )
            }
            _ => {
                let l = list.as_list::<i32>();
                (
                    l.offsets()
                        .windows(2)
                        .map(|w| (w[0] as usize, w[1] as usize))
                        .collect(),
                    l.nulls().cloned(),
                )
            }
        };
        let mut rows = Vec::new();
        let mut elements = Vec::new();
        for (row, (start, end)) in offsets.into_iter().enumerate() {
            if nulls.as_ref().is_some_and(|n| n.is_null(row)) {
                if self.preserve_nulls {
                    rows.push(row as u64);
                    elements.push(None);
                }
                continue;
            }
            for e in start..end {
                rows.push(row as u64);
                elements.push(Some(e as u64));
            }
        }
        (UInt64Array::from(rows), UInt64Array::from(elements))
    }
}

#[async_trait]
impl Operator for Unnest {
    async fn process(
        &self,
        _input: usize,
        changes: ChangeBatch,
        _state: &[u8],
        _ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let list = changes.batch.column(self.list).clone();
        let (rows, elements) = self.plan(&list);
        let values = match list.data_type() {
            DataType::LargeList(_) => list.as_list::<i64>().values().clone(),
            _ => list.as_list::<i32>().values().clone(),
        };
        let flat = take(values.as_ref(), &elements, None)?;
        let columns = self
            .sources
            .iter()
            .map(|&s| {
                if s == self.list {
                    Ok(flat.clone())
                } else {
                    Ok(take(changes.batch.column(s).as_ref(), &rows, None)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )?;
        let signs: Option<Int8Array> = match &changes.signs {
            None => None,
            Some(signs) => Some(take(signs, &rows, None)?.as_primitive::<Int8Type>().clone()),
        };
        Ok(ChangeBatch { batch, signs })
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn stateless(&self) -> bool {
        true
    }

    fn explain(&self) -> String {
        format!("{} (stateless)", self.label)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, ListArray};
    use datafusion::arrow::datatypes::{Field, Int64Type, Schema};
    use datafusion::prelude::SessionContext;
    use sluice_state::{MemoryBackend, StateTxn};

    use super::*;

    async fn run(op: &Unnest, changes: ChangeBatch) -> ChangeBatch {
        let mut txn = StateTxn::new(Arc::new(MemoryBackend::new()));
        let session = SessionContext::new();
        let mut late = Vec::new();
        let mut ctx = OpContext {
            txn: &mut txn,
            datafusion: &session,
            late: &mut late,
        };
        op.process(0, changes, &[], &mut ctx)
            .await
            .expect("process")
    }

    #[tokio::test]
    async fn each_element_becomes_a_row_with_its_rows_sign() {
        // in:  (k, list)            sign      out: (k, element)  sign
        //      (1, [10, 11])         +1             (1, 10) +1, (1, 11) +1
        //      (2, [])               -1             -
        //      (3, NULL)             -1             (3, NULL) -1
        //      (4, [40])             -1             (4, 40) -1
        let input = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new_list("l", Field::new_list_field(DataType::Int64, true), true),
        ]));
        let lists = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(10), Some(11)]),
            Some(vec![]),
            None,
            Some(vec![Some(40)]),
        ]);
        let batch = RecordBatch::try_new(
            input.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(lists),
            ],
        )
        .expect("batch");
        let output = Arc::new(Schema::new(vec![
            Field::new("e", DataType::Int64, true),
            Field::new("k", DataType::Int64, true),
        ]));
        let op = Unnest::try_new(&input, 1, vec![1, 0], true, output.clone(), "t".into())
            .expect("unnest");
        let out = run(&op, ChangeBatch::new(batch.clone(), vec![1, -1, -1, -1])).await;
        let expected = RecordBatch::try_new(
            output.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(10), Some(11), None, Some(40)])),
                Arc::new(Int64Array::from(vec![1, 1, 3, 4])),
            ],
        )
        .expect("expected");
        assert_eq!(out, ChangeBatch::new(expected, vec![1, 1, -1, -1]));

        // Without NULL preservation a NULL list is dropped like an empty one;
        // all-insert input stays all inserts.
        let op = Unnest::try_new(&input, 1, vec![1, 0], false, output.clone(), "t".into())
            .expect("unnest");
        let out = run(&op, ChangeBatch::inserts(batch)).await;
        assert_eq!(out.signs, None);
        assert_eq!(out.num_rows(), 3);

        assert!(Unnest::try_new(&input, 0, vec![0, 1], true, output, "t".into()).is_err());
    }
}
