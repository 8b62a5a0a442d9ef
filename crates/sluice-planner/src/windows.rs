//! The functions HOP and CUMULATE are rewritten into
//! (`sluice_sql::windows`): each returns, for one row, the list of the
//! windows the row falls in, and the query unnests that list. One function
//! call and one unnest per query, however many windows a row falls in (a
//! `UNION ALL` branch per window overflowed the stack at a few hundred).
//!
//! - `sluice_hop_windows(slide, size, ts, origin)`: the starts of the
//!   `size / slide` windows holding `ts`, ascending.
//! - `sluice_cumulate_windows(step, size, ts, origin)`: the ends of the
//!   windows of `ts`'s period (of length `size`) that hold `ts`, ascending.
//!
//! Both keep `ts`'s type. The watermark bounds both lists from below
//! ([`lower_bound`]), which is what closes windows.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, ListArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, TimeUnit};
use datafusion::common::{exec_err, plan_err, Result as DfResult, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use sluice_sql::windows::{CUMULATE_FUNCTION, HOP_FUNCTION};

/// Registers both functions in `ctx` (a [`crate::Planner`] does so in its
/// own; a context that runs the same SQL as a batch needs them too).
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(WindowList::new(Kind::Hop)));
    ctx.register_udf(ScalarUDF::from(WindowList::new(Kind::Cumulate)));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Hop,
    Cumulate,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowList {
    kind: Kind,
    signature: Signature,
}

impl WindowList {
    fn new(kind: Kind) -> Self {
        WindowList {
            kind,
            signature: Signature::any(4, Volatility::Immutable),
        }
    }
}

fn nanos_per(unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// A constant interval argument, in `unit`s.
fn interval_arg(arg: &ColumnarValue, what: &str, unit: &TimeUnit) -> DfResult<i64> {
    let nanos = match arg {
        ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(v))) if v.months == 0 => {
            i128::from(v.days) * 86_400_000_000_000 + i128::from(v.nanoseconds)
        }
        _ => return exec_err!("the {what} of a window must be a constant interval"),
    };
    let per = i128::from(nanos_per(unit));
    if nanos <= 0 || nanos % per != 0 {
        return exec_err!(
            "the {what} of a window must be a positive whole number of the time column's unit"
        );
    }
    i64::try_from(nanos / per).or_else(|_| exec_err!("the {what} of a window is too large"))
}

/// The constant origin, in `unit`s since the epoch.
fn origin_arg(arg: &ColumnarValue, unit: &TimeUnit) -> DfResult<i64> {
    let ColumnarValue::Scalar(origin) = arg else {
        return exec_err!("the origin of a window must be a constant");
    };
    let nanos = match origin.cast_to(&DataType::Timestamp(TimeUnit::Nanosecond, None))? {
        ScalarValue::TimestampNanosecond(Some(v), _) => v,
        _ => return exec_err!("the origin of a window must be a timestamp"),
    };
    Ok(nanos.div_euclid(nanos_per(unit)))
}

/// The start of the bin of `stride` holding `v`, or `None` on overflow.
fn bin(v: i64, stride: i64, origin: i64) -> Option<i64> {
    let delta = v.checked_sub(origin)?;
    delta
        .div_euclid(stride)
        .checked_mul(stride)?
        .checked_add(origin)
}

