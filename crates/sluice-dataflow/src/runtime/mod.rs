//! The runtime: every stateful operator of a view runs as its own task,
//! and the tasks are connected by bounded channels carrying [`Message`]s:
//! change batches, watermarks and checkpoint barriers.
//!
//! Watermarks: a stream with `WATERMARK FOR` carries one (its largest event
//! time minus the delay, in microseconds); an operator's watermark is the
//! minimum over the inputs that carry one, forwarded when it advances.
//! Tables carry none, so a lookup join passes on its stream's.
//!
//! Checkpoints are aligned barriers (Chandy-Lamport, as in Flink): barrier
//! `e` enters at every source; an operator with several inputs holds back an
//! input that has delivered barrier `e` until all of them have, then hands
//! its state writes of the epoch to the coordinator in a [`Report`] and
//! forwards the barrier. The coordinator commits an epoch once every task
//! has reported it, so state and view rows always commit as of the same
//! cut of the inputs.
//!
//! Each task keeps its state in a long-lived [`StateTxn`]: reads see its own
//! writes, including those handed over but not yet committed, and the
//! values stay in memory as a cache of hot keys, trimmed when it outgrows
//! its budget.

//! Files: `dataflow.rs` ([`Dataflow`], what the rest of Sluice calls),
//! `router.rs` (changes and barriers in), `coordinator.rs` (checkpoints
//! committed), `registry.rs` (the running graph), `rows.rs` (a view's
//! rows kept), `sink.rs` (what a sink task sees), `system.rs` (the
//! system tables); this file holds the messages, the task environment and
//! the operator tasks.

mod coordinator;
mod dataflow;
mod registry;
mod router;
mod rows;
mod sink;
mod system;

pub use dataflow::{Dataflow, DataflowOptions};
pub use sink::{SinkEvent, SinkInput, SpawnSink};

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use datafusion::prelude::SessionContext;
use sluice_common::{catch_panic, ChangeBatch, SluiceError};
use sluice_state::{StateBackend, StateTxn, WriteBatch};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::late::{LateEvents, LateRows};
use crate::{Node, OpContext, Operator};

/// How many messages a task's inbox holds before senders wait.
pub const INBOX_CAPACITY: usize = 16;

/// What flows between tasks.
#[derive(Debug, Clone)]
pub enum Message {
    /// A change of the sender's output.
    Data(ChangeBatch),
    /// No later row of the sender's event time is expected below this
    /// (microseconds since the epoch).
    Watermark(i64),
    /// Everything before this belongs to checkpoint epoch `e`.
    Barrier(u64),
}

/// A task's inbox: messages tagged with the input they arrive on.
pub type Inbox = mpsc::Receiver<(usize, Message)>;

/// The sending end of one input of a task.
#[derive(Debug, Clone)]
pub struct Outlet {
    tx: mpsc::Sender<(usize, Message)>,
    input: usize,
}

impl Outlet {
    /// Input `input` of the task that reads `tx`'s inbox.
    pub fn new(tx: mpsc::Sender<(usize, Message)>, input: usize) -> Self {
        Outlet { tx, input }
    }

    /// Sends, waiting while the inbox is full; `false` if the task ended.
    pub async fn send(&self, message: Message) -> bool {
        self.tx.send((self.input, message)).await.is_ok()
    }
}

/// A new inbox and the outlet of its input 0.
pub fn inbox() -> (Outlet, Inbox) {
    let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
    (Outlet::new(tx, 0), rx)
}

/// What a task hands the coordinator when a barrier passes it.
#[derive(Debug)]
pub struct Report {
    /// The epoch the barrier closed.
    pub epoch: u64,
    /// The task's state writes during the epoch.
    pub writes: WriteBatch,
    /// The view the task belongs to.
    pub view: u64,
    /// The error the task stopped at during the epoch, if it did.
    pub failure: Option<SluiceError>,
}

/// What every task of a view shares.
#[derive(Clone)]
pub struct TaskEnv {
    /// The state store (committed state; each task overlays its own writes).
    pub store: Arc<dyn StateBackend>,
    /// DataFusion, for operators that evaluate plans.
    pub datafusion: SessionContext,
    /// Where reports go.
    pub reports: mpsc::UnboundedSender<Report>,
    /// The newest committed epoch.
    pub committed: watch::Receiver<u64>,
    /// The view.
    pub view: u64,
    /// How many bytes of state a task may keep cached in memory.
    pub cache_bytes: usize,
    /// The view's name.
    pub name: Arc<str>,
    /// Where late rows go.
    pub late: Arc<LateEvents>,
    /// What the tasks' state caches hold, in bytes, all views together.
    pub cached: Arc<AtomicUsize>,
}

