//! DataFusion `LogicalPlan` (optimized) -> a tree of incremental operators.
//!
//! Stateless nodes (projection, filter, alias, union) become [`Map`] and
//! [`Union`]; stateful ones the operator of their concept ([`GroupBy`],
//! [`Join`], [`IntervalJoin`], [`LookupJoin`], [`TopN`], [`WindowFunction`]),
//! each of which runs that very node over the partitions a change touches.
//! A join of a stream with a table is a lookup join. What has no incremental form is
//! refused here, at CREATE time, with 0A000.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan};
use datafusion::physical_plan::expressions::Column as PhysicalColumn;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use sluice_catalog::{state_prefix, Catalog};
use sluice_common::{Result, SluiceError};
use sluice_dataflow::operators::{
    invertible_type, plain_aggregate, GroupBy, IntervalJoin, Inverted, Join, LookupJoin, Map,
    Merge, PartitionedInput, TopN, Total, Union, WindowClose, WindowFunction,
};
use sluice_dataflow::Node;
use sluice_sql::RelationKind;

use crate::event_time::{bounded_columns, bounds, expiries, has_bound};

/// Builds the operator tree of one view.
pub struct Builder<'a> {
    pub catalog: &'a Catalog,
    pub ctx: &'a SessionContext,
    pub view_id: u64,
    next_op: u32,
    /// Names of the relations read, in order.
    pub depends_on: Vec<String>,
    /// The view says `EMIT ON WINDOW CLOSE`.
    pub emit_on_window_close: bool,
    /// A windowed GROUP BY took the emit mode.
    pub windows: usize,
    /// The tables the query joins by event time.
    pub temporal: Vec<crate::temporal::AsOf>,
}

/// The kind of a join that is not temporal.
enum JoinKind {
    /// A stream (input 0 or 1) with a table.
    Lookup(usize),
    /// Its state freed by the watermark.
    Interval(Vec<sluice_dataflow::operators::Expiry>),
    /// Both sides kept.
    Regular,
}

fn unsupported(what: impl Into<String>, hint: &str) -> SluiceError {
    SluiceError::not_supported(what, Some(hint))
}

impl<'a> Builder<'a> {
    pub fn new(catalog: &'a Catalog, ctx: &'a SessionContext, view_id: u64) -> Self {
        Builder {
            catalog,
            ctx,
            view_id,
            next_op: 0,
            depends_on: Vec::new(),
            emit_on_window_close: false,
            windows: 0,
            temporal: Vec::new(),
        }
    }

    fn state(&mut self) -> Vec<u8> {
        let mut s = state_prefix(self.view_id);
        s.extend_from_slice(&self.next_op.to_be_bytes());
        self.next_op += 1;
        s
    }

    pub(crate) fn physical(
        &self,
        expr: &Expr,
        schema: &DFSchemaRef,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(self
            .ctx
            .state()
            .create_physical_expr(expr.clone(), schema)?)
    }

    pub(crate) fn op(&mut self, op: Box<dyn sluice_dataflow::Operator>, inputs: Vec<Node>) -> Node {
        let prefix = self.state();
        Node::Op { op, inputs, prefix }
    }

    /// Whether every row `plan` produces is an insert, forever (it reads
    /// only streams, through stateless nodes).
    pub(crate) fn append_only(&self, plan: &LogicalPlan) -> bool {
        match plan {
            LogicalPlan::TableScan(scan) => matches!(
                self.catalog.get(scan.table_name.table()),
                Ok(Some(r)) if r.kind() == RelationKind::Stream
            ),
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Union(_)
            | LogicalPlan::Unnest(_) => plan.inputs().iter().all(|i| self.append_only(i)),
            // A lookup join never revises what it emitted, nor does an inner
            // join of two streams. A stream joined with a view by a
            // condition bounding both (q7) is not a lookup: it is revised
            // when the view changes.
            LogicalPlan::Join(j) => match (
                self.append_only(&j.left),
                self.append_only(&j.right),
                j.join_type,
            ) {
                (true, false, JoinType::Inner | JoinType::Left)
                | (false, true, JoinType::Inner | JoinType::Right) => {
                    !(j.filter.is_some() && self.interval_join(j).is_ok())
                }
                (true, true, JoinType::Inner) => true,
                _ => false,
            },
            _ => false,
        }
    }

