//! The router: feeds committed changes and watermarks into the graph, and
//! starts a checkpoint epoch (a barrier at every source) every
//! `checkpoint_interval` while changes flow, at `FLUSH`, and before the
//! graph changes.

use std::collections::HashMap;
use std::time::Duration;

use sluice_catalog::LoggedChange;
use tokio::sync::{mpsc, oneshot, watch};

use super::coordinator::Begin;
use super::registry::SharedRegistry;
use super::{max_event_time, Message, Outlet};

/// What the router is asked to do.
pub(crate) enum Command {
    /// Feed a committed change into the graph.
    Change(LoggedChange),
    /// Start a checkpoint now; reply with its epoch.
    Checkpoint(oneshot::Sender<u64>),
    /// Checkpoint, then stop until `resume` fires (or is dropped), so the
    /// graph can be changed.
    Pause {
        paused: oneshot::Sender<()>,
        resume: oneshot::Receiver<()>,
    },
    /// Checkpoint and end.
    Stop(oneshot::Sender<()>),
}

pub(crate) struct Router {
    pub registry: SharedRegistry,
    pub begins: mpsc::UnboundedSender<Begin>,
    pub committed: watch::Receiver<u64>,
    pub interval: Duration,
}

impl Router {
    pub async fn run(self, mut commands: mpsc::Receiver<Command>) {
        let mut next_epoch = *self.committed.borrow() + 1;
        let mut seqs: Vec<u64> = Vec::new();
        let mut writes: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut watermarks: HashMap<u64, i64> = HashMap::new();
        // For idle_timeout: when each stream last had events, and its
        // watermark then.
        let mut arrivals: HashMap<u64, (tokio::time::Instant, i64)> = HashMap::new();
        let mut ticker = tokio::time::interval(self.interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    match command {
                        Command::Change(change) => {
                            let (outlets, event_time) = match self.registry.read() {
                                Ok(r) => (r.outlets(change.source), r.event_time.get(&change.source).cloned()),
                                Err(_) => break,
                            };
                            let watermark = event_time.and_then(|expr| {
                                let max = max_event_time(&expr, &change.changes.batch)
                                    .map_err(|e| tracing::warn!(error = %e, "watermark not computed"))
                                    .ok()??;
                                let current = watermarks.entry(change.source).or_insert(i64::MIN);
                                (max > *current).then(|| {
                                    *current = max;
                                    max
                                })
                            });
                            for outlet in outlets {
                                outlet.send(Message::Data(change.changes.clone())).await;
                                if let Some(w) = watermark {
                                    outlet.send(Message::Watermark(w)).await;
                                }
                            }
                            if let Some(w) = watermarks.get(&change.source) {
                                arrivals.insert(change.source, (tokio::time::Instant::now(), *w));
                            }
                            seqs.push(change.seq);
                            writes.extend(change.checkpoint);
                        }
                        Command::Checkpoint(reply) => {
                            let epoch = self.barrier(&mut next_epoch, &mut seqs, &mut writes).await;
                            let _ = reply.send(epoch);
                        }
                        Command::Pause { paused, resume } => {
                            let epoch = self.barrier(&mut next_epoch, &mut seqs, &mut writes).await;
                            self.wait_for(epoch).await;
                            let _ = paused.send(());
                            let _ = resume.await;
                        }
                        Command::Stop(done) => {
                            let epoch = self.barrier(&mut next_epoch, &mut seqs, &mut writes).await;
                            self.wait_for(epoch).await;
                            let _ = done.send(());
                            break;
                        }
                    }
                }
                _ = ticker.tick() => {
                    let idle = self.advance_idle(&arrivals, &mut watermarks).await;
                    if !seqs.is_empty() || idle {
                        self.barrier(&mut next_epoch, &mut seqs, &mut writes).await;
                    }
                }
            }
        }
        tracing::debug!("dataflow router stopped");
    }

    /// Moves the watermark of every stream that has been quiet for its
    /// `idle_timeout` on with the wall clock (by the time since its last
    /// events), so that its windows close when traffic stops. Returns
    /// whether any moved.
    async fn advance_idle(
        &self,
        arrivals: &HashMap<u64, (tokio::time::Instant, i64)>,
        watermarks: &mut HashMap<u64, i64>,
    ) -> bool {
        let idle: Vec<(u64, Duration, Vec<Outlet>)> = match self.registry.read() {
            Ok(r) => r
                .idle
                .iter()
                .map(|(s, d)| (*s, *d, r.outlets(*s)))
                .collect(),
            Err(_) => return false,
        };
        let mut moved = false;
        for (source, timeout, outlets) in idle {
            let Some((arrived, base)) = arrivals.get(&source) else {
                continue;
            };
            let quiet = arrived.elapsed();
            if quiet < timeout {
                continue;
            }
            let quiet = i64::try_from(quiet.as_micros()).unwrap_or(i64::MAX);
            let w = base.saturating_add(quiet);
            let current = watermarks.entry(source).or_insert(i64::MIN);
            if w <= *current {
                continue;
            }
            *current = w;
            tracing::debug!(
                source,
                watermark = w,
                "idle stream: watermark follows the clock"
            );
            for outlet in outlets {
                outlet.send(Message::Watermark(w)).await;
            }
            moved = true;
        }
        moved
    }

    async fn wait_for(&self, epoch: u64) {
        let mut committed = self.committed.clone();
        let _ = committed.wait_for(|c| *c >= epoch).await;
    }

    /// Starts checkpoint epoch `next_epoch` at every source.
    async fn barrier(
        &self,
        next_epoch: &mut u64,
        seqs: &mut Vec<u64>,
        writes: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> u64 {
        let epoch = *next_epoch;
        *next_epoch += 1;
        let (expected, outlets) = match self.registry.read() {
            Ok(r) => (r.nodes(), r.base_outlets()),
            Err(_) => (0, Vec::new()),
        };
        let _ = self.begins.send(Begin {
            epoch,
            expected,
            seqs: std::mem::take(seqs),
            writes: std::mem::take(writes),
        });
        for outlet in outlets {
            outlet.send(Message::Barrier(epoch)).await;
        }
        epoch
    }
}
