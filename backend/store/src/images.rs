//! The image catalogue: what staff add (pulled from a registry by every
//! node, or provided on the nodes by hand), which of them customers may
//! pick, and what each node made of each.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{JAILS_CHANNEL, PgPool, StoreError, conflict_as};

/// A catalogue image as staff see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Image {
    pub name: String,
    /// The registry reference it is pulled from; `None`: provided by hand.
    pub reference: Option<String>,
    /// The registry account it is pulled with, if any (never the password).
    pub registry_username: Option<String>,
    /// Whether customers may pick it.
    pub offered: bool,
    pub created_at: DateTime<Utc>,
    /// Each node's pull of it.
    pub nodes: Vec<NodeImage>,
}

/// One node's pull of an image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeImage {
    pub node: String,
    /// `ready` or `failed`.
    pub state: String,
    pub digest: Option<String>,
    pub error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// What a node's agent pulls.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub name: String,
    pub reference: String,
    pub registry_username: Option<String>,
    pub registry_password_sealed: Option<Vec<u8>>,
}

/// Checks an image reference's shape (`host[:port]/path[:tag|@digest]`);
/// the node that pulls it says what the registry thinks of it.
fn check_reference(reference: &str) -> Result<(), StoreError> {
    let bad = |message: &str| StoreError::Invalid {
        field: "reference",
        message: message.to_owned(),
    };
    if reference.is_empty() || reference.len() > 512 {
        return Err(bad("must be 1 to 512 characters"));
    }
    if !reference
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-:/@".contains(&b))
    {
        return Err(bad(
            "may hold only letters, digits and . _ - : / @ (like registry.example.com/site/web:1.0)",
        ));
    }
    if !reference.contains('/') {
        return Err(bad(
            "must name its registry and repository (like registry.example.com/site/web:1.0)",
        ));
    }
    Ok(())
}

/// The catalogue, by name, with each node's pull.
pub async fn list(pool: &PgPool) -> Result<Vec<Image>, StoreError> {
    let rows = sqlx::query!(
        "SELECT name, reference, registry_username, offered, created_at FROM images ORDER BY name"
    )
    .fetch_all(pool)
    .await?;
    let pulls = sqlx::query!(
        "SELECT n.name AS node, i.image, i.state, i.digest, i.error, i.updated_at
         FROM node_images i JOIN nodes n ON n.id = i.node_id ORDER BY n.name"
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Image {
            nodes: pulls
                .iter()
                .filter(|p| p.image == r.name)
                .map(|p| NodeImage {
                    node: p.node.clone(),
                    state: p.state.clone(),
                    digest: p.digest.clone(),
                    error: p.error.clone(),
                    updated_at: p.updated_at,
                })
                .collect(),
            name: r.name,
            reference: r.reference,
            registry_username: r.registry_username,
            offered: r.offered,
            created_at: r.created_at,
        })
        .collect())
}

/// One catalogue image.
pub async fn get(pool: &PgPool, name: &str) -> Result<Image, StoreError> {
    list(pool)
        .await?
        .into_iter()
        .find(|i| i.name == name)
        .ok_or(StoreError::NotFound)
}

/// Adds an image to the catalogue; `password_sealed` is the registry
/// password sealed to the nodes' key.
pub async fn add(
    pool: &PgPool,
    name: &str,
    reference: Option<&str>,
    account: Option<(&str, &[u8])>,
    offered: bool,
) -> Result<Image, StoreError> {
    stockade_domain::JailName::parse(name).map_err(|e| StoreError::Invalid {
        field: "name",
        message: e.reason,
    })?;
    if let Some(r) = reference {
        check_reference(r)?;
    }
    if account.is_some() && reference.is_none() {
        return Err(StoreError::Invalid {
            field: "registry_username",
            message: "only an image pulled from a registry has a registry account".into(),
        });
    }
    if let Some((user, _)) = account
        && (user.is_empty() || user.len() > 256)
    {
        return Err(StoreError::Invalid {
            field: "registry_username",
            message: "must be 1 to 256 characters".into(),
        });
    }
    sqlx::query!(
        "INSERT INTO images (name, reference, registry_username, registry_password_sealed, offered)
         VALUES ($1, $2, $3, $4, $5)",
        name,
        reference,
        account.map(|a| a.0),
        account.map(|a| a.1),
        offered
    )
    .execute(pool)
    .await
    .map_err(conflict_as("image"))?;
    wake_nodes(pool).await?;
    get(pool, name).await
}