    pub fn build(&mut self, plan: &LogicalPlan) -> Result<Node> {
        let out_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        match plan {
            LogicalPlan::TableScan(scan) => self.table_scan(scan, out_schema),
            LogicalPlan::Projection(p) => self.projection(plan, p, out_schema),
            LogicalPlan::Filter(f) => self.filter(f, out_schema),
            LogicalPlan::SubqueryAlias(a) => self.alias(a, out_schema),
            LogicalPlan::Sort(s) if s.fetch.is_none() => self.unordered_sort(s, out_schema),
            LogicalPlan::Union(u) => self.union(u, out_schema),
            LogicalPlan::Aggregate(a) => self.aggregate(plan, a),
            LogicalPlan::Join(j) => self.join(plan, j),
            LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => self.top_n(plan),
            LogicalPlan::Window(w) => self.window(plan, w),
            LogicalPlan::Unnest(u) => self.unnest(u, out_schema),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Err(unsupported(
                "a materialized view over constant rows",
                "a view reads streams, tables or other views; SELECT constants directly",
            )),
            other => Err(unsupported(
                format!("{} in a materialized view", node_name(other)),
                "views support projections, filters, GROUP BY, DISTINCT, joins, UNION ALL, \
                 ORDER BY ... LIMIT and window functions over streams, tables and views",
            )),
        }
    }
}

