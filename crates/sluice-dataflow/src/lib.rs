//! Sluice's incremental operators and the graph that drives them.
//!
//! A view is a tree of [`Node`]s: sources (streams, tables, other views)
//! at the leaves, [`Operator`]s above. A change of a source travels up the
//! tree as a [`ChangeBatch`] (rows with a sign each); every operator turns
//! the change of its input into the change of its output, keeping what it
//! must remember (aggregate groups, join sides, top-N) as keyed state in a
//! [`StateTxn`].
//!
//! A view is back-filled by pushing its inputs' contents through the tree
//! in one transaction ([`Node::push`]); from then on each operator runs as
//! a task of the [`runtime`], connected to the others by channels that
//! carry changes and checkpoint barriers.
//!
//! Operators live in `operators/`, one concept each.

pub mod late;
pub mod operators;
pub mod runtime;
#[cfg(test)]
pub(crate) mod testkit;

pub use runtime::{Dataflow, DataflowOptions, SinkEvent, SinkInput, SpawnSink};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use sluice_common::{ChangeBatch, Result};
use sluice_state::StateTxn;

/// What an operator may use while it processes a change.
pub struct OpContext<'a> {
    /// The writer's transaction: state reads see its writes.
    pub txn: &'a mut StateTxn,
    /// DataFusion, for operators that evaluate plans over their state.
    pub datafusion: &'a SessionContext,
    /// Where an operator puts the rows it dropped as late.
    pub late: &'a mut Vec<late::LateRows>,
}

/// An incremental operator: the change of its inputs in, the change of its
/// output out.
#[async_trait]
pub trait Operator: Send + Sync {
    /// Processes `changes` of input `input` (0 or 1) and returns the change
    /// of the output. `prefix` is this operator's key prefix: all its state
    /// is under it.
    async fn process(
        &self,
        input: usize,
        changes: ChangeBatch,
        prefix: &[u8],
        ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch>;

    /// The output the operator has before any input arrives (a global
    /// aggregate has one row over no rows: `count(*) = 0`). Called once,
    /// when the view is created.
    async fn initialize(
        &self,
        _prefix: &[u8],
        _ctx: &mut OpContext<'_>,
    ) -> Result<Option<ChangeBatch>> {
        Ok(None)
    }

    /// The input watermarks advanced (`watermarks[i]` is input `i`'s, in
    /// microseconds, `None` for an input that carries none or has not
    /// reported one): frees the state the watermark closed, and returns what
    /// closing it emits (the final rows of `EMIT ON WINDOW CLOSE` windows).
    /// Called at checkpoint barriers, before the watermark is passed on.
    async fn on_watermark(
        &self,
        _watermarks: &[Option<i64>],
        _prefix: &[u8],
        _ctx: &mut OpContext<'_>,
    ) -> Result<Option<ChangeBatch>> {
        Ok(None)
    }

    /// The earliest event time (microseconds) of the rows the operator holds
    /// back to emit later, if any: its output watermark stays at or below
    /// it, so that those rows are not late downstream when they come.
    fn watermark_hold(&self) -> Option<i64> {
        None
    }

    /// The schema of the output.
    fn schema(&self) -> SchemaRef;

    /// The regions of state the operator keeps under its prefix (none for
    /// a stateless operator): what the runtime can measure, checkpoint or
    /// move without knowing the operator.
    fn state_layout(&self) -> Vec<operators::layout::Region> {
        Vec::new()
    }

    /// Whether the operator keeps no state and has one input: it then runs
    /// inside the task of its consumer instead of a task of its own.
    fn stateless(&self) -> bool {
        false
    }

    /// One line for `EXPLAIN`: the operator and the state it keeps.
    fn explain(&self) -> String;
}

/// A node of a view's tree.
pub enum Node {
    /// Changes of a stream, table or view enter here.
    Source {
        /// The relation's id.
        relation: u64,
        /// Its kind (`stream`, `table`, `materialized view`), for `EXPLAIN`.
        kind: String,
        /// Its name.
        name: String,
        /// Its schema.
        schema: SchemaRef,
    },
    /// An operator over its inputs.
    Op {
        /// The operator.
        op: Box<dyn Operator>,
        /// Its inputs, in order.
        inputs: Vec<Node>,
        /// Its key prefix in the state store.
        prefix: Vec<u8>,
    },
}

impl Node {
    /// The schema of this node's output.
    pub fn schema(&self) -> SchemaRef {
        match self {
            Node::Source { schema, .. } => schema.clone(),
            Node::Op { op, .. } => op.schema(),
        }
    }

