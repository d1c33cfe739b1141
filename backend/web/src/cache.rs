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
//! A page's data is loaded once however many requests ask for it at the same
//! time. A change drops the entry itself, so a load that started before the
//! change can answer the requests that were waiting for it but is never
//! served to a later one. The HTML rendered from that data for each viewer
//! is kept with it, so it goes with the data and is never older.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use stockade_store::PgPool;
use stockade_store::changes::{self, Change};
use stockade_store::sessions::Session;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::WebError;

/// Sessions kept at most; past it, stale ones go, then all.
const SESSIONS: usize = 10_000;

/// Pages kept at most (a jail page with its charts is some 10 KB): a page
/// lives a few seconds, so this is every page viewed in that time on a busy
/// node; past it, expired ones go, then all.
const PAGES: usize = 1_000;

/// Viewers whose rendering of one page is kept (a page is mostly seen by
/// one person; staff pages by a few).
const VIEWS: usize = 8;

/// Bytes of rendered HTML kept at most, over all pages: past it a page is
/// rendered for each request until some are dropped.
const HTML_BUDGET: usize = 16 << 20;

/// The longest a session is trusted without asking the database.
const SESSION_RECHECK: Duration = Duration::from_secs(30);

/// What a cached page's data is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PageKey {
    /// A tenant's overview.
    Overview(Uuid),
    /// A tenant's jail page for one period.
    Jail {
        tenant: Uuid,
        jail: Uuid,
        period: &'static str,
    },
    /// A page of the staff tenant list, by its query.
    StaffTenants(String),
}

impl PageKey {
    /// Whether a change of `tenant` can change this page.
    fn shows(&self, tenant: Uuid) -> bool {
        match self {
            PageKey::Overview(t) | PageKey::Jail { tenant: t, .. } => *t == tenant,
            PageKey::StaffTenants(_) => true,
        }
    }
}

type Value = Arc<dyn Any + Send + Sync>;

/// A page's data and its renderings.
struct Entry {
    data: OnceCell<Value>,
    views: Mutex<Vec<(Arc<Session>, Bytes)>>,
    /// The bytes of HTML held by every entry, this one's included.
    html_bytes: Arc<AtomicUsize>,
}

impl Entry {
    fn new(html_bytes: Arc<AtomicUsize>) -> Self {
        Entry {
            data: OnceCell::new(),
            views: Mutex::new(Vec::new()),
            html_bytes,
        }
    }

    fn held(views: &[(Arc<Session>, Bytes)]) -> usize {
        views.iter().map(|(_, html)| html.len()).sum()
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let views = self
            .views
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.html_bytes
            .fetch_sub(Self::held(views), Ordering::AcqRel);
    }
}

struct Slot {
    entry: Arc<Entry>,
    born: Instant,
}

struct CachedSession {
    session: Arc<Session>,
    checked: Instant,
}

/// Whether a page rendered for `a` shows `b` the same (who is signed in,
/// and the form token every form on it carries).
fn same_viewer(a: &Session, b: &Session) -> bool {
    a.csrf_token == b.csrf_token
        && a.user.id == b.user.id
        && a.user.role == b.user.role
        && a.user.email == b.user.email
        && a.user.tenant_id == b.user.tenant_id
}

