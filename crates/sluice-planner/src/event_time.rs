//! Watermark derivation: which columns of a plan node the watermark bounds.
//!
//! A stream's watermark `W` says rows with event time below `W` are late.
//! Through the plan, a column computed from the event time by a function
//! that never decreases (`date_bin`, adding or subtracting a constant, a
//! cast) is bounded too: rows that are not late have `f(ts) >= f(W)`. A
//! GROUP BY on such a column (`window_start`, `window_end`) knows which
//! groups can still change; an interval join knows which rows can still
//! match. Columns are tracked as [`LBound`]s, expressions over the
//! watermark, and made physical ([`Bound`]) for the operators.

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{Cast, ScalarFunction};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};
use datafusion::prelude::SessionContext;
use sluice_catalog::Catalog;
use sluice_common::Result;
use sluice_dataflow::operators::{Bound, Expiry, WATERMARK_COLUMN};
use sluice_sql::RelationKind;

/// A lower bound on a column's values in rows that are not late: the
/// smallest of `exprs`, expressions over [`WATERMARK_COLUMN`].
#[derive(Clone, Debug)]
pub(crate) struct LBound {
    exprs: Vec<Expr>,
    watermark_type: DataType,
    /// The column is the event time itself.
    pub identity: bool,
}

/// One optional bound per output column of a node.
pub(crate) type Bounds = Vec<Option<LBound>>;

impl LBound {
    /// The bound, ready to evaluate.
    pub fn physical(&self, ctx: &SessionContext) -> Result<Bound> {
        let schema = DFSchema::try_from(Schema::new(vec![Field::new(
            WATERMARK_COLUMN,
            self.watermark_type.clone(),
            true,
        )]))?;
        let exprs = self
            .exprs
            .iter()
            .map(|e| Ok(ctx.create_physical_expr(e.clone(), &schema)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Bound {
            exprs,
            watermark_type: self.watermark_type.clone(),
        })
    }

    pub(crate) fn map(&self, f: impl Fn(Expr) -> Expr) -> LBound {
        LBound {
            exprs: self.exprs.iter().cloned().map(f).collect(),
            watermark_type: self.watermark_type.clone(),
            identity: false,
        }
    }
}

/// The bounds of `plan`'s output columns.
pub(crate) fn bounds(catalog: &Catalog, plan: &LogicalPlan) -> Result<Bounds> {
    let width = plan.schema().fields().len();
    Ok(match plan {
        LogicalPlan::TableScan(scan) => {
            let mut out = vec![None; width];
            let Some(relation) = catalog.get(scan.table_name.table())? else {
                return Ok(out);
            };
            let Some(watermark) = relation
                .entry()
                .watermark
                .as_ref()
                .filter(|_| relation.kind() == RelationKind::Stream)
            else {
                return Ok(out);
            };
            let schema = relation.schema();
            let Ok(column) = schema.index_of(&watermark.column) else {
                return Ok(out);
            };
            let bound = LBound {
                exprs: vec![Expr::Column(Column::from_name(WATERMARK_COLUMN))],
                watermark_type: schema.field(column).data_type().clone(),
                identity: true,
            };
            match &scan.projection {
                Some(indices) => {
                    for (j, i) in indices.iter().enumerate() {
                        if *i == column {
                            out[j] = Some(bound.clone());
                        }
                    }
                }
                None => out[column] = Some(bound),
            }
            out
        }
        LogicalPlan::Projection(p) => {
            if let Some(session) = crate::session_window::session_of(p) {
                return session.bounds(catalog);
            }
            let input = bounds(catalog, &p.input)?;
            p.expr
                .iter()
                .map(|e| derive(e, p.input.schema(), &input))
                .collect()
        }
        LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) | LogicalPlan::Sort(_) => {
            bounds(catalog, plan.inputs()[0])?
        }
        LogicalPlan::Union(u) => {
            let inputs = u
                .inputs
                .iter()
                .map(|i| bounds(catalog, i))
                .collect::<Result<Vec<_>>>()?;
            (0..width)
                .map(|c| {
                    let mut merged: Option<LBound> = None;
                    for input in &inputs {
                        let b = input.get(c).cloned().flatten()?;
                        merged = Some(match merged {
                            None => b,
                            Some(mut m) => {
                                m.exprs.extend(b.exprs);
                                m.identity &= b.identity;
                                m
                            }
                        });
                    }
                    merged
                })
                .collect()
        }
        LogicalPlan::Aggregate(a) => {
            let input = bounds(catalog, &a.input)?;
            let mut out: Bounds = a
                .group_expr
                .iter()
                .map(|e| derive(e, a.input.schema(), &input))
                .collect();
            out.resize(width, None);
            out
        }
        LogicalPlan::Join(j) => {
            let mut out = bounds(catalog, &j.left)?;
            out.extend(bounds(catalog, &j.right)?);
            out.resize(width, None);
            out
        }
        LogicalPlan::Window(w) => {
            let mut out = bounds(catalog, &w.input)?;
            out.resize(width, None);
            out
        }
        LogicalPlan::Unnest(u) => {
            let input = bounds(catalog, &u.input)?;
            let lists = u
                .list_type_columns
                .iter()
                .map(|(i, _)| *i)
                .collect::<Vec<_>>();
            u.dependency_indices
                .iter()
                .map(|&i| {
                    if lists.contains(&i) {
                        element_bound(catalog, &u.input, i)
                    } else {
                        Ok(input.get(i).cloned().flatten())
                    }
                })
                .collect::<Result<Bounds>>()?
        }
        _ => vec![None; width],
    })
}

