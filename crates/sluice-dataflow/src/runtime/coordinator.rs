//! The coordinator: collects every task's report of an epoch and commits
//! the epoch's state writes, view rows, source positions and the removal of
//! the changelog entries it covers in one write; marks views that failed.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_catalog::{changelog_key, failure_key, Catalog, Relation};
use sluice_common::{Result, SluiceError};
use sluice_state::WriteBatch;
use tokio::sync::{mpsc, watch};

use super::Report;

/// The router tells the coordinator an epoch began: how many reports to
/// expect and which changelog entries it covers.
pub(crate) struct Begin {
    pub epoch: u64,
    pub expected: usize,
    pub seqs: Vec<u64>,
    /// Writes the covered changes asked for (generated sources' positions).
    pub writes: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Default)]
struct Pending {
    expected: Option<usize>,
    reported: usize,
    writes: WriteBatch,
    seqs: Vec<u64>,
    begin_writes: Vec<(Vec<u8>, Vec<u8>)>,
    failures: Vec<(u64, SluiceError)>,
}

pub(crate) struct Coordinator {
    pub catalog: Arc<Catalog>,
    pub committed: watch::Sender<u64>,
}

impl Coordinator {
    pub async fn run(
        self,
        mut begins: mpsc::UnboundedReceiver<Begin>,
        mut reports: mpsc::UnboundedReceiver<Report>,
    ) {
        let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
        loop {
            tokio::select! {
                begin = begins.recv() => {
                    let Some(begin) = begin else { break };
                    let p = pending.entry(begin.epoch).or_default();
                    p.expected = Some(begin.expected);
                    p.seqs = begin.seqs;
                    p.begin_writes = begin.writes;
                }
                report = reports.recv() => {
                    let Some(report) = report else { break };
                    let p = pending.entry(report.epoch).or_default();
                    p.reported += 1;
                    p.writes.append(report.writes);
                    if let Some(e) = report.failure {
                        p.failures.push((report.view, e));
                    }
                }
            }
            while let Some(entry) = pending.first_entry() {
                let p = entry.get();
                if p.expected.is_none_or(|n| p.reported < n) {
                    break;
                }
                let (epoch, p) = entry.remove_entry();
                self.commit(epoch, p).await;
            }
        }
        tracing::debug!("dataflow coordinator stopped");
    }

    async fn commit(&self, epoch: u64, p: Pending) {
        let mut batch = p.writes;
        for seq in &p.seqs {
            batch.delete(changelog_key(*seq));
        }
        for (k, v) in p.begin_writes {
            batch.put(k, v);
        }
        let mut failed: Vec<(Arc<Relation>, String)> = Vec::new();
        for (view, error) in &p.failures {
            let reason = format!("{}: {error}", error.sqlstate());
            for relation in self.with_dependents(*view) {
                if relation.failure().is_none()
                    && !failed.iter().any(|(r, _)| Arc::ptr_eq(r, &relation))
                {
                    batch.put(
                        failure_key(relation.entry().id),
                        reason.clone().into_bytes(),
                    );
                    failed.push((relation, reason.clone()));
                }
            }
        }
        let changes = p.seqs.len();
        if let Err(e) = self.catalog.commit_checkpoint(batch).await {
            tracing::error!(epoch, error = %e, "checkpoint failed: views stop");
            for relation in self.with_dependents_all() {
                relation.set_failure(format!("{}: checkpoint failed: {e}", e.sqlstate()));
            }
        }
        for (relation, reason) in failed {
            tracing::warn!(view = %relation.name(), %reason, "materialized view stopped");
            relation.set_failure(reason);
        }
        tracing::trace!(epoch, changes, "checkpoint committed");
        self.committed.send_replace(epoch);
    }

    /// The view `id` and every view that reads it, transitively.
    fn with_dependents(&self, id: u64) -> Vec<Arc<Relation>> {
        let mut out = Vec::new();
        let mut todo: Vec<Arc<Relation>> = self
            .catalog
            .get_by_id(id)
            .ok()
            .flatten()
            .into_iter()
            .collect();
        while let Some(r) = todo.pop() {
            if out.iter().any(|o: &Arc<Relation>| Arc::ptr_eq(o, &r)) {
                continue;
            }
            todo.extend(self.catalog.dependents(r.name()).unwrap_or_default());
            out.push(r);
        }
        out
    }

    fn with_dependents_all(&self) -> Vec<Arc<Relation>> {
        self.catalog
            .list(sluice_sql::RelationKind::View)
            .unwrap_or_default()
    }
}

/// Waits until `epoch` is committed.
pub(crate) async fn committed(mut rx: watch::Receiver<u64>, epoch: u64) -> Result<()> {
    rx.wait_for(|c| *c >= epoch)
        .await
        .map(|_| ())
        .map_err(|_| SluiceError::internal("the dataflow stopped"))
}
