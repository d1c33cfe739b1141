//! Converging each jail of the node to its desired state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use stockade_domain::{DesiredState, JailKind, JailName, ObservedState};
use stockade_jail::{Engine, JailSpec, JailStatus};
use stockade_store::PgPool;
use stockade_store::jails::{self, Jail, LastExit, RunState};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::AgentConfig;
use crate::metrics::Metrics;
use crate::slots::Slots;

mod converge;
use converge::{converge, count, due_again, settled};

/// A failing jail waits this long before its first retry, doubling up to the cap.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(300);

struct Backoff {
    failures: u32,
    next: Instant,
}

/// The node's jails last seen running: (tenant id, engine name) by jail id.
/// Read by the sampler and the upload writer, kept by the reconciler.
#[derive(Default)]
pub(crate) struct RunningJails(Mutex<HashMap<Uuid, (Uuid, JailName)>>);

impl RunningJails {
    /// (jail id, tenant id, engine name) of every running jail.
    pub(crate) fn snapshot(&self) -> Vec<(Uuid, Uuid, JailName)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, (tenant, name))| (*id, *tenant, name.clone()))
            .collect()
    }

    fn set(&self, jail: Uuid, tenant: Uuid, name: JailName, running: bool) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if running {
            map.insert(jail, (tenant, name));
        } else {
            map.remove(&jail);
        }
    }

    fn retain(&self, keep: impl Fn(&Uuid) -> bool) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| keep(id));
    }
}

/// What a step learnt of a running jail's init, for its watch.
enum Watch {
    /// Its init, to be watched (a pidfd).
    Init(std::os::fd::OwnedFd),
    /// It ended already: the jail is looked at again at once.
    Ended,
    /// Nothing new: the watch stays as it is.
    Unchanged,
}

/// What the reconciler remembers between passes.
#[derive(Default)]
struct Book {
    backoff: HashMap<Uuid, Backoff>,
    /// Jails with a step under way; a pass leaves them to it.
    in_flight: HashSet<Uuid>,
    /// Jails whose init ended since their last step: looked at by the next
    /// pass even if their row says they run.
    exited: HashSet<Uuid>,
    /// The watch on each running jail's init.
    watches: HashMap<Uuid, tokio::task::AbortHandle>,
    /// Jails a full pass found busy: looked at fully once their step ends,
    /// so a repair asked for meanwhile (a link deleted) is not lost.
    full_again: HashSet<Uuid>,
}

/// Converges the node's jails: each pass starts a task per jail with work
/// to do, so a slow or stuck jail never holds up the others.
pub(crate) struct Reconciler {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    slots: Arc<Slots>,
    node_id: Uuid,
    cfg: AgentConfig,
    metrics: Arc<Metrics>,
    book: Mutex<Book>,
    running: Arc<RunningJails>,
    /// Rung when a jail's step ends, so what changed meanwhile is seen.
    again: Notify,
    /// Rung when a jail starts running: its waiting uploads can be written.
    uploads: Arc<Notify>,
    /// Held while a jail's address is chosen and recorded.
    allocating: tokio::sync::Mutex<()>,
    /// Bounds the jail tasks at work at once (database connections too).
    tasks: tokio::sync::Semaphore,
}

impl Reconciler {
    pub(crate) fn new(
        pool: PgPool,
        slots: Arc<Slots>,
        node_id: Uuid,
        cfg: AgentConfig,
        metrics: Arc<Metrics>,
        running: Arc<RunningJails>,
        uploads: Arc<Notify>,
    ) -> Self {
        let cfg_parallelism = cfg.jail_parallelism.max(1);
        Self {
            inner: Arc::new(Inner {
                pool,
                slots,
                node_id,
                cfg,
                metrics,
                book: Mutex::new(Book::default()),
                running,
                again: Notify::new(),
                uploads,
                allocating: tokio::sync::Mutex::new(()),
                tasks: tokio::sync::Semaphore::new(cfg_parallelism),
            }),
        }
    }

    /// Time until the earliest backed-off jail may be retried.
    pub(crate) fn next_retry_in(&self) -> Duration {
        let now = Instant::now();
        let book = self.inner.book();
        // A jail with a step under way is woken by that step's end.
        book.backoff
            .iter()
            .filter(|(id, _)| !book.in_flight.contains(id))
            .map(|(_, b)| b.next.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(50))
    }

