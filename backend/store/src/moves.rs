//! Moving jails between nodes through the backup target, and draining a
//! node (see the migration `moves`). Staff and providers' tokens ask; the
//! agents do the work.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::jails::{NODE_DOWN_AFTER_SECS, notify};
use crate::{PgPool, StoreError};

/// Whether `node` is up, not drained, offers `image` and has room for a
/// jail of this memory and disk; the reason in words when not.
async fn check_room(
    tx: &mut Transaction<'_, Postgres>,
    node: Uuid,
    memory_bytes: i64,
    disk_bytes: i64,
    image: &str,
) -> Result<(), StoreError> {
    let r = sqlx::query!(
        r#"SELECT n.name,
                  n.heartbeat_at > now() - make_interval(secs => $2) AS "up!",
                  EXISTS (SELECT 1 FROM node_drains d WHERE d.node_id = n.id) AS "drained!",
                  n.memory_bytes - COALESCE((SELECT sum(memory_bytes) FROM jails
                      WHERE (node_id = n.id OR move_to_node = n.id) AND desired_state <> 'deleted'), 0)::bigint AS "free_memory!",
                  n.disk_bytes - COALESCE((SELECT sum(disk_bytes) FROM jails
                      WHERE (node_id = n.id OR move_to_node = n.id) AND desired_state <> 'deleted'), 0)::bigint AS "free_disk!",
                  n.max_jails - (SELECT count(*) FROM jails
                      WHERE (node_id = n.id OR move_to_node = n.id)
                        AND desired_state <> 'deleted') AS "free_slots!",
                  n.images
           FROM nodes n WHERE n.id = $1"#,
        node,
        f64::from(u32::try_from(NODE_DOWN_AFTER_SECS).unwrap_or(30))
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(StoreError::Invalid {
        field: "node",
        message: "no such node".into(),
    })?;
    let refuse = |why: String| Err(StoreError::NoCapacity(format!("node {}: {why}", r.name)));
    if !r.up {
        return refuse("it is down".into());
    }
    if r.drained {
        return refuse("it is being drained".into());
    }
    if r.free_slots < 1 {
        return refuse("it holds as many jails as it may".into());
    }
    if r.free_memory < memory_bytes {
        return refuse("not enough free memory".into());
    }
    if r.free_disk < disk_bytes {
        return refuse("not enough free disk".into());
    }
    if r.images
        .as_ref()
        .is_some_and(|i| !i.iter().any(|i| i == image))
    {
        return refuse(format!("it does not offer the image {image:?}"));
    }
    Ok(())
}

/// Asks for the jail to be moved to `to_node`: its node stops it and ships
/// its volume through the backup target; the jail then runs on `to_node`
/// with its domains, ports (re-pointed to the new node's pool) and a new
/// address, and the source's copy is removed once it does. Refused,
/// changing nothing, when the target is the jail's node, down, drained or
/// without room.
pub async fn request(pool: &PgPool, jail_id: Uuid, to_node: Uuid) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    start(&mut tx, jail_id, to_node).await?;
    tx.commit().await?;
    Ok(())
}

async fn start(
    tx: &mut Transaction<'_, Postgres>,
    jail_id: Uuid,
    to_node: Uuid,
) -> Result<(), StoreError> {
    let j = sqlx::query!(
        "SELECT node_id, memory_bytes, disk_bytes, image, move_to_node, moved_from_node
         FROM jails WHERE id = $1 AND desired_state <> 'deleted' FOR UPDATE",
        jail_id
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    if j.move_to_node.is_some() || j.moved_from_node.is_some() {
        return Err(StoreError::InvalidState(
            "the jail is moving already".into(),
        ));
    }
    let Some(from) = j.node_id else {
        return Err(StoreError::InvalidState(
            "the jail is not placed on a node yet".into(),
        ));
    };
    if from == to_node {
        return Err(StoreError::Invalid {
            field: "node",
            message: "the jail is on that node already".into(),
        });
    }
    check_room(tx, to_node, j.memory_bytes, j.disk_bytes, &j.image).await?;
    let backup = sqlx::query_scalar!(
        "INSERT INTO backups (tenant_id, jail_id, node_id, jail_name, image, kind, command,
                              limits, purpose)
         SELECT tenant_id, id, node_id, name, image, kind, command,
                jail_limits(jails),
                'move'
         FROM jails WHERE id = $1
         RETURNING id",
        jail_id
    )
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query!(
        "UPDATE jails SET move_to_node = $2, move_backup_id = $3,
             generation = generation + 1, updated_at = now()
         WHERE id = $1",
        jail_id,
        to_node,
        backup
    )
    .execute(&mut **tx)
    .await?;
    notify(tx, Some(from)).await
}

/// The volume of a moving jail is stored (backup `backup_id`): the jail is
/// placed on its new node, which restores it; its ports follow.
pub(crate) async fn shipped(
    tx: &mut Transaction<'_, Postgres>,
    backup_id: Uuid,
) -> Result<(), StoreError> {
    let Some(j) = sqlx::query!(
        "SELECT id, node_id, move_to_node FROM jails
         WHERE move_backup_id = $1 AND move_to_node IS NOT NULL FOR UPDATE",
        backup_id
    )
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(());
    };
    let to = j.move_to_node.unwrap_or_default();
    crate::ports::repoint(tx, j.id, to).await?;
    // Snapshots live beside the volume on its node: they go with the
    // source's copy (backups, in the target, stay).
    sqlx::query!("DELETE FROM snapshots WHERE jail_id = $1", j.id)
        .execute(&mut **tx)
        .await?;
    sqlx::query!(
        "UPDATE jails SET moved_from_node = node_id, node_id = move_to_node, move_to_node = NULL,
             restore_backup_id = $2, restore_snapshot_id = NULL, address = NULL,
             generation = generation + 1, restore_generation = generation + 1, updated_at = now()
         WHERE id = $1",
        j.id,
        backup_id
    )
    .execute(&mut **tx)
    .await?;
    notify(tx, Some(to)).await?;
    notify(tx, j.node_id).await
}

