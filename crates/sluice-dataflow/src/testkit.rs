//! A kit for operator unit tests: changes written as text, an operator
//! driven over an in-memory store, its output and state read back.
//!
//! ```text
//! let mut h = Harness::new(op, vec![input_schema]);
//! assert_eq!(h.push(0, "+ 1 a\n+ 2 b\n- 1 a").await, ["+ 2 b"]);
//! assert_eq!(h.watermark(&[Some(10)]).await, Vec::<String>::new());
//! h.restart(rebuilt_op);        // the same state, a fresh operator
//! ```
//!
//! A change is one line: its sign (`+` or `-`), then one value per column,
//! separated by spaces; `.` is NULL. Values are cast from text to the
//! column's type by Arrow; timestamps are written as integer microseconds.
//! Output lines are written the same way and sorted.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::catalog::MemTable;
use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use sluice_common::{batch_with_rows, ChangeBatch};
use sluice_state::{MemoryBackend, StateBackend, StateTxn};

use crate::late::LateRows;
use crate::{OpContext, Operator};

/// `text` (one change a line) as a change of `schema`.
pub(crate) fn changes(schema: &SchemaRef, text: &str) -> ChangeBatch {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut signs = Vec::with_capacity(lines.len());
    let mut cells: Vec<Vec<Option<String>>> = vec![Vec::new(); schema.fields().len()];
    for line in &lines {
        let mut words = line.split_whitespace();
        signs.push(match words.next() {
            Some("+") => 1,
            Some("-") => -1,
            other => panic!("a change starts with + or -, not {other:?}: {line}"),
        });
        let values: Vec<&str> = words.collect();
        assert_eq!(
            values.len(),
            cells.len(),
            "{line}: one value per column of {schema:?}"
        );
        for (column, value) in cells.iter_mut().zip(values) {
            column.push((value != ".").then(|| value.to_owned()));
        }
    }
    let columns: Vec<ArrayRef> = cells
        .into_iter()
        .zip(schema.fields())
        .map(|(values, field)| {
            let text: ArrayRef = Arc::new(StringArray::from(values));
            let target = field.data_type();
            match target {
                DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
                    let micros = cast(&text, &DataType::Int64).expect("a time as an integer");
                    cast(&micros, target).expect("a time")
                }
                _ => cast(&text, target).expect("a value of the column's type"),
            }
        })
        .collect();
    let batch = batch_with_rows(schema.clone(), columns, lines.len()).expect("batch");
    ChangeBatch::new(batch, signs)
}

/// A change as sorted lines, the way [`changes`] reads them.
pub(crate) fn lines(change: &ChangeBatch) -> Vec<String> {
    let batch = &change.batch;
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Timestamp(..) => cast(c, &DataType::Int64).expect("micros"),
            _ => c.clone(),
        })
        .collect();
    let mut out: Vec<String> = (0..batch.num_rows())
        .map(|row| {
            let mut line = if change.sign(row) > 0 { "+" } else { "-" }.to_owned();
            for column in &columns {
                line.push(' ');
                if column.is_null(row) {
                    line.push('.');
                } else {
                    line.push_str(&array_value_to_string(column, row).expect("value"));
                }
            }
            line
        })
        .collect();
    out.sort();
    out
}

/// An operator over an in-memory store, fed changes and watermarks.
pub(crate) struct Harness {
    op: Box<dyn Operator>,
    inputs: Vec<SchemaRef>,
    store: Arc<MemoryBackend>,
    txn: StateTxn,
    session: SessionContext,
    /// The rows the operator dropped as late, as it reported them.
    pub late: Vec<LateRows>,
    prefix: Vec<u8>,
}

impl Harness {
    /// Drives `op`, whose inputs have `inputs` schemas.
    pub fn new(op: Box<dyn Operator>, inputs: Vec<SchemaRef>) -> Self {
        let store = Arc::new(MemoryBackend::new());
        Harness {
            op,
            inputs,
            txn: StateTxn::new(store.clone()),
            store,
            session: SessionContext::new(),
            late: Vec::new(),
            prefix: b"op".to_vec(),
        }
    }

    fn ctx(&mut self) -> (&dyn Operator, &[u8], OpContext<'_>) {
        (
            self.op.as_ref(),
            &self.prefix,
            OpContext {
                txn: &mut self.txn,
                datafusion: &self.session,
                late: &mut self.late,
            },
        )
    }

