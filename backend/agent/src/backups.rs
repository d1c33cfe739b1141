//! Backups off the node: taking those of this node's jails (a snapshot in
//! the jail's slot, then streamed to the backup target outside it, so the
//! jail is held only for the moment of the snapshot), removing any that are
//! asked away, and fetching one a jail is to be restored from.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use stockade_backup::{Manifest, Target};
use stockade_store::PgPool;
use stockade_store::backups::Work;
use uuid::Uuid;

use crate::slots::{CallError, Slots};

pub(crate) struct Backups {
    pool: PgPool,
    slots: Arc<Slots>,
    node_id: Uuid,
    node_name: String,
    target: Option<Target>,
    /// Backups being worked on.
    in_flight: Mutex<HashSet<Uuid>>,
}

impl Backups {
    pub(crate) fn new(
        pool: PgPool,
        slots: Arc<Slots>,
        node_id: Uuid,
        node_name: String,
        target: Option<Target>,
    ) -> Self {
        Self {
            pool,
            slots,
            node_id,
            node_name,
            target,
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the backups to take and to remove that nobody works on yet.
    pub(crate) async fn sweep(self: &Arc<Self>) {
        let work = match stockade_store::backups::work_for_node(&self.pool, self.node_id).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "reading backup work failed");
                return;
            }
        };
        for w in work {
            if !self.in_flight().insert(w.backup_id) {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                let id = w.backup_id;
                if w.state == "deleting" {
                    me.remove(&w).await;
                } else {
                    me.take(&w).await;
                }
                me.in_flight().remove(&id);
            });
        }
    }

    async fn take(&self, w: &Work) {
        let outcome = match (&self.target, w.jail_id) {
            (None, _) => Err(anyhow::anyhow!("this node has no backup target")),
            (_, None) => Err(anyhow::anyhow!("the jail was deleted")),
            (Some(target), Some(jail_id)) => match self.take_to(target, w, jail_id).await {
                Ok(Some(done)) => Ok(done),
                // The jail is busy: the next sweep tries again.
                Ok(None) => return,
                Err(e) => Err(e),
            },
        };
        let recorded = match outcome {
            Ok((volume_bytes, size_bytes)) => {
                tracing::info!(backup = %w.backup_id, jail = %w.jail_name, size_bytes, "backup taken");
                self.audit(
                    w,
                    "backup.taken",
                    serde_json::json!({ "volume_bytes": volume_bytes, "size_bytes": size_bytes }),
                )
                .await;
                stockade_store::backups::finished(&self.pool, w.backup_id, volume_bytes, size_bytes)
                    .await
            }
            Err(e) => {
                tracing::warn!(backup = %w.backup_id, jail = %w.jail_name, error = format!("{e:#}"), "a backup failed");
                stockade_store::backups::failed(&self.pool, w.backup_id, &format!("{e:#}")).await
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "recording a backup failed");
        }
    }

    /// Snapshots the jail, streams the snapshot to the target with its
    /// manifest, and removes the snapshot. `None` when the jail is busy.
    async fn take_to(
        &self,
        target: &Target,
        w: &Work,
        jail_id: Uuid,
    ) -> anyhow::Result<Option<(u64, u64)>> {
        let name = stockade_store::jails::host_name(jail_id);
        let snap = format!("backup-{}", w.backup_id);
        let (n, s) = (name.clone(), snap.clone());
        let taken = self
            .slots
            .call(name.as_str(), "snapshotting for a backup", move |engine| {
                let shot = engine.snapshot(&n, &s)?;
                Ok::<_, stockade_jail::JailError>((engine.snapshot_image(&n, &s)?, shot.uid_base))
            })
            .await;
        let (image, uid_base) = match taken {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(e).context("snapshotting the jail"),
            Err(CallError::Busy(_) | CallError::TimedOut(_)) => return Ok(None),
            Err(e) => return Err(anyhow::anyhow!("{e}")),
        };
        let prefix = stockade_backup::prefix(w.tenant_id, w.backup_id);
        let stored = target.put_volume(&prefix, &image).await;
        let stored = match stored {
            Ok(s) => {
                let m = Manifest {
                    format: stockade_backup::FORMAT,
                    backup_id: w.backup_id,
                    tenant_id: w.tenant_id,
                    jail_id,
                    jail_name: w.jail_name.clone(),
                    image: w.image.clone(),
                    kind: w.kind.clone(),
                    command: w.command.clone(),
                    limits: w.limits.clone(),
                    uid_base,
                    volume_bytes: s.volume_bytes,
                    volume_sha256: s.volume_sha256.clone(),
                    archive_bytes: s.archive_bytes,
                    archive_sha256: s.archive_sha256.clone(),
                    created_at: chrono::Utc::now(),
                };
                target.put_manifest(&prefix, &m).await.map(|()| s)
            }
            Err(e) => Err(e),
        };
        // The snapshot goes either way; one left behind goes with its jail.
        let (n, s) = (name.clone(), snap);
        let _ = self
            .slots
            .call(
                name.as_str(),
                "removing a backup's snapshot",
                move |engine| engine.delete_snapshot(&n, &s),
            )
            .await;
        let stored = match stored {
            Ok(s) => s,
            Err(e) => {
                // Nothing half-written stays in the target.
                let _ = target.delete(&prefix).await;
                return Err(e.context("storing the backup"));
            }
        };
        Ok(Some((stored.volume_bytes, stored.archive_bytes)))
    }

    async fn remove(&self, w: &Work) {
        let Some(target) = &self.target else {
            return;
        };
        let prefix = stockade_backup::prefix(w.tenant_id, w.backup_id);
        match target.delete(&prefix).await {
            Ok(()) => {
                if let Err(e) = stockade_store::backups::removed(&self.pool, w.backup_id).await {
                    tracing::warn!(error = %e, "recording a removed backup failed");
                }
            }
            Err(e) => {
                tracing::warn!(backup = %w.backup_id, error = format!("{e:#}"), "removing a backup failed");
            }
        }
    }

    async fn audit(&self, w: &Work, action: &'static str, details: serde_json::Value) {
        let actor = format!("agent:{}", self.node_name);
        let target = w.backup_id.to_string();
        let mut details = details;
        details["jail"] = serde_json::json!(w.jail_name);
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
            tracing::warn!(error = %e, "recording a backup in the audit log failed");
        }
    }
}

/// Fetches backup `backup_id` for a restore of jail `jail` (of tenant
/// `tenant_id`, whose disk is `disk_bytes`) into `dir`, checked whole:
/// the image and the uid range its files' owners are in.
pub(crate) async fn fetch_for_restore(
    target: Option<&Target>,
    pool: &PgPool,
    dir: PathBuf,
    tenant_id: Uuid,
    disk_bytes: u64,
    backup_id: Uuid,
) -> anyhow::Result<(PathBuf, Option<u32>)> {
    let target = target.context("this node has no backup target")?;
    let owner = stockade_store::backups::owner(pool, backup_id)
        .await
        .context("the backup is gone")?;
    let prefix = stockade_backup::prefix(owner, backup_id);
    let m = target.manifest(&prefix).await?;
    if owner != tenant_id || m.tenant_id != tenant_id || m.backup_id != backup_id {
        anyhow::bail!("the backup belongs to another tenant");
    }
    if m.volume_bytes > disk_bytes {
        anyhow::bail!(
            "the backup's volume is {} bytes, more than the jail's disk of {disk_bytes} bytes",
            m.volume_bytes
        );
    }
    let image = dir.join(format!("{backup_id}.img"));
    target.get_volume(&prefix, &m, &image).await?;
    Ok((image, m.uid_base))
}
