//! What a sink's task sees of the runtime: the changes of the relation it
//! reads and the checkpoint barriers, a transaction for its own state
//! (what it has not delivered yet), and the call that hands that state to
//! the checkpoint. Connectors implement sinks against this and nothing
//! else of the runtime.

use sluice_common::ChangeBatch;
use sluice_state::StateTxn;
use tokio::task::JoinHandle;

use super::{Inbox, Message, TaskEnv};

/// Starts a sink's task on its input.
pub type SpawnSink = Box<dyn FnOnce(SinkInput) -> JoinHandle<()> + Send>;

/// What a sink receives.
#[derive(Debug)]
pub enum SinkEvent {
    /// A change of the relation the sink reads (its current rows first, as
    /// inserts, for a table or view).
    Changes(ChangeBatch),
    /// Checkpoint `epoch` reached the sink: everything before it has
    /// arrived. The sink saves what it must keep in its transaction and
    /// calls [`SinkInput::checkpoint`].
    Barrier(u64),
}

/// A sink task's input and its share of the checkpoint.
#[derive(Debug)]
pub struct SinkInput {
    inbox: Inbox,
    env: TaskEnv,
}

impl SinkInput {
    pub(crate) fn new(inbox: Inbox, env: TaskEnv) -> Self {
        SinkInput { inbox, env }
    }

    /// The next change or barrier; `None` once the dataflow stops.
    /// Watermarks are not passed on: a sink writes changes as they come.
    /// A change is handed over only once the writes it came from are on
    /// disk, so nothing leaves Sluice that a crash could take back.
    pub async fn next(&mut self) -> Option<SinkEvent> {
        loop {
            match self.inbox.recv().await?.1 {
                Message::Data(changes) => {
                    // A failing disk holds the sink up (and, through its
                    // barriers, the checkpoints) until the sync succeeds.
                    while let Err(e) = sluice_catalog::sync_store(self.env.store.clone()).await {
                        tracing::error!(sink = %self.env.name, error = %e, "cannot sync the state store; the sink waits");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    return Some(SinkEvent::Changes(changes));
                }
                Message::Barrier(epoch) => return Some(SinkEvent::Barrier(epoch)),
                Message::Watermark(_) => {}
            }
        }
    }

    /// The key of the sink's own state entry `name` (under the sink's
    /// prefix, dropped with it).
    pub fn state_key(&self, name: &[u8]) -> Vec<u8> {
        let mut key = sluice_catalog::state_prefix(self.env.view);
        key.extend_from_slice(name);
        key
    }

    /// A transaction over the store for the sink's state: reads see its
    /// own writes; [`Self::checkpoint`] hands the writes over.
    pub fn txn(&self) -> StateTxn {
        self.env.txn()
    }

    /// Hands the sink's writes of `epoch` to the checkpoint. `false` once
    /// the dataflow stops (the task should end).
    pub fn checkpoint(&self, epoch: u64, txn: &mut StateTxn) -> bool {
        self.env.checkpoint(epoch, txn, None)
    }
}
