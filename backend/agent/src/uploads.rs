//! Writing customers' uploads into their running jails: one task per jail,
//! so a jail whose write is slow or stuck never delays another's.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use stockade_domain::JailName;
use stockade_jail::JailError;
use stockade_store::PgPool;
use uuid::Uuid;

use crate::reconcile::RunningJails;
use crate::slots::{CallError, Slots};

/// Where uploaded site files go inside a jail.
const SITE_FOLDER: &str = "srv/www";

pub(crate) struct Uploads {
    pool: PgPool,
    slots: Arc<Slots>,
    node_id: Uuid,
    running: Arc<RunningJails>,
    /// Jails whose uploads are being written.
    in_flight: Mutex<HashSet<Uuid>>,
}

impl Uploads {
    pub(crate) fn new(
        pool: PgPool,
        slots: Arc<Slots>,
        node_id: Uuid,
        running: Arc<RunningJails>,
    ) -> Self {
        Self {
            pool,
            slots,
            node_id,
            running,
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts writing the waiting uploads of every running jail that has
    /// some; uploads of jails that do not run keep waiting.
    pub(crate) async fn sweep(self: &Arc<Self>) {
        let wanted: HashSet<Uuid> =
            match stockade_store::uploads::jails_with_pending(&self.pool, self.node_id).await {
                Ok(w) => w.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading pending uploads failed");
                    return;
                }
            };
        for (jail_id, _, name) in self.running.snapshot() {
            if !wanted.contains(&jail_id) || !self.in_flight().insert(jail_id) {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                me.write_jail(jail_id, name).await;
                me.in_flight().remove(&jail_id);
            });
        }
    }

    /// Writes one jail's waiting uploads, oldest first.
    async fn write_jail(&self, jail_id: Uuid, name: JailName) {
        let files = match stockade_store::uploads::pending(&self.pool, jail_id).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "reading a jail's pending uploads failed");
                return;
            }
        };
        for (upload_id, file, content) in files {
            let n = name.clone();
            let outcome = self
                .slots
                .call(name.as_str(), "writing an upload", move |engine| {
                    engine.write_file(&n, SITE_FOLDER, &file, &content)
                })
                .await;
            let (error, go_on) = match outcome {
                Ok(Ok(())) => (None, true),
                // Stopped meanwhile: the upload waits until the jail runs again.
                Ok(Err(JailError::NotRunning(_))) => return,
                Ok(Err(e)) => (Some(explain(&e)), true),
                // An earlier step of the jail is still under way: later.
                Err(CallError::Busy(_)) => return,
                Err(e @ (CallError::TimedOut(_) | CallError::Panicked(_))) => {
                    (Some(format!("writing failed: {e}")), false)
                }
            };
            if let Err(e) =
                stockade_store::uploads::finish(&self.pool, upload_id, error.as_deref()).await
            {
                tracing::warn!(error = %e, "recording an upload failed");
            }
            if !go_on {
                return;
            }
        }
    }
}

/// What the customer reads when an upload could not be written.
fn explain(e: &JailError) -> String {
    match e {
        JailError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
            "the jail's disk is full".to_owned()
        }
        JailError::Sys { source, .. } if *source == nix::errno::Errno::ENOSPC => {
            "the jail's disk is full".to_owned()
        }
        _ => e.to_string(),
    }
}