impl std::fmt::Debug for TaskEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskEnv")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl TaskEnv {
    /// A task's transaction over the store, its cache counted in `cached`.
    pub fn txn(&self) -> StateTxn {
        StateTxn::metered(self.store.clone(), self.cached.clone())
    }

    /// Hands over a task's writes for `epoch`; once every earlier epoch is
    /// committed, forgets the deleted keys that are in the store and trims
    /// the cache when it is over budget.
    pub fn checkpoint(&self, epoch: u64, txn: &mut StateTxn, failure: Option<SluiceError>) -> bool {
        let writes = txn.take_writes();
        if *self.committed.borrow() + 1 >= epoch {
            // Every earlier epoch's writes are in the store.
            txn.forget_settled_deletes();
            if txn.cached_bytes() > self.cache_bytes {
                txn.shrink_to(&writes);
            }
        }
        self.reports
            .send(Report {
                epoch,
                writes,
                view: self.view,
                failure,
            })
            .is_ok()
    }
}

/// The tasks of one view's operators.
#[derive(Debug, Default)]
pub struct Spawned {
    /// Where changes of each relation enter: (relation id, outlet).
    pub inlets: Vec<(u64, Outlet)>,
    /// The running tasks.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Stateless operators (with their state prefix) applied, in order, to an
/// input's changes inside the consuming task.
type Chain = Vec<(Box<dyn Operator>, Vec<u8>)>;

/// The largest event time in `batch` according to a stream's watermark
/// expression, in microseconds since the epoch.
pub fn max_event_time(
    expr: &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
    batch: &datafusion::arrow::array::RecordBatch,
) -> sluice_common::Result<Option<i64>> {
    use datafusion::arrow::array::TimestampMicrosecondArray;
    use datafusion::arrow::datatypes::{DataType, TimeUnit};
    if batch.num_rows() == 0 {
        return Ok(None);
    }
    let values = expr.evaluate(batch)?.into_array(batch.num_rows())?;
    let micros = datafusion::arrow::compute::cast(
        &values,
        &DataType::Timestamp(TimeUnit::Microsecond, None),
    )?;
    Ok(micros
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .and_then(datafusion::arrow::compute::max))
}

/// Tracks the watermark of each input and the minimum over those that
/// carry one.
#[derive(Debug)]
pub struct Watermarks {
    carries: Vec<bool>,
    current: Vec<Option<i64>>,
    emitted: Option<i64>,
}

impl Watermarks {
    /// For inputs of which those marked `true` carry watermarks.
    pub fn new(carries: Vec<bool>) -> Self {
        let n = carries.len();
        Watermarks {
            carries,
            current: vec![None; n],
            emitted: None,
        }
    }

    /// Each input's watermark (`None`: carries none or none yet).
    pub fn inputs(&self) -> &[Option<i64>] {
        &self.current
    }

    /// Whether any input carries a watermark.
    pub fn any(&self) -> bool {
        self.carries.iter().any(|c| *c)
    }

    /// Records input `input`'s watermark; returns the output's watermark if
    /// it advanced.
    pub fn advance(&mut self, input: usize, watermark: i64) -> Option<i64> {
        self.record(input, watermark);
        self.output(None)
    }

    /// Records input `input`'s watermark; returns whether it moved.
    pub fn record(&mut self, input: usize, watermark: i64) -> bool {
        let Some(slot) = self.current.get_mut(input) else {
            return false;
        };
        let before = *slot;
        *slot = Some(slot.map_or(watermark, |w| w.max(watermark)));
        *slot != before
    }

