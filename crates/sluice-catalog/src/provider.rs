//! The catalog as DataFusion sees it: a schema whose tables scan the current
//! rows from the state store, and accept INSERT (upsert for tables, append
//! for streams), DELETE and UPDATE (tables only).
//!
//! A stream cannot be scanned: it is unbounded, and a `SELECT` over it fails
//! with a hint to create a materialized view.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, BooleanArray, RecordBatch, UInt64Array};
use datafusion::arrow::compute::{and, cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::{DFSchema, DataFusionError};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;
use sluice_common::SluiceError;
use sluice_sql::RelationKind;
use sluice_state::StateTxn;

use crate::catalog::{Catalog, Relation};

type DfResult<T> = datafusion::error::Result<T>;

fn df(e: SluiceError) -> DataFusionError {
    e.into_datafusion()
}

/// The single schema (`public`) of Sluice's catalog.
#[derive(Debug)]
pub struct SluiceSchema {
    catalog: Arc<Catalog>,
    /// Tables Sluice itself provides (`sluice_sources`), by name.
    system: std::sync::RwLock<std::collections::BTreeMap<String, Arc<dyn TableProvider>>>,
}

impl SluiceSchema {
    /// A schema provider over `catalog`.
    pub fn new(catalog: Arc<Catalog>) -> Self {
        SluiceSchema {
            catalog,
            system: Default::default(),
        }
    }

    /// Adds a read-only system table.
    pub fn register_system_table(&self, name: &str, table: Arc<dyn TableProvider>) {
        if let Ok(mut system) = self.system.write() {
            system.insert(name.to_owned(), table);
        }
    }

    fn system_table(&self, name: &str) -> Option<Arc<dyn TableProvider>> {
        self.system.read().ok().and_then(|s| s.get(name).cloned())
    }
}

#[async_trait]
impl SchemaProvider for SluiceSchema {
    fn table_names(&self) -> Vec<String> {
        // System tables resolve by name but are not listed (like
        // Postgres' catalogs, they are not the user's tables).
        self.catalog.names().unwrap_or_default()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(table) = self.system_table(name) {
            return Ok(Some(table));
        }
        let relation = self.catalog.get(name).map_err(df)?;
        Ok(relation.map(|relation| {
            Arc::new(RelationTable {
                catalog: self.catalog.clone(),
                relation,
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.system_table(name).is_some() || matches!(self.catalog.get(name), Ok(Some(_)))
    }
}

/// A stream or table as a DataFusion table.
#[derive(Debug)]
pub struct RelationTable {
    catalog: Arc<Catalog>,
    relation: Arc<Relation>,
}

impl RelationTable {
    /// Current rows and the rows among them that match `filters`.
    async fn matching(
        &self,
        state: &dyn Session,
        filters: &[Expr],
    ) -> DfResult<(RecordBatch, RecordBatch)> {
        let rows = self.relation.read_rows(self.catalog.store()).map_err(df)?;
        let df_schema = DFSchema::try_from(self.relation.schema().as_ref().clone())?;
        let mut mask: Option<BooleanArray> = None;
        for filter in filters {
            let expr = state.create_physical_expr(filter.clone(), &df_schema)?;
            let result = expr.evaluate(&rows)?.into_array(rows.num_rows())?;
            let result = result
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| {
                    df(SluiceError::DatatypeMismatch {
                        message: "argument of WHERE must be type boolean".into(),
                    })
                })?
                .clone();
            mask = Some(match mask {
                Some(m) => and(&m, &result)?,
                None => result,
            });
        }
        let selected = match mask {
            // NULL counts as not matching (`filter_record_batch` drops nulls).
            Some(mask) => filter_record_batch(&rows, &mask)?,
            None => rows.clone(),
        };
        Ok((rows, selected))
    }
}

/// A one-row, one-column (`count`) result, as DataFusion's DML returns.
fn count_exec(count: u64) -> DfResult<Arc<dyn ExecutionPlan>> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(UInt64Array::from(vec![count]))],
    )?;
    Ok(MemorySourceConfig::try_new_exec(
        &[vec![batch]],
        schema,
        None,
    )?)
}

#[async_trait]
impl TableProvider for RelationTable {
    fn schema(&self) -> SchemaRef {
        self.relation.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if self.relation.kind() == RelationKind::Stream {
            return Err(df(SluiceError::WrongObjectType {
                message: format!(
                    "stream \"{}\" is unbounded and cannot be queried directly",
                    self.relation.name()
                ),
                hint: Some(
                    "create a materialized view over the stream and SELECT from the view".into(),
                ),
            }));
        }
        self.relation.check_not_failed().map_err(df)?;
        let rows = self
            .relation
            .read_contents(self.catalog.store())
            .map_err(df)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![rows]],
            self.relation.schema(),
            projection.cloned(),
        )?)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if self.relation.kind() == RelationKind::View {
            return Err(df(SluiceError::WrongObjectType {
                message: format!(
                    "cannot insert into materialized view \"{}\"",
                    self.relation.name()
                ),
                hint: Some("a view's rows come from its query; write to its inputs".into()),
            }));
        }
        if insert_op != InsertOp::Append {
            return Err(df(SluiceError::not_supported(
                format!("INSERT {insert_op}"),
                None,
            )));
        }
        let sink = RelationSink {
            catalog: self.catalog.clone(),
            relation: self.relation.clone(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.relation.require_table("delete from").map_err(df)?;
        let _writer = self.catalog.lock_writes().await;
        let (_, doomed) = self.matching(state, &filters).await?;
        let mut txn = StateTxn::new(self.catalog.store().clone());
        let changes = self.relation.delete_rows(&mut txn, &doomed).map_err(df)?;
        self.catalog
            .commit_changes(txn, &self.relation, vec![changes])
            .await
            .map_err(df)?;
        count_exec(doomed.num_rows() as u64)
    }

    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.relation.require_table("update").map_err(df)?;
        let _writer = self.catalog.lock_writes().await;
        let schema = self.relation.schema();
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let (_, old) = self.matching(state, &filters).await?;
        let mut columns = old.columns().to_vec();
        for (name, expr) in &assignments {
            let idx = schema
                .index_of(name)
                .map_err(|_| df(SluiceError::UndefinedColumn { name: name.clone() }))?;
            let target = schema.field(idx).data_type();
            let expr = state.create_physical_expr(expr.clone(), &df_schema)?;
            let value = expr.evaluate(&old)?.into_array(old.num_rows())?;
            let value = if value.data_type() == target {
                value
            } else {
                cast(&value, target)?
            };
            columns[idx] = value;
        }
        let new = RecordBatch::try_new(schema, columns)?;
        let new = self.relation.normalize_rows(new).map_err(df)?;
        self.relation.check_rows(&new).map_err(df)?;
        let mut txn = StateTxn::new(self.catalog.store().clone());
        // A key may change: remove the old rows first, then write the new ones.
        let removed = self.relation.delete_rows(&mut txn, &old).map_err(df)?;
        let written = self.relation.upsert(&mut txn, &new).map_err(df)?;
        self.catalog
            .commit_changes(txn, &self.relation, vec![removed, written])
            .await
            .map_err(df)?;
        count_exec(new.num_rows() as u64)
    }
}