impl Builder<'_> {
    /// A base relation, with the scan's projection and filters as a `Map` over it.
    fn table_scan(
        &mut self,
        scan: &datafusion::logical_expr::TableScan,
        out_schema: SchemaRef,
    ) -> Result<Node> {
        let name = scan.table_name.table().to_owned();
        let relation = match (scan.table_name.schema(), self.catalog.get(&name)?) {
            (None | Some("public"), Some(r)) if r.kind() != RelationKind::Sink => r,
            _ => {
                return Err(unsupported(
                    format!("a materialized view over \"{}\"", scan.table_name),
                    "views read streams, tables and other materialized views",
                ))
            }
        };
        if !self.depends_on.contains(&name) {
            self.depends_on.push(name.clone());
        }
        let source = Node::Source {
            relation: relation.entry().id,
            kind: relation.kind().to_string(),
            name: name.clone(),
            schema: relation.schema(),
        };
        let source_schema = relation.schema();
        let projection: Option<Vec<Arc<dyn PhysicalExpr>>> =
            scan.projection.as_ref().map(|indices| {
                indices
                    .iter()
                    .map(|&i| {
                        Arc::new(PhysicalColumn::new(source_schema.field(i).name(), i))
                            as Arc<dyn PhysicalExpr>
                    })
                    .collect()
            });
        let filter = match scan.filters.as_slice() {
            [] => None,
            filters => {
                let all = filters
                    .iter()
                    .cloned()
                    .reduce(Expr::and)
                    .ok_or_else(|| SluiceError::internal("no filter"))?;
                let full = datafusion::common::DFSchema::try_from_qualified_schema(
                    scan.table_name.clone(),
                    &source_schema,
                )?;
                Some(self.physical(&all, &Arc::new(full))?)
            }
        };
        if projection.is_none() && filter.is_none() {
            return Ok(source);
        }
        let map = Map::new(filter, projection, out_schema, format!("Scan: {name}"));
        Ok(self.op(Box::new(map), vec![source]))
    }

    /// A projection: a `Map`, or a `Session` for the shape `SESSION` is written as.
    fn projection(
        &mut self,
        plan: &LogicalPlan,
        p: &datafusion::logical_expr::Projection,
        out_schema: SchemaRef,
    ) -> Result<Node> {
        if let Some(session) = crate::session_window::session_of(p) {
            return self.session(plan, session);
        }
        let input = self.build(&p.input)?;
        let exprs = p
            .expr
            .iter()
            .map(|e| self.physical(e, p.input.schema()))
            .collect::<Result<Vec<_>>>()?;
        let label = format!(
            "Project: {}",
            p.expr
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(self.op(
            Box::new(Map::new(None, Some(exprs), out_schema, label)),
            vec![input],
        ))
    }

    /// A filter: a `Map`.
    fn filter(
        &mut self,
        f: &datafusion::logical_expr::Filter,
        out_schema: SchemaRef,
    ) -> Result<Node> {
        let input = self.build(&f.input)?;
        let predicate = self.physical(&f.predicate, f.input.schema())?;
        let label = format!("Filter: {}", f.predicate);
        Ok(self.op(
            Box::new(Map::new(Some(predicate), None, out_schema, label)),
            vec![input],
        ))
    }

    /// An alias: a `Map` that renames.
    fn alias(
        &mut self,
        a: &datafusion::logical_expr::SubqueryAlias,
        out_schema: SchemaRef,
    ) -> Result<Node> {
        let input = self.build(&a.input)?;
        let label = format!("Alias: {}", a.alias);
        Ok(self.op(
            Box::new(Map::new(None, None, out_schema, label)),
            vec![input],
        ))
    }

    /// ORDER BY without LIMIT: views are unordered, so a `Map` that changes nothing.
    fn unordered_sort(
        &mut self,
        s: &datafusion::logical_expr::Sort,
        out_schema: SchemaRef,
    ) -> Result<Node> {
        // A view has no order; ORDER BY without LIMIT changes nothing.
        let input = self.build(&s.input)?;
        let label = "Sort (ignored: views are unordered)".to_owned();
        Ok(self.op(
            Box::new(Map::new(None, None, out_schema, label)),
            vec![input],
        ))
    }

    /// UNION ALL: a `Union`.
    fn union(
        &mut self,
        u: &datafusion::logical_expr::Union,
        out_schema: SchemaRef,
    ) -> Result<Node> {
        let inputs = u
            .inputs
            .iter()
            .map(|i| self.build(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.op(Box::new(Union::new(out_schema)), inputs))
    }

    /// GROUP BY: a `GroupBy`, with the strategy its aggregates and input allow and the windows the watermark closes.
    fn aggregate(
        &mut self,
        plan: &LogicalPlan,
        a: &datafusion::logical_expr::Aggregate,
    ) -> Result<Node> {
        if let Some(rewritten) = crate::event_time::report_event_time(self.catalog, a)? {
            return self.build(&rewritten);
        }
        if a.group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
        {
            return Err(unsupported(
                "GROUPING SETS, CUBE and ROLLUP in a materialized view",
                "use one GROUP BY per view and UNION ALL them",
            ));
        }
        let input = self.build(&a.input)?;
        let keys = a
            .group_expr
            .iter()
            .map(|e| self.physical(e, a.input.schema()))
            .collect::<Result<Vec<_>>>()?;
        let label = format!(
            "GroupBy: [{}] aggregates [{}]",
            a.group_expr
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            a.aggr_expr
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut op = GroupBy::try_new(
            plan.clone(),
            PartitionedInput {
                df_schema: a.input.schema().clone(),
                keys,
            },
            label,
        )?;
        if self.append_only(&a.input) {
            if let Some(merge) = mergeable(&a.aggr_expr) {
                op = op.with_merge(merge);
            }
        }
        let mut group_bounds = bounds(self.catalog, plan)?;
        group_bounds.truncate(a.group_expr.len());
        let columns = bounded_columns(self.ctx, &group_bounds)?;
        if !columns.is_empty() {
            self.windows += 1;
            let event_time = bounds(self.catalog, &a.input)?
                .iter()
                .position(|b| b.as_ref().is_some_and(|b| b.identity));
            op = op.with_window(WindowClose {
                columns,
                emit_on_close: self.emit_on_window_close,
                event_time,
            });
        } else if !self.append_only(&a.input) {
            if let Some(inverted) = self.invertible(&a.aggr_expr, a.input.schema())? {
                op = op.with_totals(inverted);
            }
        }
        Ok(self.op(Box::new(op), vec![input]))
    }

    /// A join: temporal, lookup, interval or regular, by what its sides are.
    fn join(&mut self, plan: &LogicalPlan, j: &datafusion::logical_expr::Join) -> Result<Node> {
        let versioned = crate::temporal::qualifier_of(&j.right)
            .and_then(|q| self.temporal.iter().position(|t| t.qualifier == q));
        if let Some(at) = versioned {
            return self.temporal_join(plan, j, at);
        }
        let kind = self.join_kind(j)?;
        // Keys that the watermark bounds lead, so that what it
        // frees is a range of keys.
        let on = match &kind {
            JoinKind::Interval(_) => self.bounded_first(j)?,
            _ => j.on.iter().collect(),
        };
        let left = self.build(&j.left)?;
        let right = self.build(&j.right)?;
        let left_keys = on
            .iter()
            .map(|(l, _)| self.physical(l, j.left.schema()))
            .collect::<Result<Vec<_>>>()?;
        let right_keys = on
            .iter()
            .map(|(_, r)| self.physical(r, j.right.schema()))
            .collect::<Result<Vec<_>>>()?;
        let name = match kind {
            JoinKind::Lookup(_) => "LookupJoin",
            JoinKind::Interval(_) => "IntervalJoin",
            JoinKind::Regular => "Join",
        };
        let label = format!(
            "{name} {}: on [{}]{}",
            j.join_type,
            on.iter()
                .map(|(l, r)| format!("{l} = {r}"))
                .collect::<Vec<_>>()
                .join(", "),
            j.filter
                .as_ref()
                .map(|f| format!(" filter {f}"))
                .unwrap_or_default()
        );
        let left_input = PartitionedInput {
            df_schema: j.left.schema().clone(),
            keys: left_keys,
        };
        let right_input = PartitionedInput {
            df_schema: j.right.schema().clone(),
            keys: right_keys,
        };
        let op: Box<dyn sluice_dataflow::Operator> = match kind {
            JoinKind::Lookup(stream) => Box::new(LookupJoin::try_new(
                plan.clone(),
                left_input,
                right_input,
                stream,
                label,
            )?),
            JoinKind::Interval(expiries) => Box::new(IntervalJoin::new(
                Join::try_new(plan.clone(), left_input, right_input, label)?,
                expiries,
            )),
            JoinKind::Regular => {
                Box::new(Join::try_new(plan.clone(), left_input, right_input, label)?)
            }
        };
        Ok(self.op(op, vec![left, right]))
    }

    /// Which join `j` is, by what its sides are: a lookup (a stream with a
    /// table), an interval join (the watermark bounds both sides' rows), or
    /// a regular join; refused when a stream would keep growing state.
    fn join_kind(&self, j: &datafusion::logical_expr::Join) -> Result<JoinKind> {
        let left_stream = self.append_only(&j.left);
        let right_stream = self.append_only(&j.right);
        // An interval (or window) join when the condition bounds
        // both sides by event time.
        let mut bounded = (left_stream || right_stream).then(|| self.interval_join(j));
        let mut interval = None;
        let lookup = match (left_stream, right_stream, j.join_type) {
            // Two streams: an interval join when bounded; with no
            // condition beyond equal keys, a regular join keeping
            // both sides; a time condition that bounds only one
            // side is refused.
            (true, true, _) => {
                match bounded.take() {
                    Some(Ok(expiries)) => interval = Some(expiries),
                    Some(Err(e)) if j.filter.is_some() => return Err(e),
                    _ => {}
                }
                None
            }
            // A stream and a view bounded by the same event times
            // (q7: the bids of a window with the window's
            // maximum): a regular join whose state the watermark
            // frees, so later changes of the view revise it.
            (true, false, _) | (false, true, _)
                if j.filter.is_some() && matches!(bounded, Some(Ok(_))) =>
            {
                interval = bounded.take().and_then(Result::ok);
                None
            }
            (true, false, JoinType::Inner | JoinType::Left) => Some(0),
            (false, true, JoinType::Inner | JoinType::Right) => Some(1),
            (true, false, _) | (false, true, _) => {
                return Err(unsupported(
                    format!(
                        "{} JOIN of a stream with a table",
                        j.join_type.to_string().to_uppercase()
                    ),
                    "a stream joins a table as a lookup: use JOIN or LEFT JOIN with the \
                     stream on the left",
                ))
            }
            // Two views whose rows the watermark closes on both
            // sides (a join of windows): their state is freed
            // like an interval join's.
            (false, false, _) => {
                interval = self.closed_join(j)?;
                None
            }
        };
        Ok(match (lookup, interval) {
            (Some(stream), _) => JoinKind::Lookup(stream),
            (None, Some(expiries)) => JoinKind::Interval(expiries),
            (None, None) => JoinKind::Regular,
        })
    }

    /// ORDER BY ... LIMIT: a `TopN`.
    fn top_n(&mut self, plan: &LogicalPlan) -> Result<Node> {
        let child = plan.inputs()[0];
        if self.append_only(child) {
            return Err(unsupported(
                "ORDER BY ... LIMIT over a stream",
                "aggregate the stream first (GROUP BY), then take the top N of the result",
            ));
        }
        let input = self.build(child)?;
        let label = format!("TopN: {}", plan.display());
        let op = TopN::try_new(plan.clone(), child.schema().clone(), label)?;
        Ok(self.op(Box::new(op), vec![input]))
    }

    /// Window functions: a `WindowFunction` partitioned by their shared PARTITION BY.
    fn window(&mut self, plan: &LogicalPlan, w: &datafusion::logical_expr::Window) -> Result<Node> {
        let partition_by = window_partition(&w.window_expr);
        let input = self.build(&w.input)?;
        let keys = partition_by
            .iter()
            .map(|e| self.physical(e, w.input.schema()))
            .collect::<Result<Vec<_>>>()?;
        let label = format!(
            "Window: [{}] partitioned by [{}]",
            w.window_expr
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            partition_by
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let op = WindowFunction::try_new(
            plan.clone(),
            PartitionedInput {
                df_schema: w.input.schema().clone(),
                keys,
            },
            label,
        )?;
        Ok(self.op(Box::new(op), vec![input]))
    }

    /// unnest of one list column: an `Unnest`.
    fn unnest(
        &mut self,
        u: &datafusion::logical_expr::Unnest,
        out_schema: SchemaRef,
    ) -> Result<Node> {
        let list =
            match (
                u.list_type_columns.as_slice(),
                u.struct_type_columns.is_empty(),
            ) {
                ([(list, unnest)], true) if unnest.depth == 1 => *list,
                _ => return Err(unsupported(
                    "unnesting several columns, a struct or a nested list in a materialized view",
                    "unnest one list column per SELECT",
                )),
            };
        let input = self.build(&u.input)?;
        let label = format!(
            "Unnest: {}",
            u.exec_columns
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let preserve_nulls = match u.options.null_handling {
            datafusion::common::NullHandling::Drop => false,
            datafusion::common::NullHandling::Preserve => true,
            datafusion::common::NullHandling::PreserveAndExpandEmpty => {
                return Err(unsupported(
                    "unnest expanding empty lists in a materialized view",
                    "leave the unnest options at their defaults",
                ))
            }
        };
        let op = sluice_dataflow::operators::Unnest::try_new(
            &input.schema(),
            list,
            u.dependency_indices.clone(),
            preserve_nulls,
            out_schema,
            label,
        )?;
        Ok(self.op(Box::new(op), vec![input]))
    }
}

impl Builder<'_> {
    /// The state expiries of a join of two streams, which must be an
    /// interval join: time conditions that bound each side's rows by the
    /// other's watermark.
    fn interval_join(
        &self,
        j: &datafusion::logical_expr::Join,
    ) -> Result<Vec<sluice_dataflow::operators::Expiry>> {
        let left = bounds(self.catalog, &j.left)?;
        let right = bounds(self.catalog, &j.right)?;
        for (side, b) in [(&j.left, &left), (&j.right, &right)] {
            if !has_bound(b) {
                return Err(SluiceError::InvalidDefinition {
                    message: format!(
                        "a join of two streams needs a watermark on both, and \"{}\" has none",
                        side.schema()
                            .columns()
                            .first()
                            .and_then(|c| c.relation.as_ref().map(|r| r.to_string()))
                            .unwrap_or_else(|| "one side".to_owned())
                    ),
                    hint: Some(
                        "declare one: CREATE STREAM s (..., ts TIMESTAMP, \
                         WATERMARK FOR ts AS ts - INTERVAL '5 seconds')"
                            .to_owned(),
                    ),
                });
            }
        }
        let Some(expiries) = self.both_expire(j, &left, &right)? else {
            return Err(unsupported(
                "a join of two streams without a time bound on both sides",
                "both sides are unbounded, so their state would grow forever; bound it with an \
                 interval join on the event times, e.g. ON a.id = b.id AND b.ts BETWEEN a.ts AND \
                 a.ts + INTERVAL '1 hour', or join the same window of both (ON \
                 a.window_start = b.window_start)",
            ));
        };
        Ok(expiries)
    }

    /// The expiries of join `j` (whose sides have `left` and `right`
    /// bounds), when there are some for both sides.
    fn both_expire(
        &self,
        j: &datafusion::logical_expr::Join,
        left: &crate::event_time::Bounds,
        right: &crate::event_time::Bounds,
    ) -> Result<Option<Vec<sluice_dataflow::operators::Expiry>>> {
        let expiries = expiries(
            self.ctx,
            j.filter.as_ref(),
            &j.on,
            [
                (j.left.schema().as_ref(), left),
                (j.right.schema().as_ref(), right),
            ],
        )?;
        let bounded = |side: usize| expiries.iter().any(|e| e.side == side);
        Ok((bounded(0) && bounded(1)).then_some(expiries))
    }
}

impl Builder<'_> {
    /// The state expiries of a join of two views when the watermark bounds
    /// both sides' rows through its condition (windows of both joined on
    /// `window_start`): a view changes no row whose bounded column is
    /// below its bound, as its windows have closed, so the rows out of
    /// reach of the other side's changes can go. `None` otherwise.
    fn closed_join(
        &self,
        j: &datafusion::logical_expr::Join,
    ) -> Result<Option<Vec<sluice_dataflow::operators::Expiry>>> {
        let left = bounds(self.catalog, &j.left)?;
        let right = bounds(self.catalog, &j.right)?;
        if !has_bound(&left) || !has_bound(&right) {
            return Ok(None);
        }
        self.both_expire(j, &left, &right)
    }

    /// The join's key pairs, those of two columns the watermark bounds
    /// first (otherwise in order).
    fn bounded_first<'j>(
        &self,
        j: &'j datafusion::logical_expr::Join,
    ) -> Result<Vec<&'j (Expr, Expr)>> {
        let left = bounds(self.catalog, &j.left)?;
        let right = bounds(self.catalog, &j.right)?;
        let is_bounded = |e: &Expr, schema: &DFSchemaRef, b: &crate::event_time::Bounds| {
            matches!(e, Expr::Column(c) if schema
                .index_of_column(c)
                .is_ok_and(|i| b.get(i).is_some_and(Option::is_some)))
        };
        let mut on: Vec<&(Expr, Expr)> = j.on.iter().collect();
        on.sort_by_key(|(l, r)| {
            !(is_bounded(l, j.left.schema(), &left) && is_bounded(r, j.right.schema(), &right))
        });
        Ok(on)
    }

    /// The running totals of each aggregate, when all of them are `count`,
    /// or `sum`/`avg` of integers, without DISTINCT, FILTER or ORDER BY.
    fn invertible(
        &self,
        aggregates: &[Expr],
        input: &DFSchemaRef,
    ) -> Result<Option<Vec<Inverted>>> {
        let mut out = Vec::with_capacity(aggregates.len());
        for e in aggregates {
            let Some(f) = plain_aggregate(e) else {
                return Ok(None);
            };
            let total = match f.func.name() {
                "count" => Total::Count,
                "sum" => Total::Sum,
                "avg" => Total::Avg,
                _ => return Ok(None),
            };
            let arg = match f.params.args.as_slice() {
                [] => None,
                // count(*) arrives as count(1).
                [Expr::Literal(v, ..)] if total == Total::Count && !v.is_null() => None,
                [arg] => {
                    let type_of = |e: &Expr| {
                        datafusion::logical_expr::ExprSchemable::get_type(e, input.as_ref())
                    };
                    // avg of integers arrives as avg of their cast to
                    // float; the totals are kept of the integers, and the
                    // average is the same float.
                    let arg = match arg {
                        Expr::Cast(c)
                            if total == Total::Avg
                                && c.field.data_type() == &DataType::Float64
                                && invertible_type(&type_of(&c.expr)?) =>
                        {
                            c.expr.as_ref()
                        }
                        _ => arg,
                    };
                    let data_type = type_of(arg)?;
                    if total != Total::Count && !invertible_type(&data_type) {
                        return Ok(None);
                    }
                    Some(self.physical(arg, input)?)
                }
                _ => return Ok(None),
            };
            out.push(Inverted { total, arg });
        }
        Ok(Some(out))
    }
}

