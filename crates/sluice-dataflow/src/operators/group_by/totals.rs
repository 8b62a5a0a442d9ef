//! The running-totals strategy of [`GroupBy`]: over an input that retracts rows, when every aggregate is
//! `count`, `sum` or `avg` of integers: each group keeps running totals
//! (rows, and per aggregate the sum and count of its non-NULL values), a
//! change adds or subtracts its rows, and the group's row is rebuilt from
//! the totals. Nothing is recomputed from the group's rows, so the cost of a
//! change does not grow with the group (Nexmark q4: the average of every
//! auction's final price per category).
//!
//! State: `<totals> <key length u32> <key>` -> `<rows i64>` then, per
//! aggregate, `<sum i128> <count i64>`, big-endian.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::DataType;
use datafusion::physical_plan::PhysicalExpr;
use sluice_common::{ChangeBatch, Result, SluiceError};

use super::GroupBy;
use crate::operators::layout::partition_prefix;
use crate::operators::layout::partitioned::TOTALS;
use crate::OpContext;

/// An aggregate kept as running totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    /// `count(*)` or `count(x)`.
    Count,
    /// `sum(x)` of integers.
    Sum,
    /// `avg(x)` of integers.
    Avg,
}

/// One aggregate of an inverted GROUP BY: what it totals, over which
/// argument (`None`: every row, `count(*)`).
pub struct Inverted {
    /// How the totals become the aggregate's value.
    pub total: Total,
    /// The argument, evaluated on the input.
    pub arg: Option<Arc<dyn PhysicalExpr>>,
}

/// Whether `sum`/`avg` of this type can be kept exactly as an `i128` total.
pub fn invertible_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Totals {
    rows: i64,
    sums: Vec<i128>,
    counts: Vec<i64>,
}

impl Totals {
    fn zero(n: usize) -> Self {
        Totals {
            rows: 0,
            sums: vec![0; n],
            counts: vec![0; n],
        }
    }

    fn decode(bytes: &[u8], n: usize) -> Result<Self> {
        let corrupt = || SluiceError::Storage("corrupt aggregate totals".into());
        if bytes.len() != 8 + n * 24 {
            return Err(corrupt());
        }
        let i64_at = |at: usize| -> Result<i64> {
            Ok(i64::from_be_bytes(
                bytes[at..at + 8].try_into().map_err(|_| corrupt())?,
            ))
        };
        let mut t = Totals::zero(n);
        t.rows = i64_at(0)?;
        for j in 0..n {
            let at = 8 + j * 24;
            t.sums[j] = i128::from_be_bytes(bytes[at..at + 16].try_into().map_err(|_| corrupt())?);
            t.counts[j] = i64_at(at + 16)?;
        }
        Ok(t)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.sums.len() * 24);
        out.extend_from_slice(&self.rows.to_be_bytes());
        for (s, c) in self.sums.iter().zip(&self.counts) {
            out.extend_from_slice(&s.to_be_bytes());
            out.extend_from_slice(&c.to_be_bytes());
        }
        out
    }
}