    /// The ids of the relations this node reads, in the order they first
    /// appear (left to right).
    pub fn sources(&self) -> Vec<u64> {
        let mut out = Vec::new();
        self.collect_sources(&mut out);
        out
    }

    /// The names of the relations this node reads (for late-row reports).
    pub fn source_names(&self) -> String {
        let mut names: Vec<String> = Vec::new();
        self.collect_names(&mut names);
        names.join(", ")
    }

    fn collect_names(&self, out: &mut Vec<String>) {
        match self {
            Node::Source { name, .. } => {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
            Node::Op { inputs, .. } => inputs.iter().for_each(|i| i.collect_names(out)),
        }
    }

    fn collect_sources(&self, out: &mut Vec<u64>) {
        match self {
            Node::Source { relation, .. } => {
                if !out.contains(relation) {
                    out.push(*relation);
                }
            }
            Node::Op { inputs, .. } => inputs.iter().for_each(|i| i.collect_sources(out)),
        }
    }

    /// Pushes a change of relation `source` up to this node; returns the
    /// change of this node's output (`None` if the source is not below it).
    pub fn push<'a>(
        &'a self,
        source: u64,
        changes: &'a ChangeBatch,
        ctx: &'a mut OpContext<'_>,
    ) -> BoxFuture<'a, Result<Option<ChangeBatch>>> {
        Box::pin(async move {
            match self {
                Node::Source { relation, .. } => Ok((*relation == source).then(|| changes.clone())),
                Node::Op { op, inputs, prefix } => {
                    let mut outputs = Vec::new();
                    for (i, input) in inputs.iter().enumerate() {
                        if let Some(delta) = input.push(source, changes, ctx).await? {
                            if !delta.is_empty() {
                                outputs.push(op.process(i, delta, prefix, ctx).await?);
                            }
                        }
                    }
                    if outputs.is_empty() {
                        // The source is below, but nothing changed.
                        return Ok(self.reads(source).then(|| ChangeBatch::empty(op.schema())));
                    }
                    Ok(Some(ChangeBatch::concat(op.schema(), &outputs)?))
                }
            }
        })
    }

    /// Emits what every operator outputs before any input (bottom-up), for
    /// a view that was just created.
    pub fn initialize<'a>(
        &'a self,
        ctx: &'a mut OpContext<'_>,
    ) -> BoxFuture<'a, Result<Option<ChangeBatch>>> {
        Box::pin(async move {
            let Node::Op { op, inputs, prefix } = self else {
                return Ok(None);
            };
            let mut outputs = Vec::new();
            for (i, input) in inputs.iter().enumerate() {
                if let Some(delta) = input.initialize(ctx).await? {
                    if !delta.is_empty() {
                        outputs.push(op.process(i, delta, prefix, ctx).await?);
                    }
                }
            }
            if let Some(own) = op.initialize(prefix, ctx).await? {
                outputs.push(own);
            }
            if outputs.is_empty() {
                return Ok(None);
            }
            Ok(Some(ChangeBatch::concat(op.schema(), &outputs)?))
        })
    }

    fn reads(&self, source: u64) -> bool {
        self.sources().contains(&source)
    }

    /// The tree as `EXPLAIN` prints it, one operator a line, inputs indented.
    pub fn explain(&self) -> Vec<String> {
        let mut lines = Vec::new();
        self.explain_into(0, &mut lines);
        lines
    }

    fn explain_into(&self, depth: usize, lines: &mut Vec<String>) {
        let pad = "  ".repeat(depth);
        match self {
            Node::Source { kind, name, .. } => lines.push(format!("{pad}Source: {kind} {name}")),
            Node::Op { op, inputs, .. } => {
                lines.push(format!("{pad}{}", op.explain()));
                for input in inputs {
                    input.explain_into(depth + 1, lines);
                }
            }
        }
    }
}
