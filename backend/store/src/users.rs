//! Accounts: customers (bound to a tenant) and staff.

use stockade_domain::{Email, Role};
use uuid::Uuid;

use crate::{PgPool, StoreError, conflict_as};

/// A signed-up account, without its password hash.
#[derive(Debug, Clone)]
pub struct User {
    /// Stable id.
    pub id: Uuid,
    /// Sign-in name.
    pub email: Email,
    /// What the account may do.
    pub role: Role,
    /// The tenant a customer belongs to; `None` for staff.
    pub tenant_id: Option<Uuid>,
}

struct UserRow {
    id: Uuid,
    email: String,
    role: String,
    tenant_id: Option<Uuid>,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;
    fn try_from(r: UserRow) -> Result<Self, StoreError> {
        Ok(User {
            id: r.id,
            email: Email::parse(&r.email).map_err(|e| anyhow::anyhow!("stored email: {e}"))?,
            role: r
                .role
                .parse()
                .map_err(|e| anyhow::anyhow!("stored role: {e}"))?,
            tenant_id: r.tenant_id,
        })
    }
}

/// Creates an account with an already hashed password.
pub async fn create(
    pool: &PgPool,
    email: &Email,
    password_hash: &str,
    role: Role,
    tenant_id: Option<Uuid>,
) -> Result<User, StoreError> {
    let row = sqlx::query_as!(
        UserRow,
        "INSERT INTO users (email, password_hash, role, tenant_id) VALUES ($1, $2, $3, $4)
         RETURNING id, email, role, tenant_id",
        email.as_str(),
        password_hash,
        role.as_str(),
        tenant_id
    )
    .fetch_one(pool)
    .await
    .map_err(conflict_as("an account with this email"))?;
    row.try_into()
}

/// Creates an account inside a caller's transaction (a tenant and its owner together).
pub async fn create_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    email: &Email,
    password_hash: &str,
    role: Role,
    tenant_id: Option<Uuid>,
) -> Result<User, StoreError> {
    let row = sqlx::query_as!(
        UserRow,
        "INSERT INTO users (email, password_hash, role, tenant_id) VALUES ($1, $2, $3, $4)
         RETURNING id, email, role, tenant_id",
        email.as_str(),
        password_hash,
        role.as_str(),
        tenant_id
    )
    .fetch_one(&mut **tx)
    .await
    .map_err(conflict_as("an account with this email"))?;
    row.try_into()
}

/// Finds an account and its password hash by email, for sign-in; `None`
/// for an account of a terminated tenant.
pub async fn find_for_sign_in(
    pool: &PgPool,
    email: &Email,
) -> Result<Option<(User, String)>, StoreError> {
    // A terminated tenant's accounts sign in no more (as if unknown).
    let row = sqlx::query!(
        "SELECT id, email, role, tenant_id, password_hash FROM users
         WHERE email = $1
           AND (tenant_id IS NULL
                OR NOT EXISTS (SELECT 1 FROM tenants t
                               WHERE t.id = users.tenant_id AND t.status = 'terminated'))",
        email.as_str()
    )
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        let user = UserRow {
            id: r.id,
            email: r.email,
            role: r.role,
            tenant_id: r.tenant_id,
        };
        Ok((user.try_into()?, r.password_hash))
    })
    .transpose()
}

/// Whether any staff account with the admin role exists.
pub async fn admin_exists(pool: &PgPool) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin') AS "exists!""#
    )
    .fetch_one(pool)
    .await?)
}

/// Replaces an account's password and revokes all of its sessions, in one
/// transaction, so a stolen session dies with the old password.
pub async fn set_password(
    pool: &PgPool,
    user_id: Uuid,
    password_hash: &str,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query!(
        "UPDATE users SET password_hash = $2, password_changed_at = now() WHERE id = $1",
        user_id,
        password_hash
    )
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    sqlx::query!("DELETE FROM sessions WHERE user_id = $1", user_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// How long a password reset link works.
pub const RESET_HOURS: i64 = 24;

/// Makes a one-time link token for `user_id` to set a new password with
/// (made by `by`); earlier unused links of the user stop working, and every
/// session of the user ends at once (the account may be someone else's now).
pub async fn create_password_reset(
    pool: &PgPool,
    user_id: Uuid,
    by: Option<Uuid>,
) -> Result<String, StoreError> {
    let token = crate::sessions::random_token();
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "DELETE FROM password_resets WHERE user_id = $1 AND used_at IS NULL",
        user_id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!("DELETE FROM sessions WHERE user_id = $1", user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query!(
        "INSERT INTO password_resets (token_hash, user_id, created_by, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(hours => $4))",
        crate::sessions::token_hash(&token),
        user_id,
        by,
        i32::try_from(RESET_HOURS).unwrap_or(24)
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(token)
}

/// The account a reset link is for, while the link is unused and fresh.
pub async fn password_reset_user(pool: &PgPool, token: &str) -> Result<Option<User>, StoreError> {
    let id = sqlx::query_scalar!(
        "SELECT user_id FROM password_resets
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()",
        crate::sessions::token_hash(token)
    )
    .fetch_optional(pool)
    .await?;
    match id {
        Some(id) => get(pool, id).await.map(Some),
        None => Ok(None),
    }
}

/// Sets the password through a reset link, once: the link is used up and
/// every session of the account ends. `None` when the link is unknown,
/// used or expired.
pub async fn reset_password(
    pool: &PgPool,
    token: &str,
    password_hash: &str,
) -> Result<Option<Uuid>, StoreError> {
    let mut tx = pool.begin().await?;
    let Some(user_id) = sqlx::query_scalar!(
        "UPDATE password_resets SET used_at = now()
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
         RETURNING user_id",
        crate::sessions::token_hash(token)
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    sqlx::query!(
        "UPDATE users SET password_hash = $2, password_changed_at = now() WHERE id = $1",
        user_id,
        password_hash
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!("DELETE FROM sessions WHERE user_id = $1", user_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(user_id))
}

/// One account by id.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<User, StoreError> {
    let row = sqlx::query_as!(
        UserRow,
        "SELECT id, email, role, tenant_id FROM users WHERE id = $1",
        id
    )
    .fetch_optional(pool)
    .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}

/// A tenant's customer accounts, by email. Scoped by tenant id.
pub async fn list_for_tenant(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<User>, StoreError> {
    let rows = sqlx::query_as!(
        UserRow,
        "SELECT id, email, role, tenant_id FROM users WHERE tenant_id = $1 ORDER BY email",
        tenant_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(User::try_from).collect()
}

/// An account's password hash, to check the current password before a change.
pub async fn password_hash(pool: &PgPool, id: Uuid) -> Result<String, StoreError> {
    let h = sqlx::query_scalar!("SELECT password_hash FROM users WHERE id = $1", id)
        .fetch_optional(pool)
        .await?;
    h.ok_or(StoreError::NotFound)
}
