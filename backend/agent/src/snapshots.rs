//! Taking and removing the snapshots customers ask for, on the jails of
//! this node: one task per jail, each step in the jail's slot, so a
//! snapshot never runs beside a start, stop or restore of its jail.
//! Restores are steps of the jail's convergence (see `reconcile`).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use stockade_store::PgPool;
use stockade_store::snapshots::{SnapshotState, Work};
use uuid::Uuid;

use crate::slots::{CallError, Slots};

pub(crate) struct Snapshots {
    pool: PgPool,
    slots: Arc<Slots>,
    node_id: Uuid,
    node_name: String,
    /// Jails whose snapshots are being worked on.
    in_flight: Mutex<HashSet<Uuid>>,
}

impl Snapshots {
    pub(crate) fn new(pool: PgPool, slots: Arc<Slots>, node_id: Uuid, node_name: String) -> Self {
        Self {
            pool,
            slots,
            node_id,
            node_name,
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the work waiting on each of the node's jails that has some.
    pub(crate) async fn sweep(self: &Arc<Self>) {
        let work = match stockade_store::snapshots::work_on_node(&self.pool, self.node_id).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "reading snapshot work failed");
                return;
            }
        };
        let mut by_jail: BTreeMap<Uuid, Vec<Work>> = BTreeMap::new();
        for w in work {
            by_jail.entry(w.jail_id).or_default().push(w);
        }
        for (jail_id, work) in by_jail {
            if !self.in_flight().insert(jail_id) {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                me.work_jail(jail_id, work).await;
                me.in_flight().remove(&jail_id);
            });
        }
    }

    /// Takes and removes one jail's snapshots, oldest request first.
    async fn work_jail(&self, jail_id: Uuid, work: Vec<Work>) {
        let name = stockade_store::jails::host_name(jail_id);
        for w in work {
            let (n, id) = (name.clone(), w.snapshot_id.to_string());
            let taking = w.state == SnapshotState::Pending;
            let step = if taking {
                "taking a snapshot"
            } else {
                "removing a snapshot"
            };
            let outcome = self
                .slots
                .call(name.as_str(), step, move |engine| {
                    if taking {
                        engine.snapshot(&n, &id).map(|s| s.bytes)
                    } else {
                        engine.delete_snapshot(&n, &id).map(|()| 0)
                    }
                })
                .await;
            let recorded = match (outcome, taking) {
                (Ok(Ok(bytes)), true) => {
                    tracing::info!(jail = %name, snapshot = %w.name, bytes, "snapshot taken");
                    self.audit(&w, "snapshot.taken", serde_json::json!({ "bytes": bytes }))
                        .await;
                    stockade_store::snapshots::taken(&self.pool, w.snapshot_id, bytes).await
                }
                (Ok(Ok(_)), false) => {
                    stockade_store::snapshots::removed(&self.pool, w.snapshot_id).await
                }
                (Ok(Err(e)), true) => {
                    tracing::warn!(jail = %name, snapshot = %w.name, error = %e, "a snapshot failed");
                    stockade_store::snapshots::failed(&self.pool, w.snapshot_id, &e.to_string())
                        .await
                }
                (Ok(Err(e)), false) => {
                    tracing::warn!(jail = %name, snapshot = %w.name, error = %e, "removing a snapshot failed");
                    Ok(())
                }
                // Busy with another step, or still copying past the
                // deadline: the next sweep looks again (taking one that
                // exists returns it).
                (Err(CallError::Busy(_) | CallError::TimedOut(_)), _) => return,
                (Err(e @ CallError::Panicked(_)), _) => {
                    tracing::warn!(jail = %name, error = %e, "a snapshot step panicked");
                    return;
                }
            };
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "recording a snapshot failed");
                return;
            }
        }
    }

    async fn audit(&self, w: &Work, action: &'static str, details: serde_json::Value) {
        let actor = format!("agent:{}", self.node_name);
        let target = w.snapshot_id.to_string();
        let mut details = details;
        details["jail_id"] = serde_json::json!(w.jail_id);
        details["name"] = serde_json::json!(w.name);
        let entry = stockade_store::audit::Entry {
            actor_user_id: None,
            actor: &actor,
            tenant_id: Some(w.tenant_id),
            action,
            target: &target,
            client_addr: None,
            details,
        };
        if let Err(e) = stockade_store::audit::record(&self.pool, &entry).await {
            tracing::warn!(error = %e, "recording a snapshot in the audit log failed");
        }
    }
}
