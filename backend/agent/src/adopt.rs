//! Adoption: every jail object on the host either belongs to a jail row of
//! this node that still wants it, or is removed (with an audit entry).

use std::collections::HashSet;
use std::sync::Arc;

use stockade_domain::DesiredState;
use stockade_jail::Engine;
use stockade_store::{PgPool, audit, jails};
use uuid::Uuid;

/// Removes host objects no row wants; leaves the rest for the reconciler.
pub(crate) async fn adopt(
    pool: &PgPool,
    engine: &Arc<Engine>,
    node_id: Uuid,
    node_name: &str,
) -> anyhow::Result<()> {
    let wanted: HashSet<String> = jails::ids_on_node(pool, node_id)
        .await?
        .into_iter()
        .filter(|(_, desired)| *desired != DesiredState::Deleted)
        .map(|(id, _)| jails::host_name(id).to_string())
        .collect();
    let e = engine.clone();
    let found = tokio::task::spawn_blocking(move || e.discover()).await??;
    for link in found.stray_links.clone() {
        let e = engine.clone();
        let l = link.clone();
        match tokio::task::spawn_blocking(move || e.remove_stray_link(&l)).await? {
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
        let e = engine.clone();
        let n = jail_name.clone();
        match tokio::task::spawn_blocking(move || e.destroy(&n)).await? {
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
