//! The dataflow's system tables:
//!
//! - `sluice_operators`: one row per stateful operator of every running
//!   view, with the state it holds (keys and bytes, as of the last
//!   checkpoint) and the late rows it dropped since the server started.
//! - `sluice_late_events`: the newest late rows (`late_events_retention`).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use sluice_catalog::Relation;
use sluice_dataflow::Node;

use crate::Dataflow;

/// One stateful operator of a running view.
#[derive(Debug, Clone)]
pub(crate) struct OperatorInfo {
    pub view: u64,
    pub view_name: String,
    /// Its position in the view's tree (pre-order, as `EXPLAIN` lists it).
    pub index: usize,
    pub label: String,
    pub state: Vec<u8>,
}

/// The stateful operators of `relation`'s tree.
pub(crate) fn operators_of(relation: &Relation, root: &Node) -> Vec<OperatorInfo> {
    let mut out = Vec::new();
    let mut index = 0;
    walk(relation, root, &mut index, &mut out);
    out
}

fn walk(relation: &Relation, node: &Node, index: &mut usize, out: &mut Vec<OperatorInfo>) {
    let Node::Op { op, inputs, state } = node else {
        return;
    };
    if !op.stateless() {
        out.push(OperatorInfo {
            view: relation.entry().id,
            view_name: relation.entry().name.clone(),
            index: *index,
            label: op.explain(),
            state: state.clone(),
        });
    }
    *index += 1;
    for input in inputs {
        walk(relation, input, index, out);
    }
}

type Rows = Box<dyn Fn() -> DfResult<Vec<ArrayRef>> + Send + Sync>;

/// A read-only table computed when it is read.
struct SystemTable {
    schema: SchemaRef,
    rows: Rows,
}

impl std::fmt::Debug for SystemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemTable")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = RecordBatch::try_new(self.schema.clone(), (self.rows)()?)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn timestamps(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter(values))
}

impl Dataflow {
    /// `sluice_operators (view, operator, label, state_keys, state_bytes,
    /// late_rows)`.
    pub fn operators_table(self: &Arc<Self>) -> Arc<dyn TableProvider> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("view", DataType::Utf8, false),
            Field::new("operator", DataType::Int64, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("state_keys", DataType::Int64, false),
            Field::new("state_bytes", DataType::Int64, false),
            Field::new("late_rows", DataType::Int64, false),
        ]));
        let dataflow = Arc::downgrade(self);
        Arc::new(SystemTable {
            schema,
            rows: Box::new(move || {
                let mut operators = match dataflow.upgrade() {
                    Some(d) => d
                        .registry
                        .read()
                        .map(|r| r.operators.clone())
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                operators.sort_by_key(|o| (o.view_name.clone(), o.index));
                let mut keys = Vec::with_capacity(operators.len());
                let mut bytes = Vec::with_capacity(operators.len());
                let mut late = Vec::with_capacity(operators.len());
                if let Some(d) = dataflow.upgrade() {
                    for o in &operators {
                        let entries =
                            d.catalog.store().scan_prefix(&o.state).map_err(|e| {
                                datafusion::error::DataFusionError::External(e.into())
                            })?;
                        keys.push(entries.len() as i64);
                        bytes.push(
                            entries
                                .iter()
                                .map(|(k, v)| (k.len() + v.len()) as i64)
                                .sum::<i64>(),
                        );
                        late.push(i64_of(d.late.count(&o.state)));
                    }
                }
                Ok(vec![
                    Arc::new(StringArray::from_iter_values(
                        operators.iter().map(|o| o.view_name.clone()),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        operators.iter().map(|o| o.index as i64),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        operators.iter().map(|o| o.label.clone()),
                    )),
                    Arc::new(Int64Array::from(keys)),
                    Arc::new(Int64Array::from(bytes)),
                    Arc::new(Int64Array::from(late)),
                ])
            }),
        })
    }

    /// `sluice_late_events (source, view, row, event_time, watermark,
    /// arrived)`.
    pub fn late_events_table(self: &Arc<Self>) -> Arc<dyn TableProvider> {
        let time = DataType::Timestamp(TimeUnit::Microsecond, None);
        let schema = Arc::new(Schema::new(vec![
            Field::new("source", DataType::Utf8, false),
            Field::new("view", DataType::Utf8, false),
            Field::new("row", DataType::Utf8, false),
            Field::new("event_time", time.clone(), true),
            Field::new("watermark", time.clone(), true),
            Field::new("arrived", time, false),
        ]));
        let late = self.late.clone();
        Arc::new(SystemTable {
            schema,
            rows: Box::new(move || {
                let events = late.events();
                Ok(vec![
                    Arc::new(StringArray::from_iter_values(
                        events.iter().map(|e| e.source.clone()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        events.iter().map(|e| e.view.clone()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        events.iter().map(|e| e.row.clone()),
                    )),
                    timestamps(events.iter().map(|e| e.event_time)),
                    timestamps(
                        events
                            .iter()
                            .map(|e| (e.watermark != i64::MIN).then_some(e.watermark)),
                    ),
                    timestamps(events.iter().map(|e| Some(e.arrived))),
                ])
            }),
        })
    }
}
