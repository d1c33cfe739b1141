//! Read caches of one web process: signed-in sessions and the data of the
//! busiest pages, kept in memory for a short time and dropped the moment
//! PostgreSQL announces a change of what they hold (see
//! [`stockade_store::changes`]).
//!
//! Correctness comes from the notifications, not from the time limit: a
//! cache is used only while this process is listening, and everything is
//! dropped whenever the listening connection is lost or comes back, since
//! notifications sent meanwhile are gone. The time limit bounds what no
//! notification announces (usage figures, sampled every few seconds) and
//! how long a session goes without its database check (idle expiry).
//!
//! Each kind of page has a typed cache of its own ([`PageCache`]), and a
//! change drops exactly what it touched: a tenant's change drops that
//! tenant's pages (and the staff lists, which show every tenant), a user's
//! change that user's sessions. A request that changed something waits,
//! before its answer leaves, until this process has heard every change
//! committed before it ([`Caches::settle`]), so the page a form redirects to
//! is never older than the change it made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use stockade_store::PgPool;
use stockade_store::changes::{self, Change};
use stockade_store::sessions::Session;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::pages::{JailData, JailPageKey, OverviewData, TenantsData};

use pages::ChangeLog;
pub(crate) use pages::PageCache;

mod pages;

/// Sessions kept at most (the least used go first past it).
const SESSIONS: u64 = 10_000;

/// Pages of one kind kept at most (a jail page with its charts is some
/// 10 KB of data): a page lives a few seconds, so this is every page viewed
/// in that time on a busy node.
const PAGES: u64 = 1_000;

/// The longest a session is trusted without asking the database.
const SESSION_RECHECK: Duration = Duration::from_secs(30);

/// The longest a changing request waits to hear its own change; past it,
/// everything held is dropped instead.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The read caches of one web process.
pub(crate) struct Caches {
    log: Arc<ChangeLog>,
    /// A tenant's overview, by tenant.
    pub(crate) overviews: PageCache<Uuid, OverviewData>,
    /// A tenant's jail page for one period.
    pub(crate) jail_pages: PageCache<JailPageKey, JailData>,
    /// A page of the staff tenant list, by its query.
    pub(crate) tenant_lists: PageCache<String, TenantsData>,
    sessions: moka::sync::Cache<Vec<u8>, Arc<Session>>,
    /// Bumped by every drop of sessions: a session read from the database
    /// before one is not kept after it.
    session_epoch: AtomicU64,
    /// Held while sessions are dropped or one is kept, so a keep never
    /// slips in between a drop's epoch and its removal.
    session_writes: Mutex<()>,
    /// Requests waiting to hear their own changes, by barrier id.
    barriers: Mutex<HashMap<Uuid, oneshot::Sender<()>>>,
}

