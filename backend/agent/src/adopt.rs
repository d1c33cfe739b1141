//! Adoption: every jail object on the host either belongs to a jail row of
//! this node that still wants it, or is removed (with an audit entry).
//!
//! Only this node's objects are ever looked at: its engine lists the jails
//! of its own state folder, cgroups under its own parent group, mounts and
//! loop devices below its own state folder and ports of its own bridge, so
//! another agent on the same host (another state folder and node name) is
//! never touched.

use std::collections::HashSet;

use stockade_domain::DesiredState;
use stockade_store::{PgPool, audit, jails};
use uuid::Uuid;

use crate::slots::Slots;

/// Removes host objects no row wants; leaves the rest for the reconciler.
pub(crate) async fn adopt(
    pool: &PgPool,
    slots: &Slots,
    node_id: Uuid,
    node_name: &str,
) -> anyhow::Result<()> {
    let wanted: HashSet<String> = jails::ids_on_node(pool, node_id)
        .await?
        .into_iter()
        .filter(|(_, desired)| *desired != DesiredState::Deleted)
        .map(|(id, _)| jails::host_name(id).to_string())
        .collect();
    let found = slots
        .node_call("discovering host objects", |e| e.discover())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))??;
    for link in found.stray_links.clone() {
        let l = link.clone();
        match slots
            .node_call("removing a stray link", move |e| e.remove_stray_link(&l))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            Ok(()) => tracing::info!(%link, "removed a network link no jail owns"),
            Err(err) => tracing::warn!(%link, error = %err, "removing a stray link failed"),
        }
    }
    for (name, objects) in found.jails {
        if wanted.contains(&name) {
            continue;
        }
        let Ok(jail_name) = stockade_domain::JailName::parse(&name) else {
            continue;
        };
        let n = jail_name.clone();
        let removed = slots
            .call(&name, "removing a stray jail", move |e| e.destroy(&n))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"));
        match removed.and_then(|r| r.map_err(anyhow::Error::from)) {
            Ok(()) => {
                tracing::info!(jail = %name, "removed host objects no jail wants");
                audit::record(
                    pool,
                    &audit::Entry {
                        actor_user_id: None,
                        actor: &format!("agent:{node_name}"),
                        tenant_id: None,
                        action: "jail.stray_removed",
                        target: &name,
                        client_addr: None,
                        details: serde_json::json!({
                            "condition": format!("{:?}", objects.condition()),
                            "processes": objects.processes.len(),
                            "mounts": objects.mounts.len(),
                        }),
                    },
                )
                .await?;
            }
            Err(err) => tracing::warn!(jail = %name, error = %err, "removing a stray jail failed"),
        }
    }
    Ok(())
}