    /// The output's watermark, if it advanced: the minimum over the inputs
    /// that carry one, held at `hold` (the earliest event time an operator
    /// still holds back).
    pub fn output(&mut self, hold: Option<i64>) -> Option<i64> {
        let mut min: Option<i64> = None;
        for (carries, w) in self.carries.iter().zip(&self.current) {
            if !carries {
                continue;
            }
            let w = (*w)?;
            min = Some(min.map_or(w, |m| m.min(w)));
        }
        let min = match hold {
            Some(h) => min?.min(h),
            None => min?,
        };
        if self.emitted.is_some_and(|e| e >= min) {
            return None;
        }
        self.emitted = Some(min);
        Some(min)
    }
}

/// Splits a chain of stateless operators over a source off `node`.
fn peel(node: Node) -> Result<(u64, Chain), Node> {
    match node {
        Node::Source { relation, .. } => Ok((relation, Vec::new())),
        Node::Op {
            op,
            mut inputs,
            prefix,
        } if op.stateless() && inputs.len() == 1 => {
            let Some(input) = inputs.pop() else {
                return Err(Node::Op { op, inputs, prefix });
            };
            match peel(input) {
                Ok((relation, mut chain)) => {
                    chain.push((op, prefix));
                    Ok((relation, chain))
                }
                Err(input) => Err(Node::Op {
                    op,
                    inputs: vec![input],
                    prefix,
                }),
            }
        }
        other => Err(other),
    }
}

/// Starts a task for every stateful operator of `node` (stateless ones over
/// a source run inside their consumer's task, so that a task fed by the
/// router sees the changes of all its inputs in the order they were
/// written), the root's output going to `out`; the leaves' outlets are
/// added to `spawned.inlets`. `carries` says which relations carry a
/// watermark; returns whether `node`'s output does.
pub fn spawn(
    node: Node,
    out: Outlet,
    env: &TaskEnv,
    carries: &dyn Fn(u64) -> bool,
    spawned: &mut Spawned,
) -> bool {
    match node {
        Node::Source { relation, .. } => {
            spawned.inlets.push((relation, out));
            carries(relation)
        }
        Node::Op { op, inputs, prefix } => {
            let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
            let mut chains = Vec::with_capacity(inputs.len());
            let mut carried = Vec::with_capacity(inputs.len());
            let sources: Vec<String> = inputs.iter().map(Node::source_names).collect();
            for (i, input) in inputs.into_iter().enumerate() {
                let outlet = Outlet::new(tx.clone(), i);
                match peel(input) {
                    Ok((relation, chain)) => {
                        spawned.inlets.push((relation, outlet));
                        chains.push(chain);
                        carried.push(carries(relation));
                    }
                    Err(input) => {
                        carried.push(spawn(input, outlet, env, carries, spawned));
                        chains.push(Vec::new());
                    }
                }
            }
            drop(tx);
            let env = env.clone();
            let watermarks = Watermarks::new(carried);
            let any = watermarks.any();
            let task = Task {
                op,
                prefix,
                chains,
                sources,
            };
            spawned.tasks.push(tokio::spawn(async move {
                task.run(watermarks, rx, out, env).await;
            }));
            any
        }
    }
}

/// Holds back inputs that delivered the current barrier until all have.
#[derive(Debug)]
pub struct Aligner {
    arrived: Vec<bool>,
    held: VecDeque<(usize, Message)>,
    pending: VecDeque<(usize, Message)>,
}

impl Aligner {
    /// An aligner for `inputs` inputs.
    pub fn new(inputs: usize) -> Self {
        Aligner {
            arrived: vec![false; inputs.max(1)],
            held: VecDeque::new(),
            pending: VecDeque::new(),
        }
    }

