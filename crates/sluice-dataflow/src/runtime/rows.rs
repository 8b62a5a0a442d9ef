//! The last task of every view: keeps its rows and passes its changes on
//! to the views that read it.

use std::sync::Arc;

use sluice_catalog::Relation;

use super::registry::SharedRegistry;
use super::{Inbox, Message, TaskEnv};

/// Keeps a view's rows and passes its changes on to the views that read it.
pub(crate) async fn keep_rows(
    relation: Arc<Relation>,
    mut inbox: Inbox,
    registry: SharedRegistry,
    env: TaskEnv,
) {
    let id = relation.entry().id;
    let mut txn = env.txn();
    let mut failed = false;
    let mut failure = None;
    while let Some((_, message)) = inbox.recv().await {
        let outlets = match registry.read() {
            Ok(r) => r.outlets(id),
            Err(_) => break,
        };
        match message {
            Message::Data(changes) => {
                if failed {
                    continue;
                }
                if let Err(e) = relation.apply_view_changes(&mut txn, &changes) {
                    failed = true;
                    failure = Some(e);
                    continue;
                }
                for outlet in outlets {
                    outlet.send(Message::Data(changes.clone())).await;
                }
            }
            Message::Watermark(w) => {
                for outlet in outlets {
                    outlet.send(Message::Watermark(w)).await;
                }
            }
            Message::Barrier(epoch) => {
                if !env.checkpoint(epoch, &mut txn, failure.take()) {
                    break;
                }
                for outlet in outlets {
                    outlet.send(Message::Barrier(epoch)).await;
                }
            }
        }
    }
}
