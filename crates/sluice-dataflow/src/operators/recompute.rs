//! `Recompute`: the stateful operators (GROUP BY, DISTINCT, joins, top-N,
//! window functions), maintained by recomputing only what a change touches.
//!
//! The operator keeps its inputs as multisets partitioned by a key (the
//! group key, the join key, the window's PARTITION BY; one partition for a
//! global top-N), and the output it produced per partition. A change of an
//! input updates that input's rows of the affected partitions; the node's own
//! logical plan (any aggregate, join type or window function DataFusion has)
//! then runs over just those partitions' rows, and the difference between
//! the new and the old output of those partitions is the change emitted.
//! That is exact under retractions by construction: a deleted maximum is
//! simply not among the rows any more.
//!
//! State (under the operator's prefix): `<side u8> <key length u32> <key>
//! <row>` -> multiplicity (i64); side 0 and 1 are the inputs, side 2 the
//! output. Keys and rows are `arrow-row` encoded.
//!
//! Joins keep only their inputs ([`join`]); an input may keep its rows in
//! the order of one column, to be read by range ([`ordered`]).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::MemTable;
use datafusion::common::{Column, DFSchemaRef};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use sluice_common::{batch_with_rows, ChangeBatch, Result, SluiceError};

use crate::{OpContext, Operator};

mod codec;
mod event_time;
mod expire;
mod invert;
mod join;
mod ordered;
use codec::{decode_rows, InputCodec};
pub use event_time::{micros_of, Bound, EventTime, Expiry, WindowClose, WATERMARK_COLUMN};
pub use invert::{invertible_type, Inverted, Total};
pub use ordered::plain_aggregate;
use ordered::{Extreme, Range};

const OUTPUT_SIDE: u8 = 2;
/// A merged GROUP BY's output row per group: `<4> <key length u32> <key>`
/// -> the row (one point read and write per group and change).
const MERGED_SIDE: u8 = 4;
/// Up to how many keys a lookup join reads key by key rather than the whole
/// table side (a lookup batch touches many keys of a small table).
const LOOKUP_KEY_BY_KEY: usize = 32;
/// The same for a join of tables, whose sides are large and whose changes
/// touch few keys.
const JOIN_KEY_BY_KEY: usize = 4096;
const SCRATCH: &str = "__sluice_input";
/// How many rows each input side holds: `<5>` -> two `i64`s.
const SIZES_SIDE: u8 = 5;

/// How an input's rows are partitioned for recomputation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// A key's rows are recomputed together; an output row's key is its
    /// first `n` columns (GROUP BY, DISTINCT).
    GroupColumns(usize),
    /// A key's rows are recomputed together, key by key (windows, top-N;
    /// a global top-N has one, empty, key).
    PerKey,
    /// Equi-join keys: rows of different keys never meet, so all touched
    /// keys run through the join at once, before and after the change, and
    /// the output is not kept (a join is deterministic).
    JoinKeys,
    /// Stream JOIN table: input `stream` is joined as it comes, not kept.
    Lookup {
        /// The stream's input.
        stream: usize,
    },
}

/// How the partial aggregates of two batches of rows combine, for an
/// aggregate that can be merged (count, sum, min, max).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// count and sum: add.
    Sum,
    /// min: the smaller.
    Min,
    /// max: the larger.
    Max,
}

/// One input of a [`Recompute`].
pub struct RecomputeInput {
    /// The input's schema as the node's plan sees it (with qualifiers).
    pub df_schema: DFSchemaRef,
    /// The partition key of a row, evaluated on the input.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
}