    /// The next message to process, with its input: `Data`, or a
    /// `Barrier` once it has arrived on every input (reported on input 0).
    /// `None` when the inbox closed.
    pub async fn next(&mut self, inbox: &mut Inbox) -> Option<(usize, Message)> {
        loop {
            let (input, message) = match self.pending.pop_front() {
                Some(m) => m,
                None => inbox.recv().await?,
            };
            let input = input.min(self.arrived.len() - 1);
            if self.arrived[input] {
                self.held.push_back((input, message));
                continue;
            }
            match message {
                Message::Data(_) | Message::Watermark(_) => return Some((input, message)),
                Message::Barrier(epoch) => {
                    self.arrived[input] = true;
                    if self.arrived.iter().all(|a| *a) {
                        self.arrived.iter_mut().for_each(|a| *a = false);
                        // What was held back came before what is pending.
                        let mut requeue = std::mem::take(&mut self.held);
                        requeue.append(&mut self.pending);
                        self.pending = requeue;
                        return Some((0, Message::Barrier(epoch)));
                    }
                }
            }
        }
    }
}

/// One operator's task.
struct Task {
    op: Box<dyn Operator>,
    /// Its key prefix in the state store.
    prefix: Vec<u8>,
    chains: Vec<Chain>,
    /// The relations below each input, for late-row reports.
    sources: Vec<String>,
}

impl Task {
    async fn run(self, mut watermarks: Watermarks, mut inbox: Inbox, out: Outlet, env: TaskEnv) {
        let Task {
            op,
            prefix,
            chains,
            sources,
        } = self;
        let mut txn = env.txn();
        let mut aligner = Aligner::new(chains.len());
        let mut failure: Option<SluiceError> = None;
        let mut failed = false;
        let mut late: Vec<LateRows> = Vec::new();
        // Whether any input's watermark moved since the last barrier.
        let mut watermark_moved = false;
        while let Some((input, message)) = aligner.next(&mut inbox).await {
            let result = match message {
                Message::Data(changes) => {
                    if failed {
                        continue;
                    }
                    let mut ctx = OpContext {
                        txn: &mut txn,
                        datafusion: &env.datafusion,
                        late: &mut late,
                    };
                    let processed = match chains.get(input) {
                        Some(chain) => {
                            catch_panic("an operator", apply_chain(chain, changes, &mut ctx)).await
                        }
                        None => Ok(changes),
                    };
                    let result = match processed {
                        Ok(c) if c.is_empty() => continue,
                        Ok(c) => {
                            catch_panic("an operator", op.process(input, c, &prefix, &mut ctx))
                                .await
                                .map(Some)
                        }
                        Err(e) => Err(e),
                    };
                    let source = sources.get(input).map_or("", String::as_str);
                    for rows in late.drain(..) {
                        env.late.record(&prefix, &env.name, source, rows);
                    }
                    result
                }
                Message::Watermark(w) => {
                    watermark_moved |= watermarks.record(input, w);
                    continue;
                }
                Message::Barrier(epoch) => {
                    if watermark_moved && !failed {
                        watermark_moved = false;
                        let mut ctx = OpContext {
                            txn: &mut txn,
                            datafusion: &env.datafusion,
                            late: &mut late,
                        };
                        let closed = op.on_watermark(watermarks.inputs(), &prefix, &mut ctx);
                        match catch_panic("an operator", closed).await {
                            Ok(Some(output)) if !output.is_empty() => {
                                if !out.send(Message::Data(output)).await {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                failure = Some(stopped(&env, op.as_ref(), e));
                                failed = true;
                            }
                        }
                    }
                    if let Some(w) = watermarks.output(op.watermark_hold()) {
                        if !out.send(Message::Watermark(w)).await {
                            break;
                        }
                    }
                    if !env.checkpoint(epoch, &mut txn, failure.take()) {
                        break;
                    }
                    if !out.send(Message::Barrier(epoch)).await {
                        break;
                    }
                    continue;
                }
            };
            match result {
                Ok(Some(output)) => {
                    if !output.is_empty() && !out.send(Message::Data(output)).await {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    failure = Some(stopped(&env, op.as_ref(), e));
                    failed = true;
                }
            }
        }
    }
}

/// Logs that an operator stopped at `error`, which its next report carries.
fn stopped(env: &TaskEnv, op: &dyn Operator, error: SluiceError) -> SluiceError {
    tracing::warn!(view = env.view, operator = %op.explain(), error = %error,
        "operator stopped at an error");
    error
}

async fn apply_chain(
    chain: &Chain,
    mut changes: ChangeBatch,
    ctx: &mut OpContext<'_>,
) -> sluice_common::Result<ChangeBatch> {
    for (op, prefix) in chain {
        if changes.is_empty() {
            break;
        }
        changes = op.process(0, changes, prefix, ctx).await?;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn data(v: i64) -> Message {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).expect("batch");
        Message::Data(ChangeBatch::inserts(batch))
    }

    fn value(m: &Message) -> Option<i64> {
        match m {
            Message::Data(c) => c
                .batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .map(|a| a.value(0)),
            Message::Watermark(_) | Message::Barrier(_) => None,
        }
    }

    #[tokio::test]
    async fn tasks_pass_on_changes_watermarks_and_report_at_barriers() {
        use crate::operators::Union;
        use sluice_state::MemoryBackend;

        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let source = |relation| Node::Source {
            relation,
            kind: "stream".to_owned(),
            name: format!("s{relation}"),
            schema: schema.clone(),
        };
        let root = Node::Op {
            op: Box::new(Union::new(schema.clone())),
            inputs: vec![source(1), source(2), source(3)],
            prefix: b"u".to_vec(),
        };
        let (reports_tx, mut reports) = mpsc::unbounded_channel();
        let (_committed_tx, committed) = watch::channel(0u64);
        let env = TaskEnv {
            store: Arc::new(MemoryBackend::new()),
            datafusion: SessionContext::new(),
            reports: reports_tx,
            committed,
            view: 9,
            cache_bytes: 1 << 20,
            name: Arc::from("v"),
            late: Arc::new(LateEvents::new(10)),
            cached: Arc::default(),
        };
        let (out, mut sink) = inbox();
        let mut spawned = Spawned::default();
        // Sources 1 and 2 are streams with watermarks, 3 a table.
        let carried = spawn(root, out, &env, &|r| r != 3, &mut spawned);
        assert!(carried);
        assert_eq!(spawned.tasks.len(), 1);
        let inlet = |r: u64| {
            spawned
                .inlets
                .iter()
                .find(|(rel, _)| *rel == r)
                .map(|(_, o)| o.clone())
                .expect("inlet")
        };
        assert!(inlet(1).send(data(1)).await);
        assert!(inlet(1).send(Message::Watermark(100)).await);
        assert!(inlet(3).send(data(3)).await);
        assert!(inlet(2).send(Message::Watermark(80)).await);
        assert!(inlet(2).send(Message::Watermark(120)).await);
        for r in [1, 2, 3] {
            assert!(inlet(r).send(Message::Barrier(1)).await);
        }
        let mut seen = Vec::new();
        while seen.last() != Some(&"B1".to_owned()) {
            let (_, m) = sink.recv().await.expect("output");
            seen.push(match m {
                Message::Data(_) => format!("D{}", value(&m).unwrap_or_default()),
                Message::Watermark(w) => format!("W{w}"),
                Message::Barrier(e) => format!("B{e}"),
            });
        }
        // Watermarks pass on at the barrier, after what they close.
        assert_eq!(seen, vec!["D1", "D3", "W100", "B1"]);
        let report = reports.recv().await.expect("report");
        assert_eq!((report.epoch, report.view), (1, 9));
        assert!(report.failure.is_none());
    }

    #[test]
    fn an_operator_watermark_is_the_minimum_over_inputs_that_carry_one() {
        // Input 1 is a table: it carries none and holds nothing back.
        let mut w = Watermarks::new(vec![true, false, true]);
        assert_eq!(w.advance(0, 50), None, "input 2 has no watermark yet");
        assert_eq!(w.advance(2, 30), Some(30));
        assert_eq!(w.advance(2, 40), Some(40));
        assert_eq!(w.advance(2, 35), None, "watermarks never go back");
        assert_eq!(w.advance(2, 90), Some(50));
        assert_eq!(w.advance(1, 10), None);
        assert_eq!(w.advance(0, 70), Some(70));
        assert!(w.record(0, 100));
        assert_eq!(
            w.output(Some(80)),
            Some(80),
            "held at the earliest row held back"
        );
        assert_eq!(w.output(Some(75)), None, "a hold never takes it back");
        assert_eq!(w.output(None), Some(90));
    }

    #[tokio::test]
    async fn barriers_align_and_hold_back_the_inputs_that_are_ahead() {
        let (tx, mut rx) = mpsc::channel(64);
        let left = Outlet::new(tx.clone(), 0);
        let right = Outlet::new(tx, 1);
        // Left runs ahead: its barrier 1, then data of epoch 2, then barrier 2.
        assert!(left.send(data(1)).await);
        assert!(left.send(Message::Barrier(1)).await);
        assert!(left.send(data(2)).await);
        assert!(left.send(Message::Barrier(2)).await);
        assert!(right.send(data(10)).await);
        assert!(right.send(Message::Barrier(1)).await);
        assert!(right.send(data(20)).await);
        assert!(right.send(Message::Barrier(2)).await);
        drop((left, right));
        let mut aligner = Aligner::new(2);
        let mut seen = Vec::new();
        while let Some((input, m)) = aligner.next(&mut rx).await {
            seen.push(match m {
                Message::Barrier(e) => format!("B{e}"),
                m => format!("{input}:{}", value(&m).unwrap_or_default()),
            });
        }
        // Epoch 1 holds only 1 and 10; 2 waited behind the left barrier.
        assert_eq!(seen, vec!["0:1", "1:10", "B1", "0:2", "1:20", "B2"]);
    }
}