impl Caches {
    /// Page data lives `page_ttl` (zero turns page caching off); sessions
    /// are re-checked at least every 30 s and well within `session_idle`.
    pub(crate) fn new(page_ttl: Duration, session_idle: Duration) -> Self {
        let log = Arc::new(ChangeLog::new(!page_ttl.is_zero()));
        let session_ttl = SESSION_RECHECK
            .min(session_idle / 4)
            .max(Duration::from_millis(1));
        Caches {
            overviews: PageCache::new(&log, page_ttl, PAGES, |t| Some(*t)),
            jail_pages: PageCache::new(&log, page_ttl, PAGES, |k| Some(k.tenant)),
            tenant_lists: PageCache::new(&log, page_ttl, PAGES, |_| None),
            log,
            sessions: moka::sync::Cache::builder()
                .max_capacity(SESSIONS)
                .time_to_live(session_ttl)
                .support_invalidation_closures()
                .build(),
            session_epoch: AtomicU64::new(0),
            session_writes: Mutex::new(()),
            barriers: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this process is listening for changes (and so using its caches).
    pub(crate) fn is_live(&self) -> bool {
        self.log.is_live()
    }

    /// Starts or stops using the caches; both drop what is held, and a
    /// request waiting to hear its change stops waiting.
    fn set_live(&self, live: bool) {
        self.clear();
        self.log.set_live(live);
        self.clear();
        lock(&self.barriers).clear();
    }

    /// Drops everything held.
    pub(crate) fn clear(&self) {
        self.log.forget_everything();
        self.overviews.clear();
        self.jail_pages.clear();
        self.tenant_lists.clear();
        self.forget_sessions(|_| true);
    }

    fn forget_sessions(&self, which: impl Fn(&Session) -> bool + Send + Sync + 'static) {
        let _writing = lock(&self.session_writes);
        self.session_epoch.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.sessions.invalidate_entries_if(move |_, s| which(s)) {
            // Only if the cache was built without closures; drop them all.
            tracing::warn!(error = %e, "dropping every cached session");
            self.sessions.invalidate_all();
        }
    }

    /// Drops what `change` may have made stale.
    pub(crate) fn apply(&self, change: &Change) {
        match change {
            Change::Tenant(t) => {
                // What it stamped stale is dropped when next asked for,
                // or when its time is up.
                self.log.tenant_changed(*t);
            }
            Change::User(u) => {
                let u = *u;
                self.forget_sessions(move |s| s.user.id == u);
            }
            Change::SessionEnded(hash) => {
                let _writing = lock(&self.session_writes);
                self.session_epoch.fetch_add(1, Ordering::AcqRel);
                self.sessions.invalidate(hash);
            }
            Change::Barrier(id) => {
                if let Some(waiting) = lock(&self.barriers).remove(id) {
                    let _ = waiting.send(());
                }
            }
            Change::Everything => self.clear(),
        }
    }

    /// The session of `token_hash`, if held and still fresh.
    pub(crate) fn session(&self, token_hash: &[u8]) -> Option<Arc<Session>> {
        if !self.is_live() {
            return None;
        }
        self.sessions
            .get(token_hash)
            .filter(|s| s.expires_at > chrono::Utc::now())
    }

    /// Where the session cache stands: taken before reading a session from
    /// the database, given back to [`Caches::keep_session`].
    pub(crate) fn epoch(&self) -> u64 {
        self.session_epoch.load(Ordering::Acquire)
    }

    /// Keeps a session read from the database at `epoch`, unless sessions
    /// were dropped since (the read may predate the change that dropped them).
    pub(crate) fn keep_session(&self, token_hash: Vec<u8>, session: &Arc<Session>, epoch: u64) {
        if !self.is_live() {
            return;
        }
        let _writing = lock(&self.session_writes);
        if self.session_epoch.load(Ordering::Acquire) == epoch {
            self.sessions.insert(token_hash, session.clone());
        }
    }

    /// Returns once this process has heard every change committed before
    /// the call (a barrier notification sent now arrives after them); if it
    /// cannot tell within [`SETTLE_WAIT`], drops everything instead.
    pub(crate) async fn settle(&self, pool: &PgPool) {
        if !self.is_live() {
            return;
        }
        let id = Uuid::new_v4();
        let (tx, rx) = oneshot::channel();
        lock(&self.barriers).insert(id, tx);
        let heard = match changes::barrier(pool, id).await {
            Ok(()) => matches!(tokio::time::timeout(SETTLE_WAIT, rx).await, Ok(Ok(()))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot send a change barrier");
                false
            }
        };
        lock(&self.barriers).remove(&id);
        if !heard {
            self.clear();
        }
    }
}

/// After every request that may have changed something (anything but GET
/// and HEAD), before its answer leaves, waits until the caches have heard
/// the change: the page a form redirects to is never older than the change
/// it made, and a session it ended (sign-out, new password) is not served
/// from memory.
pub(crate) async fn settle_after_changes(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    let state = changes
        .then(|| req.app_data::<actix_web::web::Data<crate::AppState>>())
        .flatten()
        .cloned();
    let res = next.call(req).await;
    if let Some(state) = state {
        state.caches.settle(&state.pool).await;
    }
    res
}

/// Listens for changes and applies them to `caches` until the process
/// ends; while not listening the caches stand aside.
pub(crate) async fn follow_changes(pool: PgPool, caches: Arc<Caches>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match changes::listen(&pool).await {
            Ok(mut listener) => {
                backoff = Duration::from_millis(100);
                caches.set_live(true);
                // Ends when the connection is lost: what was sent meanwhile is gone.
                while let Ok(Some(n)) = listener.try_recv().await {
                    caches.apply(&Change::parse(n.payload()));
                }
                caches.set_live(false);
                tracing::warn!("lost the change notifications; read caches off until back");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for changes; read caches off");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests;