/// The bound of the elements of list column `column` of `plan`, where
/// the list is the window list of a HOP or a CUMULATE (`crate::windows`)
/// over a bounded time column.
fn element_bound(catalog: &Catalog, plan: &LogicalPlan, column: usize) -> Result<Option<LBound>> {
    let LogicalPlan::Projection(p) = plan else {
        return Ok(None);
    };
    let Some(mut expr) = p.expr.get(column) else {
        return Ok(None);
    };
    while let Expr::Alias(a) = expr {
        expr = &a.expr;
    }
    let Expr::ScalarFunction(call) = expr else {
        return Ok(None);
    };
    let Some(ts) = call.args.get(2) else {
        return Ok(None);
    };
    let input = bounds(catalog, &p.input)?;
    let Some(time) = derive(ts, p.input.schema(), &input) else {
        return Ok(None);
    };
    let ts_type = datafusion::logical_expr::ExprSchemable::get_type(ts, p.input.schema())?;
    let exprs = time
        .exprs
        .iter()
        .map(|w| crate::windows::lower_bound(call, w.clone(), &ts_type))
        .collect::<Option<Vec<_>>>();
    Ok(exprs.map(|exprs| LBound {
        exprs,
        watermark_type: time.watermark_type,
        identity: false,
    }))
}

/// The bound of `expr` (over `schema`, whose columns have `input` bounds).
fn derive(expr: &Expr, schema: &DFSchema, input: &Bounds) -> Option<LBound> {
    match expr {
        Expr::Alias(a) => derive(&a.expr, schema, input),
        Expr::Column(c) => input
            .get(schema.index_of_column(c).ok()?)
            .cloned()
            .flatten(),
        Expr::Cast(c) if matches!(c.field.data_type(), DataType::Timestamp(..)) => {
            let inner = derive(&c.expr, schema, input)?;
            let identity = inner.identity;
            let mut out =
                inner.map(|e| Expr::Cast(Cast::new_from_field(Box::new(e), c.field.clone())));
            out.identity = identity;
            Some(out)
        }
        Expr::BinaryExpr(b) if matches!(b.op, Operator::Plus | Operator::Minus) => {
            if let Expr::Literal(..) = b.right.as_ref() {
                let inner = derive(&b.left, schema, input)?;
                return Some(inner.map(|e| {
                    Expr::BinaryExpr(BinaryExpr::new(Box::new(e), b.op, b.right.clone()))
                }));
            }
            if let (Expr::Literal(..), Operator::Plus) = (b.left.as_ref(), b.op) {
                let inner = derive(&b.right, schema, input)?;
                return Some(inner.map(|e| {
                    Expr::BinaryExpr(BinaryExpr::new(b.left.clone(), b.op, Box::new(e)))
                }));
            }
            None
        }
        Expr::ScalarFunction(f) if f.func.name() == "date_bin" && f.args.len() >= 2 => {
            let constant = |i: usize| f.args.get(i).is_none_or(|a| matches!(a, Expr::Literal(..)));
            if !constant(0) || !constant(2) {
                return None;
            }
            let inner = derive(&f.args[1], schema, input)?;
            Some(inner.map(|e| {
                let mut args = f.args.clone();
                args[1] = e;
                Expr::ScalarFunction(ScalarFunction::new_udf(f.func.clone(), args))
            }))
        }
        _ => None,
    }
}

