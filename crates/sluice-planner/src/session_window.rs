//! `SESSION` windows in a view. The parser writes `SESSION(src, ts, gap)` as
//! window functions (`lag`, a running `sum`, then `min`/`max` per session),
//! which is right for an ad hoc query but would keep every row of a
//! partition forever in a view. The builder recognizes that shape (by the
//! subquery alias [`sluice_sql::windows::session_alias`] the parser gives
//! it) and makes one [`Session`] operator of it instead, which frees
//! sessions the watermark closes; [`bounds`] tells the planner that its
//! `window_end` is bounded by the watermark, so a GROUP BY over sessions
//! closes (and can `EMIT ON WINDOW CLOSE`).

use std::sync::Arc;

use datafusion::common::Column;
use datafusion::logical_expr::{Expr, LogicalPlan, Projection};
use sluice_catalog::Catalog;
use sluice_common::Result;
use sluice_dataflow::operators::{Session, SessionColumn, SessionSpec};
use sluice_dataflow::Node;

use crate::event_time::Bounds;
use crate::plan::Builder;

/// One output column of a recognized session projection.
#[derive(Debug, Clone)]
enum Out {
    Column(Column),
    Start,
    End,
}

/// A projection that is a `SESSION` window over `source`.
pub(crate) struct SessionShape<'a> {
    source: &'a LogicalPlan,
    partition: Vec<Column>,
    time: Column,
    gap: i64,
    outputs: Vec<Out>,
}

fn window_function(e: &Expr) -> Option<&datafusion::logical_expr::expr::WindowFunction> {
    match e {
        Expr::Alias(a) => window_function(&a.expr),
        Expr::WindowFunction(f) => Some(f),
        _ => None,
    }
}

/// `p` as a session window, if it is one.
pub(crate) fn session_of(p: &Projection) -> Option<SessionShape<'_>> {
    let LogicalPlan::Window(outer) = p.input.as_ref() else {
        return None;
    };
    let LogicalPlan::SubqueryAlias(alias) = outer.input.as_ref() else {
        return None;
    };
    let gap = sluice_sql::windows::session_gap_of_alias(alias.alias.table())?;
    // Down to the window that computes lag(ts): its input is the source.
    let mut node = alias.input.as_ref();
    let (lag, source) = loop {
        match node {
            LogicalPlan::Window(w) => {
                let f = w.window_expr.first().and_then(window_function)?;
                if f.fun.name() == "lag" {
                    break (f, w.input.as_ref());
                }
                node = w.input.as_ref();
            }
            other if other.inputs().len() == 1 => node = other.inputs()[0],
            _ => return None,
        }
    };
    let column = |e: &Expr| match e {
        Expr::Column(c) => Some(Column::from_name(c.name.clone())),
        _ => None,
    };
    let partition = lag
        .params
        .partition_by
        .iter()
        .map(column)
        .collect::<Option<Vec<_>>>()?;
    let time = column(&lag.params.order_by.first()?.expr)?;
    // The session's first and last event time, as the outer window names
    // them: the projection refers to them by these names whatever it calls
    // them (merged projections rename `window_start`).
    let width = outer.input.schema().fields().len();
    let mut first = None;
    let mut last = None;
    for (i, e) in outer.window_expr.iter().enumerate() {
        let name = outer.schema.field(width + i).name().clone();
        match window_function(e)
            .map(|f| f.fun.name().to_owned())
            .as_deref()
        {
            Some("min") => first = Some(name),
            Some("max") => last = Some(name),
            _ => {}
        }
    }
    let (first, last) = (first?, last?);
    let in_source = |c: &Column| {
        source
            .schema()
            .index_of_column_by_name(None, &c.name)
            .is_some()
    };
    let outputs = p
        .expr
        .iter()
        .map(|e| {
            let e = match e {
                Expr::Alias(a) => a.expr.as_ref(),
                e => e,
            };
            match e {
                Expr::Column(c) if c.name == first => Some(Out::Start),
                Expr::BinaryExpr(b)
                    if matches!(b.right.as_ref(), Expr::Literal(..))
                        && matches!(b.left.as_ref(), Expr::Column(c) if c.name == last) =>
                {
                    Some(Out::End)
                }
                // Anything else must be a column of the source, or this
                // is not the shape the parser wrote (the generic window
                // plan takes it then).
                e => column(e).filter(in_source).map(Out::Column),
            }
        })
        .collect::<Option<Vec<_>>>()?;
    Some(SessionShape {
        source,
        partition,
        time,
        gap,
        outputs,
    })
}

impl SessionShape<'_> {
    fn index(&self, c: &Column) -> Result<usize> {
        self.source
            .schema()
            .index_of_column_by_name(None, &c.name)
            .ok_or_else(|| {
                sluice_common::SluiceError::internal(format!(
                    "session column {c} not in its source"
                ))
            })
    }

    /// The bounds of the projection's columns: those of the source's
    /// columns, and the watermark for `window_end` (every row emitted after
    /// watermark `W` has `window_end > W`).
    pub(crate) fn bounds(&self, catalog: &Catalog) -> Result<Bounds> {
        let input = crate::event_time::bounds(catalog, self.source)?;
        let time = input.get(self.index(&self.time)?).cloned().flatten();
        self.outputs
            .iter()
            .map(|o| {
                Ok(match o {
                    Out::Column(c) => input.get(self.index(c)?).cloned().flatten(),
                    Out::Start => None,
                    // Bounded like the event time, but not the event time.
                    Out::End => time.as_ref().map(|t| t.map(|e| e)),
                })
            })
            .collect()
    }
}

impl Builder<'_> {
    /// The [`Session`] operator for `shape`, whose output is `plan`'s.
    pub(crate) fn session(&mut self, plan: &LogicalPlan, shape: SessionShape<'_>) -> Result<Node> {
        let columns = shape
            .outputs
            .iter()
            .map(|o| {
                Ok(match o {
                    Out::Column(c) => SessionColumn::Input(shape.index(c)?),
                    Out::Start => SessionColumn::Start,
                    Out::End => SessionColumn::End,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let partition = shape
            .partition
            .iter()
            .map(|c| shape.index(c))
            .collect::<Result<Vec<_>>>()?;
        let label = format!(
            "Session: gap {} s, partitioned by [{}], on {}",
            shape.gap as f64 / 1e6,
            shape
                .partition
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
            shape.time.name
        );
        let op = Session::try_new(SessionSpec {
            schema: Arc::new(plan.schema().as_arrow().clone()),
            input_schema: Arc::new(shape.source.schema().as_arrow().clone()),
            partition,
            time: shape.index(&shape.time)?,
            gap: shape.gap,
            columns,
            label,
        })?;
        let input = self.build(shape.source)?;
        Ok(self.op(Box::new(op), vec![input]))
    }
}
