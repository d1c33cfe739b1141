//! Typed page caches: one per kind of page, each entry stamped with the
//! count of changes heard before its data was loaded, so data loaded before
//! a change of its tenant is never served to a request that came after it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use super::lock;
use crate::WebError;

/// Tenants whose changes are remembered one by one; past it, a change
/// counts as everyone's.
const REMEMBERED_TENANTS: usize = 100_000;

/// The changes this process has heard, counted: what tells a page's data
/// loaded before a change from data loaded after it.
pub(super) struct ChangeLog {
    /// Listening (and page caching on): only then are pages kept.
    live: AtomicBool,
    caching: bool,
    /// Changes heard so far.
    count: AtomicU64,
    marks: Mutex<Marks>,
}

#[derive(Default)]
struct Marks {
    /// The count at each tenant's last change.
    tenants: HashMap<Uuid, u64>,
    /// The count at any tenant's last change (for pages of every tenant).
    any: u64,
    /// The count when everything was last dropped.
    all: u64,
}

impl ChangeLog {
    pub(super) fn new(caching: bool) -> Self {
        ChangeLog {
            live: AtomicBool::new(false),
            caching,
            count: AtomicU64::new(0),
            marks: Mutex::new(Marks::default()),
        }
    }

    pub(super) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    pub(super) fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
    }

    fn keeps_pages(&self) -> bool {
        self.caching && self.is_live()
    }

    /// The count to stamp data with that is loaded from now on.
    fn now(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    pub(super) fn tenant_changed(&self, tenant: Uuid) {
        let mut marks = lock(&self.marks);
        let now = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        if marks.tenants.len() >= REMEMBERED_TENANTS {
            marks.tenants.clear();
            marks.all = now;
        }
        marks.tenants.insert(tenant, now);
        marks.any = now;
    }

    pub(super) fn forget_everything(&self) {
        let mut marks = lock(&self.marks);
        let now = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        *marks = Marks {
            all: now,
            any: now,
            ..Marks::default()
        };
    }

    /// Whether data stamped `stamp` still shows `tenant` (every tenant for
    /// `None`) as it is.
    fn is_current(&self, tenant: Option<Uuid>, stamp: u64) -> bool {
        let marks = lock(&self.marks);
        let changed = match tenant {
            Some(t) => marks.tenants.get(&t).copied().unwrap_or(0),
            None => marks.any,
        };
        stamp >= marks.all && stamp >= changed
    }
}

/// A page's data as held, with the change count read before it was loaded.
pub(crate) struct Stamped<T> {
    stamp: u64,
    data: Arc<T>,
}

impl<T> Clone for Stamped<T> {
    fn clone(&self) -> Self {
        Stamped {
            stamp: self.stamp,
            data: self.data.clone(),
        }
    }
}

/// The cache of one kind of page, keyed by what tells its pages apart.
pub(crate) struct PageCache<K, T> {
    cache: moka::future::Cache<K, Stamped<T>>,
    log: Arc<ChangeLog>,
    /// The tenant whose changes change a page; `None`: any tenant's.
    tenant_of: fn(&K) -> Option<Uuid>,
}

impl<K, T> PageCache<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    pub(super) fn new(
        log: &Arc<ChangeLog>,
        ttl: Duration,
        capacity: u64,
        tenant_of: fn(&K) -> Option<Uuid>,
    ) -> Self {
        PageCache {
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            log: log.clone(),
            tenant_of,
        }
    }

    pub(super) fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// The data of page `key`: held, or loaded by `load` once for every
    /// request asking meanwhile. Data loaded before a change of its tenant
    /// is not served to a request after it, even one that waited for that
    /// load: such a request loads its own.
    pub(crate) async fn get<F, Fut>(&self, key: K, load: F) -> Result<Arc<T>, WebError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, WebError>>,
    {
        if !self.log.keeps_pages() {
            return load().await.map(Arc::new);
        }
        let tenant = (self.tenant_of)(&key);
        if let Some(held) = self.cache.get(&key).await {
            if self.log.is_current(tenant, held.stamp) {
                return Ok(held.data);
            }
            self.cache.invalidate(&key).await;
        }
        let stamp = self.log.now();
        let got = self
            .cache
            .try_get_with(key, async {
                let data = Arc::new(load().await?);
                Ok::<_, WebError>(Stamped { stamp, data })
            })
            .await
            .map_err(|e| e.shared())?;
        if self.log.is_current(tenant, got.stamp) {
            Ok(got.data)
        } else {
            load().await.map(Arc::new)
        }
    }
}