/// How each aggregate merges, when all of them do (count, sum, min, max
/// without DISTINCT, FILTER or ORDER BY).
fn mergeable(aggregates: &[Expr]) -> Option<Vec<Merge>> {
    aggregates
        .iter()
        .map(|e| {
            let f = plain_aggregate(e)?;
            match f.func.name() {
                "count" | "sum" => Some(Merge::Sum),
                "min" => Some(Merge::Min),
                "max" => Some(Merge::Max),
                _ => None,
            }
        })
        .collect()
}

/// The PARTITION BY shared by every window function, or none (one partition).
fn window_partition(window_exprs: &[Expr]) -> Vec<Expr> {
    let mut partitions = window_exprs.iter().map(|e| match e {
        Expr::WindowFunction(f) => f.params.partition_by.clone(),
        Expr::Alias(a) => match a.expr.as_ref() {
            Expr::WindowFunction(f) => f.params.partition_by.clone(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    });
    let first = partitions.next().unwrap_or_default();
    if partitions.all(|p| p == first) {
        first
    } else {
        Vec::new()
    }
}

fn node_name(plan: &LogicalPlan) -> String {
    let text = plan.display().to_string();
    let name = text.split(':').next().unwrap_or("this query").trim();
    if name.is_empty() {
        "this query".to_owned()
    } else {
        name.to_owned()
    }
}