/// The volume of a moving jail could not be stored: the move is off, and
/// the jail runs again on its node if it is meant to.
pub(crate) async fn not_shipped(
    tx: &mut Transaction<'_, Postgres>,
    backup_id: Uuid,
) -> Result<(), StoreError> {
    let node = sqlx::query_scalar!(
        "UPDATE jails SET move_to_node = NULL, generation = generation + 1, updated_at = now()
         WHERE move_backup_id = $1 AND move_to_node IS NOT NULL RETURNING node_id",
        backup_id
    )
    .fetch_optional(&mut **tx)
    .await?
    .flatten();
    if node.is_some() {
        notify(tx, node).await?;
    }
    Ok(())
}

/// A moved jail could not be restored on its new node (`why`): it goes
/// back to the node it came from, whose copy was kept, with its ports.
pub async fn revert(pool: &PgPool, jail_id: Uuid, why: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let Some(j) = sqlx::query!(
        "SELECT node_id, moved_from_node FROM jails
         WHERE id = $1 AND moved_from_node IS NOT NULL FOR UPDATE",
        jail_id
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    let back = j.moved_from_node.unwrap_or_default();
    crate::ports::repoint(&mut tx, jail_id, back).await?;
    sqlx::query!(
        "UPDATE jails SET node_id = moved_from_node, moved_from_node = NULL, restore_backup_id = NULL,
             address = NULL, last_error = $2, generation = generation + 1, updated_at = now()
         WHERE id = $1",
        jail_id,
        format!("the move failed, so the jail stays where it was: {why}")
    )
    .execute(&mut *tx)
    .await?;
    notify(&mut tx, Some(back)).await?;
    notify(&mut tx, j.node_id).await?;
    tx.commit().await?;
    Ok(())
}

/// What a drain did with one jail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drained {
    pub jail_id: Uuid,
    pub name: String,
    /// The node it moves to, or `None` when it was stopped (no node had
    /// room) or was moving already.
    pub to_node: Option<Uuid>,
    /// Why it was not moved.
    pub note: Option<String>,
}

/// Drains `node_id`: it takes no new jails, and each of its jails moves to
/// the live node with the most free memory that has room for it, or is
/// stopped where none has.
pub async fn drain(
    pool: &PgPool,
    node_id: Uuid,
    by: Option<Uuid>,
) -> Result<Vec<Drained>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query_scalar!("SELECT id FROM nodes WHERE id = $1", node_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
    sqlx::query!(
        "INSERT INTO node_drains (node_id, requested_by) VALUES ($1, $2)
         ON CONFLICT (node_id) DO NOTHING",
        node_id,
        by
    )
    .execute(&mut *tx)
    .await?;
    let jails = sqlx::query!(
        "SELECT id, name, memory_bytes, disk_bytes, image, move_to_node FROM jails
         WHERE node_id = $1 AND desired_state <> 'deleted' ORDER BY memory_bytes DESC, name",
        node_id
    )
    .fetch_all(&mut *tx)
    .await?;
    let candidates = sqlx::query_scalar!(
        "SELECT id FROM nodes WHERE id <> $1 AND id NOT IN (SELECT node_id FROM node_drains)
         ORDER BY name",
        node_id
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Vec::new();
    for j in jails {
        if j.move_to_node.is_some() {
            out.push(Drained {
                jail_id: j.id,
                name: j.name,
                to_node: j.move_to_node,
                note: Some("moving already".into()),
            });
            continue;
        }
        let mut target = None;
        let mut best_free = i64::MIN;
        for &c in &candidates {
            // Each move is checked as it is asked for: the jails already
            // sent to a node count against its room.
            if check_room(&mut tx, c, j.memory_bytes, j.disk_bytes, &j.image)
                .await
                .is_ok()
            {
                let free = sqlx::query_scalar!(
                    r#"SELECT n.memory_bytes - COALESCE((SELECT sum(memory_bytes) FROM jails
                           WHERE (node_id = n.id OR move_to_node = n.id)
                             AND desired_state <> 'deleted'), 0)::bigint AS "free!"
                       FROM nodes n WHERE n.id = $1"#,
                    c
                )
                .fetch_one(&mut *tx)
                .await?;
                if free > best_free {
                    best_free = free;
                    target = Some(c);
                }
            }
        }
        match target {
            Some(to) => {
                start(&mut tx, j.id, to).await?;
                out.push(Drained {
                    jail_id: j.id,
                    name: j.name,
                    to_node: Some(to),
                    note: None,
                });
            }
            None => {
                sqlx::query!(
                    "UPDATE jails SET desired_state = 'stopped', generation = generation + 1,
                         updated_at = now()
                     WHERE id = $1 AND desired_state = 'running'",
                    j.id
                )
                .execute(&mut *tx)
                .await?;
                out.push(Drained {
                    jail_id: j.id,
                    name: j.name,
                    to_node: None,
                    note: Some("no other node has room: stopped".into()),
                });
            }
        }
    }
    notify(&mut tx, Some(node_id)).await?;
    tx.commit().await?;
    Ok(out)
}

/// Lets a drained node take jails again.
pub async fn undrain(pool: &PgPool, node_id: Uuid) -> Result<(), StoreError> {
    sqlx::query!("DELETE FROM node_drains WHERE node_id = $1", node_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The nodes being drained.
pub async fn drained(pool: &PgPool) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar!("SELECT node_id FROM node_drains")
        .fetch_all(pool)
        .await?)
}