/// Maintains a stateful plan node by recomputing the partitions a change
/// touches.
pub struct Recompute {
    plan: LogicalPlan,
    inputs: Vec<InputCodec>,
    partitioning: Partitioning,
    schema: SchemaRef,
    output_rows: RowConverter,
    output_key: Option<RowConverter>,
    label: String,
    /// For GROUP BY over an append-only input whose aggregates all merge:
    /// keep only each group's output row and merge the aggregate of each
    /// change into it, instead of keeping every input row.
    merge: Option<Vec<Merge>>,
    /// The state the watermark closes, if any.
    event_time: Option<EventTime>,
    slot_state: std::sync::Mutex<event_time::Slots>,
    /// The join's type, for a join of kept sides.
    join_type: Option<JoinType>,
    /// Roughly how many rows each input side holds (decides between
    /// reading keys one by one and reading a whole side), kept in state
    /// under [`SIZES_SIDE`].
    sizes: std::sync::Mutex<Option<[i64; 2]>>,
    /// For GROUP BY (not on a window) over an input that retracts, with
    /// only count, sum and avg of integers: keep running totals per group.
    inverted: Option<Vec<Inverted>>,
    /// A GROUP BY of only `max` (or only `min`) of one column: its input
    /// rows are kept in that column's order and only the extreme is read.
    extreme: Option<Extreme>,
    /// A join comparing a column of each side: each side's rows in that
    /// column's order, read by range.
    ranges: [Option<Range>; 2],
}

fn converter(
    fields: impl Iterator<Item = datafusion::arrow::datatypes::DataType>,
) -> Result<Option<RowConverter>> {
    let sort_fields: Vec<SortField> = fields.map(SortField::new).collect();
    if sort_fields.is_empty() {
        return Ok(None);
    }
    Ok(Some(RowConverter::new(sort_fields)?))
}

/// `batch` (of `schema`) as an in-memory table whose columns are named
/// `c0`, `c1`, ... so any qualified names can be put back on top.
fn scratch_table(schema: &SchemaRef, batch: RecordBatch) -> Result<MemTable> {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), true))
        .collect();
    let scratch = Arc::new(Schema::new(fields));
    let rows = batch.num_rows();
    let batch = batch_with_rows(scratch.clone(), batch.columns().to_vec(), rows)?;
    Ok(MemTable::try_new(scratch, vec![vec![batch]])?)
}

fn rows_of(converter: &RowConverter, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    if batch.num_columns() == 0 {
        return Ok(vec![Vec::new(); batch.num_rows()]);
    }
    let rows = converter.convert_columns(batch.columns())?;
    Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
}

pub(crate) use super::state_keys::{count_of, split_entry};

impl Recompute {
    /// Maintains `plan` (whose inputs are `inputs`, in order) with
    /// `partitioning`. `label` names it in `EXPLAIN`.
    pub fn try_new(
        plan: LogicalPlan,
        inputs: Vec<RecomputeInput>,
        partitioning: Partitioning,
        label: String,
    ) -> Result<Self> {
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let mut codecs = Vec::with_capacity(inputs.len());
        for input in inputs {
            let arrow: SchemaRef = Arc::new(input.df_schema.as_arrow().clone());
            let key_types = input
                .keys
                .iter()
                .map(|k| k.data_type(&arrow))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let key_codec = converter(key_types.into_iter())?;
            codecs.push(InputCodec::try_new(input.df_schema, input.keys, key_codec)?);
        }
        let output_key = match partitioning {
            Partitioning::GroupColumns(n) => converter(
                schema
                    .fields()
                    .iter()
                    .take(n)
                    .map(|f| f.data_type().clone()),
            )?,
            _ => None,
        };
        let join_type = match (&plan, partitioning) {
            (LogicalPlan::Join(j), Partitioning::JoinKeys) => Some(j.join_type),
            _ => None,
        };
        let extreme = match partitioning {
            Partitioning::GroupColumns(_) => ordered::extreme_of(&plan),
            _ => None,
        };
        if let Some(e) = extreme {
            // NULLs where the extreme is not looked for.
            codecs[0].lead_with(e.column, e.max)?;
        }
        let ranges = match join_type {
            Some(_) => ordered::ranges_of(&plan),
            None => [None, None],
        };
        for (codec, range) in codecs.iter_mut().zip(&ranges) {
            if let Some(range) = range {
                codec.lead_with(range.column, true)?;
            }
        }
        Ok(Recompute {
            join_type,
            extreme,
            ranges,
            inverted: None,
            sizes: Default::default(),
            output_rows: RowConverter::new(
                schema
                    .fields()
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )?,
            plan,
            inputs: codecs,
            partitioning,
            schema,
            output_key,
            label,
            merge: None,
            event_time: None,
            slot_state: Default::default(),
        })
    }