    /// Lets the jails named (engine names) be worked on at the next pass,
    /// whatever their backoff: an abandoned step of theirs has ended.
    pub(crate) fn retry_now(&self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        self.inner.book().backoff.retain(|id, _| {
            !names
                .iter()
                .any(|n| *n == stockade_store::jails::host_name(*id).as_str())
        });
    }

    /// Resolves when a jail's step has ended since the last call.
    pub(crate) async fn step_ended(&self) {
        self.inner.again.notified().await;
    }

    /// One pass over the node's jails. `full` also re-applies limits to
    /// converged running jails, setting back anything changed by hand.
    /// Starts the work and returns; it does not wait for any jail.
    pub(crate) async fn pass(&self, full: bool) {
        let inner = &self.inner;
        let started = Instant::now();
        let jails = match jails::for_node(&inner.pool, inner.node_id).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "reading the node's jails failed");
                inner.metrics.errors.inc();
                return;
            }
        };
        let throttles: HashMap<Uuid, u64> =
            match stockade_store::transfer::throttles_on_node(&inner.pool, inner.node_id).await {
                Ok(t) => t.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading transfer throttles failed");
                    HashMap::new()
                }
            };
        let now = Instant::now();
        let mut by_state = [0u64; crate::metrics::STATES];
        let mut on_node = HashSet::new();
        let mut names = HashSet::new();
        for jail in jails {
            count(&mut by_state, jail.observed_state);
            on_node.insert(jail.id);
            names.insert(jail.host_name().to_string());
            let mut book = inner.book();
            if book.in_flight.contains(&jail.id) {
                // Its task records what it sees when it ends.
                if full {
                    book.full_again.insert(jail.id);
                }
                continue;
            }
            let full = full || book.full_again.remove(&jail.id);
            inner.running.set(
                jail.id,
                jail.tenant_id,
                jail.host_name(),
                matches!(
                    jail.observed_state,
                    ObservedState::Running | ObservedState::CrashLooping
                ),
            );
            // A notification pass only touches jails with something to do;
            // the periodic full pass looks at every jail (drift, crashes).
            // A jail whose init ended is looked at now, even one waiting
            // for its run to last (a crash-looping jail that ended again).
            // So is one whose row changed since its last step (a stop, a
            // new command): a user's change never waits out a crash loop's
            // pause. A failed step records its generation, so a failing
            // jail still waits.
            let exited = book.exited.remove(&jail.id);
            let changed = jail.generation > jail.observed_generation;
            let waiting = book.backoff.get(&jail.id).is_some_and(|b| b.next > now);
            if !exited && !changed && (waiting || (!full && settled(&jail))) {
                continue;
            }
            book.in_flight.insert(jail.id);
            drop(book);
            let throttle = throttles.get(&jail.tenant_id).copied();
            let needs_address = jail.address.is_none();
            let task = inner.clone();
            tokio::spawn(async move {
                task.reconcile_one(jail.id, full, throttle, needs_address)
                    .await
            });
        }
        inner.running.retain(|id| on_node.contains(id));
        {
            let mut book = inner.book();
            book.backoff.retain(|id, _| on_node.contains(id));
            book.full_again.retain(|id| on_node.contains(id));
            book.watches.retain(|id, watch| {
                let keep = on_node.contains(id);
                if !keep {
                    watch.abort();
                }
                keep
            });
        }
        inner.slots.prune(|name| names.contains(name));
        inner.metrics.set_jails_by_state(by_state);
        inner.metrics.observe_pass(started.elapsed());
        tracing::trace!(full, took = ?started.elapsed(), "reconcile pass");
    }
}

impl Inner {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits `delay` (doubling with each failure when `failed`) before the
    /// jail is worked on again.
    fn back_off(&self, jail_id: Uuid, failed: bool) -> Duration {
        let mut book = self.book();
        let b = book.backoff.entry(jail_id).or_insert(Backoff {
            failures: 0,
            next: Instant::now(),
        });
        if failed {
            b.failures = b.failures.saturating_add(1);
        }
        let delay = FIRST_RETRY
            .saturating_mul(1u32 << b.failures.min(10))
            .min(MAX_RETRY);
        b.next = Instant::now() + delay;
        delay
    }