/// Offers an image to customers, or stops offering it (jails made from it
/// keep it).
pub async fn set_offered(pool: &PgPool, name: &str, offered: bool) -> Result<Image, StoreError> {
    let done = sqlx::query!(
        "UPDATE images SET offered = $2 WHERE name = $1",
        name,
        offered
    )
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    get(pool, name).await
}

/// Takes an image out of the catalogue: customers can no longer pick it,
/// and each node removes its copy once no jail of the node uses it.
pub async fn remove(pool: &PgPool, name: &str) -> Result<(), StoreError> {
    let done = sqlx::query!("DELETE FROM images WHERE name = $1", name)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    wake_nodes(pool).await
}

async fn wake_nodes(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query!("SELECT pg_notify($1, '')", JAILS_CHANNEL)
        .execute(pool)
        .await?;
    Ok(())
}

/// The images customers may pick that a live node has, by name.
pub async fn offered(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    let on_nodes = crate::nodes::offered_images(pool).await?;
    let offered = sqlx::query_scalar!("SELECT name FROM images WHERE offered ORDER BY name")
        .fetch_all(pool)
        .await?;
    Ok(offered
        .into_iter()
        .filter(|n| on_nodes.contains(n))
        .collect())
}

/// Refuses an image customers may not pick, naming those they may.
pub async fn check_offered(pool: &PgPool, image: &str) -> Result<(), StoreError> {
    let offered = offered(pool).await?;
    if offered.iter().any(|i| i == image) {
        return Ok(());
    }
    Err(StoreError::Invalid {
        field: "image",
        message: format!(
            "the image {image:?} is not offered; images offered: {}",
            if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(", ")
            }
        ),
    })
}

/// What the nodes pull: the catalogue's registry images.
pub async fn wanted(pool: &PgPool) -> Result<Vec<Wanted>, StoreError> {
    Ok(sqlx::query_as!(
        Wanted,
        r#"SELECT name, reference AS "reference!", registry_username, registry_password_sealed
           FROM images WHERE reference IS NOT NULL ORDER BY name"#
    )
    .fetch_all(pool)
    .await?)
}

/// Records a node's pull of an image: its digest, or why it failed.
pub async fn record_pull(
    pool: &PgPool,
    node_id: Uuid,
    image: &str,
    outcome: Result<&str, &str>,
) -> Result<(), StoreError> {
    let (state, digest, error) = match outcome {
        Ok(d) => ("ready", Some(d), None),
        Err(e) => ("failed", None, Some(e)),
    };
    sqlx::query!(
        "INSERT INTO node_images (node_id, image, state, digest, error) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (node_id, image) DO UPDATE
         SET state = $3, digest = $4, error = $5, updated_at = now()",
        node_id,
        image,
        state,
        digest,
        error
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets a node's pull of an image it removed.
pub async fn forget_pull(pool: &PgPool, node_id: Uuid, image: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM node_images WHERE node_id = $1 AND image = $2",
        node_id,
        image
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets a node's records of images it neither pulls nor holds (failed
/// pulls of images since taken out of the catalogue).
pub async fn forget_pulls_except(
    pool: &PgPool,
    node_id: Uuid,
    keep: &[String],
) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM node_images WHERE node_id = $1 AND NOT (image = ANY($2))",
        node_id,
        keep
    )
    .execute(pool)
    .await?;
    Ok(())
}