impl GroupBy {
    /// Applies `changes` (with their group `keys`) to the groups' running
    /// totals and returns the change of the groups' rows.
    pub(super) fn apply_totals(
        &self,
        inverted: &[Inverted],
        keys: &[Vec<u8>],
        changes: &ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let batch = &changes.batch;
        let n = inverted.len();
        // Each argument's values; `sum` and `avg` ones as Int64.
        let args = inverted
            .iter()
            .map(|a| match &a.arg {
                Some(arg) => {
                    let values = arg.evaluate(batch)?.into_array(batch.num_rows())?;
                    let values = match a.total {
                        Total::Count => values,
                        Total::Sum | Total::Avg => cast(&values, &DataType::Int64)?,
                    };
                    Ok(Some(values))
                }
                None => Ok(None),
            })
            .collect::<Result<Vec<Option<ArrayRef>>>>()?;
        let integers = args
            .iter()
            .map(|a| {
                a.as_ref()
                    .and_then(|v| v.as_any().downcast_ref::<Int64Array>())
            })
            .collect::<Vec<_>>();
        let nulls = args
            .iter()
            .map(|a| a.as_ref().and_then(|v| v.logical_nulls()))
            .collect::<Vec<_>>();
        // The change of each touched group, in order of first touch.
        let mut index: HashMap<&[u8], usize> = HashMap::new();
        let mut groups: Vec<&[u8]> = Vec::new();
        let mut first_row: Vec<u32> = Vec::new();
        let mut deltas: Vec<Totals> = Vec::new();
        for (row, key) in keys.iter().enumerate() {
            let g = *index.entry(key.as_slice()).or_insert_with(|| {
                groups.push(key.as_slice());
                first_row.push(row as u32);
                deltas.push(Totals::zero(n));
                groups.len() - 1
            });
            let sign = i64::from(changes.sign(row));
            let d = &mut deltas[g];
            d.rows += sign;
            for (j, arg) in args.iter().enumerate() {
                match (arg, integers[j]) {
                    (None, _) => d.counts[j] += sign,
                    (Some(_), _) if nulls[j].as_ref().is_some_and(|n| n.is_null(row)) => {}
                    (Some(_), Some(values)) => {
                        d.sums[j] += i128::from(sign) * i128::from(values.value(row));
                        d.counts[j] += sign;
                    }
                    (Some(_), None) => d.counts[j] += sign,
                }
            }
        }
        let state_keys: Vec<Vec<u8>> = groups
            .iter()
            .map(|k| partition_prefix(prefix, TOTALS, k))
            .collect();
        let stored = ctx.txn.multi_get(&state_keys)?;
        let mut old = Vec::with_capacity(groups.len());
        let mut new = Vec::with_capacity(groups.len());
        for ((state_key, stored), delta) in state_keys.into_iter().zip(stored).zip(deltas) {
            let before = match stored {
                Some(bytes) => Totals::decode(&bytes, n)?,
                None => Totals::zero(n),
            };
            let mut after = before.clone();
            after.rows += delta.rows;
            for j in 0..n {
                after.sums[j] += delta.sums[j];
                after.counts[j] += delta.counts[j];
            }
            if after.rows < 0 {
                return Err(SluiceError::internal(format!(
                    "{}: a group would hold {} rows",
                    self.label, after.rows
                )));
            }
            if after.rows == 0 {
                ctx.txn.delete(state_key);
            } else if after != before {
                ctx.txn.put(state_key, after.encode());
            }
            old.push(before);
            new.push(after);
        }
        // The group columns, evaluated once for the old and the new rows.
        let group_columns = self.parts.inputs[0]
            .keys
            .iter()
            .map(|k| k.evaluate(batch)?.into_array(batch.num_rows()))
            .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
        let old_rows = self.group_rows(inverted, &group_columns, &first_row, &old)?;
        let new_rows = self.group_rows(inverted, &group_columns, &first_row, &new)?;
        let old_rows = self.plan.encode(&old_rows)?;
        Ok(self.plan.diff(&old_rows, &new_rows)?.0)
    }

    /// The output rows of the groups whose totals are `totals` (one row per
    /// group that has rows); a group's key columns are taken from its first
    /// row in `group_columns` (the change's group keys).
    fn group_rows(
        &self,
        inverted: &[Inverted],
        group_columns: &[ArrayRef],
        first_row: &[u32],
        totals: &[Totals],
    ) -> Result<RecordBatch> {
        let live: Vec<usize> = (0..totals.len()).filter(|&g| totals[g].rows > 0).collect();
        let rows = UInt32Array::from(live.iter().map(|&g| first_row[g]).collect::<Vec<_>>());
        let fields = self.plan.schema.fields();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len());
        for (values, field) in group_columns.iter().zip(fields.iter()) {
            columns.push(cast(&take(values, &rows, None)?, field.data_type())?);
        }
        for (j, agg) in inverted.iter().enumerate() {
            let field = &fields[group_columns.len() + j];
            let column: ArrayRef = match agg.total {
                Total::Count => Arc::new(Int64Array::from(
                    live.iter()
                        .map(|&g| totals[g].counts[j])
                        .collect::<Vec<_>>(),
                )),
                Total::Sum => {
                    let sums = live
                        .iter()
                        .map(|&g| {
                            if totals[g].counts[j] == 0 {
                                return Ok(None);
                            }
                            i64::try_from(totals[g].sums[j]).map(Some).map_err(|_| {
                                SluiceError::OutOfRange {
                                    message: format!(
                                        "bigint out of range: sum {}",
                                        totals[g].sums[j]
                                    ),
                                }
                            })
                        })
                        .collect::<Result<Vec<Option<i64>>>>()?;
                    Arc::new(Int64Array::from(sums))
                }
                Total::Avg => Arc::new(Float64Array::from(
                    live.iter()
                        .map(|&g| {
                            let t = &totals[g];
                            (t.counts[j] != 0).then(|| t.sums[j] as f64 / t.counts[j] as f64)
                        })
                        .collect::<Vec<_>>(),
                )),
            };
            columns.push(cast(&column, field.data_type())?);
        }
        Ok(RecordBatch::try_new_with_options(
            self.plan.schema.clone(),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(live.len())),
        )?)
    }
}