    /// Frees the state the watermark closes (windows of a GROUP BY, rows of
    /// an interval join) and drops the rows that arrive for it later.
    pub fn with_event_time(mut self, event_time: EventTime) -> Self {
        self.event_time = Some(event_time);
        self
    }

    fn emits_on_close(&self) -> bool {
        matches!(&self.event_time, Some(EventTime::Window(w)) if w.emit_on_close)
    }

    /// Maintains a GROUP BY over an append-only input by merging partial
    /// aggregates (one `Merge` per aggregate, in order): state stays one
    /// row per group however many rows arrive.
    pub fn with_merge(mut self, merge: Vec<Merge>) -> Self {
        if matches!(self.partitioning, Partitioning::GroupColumns(_)) {
            self.merge = Some(merge);
        }
        self
    }

    /// Maintains a GROUP BY (with at least one group column, not closed by
    /// a watermark) by running totals, one `Inverted` per aggregate.
    pub fn with_totals(mut self, inverted: Vec<Inverted>) -> Self {
        if matches!(self.partitioning, Partitioning::GroupColumns(n) if n > 0)
            && self.event_time.is_none()
        {
            self.inverted = Some(inverted);
        }
        self
    }

    /// Combines old output rows and partial aggregates of new rows, group
    /// by group.
    async fn merge_rows(
        &self,
        session: &SessionContext,
        merge: &[Merge],
        parts: RecordBatch,
    ) -> Result<RecordBatch> {
        use datafusion::functions_aggregate::expr_fn::{max, min, sum};
        use datafusion::logical_expr::{cast, col};
        let n = self.output_key_width();
        let table = scratch_table(&self.schema, parts)?;
        let group: Vec<Expr> = (0..n).map(|i| col(format!("c{i}"))).collect();
        let aggregates: Vec<Expr> = merge
            .iter()
            .enumerate()
            .map(|(j, m)| {
                let c = col(format!("c{}", n + j));
                match m {
                    Merge::Sum => sum(c),
                    Merge::Min => min(c),
                    Merge::Max => max(c),
                }
                .alias(format!("m{j}"))
            })
            .collect();
        let outputs: Vec<Expr> = self
            .schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let name = if i < n {
                    format!("c{i}")
                } else {
                    format!("m{}", i - n)
                };
                cast(col(name), f.data_type().clone()).alias(format!("o{i}"))
            })
            .collect();
        let plan = LogicalPlanBuilder::scan(SCRATCH, provider_as_source(Arc::new(table)), None)?
            .aggregate(group, aggregates)?
            .project(outputs)?
            .build()?;
        let batches = session.execute_logical_plan(plan).await?.collect().await?;
        let merged = match batches.first() {
            Some(first) => concat_batches(&first.schema(), &batches)?,
            None => return Ok(RecordBatch::new_empty(self.schema.clone())),
        };
        Ok(RecordBatch::try_new(
            self.schema.clone(),
            merged.columns().to_vec(),
        )?)
    }

    /// The index into `sizes` of an input side.
    fn side_rows(&self, side: u8) -> Option<usize> {
        (usize::from(side) < self.inputs.len().min(2)).then_some(usize::from(side))
    }

    /// Roughly how many rows input `side` holds.
    fn side_size(&self, side: usize, ctx: &OpContext<'_>, state: &[u8]) -> Result<i64> {
        Ok(self
            .with_sizes(ctx, state, |sizes| sizes.get(side).copied())?
            .unwrap_or(0))
    }

    /// Notes that `n` rows joined input `side` (negative: left it).
    pub(super) fn count_rows(
        &self,
        side: usize,
        n: i64,
        ctx: &mut OpContext<'_>,
        state: &[u8],
    ) -> Result<()> {
        if n == 0 || self.side_rows(side as u8).is_none() {
            return Ok(());
        }
        let sizes = self.with_sizes(ctx, state, |sizes| {
            sizes[side] += n;
            *sizes
        })?;
        let mut value = sizes[0].to_be_bytes().to_vec();
        value.extend_from_slice(&sizes[1].to_be_bytes());
        ctx.txn
            .put(super::state_keys::side_prefix(state, SIZES_SIDE), value);
        Ok(())
    }

    /// Runs `f` on the sides' sizes, read from state the first time.
    fn with_sizes<R>(
        &self,
        ctx: &OpContext<'_>,
        state: &[u8],
        f: impl FnOnce(&mut [i64; 2]) -> R,
    ) -> Result<R> {
        let mut sizes = self
            .sizes
            .lock()
            .map_err(|_| SluiceError::internal("sizes lock poisoned"))?;
        if sizes.is_none() {
            let key = super::state_keys::side_prefix(state, SIZES_SIDE);
            let stored = ctx.txn.multi_get(&[key])?.pop().flatten();
            *sizes = Some(match stored {
                Some(b) if b.len() == 16 => [count_of(&b[..8])?, count_of(&b[8..])?],
                _ => [0, 0],
            });
        }
        Ok(f(sizes.get_or_insert([0, 0])))
    }

    fn keys_of(&self, input: usize, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let codec = &self.inputs[input];
        super::state_keys::encode_keys(codec.key_codec.as_ref(), &codec.keys, batch)
    }

    fn partition_prefix(state: &[u8], side: u8, key: &[u8]) -> Vec<u8> {
        super::state_keys::partition_prefix(state, side, key)
    }

    /// Adds `changes` (rows with their keys) to the multiset of `side`.
    fn apply(
        &self,
        ctx: &mut OpContext<'_>,
        state: &[u8],
        side: u8,
        keys: &[Vec<u8>],
        rows: Vec<Vec<u8>>,
        signs: impl Fn(usize) -> i8,
    ) -> Result<()> {
        let mut deltas: HashMap<Vec<u8>, i64> = HashMap::new();
        for (i, row) in rows.into_iter().enumerate() {
            let mut k = Self::partition_prefix(state, side, &keys[i]);
            k.extend_from_slice(&row);
            *deltas.entry(k).or_default() += i64::from(signs(i));
        }
        self.count_rows(usize::from(side), deltas.values().sum::<i64>(), ctx, state)?;
        let ks: Vec<Vec<u8>> = deltas.keys().cloned().collect();
        let current = ctx.txn.multi_get(&ks)?;
        for (k, old) in ks.into_iter().zip(current) {
            let new = old.map(|b| count_of(&b)).transpose()?.unwrap_or(0) + deltas[&k];
            if new == 0 {
                ctx.txn.delete(k);
            } else {
                ctx.txn.put(k, new.to_be_bytes().to_vec());
            }
        }
        Ok(())
    }

    /// The rows of `side` under `key`, each repeated by its multiplicity,
    /// as encoded rows.
    fn load(
        &self,
        ctx: &OpContext<'_>,
        state: &[u8],
        side: u8,
        key: &[u8],
    ) -> Result<Vec<(Vec<u8>, i64)>> {
        let prefix = Self::partition_prefix(state, side, key);
        ctx.txn
            .scan_prefix(&prefix)?
            .into_iter()
            .map(|(k, v)| Ok((k[prefix.len()..].to_vec(), count_of(&v)?)))
            .collect()
    }

    /// The rows of `side` under any of `keys`: one range read per key for a
    /// few keys, one read of the whole side for many.
    fn load_many(
        &self,
        ctx: &OpContext<'_>,
        state: &[u8],
        side: u8,
        keys: &[Vec<u8>],
        key_by_key: usize,
    ) -> Result<Vec<(Vec<u8>, i64)>> {
        // Many keys of a large side are still fewer reads key by key than
        // reading the whole side.
        let size = self.side_size(usize::from(side), ctx, state)?;
        if keys.len() <= key_by_key || (keys.len() as i64).saturating_mul(8) < size {
            let mut rows = Vec::new();
            for key in keys {
                rows.extend(self.load(ctx, state, side, key)?);
            }
            return Ok(rows);
        }
        let wanted: std::collections::HashSet<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut prefix = state.to_vec();
        prefix.push(side);
        let mut rows = Vec::new();
        for (k, v) in ctx.txn.scan_prefix(&prefix)? {
            let (key, row) = split_entry(&k[prefix.len()..])?;
            if wanted.contains(key) {
                rows.push((row.to_vec(), count_of(&v)?));
            }
        }
        Ok(rows)
    }

    /// Runs the node's plan over these rows of its inputs.
    async fn execute(
        &self,
        session: &SessionContext,
        inputs: Vec<RecordBatch>,
    ) -> Result<RecordBatch> {
        let mut new_inputs = Vec::with_capacity(inputs.len());
        for (codec, batch) in self.inputs.iter().zip(inputs) {
            let table = scratch_table(&codec.schema, batch)?;
            let exprs: Vec<Expr> = codec
                .df_schema
                .iter()
                .enumerate()
                .map(|(i, (qualifier, field))| {
                    Expr::Column(Column::new(Some(SCRATCH), format!("c{i}")))
                        .alias_qualified(qualifier.cloned(), field.name())
                })
                .collect();
            let plan =
                LogicalPlanBuilder::scan(SCRATCH, provider_as_source(Arc::new(table)), None)?
                    .project(exprs)?
                    .build()?;
            new_inputs.push(plan);
        }
        let plan = self
            .plan
            .clone()
            .with_new_exprs(self.plan.expressions(), new_inputs)?;
        let batches = session.execute_logical_plan(plan).await?.collect().await?;
        let merged = concat_batches(
            &batches
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| self.schema.clone()),
            &batches,
        )?;
        Ok(RecordBatch::try_new(
            self.schema.clone(),
            merged.columns().to_vec(),
        )?)
    }

    /// The change from `old` to `new` rows (both encoded, with multiplicity).
    fn diff(
        &self,
        old: &[(Vec<u8>, i64)],
        new: &RecordBatch,
    ) -> Result<(ChangeBatch, Vec<Vec<u8>>)> {
        let new_rows = rows_of(&self.output_rows, new)?;
        let mut counts: HashMap<&[u8], i64> = HashMap::new();
        for (row, n) in old {
            *counts.entry(row.as_slice()).or_default() -= n;
        }
        for row in &new_rows {
            *counts.entry(row.as_slice()).or_default() += 1;
        }
        let mut changed: Vec<(Vec<u8>, i64)> = counts
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .map(|(r, n)| (r.to_vec(), n))
            .collect();
        changed.sort();
        let batch = decode_rows(&self.output_rows, &self.schema, &changed)?;
        let mut signs = Vec::with_capacity(batch.num_rows());
        for (_, n) in &changed {
            signs.extend(std::iter::repeat_n(
                n.signum() as i8,
                n.unsigned_abs() as usize,
            ));
        }
        Ok((ChangeBatch::new(batch, signs), new_rows))
    }

    fn distinct(keys: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut seen = std::collections::HashSet::new();
        keys.iter()
            .filter(|k| seen.insert(k.as_slice()))
            .cloned()
            .collect()
    }
}

