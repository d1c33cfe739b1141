//! What the caches keep, and what makes them let go.

use std::sync::atomic::AtomicU32;

use stockade_domain::{Email, Role};
use stockade_store::users::User;

use super::*;
use crate::WebError;

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
    // Kept when nothing was dropped meanwhile.
    c.keep_session(vec![4], &session(b), c.epoch());
    assert!(c.session(&[4]).is_some());
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

/// A page cache keyed by tenant whose loads count themselves.
fn counted(ttl: Duration) -> (Arc<ChangeLog>, PageCache<Uuid, u32>) {
    let log = Arc::new(ChangeLog::new(!ttl.is_zero()));
    log.set_live(true);
    let pages = PageCache::new(&log, ttl, 100, |t| Some(*t));
    (log, pages)
}

async fn get(pages: &PageCache<Uuid, u32>, key: Uuid, loads: &AtomicU32) -> u32 {
    *pages
        .get(key, || async {
            Ok::<u32, WebError>(loads.fetch_add(1, Ordering::SeqCst) + 1)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_page_loads_once_until_its_tenant_changes() {
    let (log, pages) = counted(Duration::from_secs(60));
    let (t, other) = (Uuid::new_v4(), Uuid::new_v4());
    let loads = AtomicU32::new(0);
    let (x, y) = tokio::join!(get(&pages, t, &loads), get(&pages, t, &loads));
    assert_eq!((x, y), (1, 1), "concurrent requests share one load");
    assert_eq!(get(&pages, t, &loads).await, 1);
    log.tenant_changed(other);
    assert_eq!(get(&pages, t, &loads).await, 1, "another tenant's change");
    log.tenant_changed(t);
    assert_eq!(get(&pages, t, &loads).await, 2);
    assert_eq!(get(&pages, t, &loads).await, 2, "kept again");
    log.forget_everything();
    assert_eq!(get(&pages, t, &loads).await, 3);
    log.set_live(false);
    assert_eq!(get(&pages, t, &loads).await, 4);
    assert_eq!(
        get(&pages, t, &loads).await,
        5,
        "not held while not listening"
    );
}

#[tokio::test]
async fn no_page_is_kept_when_page_caching_is_off() {
    let (_log, pages) = counted(Duration::ZERO);
    let loads = AtomicU32::new(0);
    let t = Uuid::new_v4();
    assert_eq!(get(&pages, t, &loads).await, 1);
    assert_eq!(get(&pages, t, &loads).await, 2);
}

#[tokio::test]
async fn a_page_of_every_tenant_goes_with_any_tenants_change() {
    let log = Arc::new(ChangeLog::new(true));
    log.set_live(true);
    let lists: PageCache<String, u32> =
        PageCache::new(&log, Duration::from_secs(60), 100, |_| None);
    let loads = AtomicU32::new(0);
    let get = || async {
        *lists
            .get("page 1".to_owned(), || async {
                Ok::<u32, WebError>(loads.fetch_add(1, Ordering::SeqCst) + 1)
            })
            .await
            .unwrap()
    };
    assert_eq!(get().await, 1);
    assert_eq!(get().await, 1);
    log.tenant_changed(Uuid::new_v4());
    assert_eq!(get().await, 2);
}

#[tokio::test]
async fn data_loaded_before_a_change_is_not_served_after_it() {
    let (log, pages) = counted(Duration::from_secs(60));
    let t = Uuid::new_v4();
    let loads = AtomicU32::new(0);
    let started = tokio::sync::Notify::new();
    let release = tokio::sync::Notify::new();
    let slow = async {
        *pages
            .get(t, || async {
                let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 1 {
                    started.notify_one();
                    release.notified().await;
                }
                Ok::<u32, WebError>(n)
            })
            .await
            .unwrap()
    };
    let change = async {
        started.notified().await;
        // The tenant changes while its page is being read.
        log.tenant_changed(t);
        release.notify_one();
    };
    let (first, ()) = tokio::join!(slow, change);
    assert_ne!(first, 0);
    let later = get(&pages, t, &loads).await;
    assert!(
        later > 1,
        "a request after the change got data read before it"
    );
}

#[tokio::test]
async fn a_failed_load_is_not_kept() {
    let (_log, pages) = counted(Duration::from_secs(60));
    let t = Uuid::new_v4();
    let r = pages
        .get(t, || async {
            Err::<u32, _>(WebError::from(anyhow::anyhow!("database down")))
        })
        .await;
    assert!(r.is_err());
    let v = pages
        .get(t, || async { Ok::<u32, WebError>(7) })
        .await
        .unwrap();
    assert_eq!(*v, 7);
}

#[tokio::test]
async fn a_barrier_wakes_only_its_own_waiter() {
    let c = Caches::new(Duration::from_secs(5), Duration::from_secs(3600));
    c.set_live(true);
    let (mine, other) = (Uuid::new_v4(), Uuid::new_v4());
    let (tx, mut rx) = oneshot::channel();
    lock(&c.barriers).insert(mine, tx);
    c.apply(&Change::Barrier(other));
    assert!(rx.try_recv().is_err(), "woken by another process's barrier");
    c.apply(&Change::Barrier(mine));
    assert!(rx.try_recv().is_ok());
}
