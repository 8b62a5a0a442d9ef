//! Reads of ordered input rows: what a change needs of a side whose rows
//! lead with a column ([`super::codec::Lead`]), instead of all its rows.
//!
//! - A GROUP BY whose aggregates are all `max` (or all `min`) of one input
//!   column, over an input that retracts: its rows of a group are in that
//!   column's order, so the group's answer needs only the last (first) row.
//!   NULLs sort where they are skipped.
//! - A join whose condition compares a column of each side
//!   (`a.x >= b.y`, as in Nexmark q5's `num >= maxn`): each side's rows of a
//!   key are in the order of its compared column, so a change reads only
//!   the other side's rows the comparison can hold for.

use datafusion::arrow::array::RecordBatch;
use datafusion::common::Column;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};
use sluice_common::Result;
use sluice_state::prefix_successor;

use super::{PartitionedState, Rows};
use crate::operators::layout::{count_of, partition_prefix};
use crate::OpContext;

/// A GROUP BY answered by the extreme row of each group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extreme {
    /// The aggregates are `max` (else `min`).
    pub max: bool,
    /// The aggregated input column.
    pub column: usize,
}

/// Which rows of a side a change of the other side can meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    /// The side's compared column.
    pub column: usize,
    /// The other side's compared column.
    pub other_column: usize,
    /// `column >= (or >) other_column`: rows from the smallest value the
    /// change has; else rows up to its largest.
    pub from_below: bool,
}

/// The aggregate call of an aggregate expression (maybe aliased), when it
/// has no DISTINCT, FILTER or ORDER BY: the shapes whose state can be kept
/// other than as all input rows (merged, running totals, ordered).
pub fn plain_aggregate(e: &Expr) -> Option<&AggregateFunction> {
    let e = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    };
    let Expr::AggregateFunction(f) = e else {
        return None;
    };
    let plain = !f.params.distinct && f.params.filter.is_none() && f.params.order_by.is_empty();
    plain.then_some(f)
}

fn aggregate_column(e: &Expr) -> Option<(bool, &Column)> {
    let f = plain_aggregate(e)?;
    let max = match f.func.name() {
        "max" => true,
        "min" => false,
        _ => return None,
    };
    match f.params.args.as_slice() {
        [Expr::Column(c)] => Some((max, c)),
        _ => None,
    }
}

/// The extreme a GROUP BY needs, when all its aggregates are `max`, or all
/// `min`, of the same input column.
pub(crate) fn extreme_of(plan: &LogicalPlan) -> Option<Extreme> {
    let LogicalPlan::Aggregate(a) = plan else {
        return None;
    };
    let mut found: Option<(bool, &Column)> = None;
    for e in &a.aggr_expr {
        let (max, column) = aggregate_column(e)?;
        match found {
            Some((m, c)) if m != max || c != column => return None,
            _ => found = Some((max, column)),
        }
    }
    let (max, column) = found?;
    let column = a.input.schema().index_of_column(column).ok()?;
    Some(Extreme { max, column })
}

/// For each side of a join, the range its rows are read by: from the first
/// comparison of the condition between a column of each side (of the same
/// type). A row outside it meets none of the changed rows of the other
/// side, whatever the join type.
pub(crate) fn ranges_of(plan: &LogicalPlan) -> [Option<Range>; 2] {
    let LogicalPlan::Join(j) = plan else {
        return [None, None];
    };
    let Some(filter) = j.filter.as_ref() else {
        return [None, None];
    };
    let (left, right) = (j.left.schema(), j.right.schema());
    for conjunct in split_conjunction(filter) {
        let Expr::BinaryExpr(BinaryExpr {
            left: l,
            op,
            right: r,
        }) = conjunct
        else {
            continue;
        };
        let (Expr::Column(a), Expr::Column(b)) = (l.as_ref(), r.as_ref()) else {
            continue;
        };
        // `a op b` with a of the left side, or the same turned around.
        let (a, op, b) = match (left.index_of_column(a), right.index_of_column(b)) {
            (Ok(a), Ok(b)) => (a, *op, b),
            _ => match (left.index_of_column(b), right.index_of_column(a)) {
                (Ok(b), Ok(a)) => match op.swap() {
                    Some(op) => (b, op, a),
                    None => continue,
                },
                _ => continue,
            },
        };
        if left.field(a).data_type() != right.field(b).data_type() {
            continue;
        }
        let left_from_below = match op {
            Operator::Gt | Operator::GtEq => true,
            Operator::Lt | Operator::LtEq => false,
            _ => continue,
        };
        return [
            Some(Range {
                column: a,
                other_column: b,
                from_below: left_from_below,
            }),
            Some(Range {
                column: b,
                other_column: a,
                from_below: !left_from_below,
            }),
        ];
    }
    [None, None]
}

impl PartitionedState {
    /// The extreme row of input 0 under `key` (by [`Extreme`]), if any.
    pub(crate) fn load_extreme(
        &self,
        ctx: &OpContext<'_>,
        prefix: &[u8],
        extreme: Extreme,
        key: &[u8],
    ) -> Result<Option<(Vec<u8>, i64)>> {
        let at = partition_prefix(prefix, PartitionedState::side(0), key);
        let end = prefix_successor(&at);
        let Some((k, _)) = ctx.txn.first_in_range(&at, end.as_deref(), extreme.max)? else {
            return Ok(None);
        };
        Ok(Some((k[at.len()..].to_vec(), 1)))
    }

    /// The rows of side `side` under the keys of `change` (rows of the other
    /// side, whose keys are `keys`) that `range` lets them meet.
    pub(crate) fn load_in_range(
        &self,
        ctx: &OpContext<'_>,
        prefix: &[u8],
        side: usize,
        range: Range,
        change: &RecordBatch,
        keys: &[Vec<u8>],
    ) -> Result<Rows> {
        let Some(lead) = &self.inputs[side].lead else {
            return Ok(Vec::new());
        };
        let column = change.column(range.other_column);
        let values = lead.value.convert_columns(std::slice::from_ref(column))?;
        // The widest bound per key among the change's non-NULL values.
        let mut bounds: Vec<(&[u8], &[u8])> = Vec::new();
        let mut index: std::collections::HashMap<&[u8], usize> = Default::default();
        for (i, key) in keys.iter().enumerate() {
            if column.is_null(i) {
                continue;
            }
            let value = values.row(i).data();
            match index.get(key.as_slice()) {
                Some(&at) => {
                    let bound = &mut bounds[at].1;
                    if (range.from_below && value < *bound) || (!range.from_below && value > *bound)
                    {
                        *bound = value;
                    }
                }
                None => {
                    index.insert(key, bounds.len());
                    bounds.push((key, value));
                }
            }
        }
        let mut rows = Vec::new();
        for (key, bound) in bounds {
            let at = partition_prefix(prefix, PartitionedState::side(side), key);
            let mut edge = at.clone();
            edge.extend_from_slice(bound);
            let entries = if range.from_below {
                let end = prefix_successor(&at);
                ctx.txn.scan_range(&edge, end.as_deref())?
            } else {
                // Through every row whose column equals the bound.
                let end = prefix_successor(&edge);
                ctx.txn.scan_range(&at, end.as_deref())?
            };
            for (k, v) in entries {
                rows.push((k[at.len()..].to_vec(), count_of(&v)?));
            }
        }
        Ok(rows)
    }
}
