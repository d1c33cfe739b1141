//! Change notifications for read caches: triggers announce every committed
//! change of what the panel shows on [`CHANNEL`] (see the migration
//! `change_notifications`); a web process listens and drops what changed.

use sqlx::postgres::PgListener;
use uuid::Uuid;

use crate::{PgPool, StoreError};

/// The channel the triggers notify on.
pub const CHANNEL: &str = "stockade_changes";

/// What one notification says changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A tenant, its overrides, jails or uploads.
    Tenant(Uuid),
    /// A user (role, tenant, password, removal).
    User(Uuid),
    /// A session that ended, by the SHA-256 of its token.
    SessionEnded(Vec<u8>),
    /// A web process's barrier: every change committed before it was sent
    /// has been heard once it arrives.
    Barrier(Uuid),
    /// Anything may have changed (a plan, or a payload not understood).
    Everything,
}

impl Change {
    /// Reads a payload; what it does not understand means everything.
    pub fn parse(payload: &str) -> Self {
        let parsed = match payload.split_once(':') {
            Some(("t", id)) => Uuid::parse_str(id).ok().map(Change::Tenant),
            Some(("u", id)) => Uuid::parse_str(id).ok().map(Change::User),
            Some(("s", hash)) => hex::decode(hash).ok().map(Change::SessionEnded),
            Some(("b", id)) => Uuid::parse_str(id).ok().map(Change::Barrier),
            _ => None,
        };
        parsed.unwrap_or(Change::Everything)
    }
}

/// A connection listening on [`CHANNEL`].
pub async fn listen(pool: &PgPool) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Sends barrier `id` on [`CHANNEL`]: notifications arrive in commit
/// order, so when a listener hears it, it has heard every change committed
/// before this call.
pub async fn barrier(pool: &PgPool, id: Uuid) -> Result<(), StoreError> {
    let payload = format!("b:{id}");
    sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, payload)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_what_changed_and_anything_else_means_everything() {
        let id = Uuid::new_v4();
        assert_eq!(Change::parse(&format!("t:{id}")), Change::Tenant(id));
        assert_eq!(Change::parse(&format!("u:{id}")), Change::User(id));
        assert_eq!(
            Change::parse("s:00ff"),
            Change::SessionEnded(vec![0x00, 0xff])
        );
        assert_eq!(Change::parse(&format!("b:{id}")), Change::Barrier(id));
        assert_eq!(Change::parse("*"), Change::Everything);
        assert_eq!(Change::parse("t:not-a-uuid"), Change::Everything);
        assert_eq!(Change::parse("s:zz"), Change::Everything);
    }
}