#[async_trait]
impl Operator for Recompute {
    async fn process(
        &self,
        input: usize,
        changes: ChangeBatch,
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        if let Partitioning::Lookup { stream } = self.partitioning {
            if input == stream {
                if !changes.is_append_only() {
                    return Err(SluiceError::internal(
                        "lookup join got a retraction on its stream side",
                    ));
                }
                return self.lookup(stream, changes, state, ctx).await;
            }
        }
        let changes = self.drop_late(input, changes, state, ctx)?;
        if changes.is_empty() {
            return Ok(ChangeBatch::empty(self.schema.clone()));
        }
        let output = self.process_on_time(input, changes, state, ctx).await?;
        if self.emits_on_close() {
            // The groups' rows wait until their window closes.
            return Ok(ChangeBatch::empty(self.schema.clone()));
        }
        Ok(output)
    }

    async fn on_watermark(
        &self,
        watermarks: &[Option<i64>],
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<Option<ChangeBatch>> {
        self.close(watermarks, state, ctx)
    }

    async fn initialize(
        &self,
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<Option<ChangeBatch>> {
        // Only a global aggregate (GROUP BY nothing) has output over no rows.
        if self.partitioning != Partitioning::GroupColumns(0) {
            return Ok(None);
        }
        let merged = Self::partition_prefix(state, MERGED_SIDE, &[]);
        if self.merge.is_some() && ctx.txn.multi_get(std::slice::from_ref(&merged))?[0].is_some() {
            return Ok(None);
        }
        if !self.load(ctx, state, OUTPUT_SIDE, &[])?.is_empty() {
            return Ok(None);
        }
        let rows = self.load(ctx, state, 0, &[])?;
        let batch = self.inputs[0].decode(&rows)?;
        let new = self.execute(ctx.session, vec![batch]).await?;
        let (change, new_rows) = self.diff(&[], &new)?;
        if self.merge.is_some() {
            for row in new_rows {
                ctx.txn.put(merged.clone(), row);
            }
        } else {
            let keys = vec![Vec::new(); new_rows.len()];
            self.apply(ctx, state, OUTPUT_SIDE, &keys, new_rows, |_| 1)?;
        }
        Ok(Some(change))
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn explain(&self) -> String {
        let state = match self.partitioning {
            Partitioning::GroupColumns(_) if self.merge.is_some() => {
                "state: output row per group, merged with each change"
            }
            Partitioning::GroupColumns(_) if self.inverted.is_some() => {
                "state: running totals per group"
            }
            Partitioning::GroupColumns(_) if self.extreme.is_some() => {
                "state: input rows in order of the aggregated column and output row per group"
            }
            Partitioning::GroupColumns(_) => "state: input rows and output row per group",
            Partitioning::PerKey => "state: input rows and output rows per key",
            Partitioning::JoinKeys if self.ranges[0].is_some() => {
                "state: both sides' rows per key, in order of the compared columns"
            }
            Partitioning::JoinKeys => "state: both sides' rows per key",
            Partitioning::Lookup { .. } => "state: the table side's rows per key",
        };
        let closes = match &self.event_time {
            Some(EventTime::Window(w)) if w.emit_on_close => {
                "; emits each window's row when the watermark closes it, then frees it"
            }
            Some(EventTime::Window(_)) => "; frees a window when the watermark closes it",
            Some(EventTime::Interval(_)) => "; frees rows the watermark puts out of reach",
            None => "",
        };
        format!("{} ({state}{closes})", self.label)
    }
}

impl Recompute {
    /// [`Operator::process`] for rows that are not late.
    async fn process_on_time(
        &self,
        input: usize,
        changes: ChangeBatch,
        state: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let keys = self.keys_of(input, &changes.batch)?;
        if let Some(inverted) = &self.inverted {
            return self.apply_totals(inverted, &keys, &changes, state, ctx);
        }
        if let Some(merge) = &self.merge {
            if !changes.is_append_only() {
                return Err(SluiceError::internal("merged aggregate got a retraction"));
            }
            // One point read per touched group, one write per group.
            let groups: Vec<Vec<u8>> = Self::distinct(&keys)
                .iter()
                .map(|k| Self::partition_prefix(state, MERGED_SIDE, k))
                .collect();
            let old: Vec<(Vec<u8>, i64)> = ctx
                .txn
                .multi_get(&groups)?
                .into_iter()
                .flatten()
                .map(|row| (row, 1))
                .collect();
            let partial = self.execute(ctx.session, vec![changes.batch]).await?;
            let old_batch = decode_rows(&self.output_rows, &self.schema, &old)?;
            let parts = concat_batches(&self.schema, [&old_batch, &partial])?;
            let new = self.merge_rows(ctx.session, merge, parts).await?;
            let (change, new_rows) = self.diff(&old, &new)?;
            for (key, row) in self.output_keys(&new)?.into_iter().zip(new_rows) {
                ctx.txn
                    .put(Self::partition_prefix(state, MERGED_SIDE, &key), row);
            }
            return Ok(change);
        }
        let rows = self.inputs[input].encode(&changes.batch)?;
        if self.partitioning == Partitioning::JoinKeys {
            return self.join(input, &keys, rows, &changes, state, ctx).await;
        }
        self.apply(ctx, state, input as u8, &keys, rows, |i| changes.sign(i))?;
        if matches!(self.partitioning, Partitioning::Lookup { .. }) {
            return Ok(ChangeBatch::empty(self.schema.clone()));
        }
        let affected = Self::distinct(&keys);
        match self.partitioning {
            Partitioning::GroupColumns(_) => {
                let mut input_rows = Vec::new();
                let mut old = Vec::new();
                for key in &affected {
                    match self.extreme {
                        Some(e) => input_rows.extend(self.load_extreme(ctx, state, e, key)?),
                        None => input_rows.extend(self.load(ctx, state, 0, key)?),
                    }
                    old.extend(self.load(ctx, state, OUTPUT_SIDE, key)?);
                    ctx.txn
                        .delete_prefix(Self::partition_prefix(state, OUTPUT_SIDE, key))?;
                }
                let batch = self.inputs[0].decode(&input_rows)?;
                let new = self.execute(ctx.session, vec![batch]).await?;
                self.replace_groups(ctx, state, &old, &new)
            }
            _ => {
                let mut changes_out = Vec::new();
                for key in &affected {
                    let mut inputs = Vec::with_capacity(self.inputs.len());
                    for (side, codec) in self.inputs.iter().enumerate() {
                        let rows = self.load(ctx, state, side as u8, key)?;
                        inputs.push(codec.decode(&rows)?);
                    }
                    let old = self.load(ctx, state, OUTPUT_SIDE, key)?;
                    let new = self.execute(ctx.session, inputs).await?;
                    let (change, new_rows) = self.diff(&old, &new)?;
                    ctx.txn
                        .delete_prefix(Self::partition_prefix(state, OUTPUT_SIDE, key))?;
                    let keys = vec![key.clone(); new_rows.len()];
                    self.apply(ctx, state, OUTPUT_SIDE, &keys, new_rows, |_| 1)?;
                    changes_out.push(change);
                }
                ChangeBatch::concat(self.schema.clone(), &changes_out)
            }
        }
    }
}

impl Recompute {
    /// Emits the change from `old` to `new` output rows of some groups and
    /// stores `new` as their output (the old rows are already removed).
    fn replace_groups(
        &self,
        ctx: &mut OpContext<'_>,
        state: &[u8],
        old: &[(Vec<u8>, i64)],
        new: &RecordBatch,
    ) -> Result<ChangeBatch> {
        let (change, new_rows) = self.diff(old, new)?;
        let new_keys = self.output_keys(new)?;
        self.apply(ctx, state, OUTPUT_SIDE, &new_keys, new_rows, |_| 1)?;
        Ok(change)
    }

    /// The group key of each output row.
    fn output_keys(&self, rows: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        Ok(match &self.output_key {
            Some(codec) => codec
                .convert_columns(&rows.columns()[..self.output_key_width()])?
                .iter()
                .map(|r| r.as_ref().to_vec())
                .collect(),
            None => vec![Vec::new(); rows.num_rows()],
        })
    }

    fn output_key_width(&self) -> usize {
        match self.partitioning {
            Partitioning::GroupColumns(n) => n,
            _ => 0,
        }
    }
}