/// The name of the event-time column kept for late-row reports.
const EVENT_TIME: &str = "__sluice_event_time";

/// A windowed GROUP BY whose input no longer has the event time (the
/// optimizer keeps only the columns the aggregate reads), with the event
/// time put back as the input's last column, so that a late row is
/// reported with it. `None` when nothing is to be done or it cannot be.
pub(crate) fn report_event_time(
    catalog: &Catalog,
    aggregate: &datafusion::logical_expr::Aggregate,
) -> Result<Option<LogicalPlan>> {
    let input_bounds = bounds(catalog, &aggregate.input)?;
    if input_bounds.iter().flatten().any(|b| b.identity) {
        return Ok(None);
    }
    let windowed = aggregate
        .group_expr
        .iter()
        .any(|e| derive(e, aggregate.input.schema(), &input_bounds).is_some());
    if !windowed {
        return Ok(None);
    }
    let Some(input) = keep_event_time(catalog, &aggregate.input)? else {
        return Ok(None);
    };
    Ok(Some(LogicalPlan::Aggregate(
        datafusion::logical_expr::Aggregate::try_new(
            std::sync::Arc::new(input),
            aggregate.group_expr.clone(),
            aggregate.aggr_expr.clone(),
        )?,
    )))
}

/// `plan` with the event time of its stream added as its last column.
fn keep_event_time(catalog: &Catalog, plan: &LogicalPlan) -> Result<Option<LogicalPlan>> {
    use datafusion::logical_expr::{LogicalPlanBuilder, Projection, SubqueryAlias};
    use std::sync::Arc;
    Ok(match plan {
        LogicalPlan::Projection(p) => {
            let input_bounds = bounds(catalog, &p.input)?;
            let at = input_bounds
                .iter()
                .position(|b| b.as_ref().is_some_and(|b| b.identity));
            let (input, column) = match at {
                Some(i) => (
                    p.input.as_ref().clone(),
                    Expr::Column(Column::from(p.input.schema().qualified_field(i))),
                ),
                None => match keep_event_time(catalog, &p.input)? {
                    Some(input) => {
                        let last = input.schema().fields().len() - 1;
                        let column =
                            Expr::Column(Column::from(input.schema().qualified_field(last)));
                        (input, column)
                    }
                    None => return Ok(None),
                },
            };
            // Named as in the stream, unless the projection has that name.
            let name = match &column {
                Expr::Column(c) if p.schema.field_with_unqualified_name(&c.name).is_err() => {
                    c.name.clone()
                }
                _ => EVENT_TIME.to_owned(),
            };
            let mut exprs = p.expr.clone();
            exprs.push(column.alias(name));
            Some(LogicalPlan::Projection(Projection::try_new(
                exprs,
                Arc::new(input),
            )?))
        }
        LogicalPlan::SubqueryAlias(a) => match keep_event_time(catalog, &a.input)? {
            Some(input) => Some(LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(
                Arc::new(input),
                a.alias.clone(),
            )?)),
            None => None,
        },
        LogicalPlan::Filter(f) => match keep_event_time(catalog, &f.input)? {
            Some(input) => Some(LogicalPlan::Filter(
                datafusion::logical_expr::Filter::try_new(f.predicate.clone(), Arc::new(input))?,
            )),
            None => None,
        },
        LogicalPlan::Union(u) => {
            let mut inputs = Vec::with_capacity(u.inputs.len());
            for input in &u.inputs {
                match keep_event_time(catalog, input)? {
                    Some(i) => inputs.push(i),
                    None => return Ok(None),
                }
            }
            let mut inputs = inputs.into_iter();
            let Some(first) = inputs.next() else {
                return Ok(None);
            };
            let mut builder = LogicalPlanBuilder::from(first);
            for input in inputs {
                builder = builder.union(input)?;
            }
            Some(builder.build()?)
        }
        LogicalPlan::Unnest(u) => match keep_event_time(catalog, &u.input)? {
            // The unnest passes the added column through, as its last.
            Some(input) => Some(
                LogicalPlanBuilder::from(input)
                    .unnest_columns_with_options(u.exec_columns.clone(), u.options.clone())?
                    .build()?,
            ),
            None => None,
        },
        _ => None,
    })
}