/// The read caches of one web process.
pub(crate) struct Caches {
    page_ttl: Duration,
    session_ttl: Duration,
    /// Listening for changes: only then are the caches used.
    live: AtomicBool,
    /// Bumped by every drop of sessions: a session read from the database
    /// before one is not kept after it.
    epoch: AtomicU64,
    pages: Mutex<HashMap<PageKey, Slot>>,
    sessions: Mutex<HashMap<Vec<u8>, CachedSession>>,
    /// Bytes of rendered HTML held (see [`HTML_BUDGET`]).
    html_bytes: Arc<AtomicUsize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Caches {
    /// Page data lives `page_ttl` (zero turns page caching off); sessions
    /// are re-checked at least every 30 s and well within `session_idle`.
    pub(crate) fn new(page_ttl: Duration, session_idle: Duration) -> Self {
        Caches {
            page_ttl,
            session_ttl: SESSION_RECHECK.min(session_idle / 4),
            live: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            pages: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            html_bytes: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Whether this process is listening for changes (and so using its caches).
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Starts or stops using the caches; both drop what is held.
    fn set_live(&self, live: bool) {
        self.clear();
        self.live.store(live, Ordering::Release);
        self.clear();
    }

    /// Drops everything held.
    pub(crate) fn clear(&self) {
        lock(&self.pages).clear();
        self.forget_sessions(|_| true);
    }

    fn forget_sessions(&self, which: impl Fn(&CachedSession) -> bool) {
        let mut sessions = lock(&self.sessions);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        sessions.retain(|_, s| !which(s));
    }

    /// Drops what `change` may have made stale.
    pub(crate) fn apply(&self, change: &Change) {
        match change {
            Change::Tenant(t) => lock(&self.pages).retain(|k, _| !k.shows(*t)),
            Change::User(u) => self.forget_sessions(|s| s.session.user.id == *u),
            Change::SessionEnded(hash) => {
                let mut sessions = lock(&self.sessions);
                self.epoch.fetch_add(1, Ordering::AcqRel);
                sessions.remove(hash);
            }
            Change::Everything => self.clear(),
        }
    }

    /// The session of `token_hash`, if held and still fresh.
    pub(crate) fn session(&self, token_hash: &[u8]) -> Option<Arc<Session>> {
        if !self.is_live() {
            return None;
        }
        let sessions = lock(&self.sessions);
        let held = sessions.get(token_hash)?;
        (held.checked.elapsed() < self.session_ttl && held.session.expires_at > chrono::Utc::now())
            .then(|| held.session.clone())
    }

    /// Where the session cache stands: taken before reading a session from
    /// the database, given back to [`Caches::keep_session`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps a session read from the database at `epoch`, unless sessions
    /// were dropped since (the read may predate the change that dropped them).
    pub(crate) fn keep_session(&self, token_hash: Vec<u8>, session: &Arc<Session>, epoch: u64) {
        if !self.is_live() {
            return;
        }
        let mut sessions = lock(&self.sessions);
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if sessions.len() >= SESSIONS {
            let ttl = self.session_ttl;
            sessions.retain(|_, s| s.checked.elapsed() < ttl);
            if sessions.len() >= SESSIONS {
                sessions.clear();
            }
        }
        sessions.insert(
            token_hash,
            CachedSession {
                session: session.clone(),
                checked: Instant::now(),
            },
        );
    }

    /// The HTML of page `key` for `viewer`: as rendered last for the same
    /// viewer from the same data, or rendered now by `render` from the data
    /// (held, or loaded by `load`). Without a viewer (a page showing a
    /// one-time message) nothing rendered is kept.
    pub(crate) async fn page_html<T, F, Fut>(
        &self,
        key: PageKey,
        viewer: Option<&Arc<Session>>,
        load: F,
        render: impl FnOnce(Arc<T>) -> Result<String, WebError>,
    ) -> Result<Bytes, WebError>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, WebError>>,
    {
        let (data, entry) = self.entry(key, load).await?;
        let (Some(viewer), Some(entry)) = (viewer, entry) else {
            return render(data).map(Bytes::from);
        };
        if let Some((_, html)) = lock(&entry.views)
            .iter()
            .find(|(v, _)| same_viewer(v, viewer))
        {
            return Ok(html.clone());
        }
        let html = Bytes::from(render(data)?);
        let mut views = lock(&entry.views);
        // Another request of the same viewer may have rendered it meanwhile.
        if let Some((_, kept)) = views.iter().find(|(v, _)| same_viewer(v, viewer)) {
            return Ok(kept.clone());
        }
        if views.len() >= VIEWS {
            let (_, gone) = views.remove(0);
            self.html_bytes.fetch_sub(gone.len(), Ordering::AcqRel);
        }
        if self.html_bytes.load(Ordering::Acquire) + html.len() <= HTML_BUDGET {
            self.html_bytes.fetch_add(html.len(), Ordering::AcqRel);
            views.push((viewer.clone(), html.clone()));
        }
        Ok(html)
    }

    /// The data of page `key` (held, or loaded by `load` once for every
    /// request asking meanwhile) and, while caching, the entry holding it.
    async fn entry<T, F, Fut>(
        &self,
        key: PageKey,
        load: F,
    ) -> Result<(Arc<T>, Option<Arc<Entry>>), WebError>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, WebError>>,
    {
        if !self.is_live() || self.page_ttl.is_zero() {
            return Ok((Arc::new(load().await?), None));
        }
        let entry = {
            let mut pages = lock(&self.pages);
            let ttl = self.page_ttl;
            match pages.get(&key) {
                Some(slot) if slot.born.elapsed() < ttl => slot.entry.clone(),
                _ => {
                    if pages.len() >= PAGES {
                        pages.retain(|_, s| s.born.elapsed() < ttl);
                        if pages.len() >= PAGES {
                            pages.clear();
                        }
                    }
                    let entry = Arc::new(Entry::new(self.html_bytes.clone()));
                    pages.insert(
                        key,
                        Slot {
                            entry: entry.clone(),
                            born: Instant::now(),
                        },
                    );
                    entry
                }
            }
        };
        let value = entry
            .data
            .get_or_try_init(|| async { load().await.map(|v| Arc::new(v) as Value) })
            .await?
            .clone();
        let data = value
            .downcast::<T>()
            .map_err(|_| WebError::from(anyhow::anyhow!("a cached page held another type")))?;
        Ok((data, Some(entry)))
    }
}

/// Drops everything cached after every request that may have changed
/// something (anything but GET and HEAD), before its answer leaves: the
/// page a form redirects to is never older than the change it made, and a
/// session it ended (sign-out, new password) is not served from memory.
pub(crate) async fn forget_after_changes(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    let caches = changes
        .then(|| req.app_data::<actix_web::web::Data<crate::AppState>>())
        .flatten()
        .map(|s| s.caches.clone());
    let res = next.call(req).await;
    if let Some(caches) = caches {
        caches.clear();
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
mod tests {
    use super::*;
    use stockade_domain::{Email, Role};
    use stockade_store::users::User;

    fn session(user: Uuid) -> Arc<Session> {
        Arc::new(Session {
            user: User {
                id: user,
                email: Email::parse("a@b.test").unwrap(),
                role: Role::Customer,
                tenant_id: Some(Uuid::new_v4()),
            },
            csrf_token: "t".into(),
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        })
    }

    #[test]
    fn nothing_is_held_while_not_listening() {
        let c = Caches::new(Duration::from_secs(5), Duration::from_secs(3600));
        let user = Uuid::new_v4();
        c.keep_session(vec![1], &session(user), c.epoch());
        assert!(c.session(&[1]).is_none());
        c.set_live(true);
        c.keep_session(vec![1], &session(user), c.epoch());
        assert!(c.session(&[1]).is_some());
        c.set_live(false);
        c.set_live(true);
        assert!(
            c.session(&[1]).is_none(),
            "a lost connection drops everything"
        );
    }

    #[test]
    fn ended_sessions_and_changed_users_are_dropped() {
        let c = Caches::new(Duration::from_secs(5), Duration::from_secs(3600));
        c.set_live(true);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        c.keep_session(vec![1], &session(a), c.epoch());
        c.keep_session(vec![2], &session(a), c.epoch());
        c.keep_session(vec![3], &session(b), c.epoch());
        c.apply(&Change::SessionEnded(vec![3]));
        assert!(c.session(&[3]).is_none());
        assert!(c.session(&[1]).is_some());
        c.apply(&Change::User(a));
        assert!(c.session(&[1]).is_none() && c.session(&[2]).is_none());
        // Read before a drop, offered after it: not kept.
        let before = c.epoch();
        c.apply(&Change::SessionEnded(vec![9]));
        c.keep_session(vec![4], &session(b), before);
        assert!(c.session(&[4]).is_none());
    }

    #[test]
    fn a_session_past_its_expiry_is_not_served() {
        let c = Caches::new(Duration::from_secs(5), Duration::from_secs(3600));
        c.set_live(true);
        let mut s = session(Uuid::new_v4());
        Arc::make_mut(&mut s).expires_at = chrono::Utc::now() - chrono::Duration::seconds(1);
        c.keep_session(vec![1], &s, c.epoch());
        assert!(c.session(&[1]).is_none());
        // A short idle expiry means a short trust.
        let c = Caches::new(Duration::from_secs(5), Duration::from_millis(40));
        c.set_live(true);
        c.keep_session(vec![1], &session(Uuid::new_v4()), c.epoch());
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.session(&[1]).is_none());
    }

    #[tokio::test]
    async fn a_page_loads_once_until_its_tenant_changes() {
        let c = Caches::new(Duration::from_secs(60), Duration::from_secs(3600));
        c.set_live(true);
        let (t, other) = (Uuid::new_v4(), Uuid::new_v4());
        let loads = std::sync::atomic::AtomicU32::new(0);
        let get = |key: PageKey| {
            let loads = &loads;
            let c = &c;
            async move {
                c.entry(key, || async {
                    Ok::<u32, WebError>(loads.fetch_add(1, Ordering::SeqCst) + 1)
                })
                .await
                .unwrap()
                .0
            }
        };
        let (x, y) = tokio::join!(get(PageKey::Overview(t)), get(PageKey::Overview(t)));
        assert_eq!((*x, *y), (1, 1), "concurrent requests share one load");
        assert_eq!(*get(PageKey::Overview(t)).await, 1);
        c.apply(&Change::Tenant(other));
        assert_eq!(
            *get(PageKey::Overview(t)).await,
            1,
            "another tenant's change"
        );
        c.apply(&Change::Tenant(t));
        assert_eq!(*get(PageKey::Overview(t)).await, 2);
        c.clear();
        assert_eq!(*get(PageKey::Overview(t)).await, 3);
        c.set_live(false);
        assert_eq!(*get(PageKey::Overview(t)).await, 4);
        assert_eq!(
            *get(PageKey::Overview(t)).await,
            5,
            "not held while not listening"
        );
    }

    #[tokio::test]
    async fn a_failed_load_is_not_kept() {
        let c = Caches::new(Duration::from_secs(60), Duration::from_secs(3600));
        c.set_live(true);
        let key = PageKey::StaffTenants("q".into());
        let r = c
            .entry(key.clone(), || async {
                Err::<u32, _>(WebError::from(anyhow::anyhow!("database down")))
            })
            .await;
        assert!(r.is_err());
        let (v, _) = c
            .entry(key, || async { Ok::<u32, WebError>(7) })
            .await
            .unwrap();
        assert_eq!(*v, 7);
    }

    #[tokio::test]
    async fn a_page_is_rendered_once_per_viewer_until_its_data_changes() {
        let c = Caches::new(Duration::from_secs(60), Duration::from_secs(3600));
        c.set_live(true);
        let t = Uuid::new_v4();
        let (alice, bob) = (session(Uuid::new_v4()), session(Uuid::new_v4()));
        let mut alice_again = alice.clone();
        Arc::make_mut(&mut alice_again).csrf_token = "another sign-in".into();
        let renders = std::sync::atomic::AtomicU32::new(0);
        let html = |viewer: Option<Arc<Session>>| {
            let (c, renders) = (&c, &renders);
            let who = viewer
                .as_ref()
                .map(|v| v.csrf_token.clone())
                .unwrap_or_default();
            async move {
                c.page_html(
                    PageKey::Overview(t),
                    viewer.as_ref(),
                    || async { Ok::<u32, WebError>(1) },
                    |data| {
                        let n = renders.fetch_add(1, Ordering::SeqCst) + 1;
                        Ok(format!("{who} data {data} render {n}"))
                    },
                )
                .await
                .unwrap()
            }
        };
        assert_eq!(html(Some(alice.clone())).await, "t data 1 render 1");
        assert_eq!(html(Some(alice.clone())).await, "t data 1 render 1");
        assert_eq!(html(Some(bob.clone())).await, "t data 1 render 2");
        assert_eq!(
            html(Some(alice_again.clone())).await,
            "another sign-in data 1 render 3",
            "another session of the same user has a form token of its own"
        );
        assert_eq!(html(None).await, " data 1 render 4");
        assert_eq!(
            html(None).await,
            " data 1 render 5",
            "none kept without a viewer"
        );
        c.apply(&Change::Tenant(t));
        assert_eq!(html(Some(alice.clone())).await, "t data 1 render 6");
    }

    #[tokio::test]
    async fn rendered_pages_stay_within_the_budget() {
        let c = Caches::new(Duration::from_secs(60), Duration::from_secs(3600));
        c.set_live(true);
        let (t, u) = (Uuid::new_v4(), Uuid::new_v4());
        let renders = std::sync::atomic::AtomicU32::new(0);
        let big = HTML_BUDGET * 3 / 5;
        let html = |key: PageKey, viewer: Arc<Session>| {
            let (c, renders) = (&c, &renders);
            async move {
                c.page_html(
                    key,
                    Some(&viewer),
                    || async { Ok::<u32, WebError>(1) },
                    |_| {
                        renders.fetch_add(1, Ordering::SeqCst);
                        Ok("x".repeat(big))
                    },
                )
                .await
                .unwrap();
                renders.load(Ordering::SeqCst)
            }
        };
        let (a, b) = (session(Uuid::new_v4()), session(Uuid::new_v4()));
        assert_eq!(html(PageKey::Overview(t), a.clone()).await, 1);
        assert_eq!(html(PageKey::Overview(t), a.clone()).await, 1, "kept");
        assert_eq!(html(PageKey::Overview(u), b.clone()).await, 2);
        assert_eq!(
            html(PageKey::Overview(u), b.clone()).await,
            3,
            "over budget"
        );
        // Dropping the first page gives its bytes back.
        c.apply(&Change::Tenant(t));
        assert_eq!(html(PageKey::Overview(u), b.clone()).await, 4);
        assert_eq!(html(PageKey::Overview(u), b).await, 4, "kept now");
    }
}