    /// Feeds `text` (changes of input `input`) and returns the output.
    pub async fn push(&mut self, input: usize, text: &str) -> Vec<String> {
        let change = changes(&self.inputs[input], text);
        self.try_push(input, change)
            .await
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Feeds a change and returns the output, or the operator's error.
    pub async fn try_push(
        &mut self,
        input: usize,
        change: ChangeBatch,
    ) -> sluice_common::Result<Vec<String>> {
        let (op, prefix, mut ctx) = self.ctx();
        let out = op.process(input, change, prefix, &mut ctx).await?;
        Ok(lines(&out))
    }

    /// The output the operator has before any input.
    pub async fn initialize(&mut self) -> Vec<String> {
        let (op, prefix, mut ctx) = self.ctx();
        let out = op.initialize(prefix, &mut ctx).await.expect("initialize");
        out.map(|c| lines(&c)).unwrap_or_default()
    }

    /// Advances the inputs' watermarks; returns what closing emits.
    pub async fn watermark(&mut self, watermarks: &[Option<i64>]) -> Vec<String> {
        let (op, prefix, mut ctx) = self.ctx();
        let out = op
            .on_watermark(watermarks, prefix, &mut ctx)
            .await
            .expect("watermark");
        out.map(|c| lines(&c)).unwrap_or_default()
    }

    /// Writes what the operator wrote to the store, as a checkpoint does.
    pub fn checkpoint(&mut self) {
        let writes = self.txn.take_writes();
        self.store.write(writes).expect("write");
        self.txn.forget_settled_deletes();
    }

    /// Checkpoints, then goes on with `op` (built as the first was) over
    /// the same state, as after a restart: nothing in memory survives.
    pub fn restart(&mut self, op: Box<dyn Operator>) {
        self.checkpoint();
        self.op = op;
        self.txn = StateTxn::new(self.store.clone());
    }

    /// How many entries of state each side holds, checkpointing first;
    /// panics on an entry of a side the operator does not declare.
    pub fn state(&mut self) -> Vec<(u8, usize)> {
        self.checkpoint();
        let declared: Vec<u8> = self.op.state_layout().iter().map(|r| r.side).collect();
        let mut sides: Vec<(u8, usize)> = Vec::new();
        for (k, _) in self.store.scan_prefix(&self.prefix).expect("scan") {
            let side = k[self.prefix.len()];
            assert!(
                declared.contains(&side),
                "{}: an entry on side {side}, which it does not declare ({declared:?})",
                self.op.explain()
            );
            match sides.last_mut() {
                Some((s, n)) if *s == side => *n += 1,
                _ => sides.push((side, 1)),
            }
        }
        sides
    }

    /// The late rows reported so far, as lines, and forgets them.
    pub fn take_late(&mut self) -> Vec<String> {
        let mut out: Vec<String> = self
            .late
            .drain(..)
            .flat_map(|l| lines(&ChangeBatch::inserts(l.rows)))
            .collect();
        out.sort();
        out
    }
}

/// A query's optimized plan, over empty tables `tables` (name and columns).
pub(crate) async fn plan(sql: &str, tables: &[(&str, &[(&str, DataType)])]) -> LogicalPlan {
    let ctx = SessionContext::new();
    for (name, columns) in tables {
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(c, t)| Field::new(*c, t.clone(), true))
                .collect::<Vec<_>>(),
        ));
        let table = MemTable::try_new(schema, vec![vec![]]).expect("table");
        ctx.register_table(*name, Arc::new(table))
            .expect("register");
    }
    ctx.sql(sql)
        .await
        .expect("sql")
        .into_optimized_plan()
        .expect("plan")
}

/// The first node of `plan` (top-down) that `is` picks.
pub(crate) fn node(plan: &LogicalPlan, is: fn(&LogicalPlan) -> bool) -> LogicalPlan {
    fn find(plan: &LogicalPlan, is: fn(&LogicalPlan) -> bool) -> Option<LogicalPlan> {
        if is(plan) {
            return Some(plan.clone());
        }
        plan.inputs().into_iter().find_map(|input| find(input, is))
    }
    find(plan, is).unwrap_or_else(|| panic!("no such node in\n{}", plan.display_indent()))
}

/// `exprs` as physical expressions over `schema`.
pub(crate) fn physical(exprs: &[Expr], schema: &DFSchemaRef) -> Vec<Arc<dyn PhysicalExpr>> {
    let ctx = SessionContext::new();
    exprs
        .iter()
        .map(|e| {
            ctx.state()
                .create_physical_expr(e.clone(), schema)
                .expect("physical")
        })
        .collect()
}

/// The Arrow schema of a plan's node.
pub(crate) fn arrow(schema: &DFSchemaRef) -> SchemaRef {
    Arc::new(schema.as_arrow().clone())
}