    /// Leaves a jail until `at` (a crash-looping jail's pause), without
    /// counting a failure.
    fn wait_until(&self, jail_id: Uuid, at: DateTime<Utc>) {
        let delay = (at - Utc::now()).to_std().unwrap_or_default();
        let mut book = self.book();
        let b = book.backoff.entry(jail_id).or_insert(Backoff {
            failures: 0,
            next: Instant::now(),
        });
        b.next = Instant::now() + delay;
    }

    /// Whether the init of a jail is watched by a live task.
    fn watched(&self, jail_id: Uuid) -> bool {
        self.book()
            .watches
            .get(&jail_id)
            .is_some_and(|w| !w.is_finished())
    }

    /// Watches a running jail's init (`fd`, a pidfd): when it ends, the
    /// jail is looked at by a pass at once rather than at the next resync,
    /// so a crash is seen and shown within moments.
    fn watch_exit(self: &Arc<Self>, jail_id: Uuid, fd: std::os::fd::OwnedFd) {
        let inner = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it
            // and keeps it open, naming the same pidfd, until dropped.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            };
            let Ok(fd) = registered else {
                return;
            };
            if fd.readable().await.is_ok()
                && let Some(inner) = inner.upgrade()
            {
                inner.book().exited.insert(jail_id);
                inner.again.notify_one();
            }
        });
        if let Some(old) = self.book().watches.insert(jail_id, task.abort_handle()) {
            old.abort();
        }
    }

    /// A free address of the node's pool: not held by any jail row of the
    /// node nor by any jail on the host.
    async fn allocate(&self, pool_net: ipnet::Ipv4Net) -> Result<std::net::Ipv4Addr, String> {
        let mut used = jails::addresses_on_node(&self.pool, self.node_id)
            .await
            .map_err(|e| e.to_string())?;
        let on_host = self
            .slots
            .node_call("listing jail addresses", |engine| {
                engine
                    .networks()
                    .into_iter()
                    .map(|(_, n)| n.address)
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| e.to_string())?;
        used.extend(on_host);
        stockade_jail::allocate(pool_net, &used).map_err(|e| e.to_string())
    }

    /// Counts, logs and audits what was found changed by hand on a jail
    /// and put back.
    async fn record_repairs(&self, jail: &Jail, repaired: &[String]) {
        self.metrics
            .jail_repairs
            .inc_by(u64::try_from(repaired.len()).unwrap_or(u64::MAX));
        tracing::warn!(jail = %jail.name, tenant = %jail.tenant_id, ?repaired, "the jail had been changed on the host; put back");
        let actor = format!("agent:{}", self.cfg.node_name);
        let target = jail.id.to_string();
        let entry = stockade_store::audit::Entry {
            actor_user_id: None,
            actor: &actor,
            tenant_id: Some(jail.tenant_id),
            action: "jail.repaired",
            target: &target,
            client_addr: None,
            details: serde_json::json!({ "jail": jail.name.as_str(), "repaired": repaired }),
        };
        if let Err(e) = stockade_store::audit::record(&self.pool, &entry).await {
            tracing::warn!(error = %e, "recording a repair in the audit log failed");
        }
    }

    /// The task of one jail: converges it, records what it saw, and lets
    /// the next pass and the upload writer know.
    async fn reconcile_one(
        self: Arc<Self>,
        jail_id: Uuid,
        full: bool,
        throttle: Option<u64>,
        needs_address: bool,
    ) {
        let seen = match self.tasks.acquire().await {
            Ok(_permit) => self.step(jail_id, full, throttle, needs_address).await,
            Err(_) => None,
        };
        let seen = seen.map(|(observed, tenant, name, watch)| {
            match watch {
                Watch::Init(fd) => self.watch_exit(jail_id, fd),
                Watch::Ended => {
                    self.book().exited.insert(jail_id);
                }
                Watch::Unchanged => {}
            }
            (observed, tenant, name)
        });
        self.book().in_flight.remove(&jail_id);
        match seen {
            Some((observed, tenant, name)) => {
                let running = matches!(
                    observed,
                    ObservedState::Running | ObservedState::CrashLooping
                );
                self.running.set(jail_id, tenant, name, running);
                if running {
                    self.uploads.notify_one();
                }
            }
            None => {
                // Claimed elsewhere or unreadable: not again at once.
                self.back_off(jail_id, false);
            }
        }
        self.again.notify_one();
    }

    /// Claims one jail, converges it, and records what it saw. Returns the
    /// observed state, or `None` when another worker holds the jail or the
    /// database failed. The row is not kept locked while the engine works,
    /// so a stuck step never holds a connection or blocks the web tier.
    async fn step(
        &self,
        jail_id: Uuid,
        full: bool,
        throttle: Option<u64>,
        needs_address: bool,
    ) -> Option<(ObservedState, Uuid, JailName, Watch)> {
        // One address allocation at a time on the node, each committed
        // before the next reads which addresses are taken; taken before a
        // connection is, so the allocation always gets the one it needs.
        let claim_started = Instant::now();
        let allocating = if self.cfg.network.is_some() && needs_address {
            Some(self.allocating.lock().await)
        } else {
            None
        };
        let mut tx = match self.pool.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                tracing::warn!(error = %e, "cannot begin a transaction");
                return None;
            }
        };
        let jail = match jails::claim(&mut tx, self.node_id, jail_id).await {
            Ok(Some(j)) => j,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, %jail_id, "claiming a jail failed");
                return None;
            }
        };
        let name = jail.host_name();
        let seen = |observed, watch| Some((observed, jail.tenant_id, name.clone(), watch));
        let grace = self.cfg.stop_grace;
        let mut work = jail.clone();
        if let (Some(pool_net), Some(_), None, true) = (
            self.cfg.network,
            &allocating,
            &jail.address,
            jail.desired_state != DesiredState::Deleted,
        ) {
            // A jail gets its address once, from the node's pool, and keeps it.
            let allocated = match self.allocate(pool_net).await {
                Ok(addr) => jails::set_address(&mut tx, jail.id, addr)
                    .await
                    .map(|()| addr)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match allocated {
                Ok(addr) => work.address = Some(addr.to_string()),
                Err(e) => {
                    let msg = format!("no address for the jail: {e}");
                    let _ = jails::record_observed(
                        &mut tx,
                        jail.id,
                        ObservedState::Failed,
                        jail.generation,
                        Some(&msg),
                        &jail.run,
                    )
                    .await;
                    let _ = tx.commit().await;
                    self.back_off(jail.id, true);
                    return seen(ObservedState::Failed, Watch::Unchanged);
                }
            }
        }
        if jail.move_to_node.is_none()
            && converge::starts(&jail)
            && let Err(e) = jails::mark_starting(&mut tx, jail.id).await
        {
            tracing::warn!(error = %e, "recording a start failed");
            return None;
        }
        if let Err(e) = tx.commit().await {
            tracing::warn!(error = %e, "committing a jail claim failed");
            return None;
        }
        drop(allocating);
        if let Some(bps) = throttle {
            // Past the monthly transfer's soft share: network rates are capped.
            for rate in [
                &mut work.limits.net_egress_bps,
                &mut work.limits.net_ingress_bps,
            ] {
                *rate = if *rate == 0 { bps } else { (*rate).min(bps) };
            }
        }
        // A restore from a backup: fetched and checked before the jail's
        // step, which only puts it in place; the jail runs on meanwhile.
        let staged = if let Some(backup_id) = jail.restore_backup_id
            && jail.restore_generation > jail.observed_generation
            && jail.desired_state != DesiredState::Deleted
        {
            let dir = self
                .slots
                .node_call("making the incoming folder", |engine| engine.incoming_dir())
                .await;
            Some(match dir {
                Ok(Ok(dir)) => crate::backups::fetch_for_restore(
                    self.cfg.backup_target.as_ref(),
                    &self.pool,
                    dir,
                    jail.tenant_id,
                    jail.limits.disk_bytes,
                    backup_id,
                )
                .await
                .map_err(|e| format!("{e:#}")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            })
        } else {
            None
        };
        // A moved jail that cannot be restored here goes back to its source
        // node, whose copy was kept.
        if let (Some(Err(e)), Some(_)) = (&staged, jail.moved_from_node) {
            tracing::warn!(jail = %jail.name, error = %e, "a moved jail could not be restored here; it goes back");
            if let Err(err) = stockade_store::moves::revert(&self.pool, jail.id, e).await {
                tracing::warn!(error = %err, "sending a moved jail back failed");
            }
            return None;
        }
        if jail.move_to_node.is_some() {
            // Moving away: stopped here, then its volume is shipped.
            work.desired_state = DesiredState::Stopped;
        }
        let claimed_in = claim_started.elapsed();
        let step_started = Instant::now();
        let watched = self.watched(jail.id);
        let wants_running = jail.desired_state == DesiredState::Running;
        let (outcome, repaired, run, watch) = self
            .slots
            .call(name.as_str(), "converging", move |engine| {
                let mut repaired = Vec::new();
                let mut run = work.run.clone();
                let leftover = staged
                    .as_ref()
                    .and_then(|s| s.as_ref().ok())
                    .map(|(image, _)| image.clone());
                let outcome = converge(engine, &work, full, grace, &mut repaired, &mut run, staged);
                // An image not put in place (the step failed) is not kept.
                if let Some(image) = leftover {
                    let _ = std::fs::remove_file(image);
                }
                // A new init, or one nobody watches yet, is watched; one
                // that already ended (a command that exits at once) is
                // looked at again at once.
                let runs = run.started_at.is_some()
                    && outcome.as_ref().is_ok_and(|o| {
                        o.is_none_or(|s| {
                            matches!(s, ObservedState::Running | ObservedState::CrashLooping)
                        })
                    });
                let watch = if wants_running && runs && (!watched || matches!(outcome, Ok(Some(_))))
                {
                    match engine.watch_init(&work.host_name()) {
                        Ok(Some(fd)) => Watch::Init(fd),
                        Ok(None) => Watch::Ended,
                        Err(_) => Watch::Unchanged,
                    }
                } else {
                    Watch::Unchanged
                };
                (outcome, repaired, run, watch)
            })
            .await
            .unwrap_or_else(|e| {
                (
                    Err((ObservedState::Failed, e.to_string())),
                    Vec::new(),
                    jail.run.clone(),
                    Watch::Unchanged,
                )
            });
        let took = step_started.elapsed();
        if !repaired.is_empty() {
            self.record_repairs(&jail, &repaired).await;
        }
        if let (Err((_, e)), Some(_)) = (&outcome, jail.moved_from_node)
            && e.starts_with("restoring the backup")
        {
            if let Err(err) = stockade_store::moves::revert(&self.pool, jail.id, e).await {
                tracing::warn!(error = %err, "sending a moved jail back failed");
            }
            return None;
        }
        let (observed, error) = match outcome {
            Ok(Some(observed)) => (observed, None),
            Ok(None) => {
                // Already converged and unchanged: nothing to write.
                self.book().backoff.remove(&jail.id);
                return seen(jail.observed_state, watch);
            }
            Err((observed, e)) => (observed, Some(e)),
        };
        if let Some(e) = &error {
            self.metrics.errors.inc();
            let delay = self.back_off(jail.id, true);
            tracing::warn!(jail = %jail.name, tenant = %jail.tenant_id, error = %e, retry_in = ?delay, "jail did not converge");
        } else if let Some(at) = due_again(observed, &run) {
            self.wait_until(jail.id, at);
        } else {
            self.book().backoff.remove(&jail.id);
        }
        let recorded = async {
            let mut tx = self.pool.begin().await?;
            jails::record_observed(
                &mut tx,
                jail.id,
                observed,
                jail.generation,
                error.as_deref(),
                &run,
            )
            .await?;
            tx.commit().await?;
            Ok::<_, stockade_store::StoreError>(())
        };
        let record_started = Instant::now();
        if let Err(e) = recorded.await {
            tracing::warn!(error = %e, "recording the observed state failed");
            return None;
        }
        tracing::debug!(jail = %jail.name, tenant = %jail.tenant_id, state = %observed, ?claimed_in, ?took, recorded_in = ?record_started.elapsed(), "jail converged");
        seen(observed, watch)
    }
}