impl ScalarUDFImpl for WindowList {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Hop => HOP_FUNCTION,
            Kind::Cumulate => CUMULATE_FUNCTION,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types.get(2) {
            Some(t @ DataType::Timestamp(..)) => Ok(DataType::List(Arc::new(
                Field::new_list_field(t.clone(), true),
            ))),
            Some(other) => {
                plan_err!("the time column of a window must be a timestamp, not {other}")
            }
            None => plan_err!("{} takes four arguments", self.name()),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [stride, size, ts, origin] = args.args.as_slice() else {
            return exec_err!("{} takes four arguments", self.name());
        };
        let ts_type = ts.data_type();
        let DataType::Timestamp(unit, _) = &ts_type else {
            return exec_err!("the time column of a window must be a timestamp");
        };
        let stride = interval_arg(stride, "slide or step", unit)?;
        let size = interval_arg(size, "size", unit)?;
        let origin = origin_arg(origin, unit)?;
        if size % stride != 0 {
            return exec_err!("the size of a window must be a whole multiple of its slide or step");
        }
        let ts = ts.to_array(args.number_rows)?;
        let raw = cast(&ts, &DataType::Int64)?;
        let raw = raw.as_primitive::<Int64Type>();
        let n = (size / stride) as usize;
        let mut values: Vec<i64> = Vec::with_capacity(raw.len() * n);
        let mut offsets: Vec<i32> = Vec::with_capacity(raw.len() + 1);
        offsets.push(0);
        let overflow = || exec_err!("a window of {} is out of the timestamp range", self.name());
        for i in 0..raw.len() {
            if raw.is_valid(i) {
                let v = raw.value(i);
                match self.kind {
                    Kind::Hop => {
                        let Some(last) = bin(v, stride, origin) else {
                            return overflow();
                        };
                        for k in (0..n as i64).rev() {
                            match stride.checked_mul(k).and_then(|d| last.checked_sub(d)) {
                                Some(start) => values.push(start),
                                None => return overflow(),
                            }
                        }
                    }
                    Kind::Cumulate => {
                        let (Some(period), Some(step_start)) =
                            (bin(v, size, origin), bin(v, stride, origin))
                        else {
                            return overflow();
                        };
                        let Some(period_end) = period.checked_add(size) else {
                            return overflow();
                        };
                        let mut end = step_start.checked_add(stride);
                        while let Some(e) = end.filter(|e| *e <= period_end) {
                            values.push(e);
                            end = e.checked_add(stride);
                        }
                    }
                }
            }
            let len = i32::try_from(values.len())
                .or_else(|_| exec_err!("{} expanded into too many windows", self.name()))?;
            offsets.push(len);
        }
        let values: ArrayRef = cast(&Int64Array::from(values), &ts_type)?;
        let field = Arc::new(Field::new_list_field(ts_type.clone(), true));
        let nulls = ts.nulls().cloned();
        let list = ListArray::try_new(field, OffsetBuffer::new(offsets.into()), values, nulls)?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// The smallest element any non-late row's list can hold, as an
/// expression over `watermark` (an expression of the time column's bound):
/// the first window start of a HOP, the first window end of a CUMULATE.
/// `None` if `call` is not one of these functions with constant arguments.
pub(crate) fn lower_bound(
    call: &ScalarFunction,
    watermark: Expr,
    ts_type: &DataType,
) -> Option<Expr> {
    let name = call.func.name();
    let [stride, size, _, origin] = call.args.as_slice() else {
        return None;
    };
    let (Expr::Literal(stride_value, _), Expr::Literal(size_value, _), Expr::Literal(..)) =
        (stride, size, origin)
    else {
        return None;
    };
    let micros = |v: &ScalarValue| match v {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(i64::from(v.days) * 86_400_000_000 + v.nanoseconds / 1000)
        }
        _ => None,
    };
    let (stride_us, size_us) = (micros(stride_value)?, micros(size_value)?);
    let interval = |us: i64| {
        Expr::Literal(
            ScalarValue::IntervalMonthDayNano(Some(
                datafusion::arrow::datatypes::IntervalMonthDayNano::new(0, 0, us * 1000),
            )),
            None,
        )
    };
    let date_bin = datafusion::functions::datetime::date_bin();
    // Planned as DataFusion would after coercion: the origin in the time
    // column's type.
    let origin = Expr::Cast(datafusion::logical_expr::Cast::new(
        Box::new(origin.clone()),
        ts_type.clone(),
    ));
    let bin = Expr::ScalarFunction(ScalarFunction::new_udf(
        date_bin,
        vec![stride.clone(), watermark, origin],
    ));
    let shifted = |op, us| {
        Expr::BinaryExpr(BinaryExpr::new(
            Box::new(bin.clone()),
            op,
            Box::new(interval(us)),
        ))
    };
    if name == HOP_FUNCTION {
        Some(shifted(Operator::Minus, size_us - stride_us))
    } else if name == CUMULATE_FUNCTION {
        Some(shifted(Operator::Plus, stride_us))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::TimestampMicrosecondArray;
    use datafusion::arrow::datatypes::IntervalMonthDayNano;

    use super::*;

    fn interval(seconds: i64) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(
            IntervalMonthDayNano::new(0, 0, seconds * 1_000_000_000),
        )))
    }

    fn windows(kind: Kind, stride: i64, size: i64, ts: Vec<Option<i64>>) -> Vec<Option<Vec<i64>>> {
        let f = WindowList::new(kind);
        let ts_type = DataType::Timestamp(TimeUnit::Microsecond, None);
        let rows = ts.len();
        let args = ScalarFunctionArgs {
            args: vec![
                interval(stride),
                interval(size),
                ColumnarValue::Array(Arc::new(TimestampMicrosecondArray::from(
                    ts.into_iter()
                        .map(|t| t.map(|s| s * 1_000_000))
                        .collect::<Vec<_>>(),
                ))),
                ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(Some(0), None)),
            ],
            arg_fields: vec![],
            number_rows: rows,
            return_field: Arc::new(Field::new(
                "w",
                f.return_type(&[
                    DataType::Null,
                    DataType::Null,
                    ts_type.clone(),
                    DataType::Null,
                ])
                .expect("type"),
                true,
            )),
            config_options: Arc::default(),
        };
        let ColumnarValue::Array(out) = f.invoke_with_args(args).expect("invoke") else {
            panic!("not an array");
        };
        let list = out.as_list::<i32>();
        (0..list.len())
            .map(|i| {
                list.is_valid(i).then(|| {
                    let v = cast(&list.value(i), &DataType::Int64).expect("cast");
                    v.as_primitive::<Int64Type>()
                        .values()
                        .iter()
                        .map(|us| us / 1_000_000)
                        .collect()
                })
            })
            .collect()
    }

    #[test]
    fn hop_lists_the_starts_of_every_window_holding_the_row() {
        // HOP(slide 2 s, size 6 s): (row's second, window starts)
        let table = [
            (Some(7), Some(vec![2, 4, 6])),
            (Some(6), Some(vec![2, 4, 6])),
            (Some(-1), Some(vec![-6, -4, -2])),
            (None, None),
        ];
        let out = windows(Kind::Hop, 2, 6, table.iter().map(|r| r.0).collect());
        let expected: Vec<_> = table.into_iter().map(|r| r.1).collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn cumulate_lists_the_ends_of_the_windows_of_the_rows_period() {
        // CUMULATE(step 2 s, size 6 s): (row's second, window ends)
        let table = [
            (Some(0), Some(vec![2, 4, 6])),
            (Some(3), Some(vec![4, 6])),
            (Some(5), Some(vec![6])),
            (Some(13), Some(vec![14, 16, 18])),
        ];
        let out = windows(Kind::Cumulate, 2, 6, table.iter().map(|r| r.0).collect());
        let expected: Vec<_> = table.into_iter().map(|r| r.1).collect();
        assert_eq!(out, expected);
    }
}