/// A time constant in microseconds (an interval of fixed length).
fn micros(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(i64::from(v.days) * 86_400_000_000 + v.nanoseconds / 1000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(i64::from(v.days) * 86_400_000_000 + i64::from(v.milliseconds) * 1000)
        }
        ScalarValue::DurationMicrosecond(Some(v)) => Some(*v),
        ScalarValue::DurationMillisecond(Some(v)) => v.checked_mul(1000),
        ScalarValue::DurationSecond(Some(v)) => v.checked_mul(1_000_000),
        ScalarValue::DurationNanosecond(Some(v)) => Some(v / 1000),
        _ => None,
    }
}

/// `expr` as a column plus a constant.
fn term(expr: &Expr) -> Option<(&Column, i64)> {
    match expr {
        Expr::Column(c) => Some((c, 0)),
        Expr::Cast(c) => term(&c.expr),
        Expr::BinaryExpr(b) if matches!(b.op, Operator::Plus | Operator::Minus) => {
            let (column, k) = term(&b.left)?;
            let Expr::Literal(v, _) = b.right.as_ref() else {
                return None;
            };
            let d = micros(v)?;
            Some((column, if b.op == Operator::Plus { k + d } else { k - d }))
        }
        _ => None,
    }
}

/// `small <= big` conditions of a join filter, as (column, column, k) with
/// `small <= big + k`.
fn conditions(filter: &Expr) -> Vec<(&Column, &Column, i64)> {
    fn push<'e>(out: &mut Vec<(&'e Column, &'e Column, i64)>, small: &'e Expr, big: &'e Expr) {
        if let (Some((s, ks)), Some((b, kb))) = (term(small), term(big)) {
            out.push((s, b, kb - ks));
        }
    }
    let mut out = Vec::new();
    for conjunct in split_conjunction(filter) {
        match conjunct {
            Expr::BinaryExpr(b) => match b.op {
                Operator::Lt | Operator::LtEq => push(&mut out, &b.left, &b.right),
                Operator::Gt | Operator::GtEq => push(&mut out, &b.right, &b.left),
                _ => {}
            },
            Expr::Between(b) if !b.negated => {
                push(&mut out, &b.low, &b.expr);
                push(&mut out, &b.expr, &b.high);
            }
            _ => {}
        }
    }
    out
}

/// The expiries of an interval join of `left` and `right` under `filter`:
/// for each condition `x <= y + k` between the two sides' columns, `y`'s
/// rows expire once the bound of `x` passes them. Empty when the filter
/// bounds nothing.
pub(crate) fn expiries(
    ctx: &SessionContext,
    filter: Option<&Expr>,
    on: &[(Expr, Expr)],
    sides: [(&DFSchema, &Bounds); 2],
) -> Result<Vec<Expiry>> {
    let side_of = |c: &Column| {
        sides
            .iter()
            .enumerate()
            .find_map(|(s, (schema, _))| schema.index_of_column(c).ok().map(|i| (s, i)))
    };
    let mut out = Vec::new();
    let mut all = filter.map(conditions).unwrap_or_default();
    // Equal keys bound each other both ways (a window join's window_start).
    for (l, r) in on {
        if let (Some((l, kl)), Some((r, kr))) = (term(l), term(r)) {
            all.push((l, r, kr - kl));
            all.push((r, l, kl - kr));
        }
    }
    for (x, y, k) in all {
        let (Some((xs, xi)), Some((ys, yi))) = (side_of(x), side_of(y)) else {
            continue;
        };
        if xs == ys {
            continue;
        }
        let Some(bound) = sides[xs].1.get(xi).cloned().flatten() else {
            continue;
        };
        if !matches!(
            sides[ys].0.field(yi).data_type(),
            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
        ) {
            continue;
        }
        out.push(Expiry {
            side: ys,
            column: yi,
            offset: k,
            other: xs,
            other_column: xi,
            bound: bound.physical(ctx)?,
            other_event_time: sides[xs]
                .1
                .iter()
                .position(|b| b.as_ref().is_some_and(|b| b.identity)),
        });
    }
    Ok(out)
}

/// Whether any column of a side is bounded by a watermark.
pub(crate) fn has_bound(bounds: &Bounds) -> bool {
    bounds.iter().any(Option::is_some)
}

/// The physical bounds of the columns of `bounds` that have one, with
/// their indexes.
pub(crate) fn bounded_columns(
    ctx: &SessionContext,
    bounds: &Bounds,
) -> Result<Vec<(usize, Bound)>> {
    bounds
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.as_ref().map(|b| (i, b)))
        .map(|(i, b)| Ok((i, b.physical(ctx)?)))
        .collect()
}