/// Writes INSERTed rows: an upsert per key for tables, an append for streams.
/// The whole statement lands in one atomic, durable write.
#[derive(Debug)]
struct RelationSink {
    catalog: Arc<Catalog>,
    relation: Arc<Relation>,
}

impl DisplayAs for RelationSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}Sink: {}", self.relation.kind(), self.relation.name())
    }
}

#[async_trait]
impl DataSink for RelationSink {
    fn schema(&self) -> &SchemaRef {
        // DataSink wants a reference; the relation owns its schema for its lifetime.
        self.relation_schema()
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let mut batches = Vec::new();
        while let Some(batch) = data.next().await {
            batches.push(batch?);
        }
        let schema = self.relation.schema();
        let mut checked = Vec::with_capacity(batches.len());
        let mut count = 0u64;
        for batch in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            // Same columns, but DataFusion may report different nullability.
            let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
            let batch = self.relation.normalize_rows(batch).map_err(df)?;
            self.relation.check_rows(&batch).map_err(df)?;
            count += batch.num_rows() as u64;
            checked.push(batch);
        }
        let _writer = self.catalog.lock_writes().await;
        let mut txn = StateTxn::new(self.catalog.store().clone());
        let mut changes = Vec::with_capacity(checked.len());
        for batch in &checked {
            changes.push(
                match self.relation.kind() {
                    RelationKind::Table => self.relation.upsert(&mut txn, batch),
                    _ => self.relation.append(&mut txn, batch),
                }
                .map_err(df)?,
            );
        }
        self.catalog
            .commit_changes(txn, &self.relation, changes)
            .await
            .map_err(df)?;
        Ok(count)
    }
}

impl RelationSink {
    fn relation_schema(&self) -> &SchemaRef {
        self.relation.schema_ref()
    }
}
