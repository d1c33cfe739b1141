//! Converging each jail of the node to its desired state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stockade_domain::{DesiredState, JailKind, ObservedState};
use stockade_jail::{Engine, JailSpec, JailStatus};
use stockade_store::PgPool;
use stockade_store::jails::{self, Jail};
use uuid::Uuid;

use crate::AgentConfig;
use crate::metrics::Metrics;

/// Where uploaded site files go inside a jail.
const SITE_FOLDER: &str = "srv/www";

/// A failing jail waits this long before its first retry, doubling up to the cap.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(300);

struct Backoff {
    failures: u32,
    next: Instant,
}

/// The jails this node runs, and what went wrong with which.
pub(crate) struct Reconciler {
    pool: PgPool,
    engine: Arc<Engine>,
    node_id: Uuid,
    cfg: AgentConfig,
    metrics: Arc<Metrics>,
    backoff: HashMap<Uuid, Backoff>,
    running: Vec<(Uuid, Uuid, stockade_domain::JailName)>,
}

impl Reconciler {
    pub(crate) fn new(
        pool: PgPool,
        engine: Arc<Engine>,
        node_id: Uuid,
        cfg: AgentConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            pool,
            engine,
            node_id,
            cfg,
            metrics,
            backoff: HashMap::new(),
            running: Vec::new(),
        }
    }

    /// (jail id, tenant id, engine name) of the jails last seen running.
    pub(crate) fn running_jails(&self) -> Vec<(Uuid, Uuid, stockade_domain::JailName)> {
        self.running.clone()
    }

    /// Time until the earliest backed-off jail may be retried.
    pub(crate) fn next_retry_in(&self) -> Duration {
        let now = Instant::now();
        self.backoff
            .values()
            .map(|b| b.next.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(50))
    }

    /// One pass over the node's jails. `full` also re-applies limits to
    /// converged running jails, setting back anything changed by hand.
    pub(crate) async fn pass(&mut self, full: bool) {
        let started = Instant::now();
        let jails = match jails::for_node(&self.pool, self.node_id).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "reading the node's jails failed");
                self.metrics
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        };
        let throttles: HashMap<Uuid, u64> =
            match stockade_store::transfer::throttles_on_node(&self.pool, self.node_id).await {
                Ok(t) => t.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading transfer throttles failed");
                    HashMap::new()
                }
            };
        let now = Instant::now();
        let mut running = Vec::new();
        let mut by_state = [0u64; 5];
        for jail in jails {
            // A notification pass only touches jails with something to do;
            // the periodic full pass looks at every jail (drift, crashes).
            let waiting = self.backoff.get(&jail.id).is_some_and(|b| b.next > now);
            if waiting || (!full && settled(&jail)) {
                count(&mut by_state, jail.observed_state);
                if jail.observed_state == ObservedState::Running {
                    running.push((jail.id, jail.tenant_id, jail.host_name()));
                }
                continue;
            }
            let throttle = throttles.get(&jail.tenant_id).copied();
            let observed = self
                .reconcile_one(jail.id, full, throttle)
                .await
                .unwrap_or(jail.observed_state);
            count(&mut by_state, observed);
            if observed == ObservedState::Running {
                running.push((jail.id, jail.tenant_id, jail.host_name()));
            }
        }
        self.write_uploads(&running).await;
        self.running = running;
        self.metrics.set_jails_by_state(by_state);
        self.metrics.observe_pass(started.elapsed());
    }

    /// A free address of the node's pool: not held by any jail row of the
    /// node nor by any jail on the host.
    async fn allocate(&self, pool_net: ipnet::Ipv4Net) -> Result<std::net::Ipv4Addr, String> {
        let mut used = jails::addresses_on_node(&self.pool, self.node_id)
            .await
            .map_err(|e| e.to_string())?;
        let engine = self.engine.clone();
        let on_host = tokio::task::spawn_blocking(move || {
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

    /// Writes pending uploads into the running jails they are for.
    async fn write_uploads(&self, running: &[(Uuid, Uuid, stockade_domain::JailName)]) {
        let wanted =
            match stockade_store::uploads::jails_with_pending(&self.pool, self.node_id).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "reading pending uploads failed");
                    return;
                }
            };
        for (jail_id, _, name) in running.iter().filter(|(id, _, _)| wanted.contains(id)) {
            let Ok(files) = stockade_store::uploads::pending(&self.pool, *jail_id).await else {
                continue;
            };
            for (upload_id, file, content) in files {
                let engine = self.engine.clone();
                let name = name.clone();
                let written = tokio::task::spawn_blocking(move || {
                    engine.write_file(&name, SITE_FOLDER, &file, &content)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    r.map_err(|e| match &e {
                        stockade_jail::JailError::Io { source, .. }
                            if source.raw_os_error() == Some(libc::ENOSPC) =>
                        {
                            "the jail's disk is full".to_owned()
                        }
                        _ => e.to_string(),
                    })
                });
                let error = written.err();
                if let Err(e) =
                    stockade_store::uploads::finish(&self.pool, upload_id, error.as_deref()).await
                {
                    tracing::warn!(error = %e, "recording an upload failed");
                }
            }
        }
    }

    /// Claims one jail, converges it, and records what it saw. Returns the
    /// observed state, or `None` when another worker holds the jail.
    async fn reconcile_one(
        &mut self,
        jail_id: Uuid,
        full: bool,
        throttle: Option<u64>,
    ) -> Option<ObservedState> {
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
        let engine = self.engine.clone();
        let grace = self.cfg.stop_grace;
        let mut work = jail.clone();
        if let (Some(pool_net), None, true) = (
            self.cfg.network,
            &jail.address,
            jail.desired_state != DesiredState::Deleted,
        ) {
            // A jail gets its address once, from the node's pool, and keeps it.
            match self.allocate(pool_net).await {
                Ok(addr) => match jails::set_address(&mut tx, jail.id, addr).await {
                    Ok(()) => work.address = Some(addr.to_string()),
                    Err(e) => tracing::warn!(error = %e, "recording a jail address failed"),
                },
                Err(e) => {
                    let msg = format!("no address for the jail: {e}");
                    let _ = jails::record_observed(
                        &mut tx,
                        jail.id,
                        ObservedState::Failed,
                        jail.generation,
                        Some(&msg),
                    )
                    .await;
                    let _ = tx.commit().await;
                    return Some(ObservedState::Failed);
                }
            }
        }
        if let Some(bps) = throttle {
            // Past the monthly transfer's soft share: network rates are capped.
            for rate in [
                &mut work.limits.net_egress_bps,
                &mut work.limits.net_ingress_bps,
            ] {
                *rate = if *rate == 0 { bps } else { (*rate).min(bps) };
            }
        }
        let step_started = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || converge(&engine, &work, full, grace))
            .await
            .unwrap_or_else(|e| Err(format!("the reconcile step panicked: {e}")));
        if let Ok(Some(observed)) = &outcome {
            tracing::debug!(jail = %jail.name, tenant = %jail.tenant_id, state = %observed, took = ?step_started.elapsed(), "jail converged");
        }
        let (observed, error) = match outcome {
            Ok(Some(observed)) => (observed, None),
            Ok(None) => {
                // Already converged and unchanged: nothing to write.
                self.backoff.remove(&jail.id);
                let _ = tx.rollback().await;
                return Some(jail.observed_state);
            }
            Err(e) => (ObservedState::Failed, Some(e)),
        };
        if let Some(e) = &error {
            self.metrics
                .errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let b = self.backoff.entry(jail.id).or_insert(Backoff {
                failures: 0,
                next: Instant::now(),
            });
            b.failures = b.failures.saturating_add(1);
            let delay = FIRST_RETRY
                .saturating_mul(1u32 << b.failures.min(10))
                .min(MAX_RETRY);
            b.next = Instant::now() + delay;
            tracing::warn!(jail = %jail.name, tenant = %jail.tenant_id, error = %e, retry_in = ?delay, "jail did not converge");
        } else {
            self.backoff.remove(&jail.id);
        }
        if let Err(e) = jails::record_observed(
            &mut tx,
            jail.id,
            observed,
            jail.generation,
            error.as_deref(),
        )
        .await
        {
            tracing::warn!(error = %e, "recording the observed state failed");
            return None;
        }
        if let Err(e) = tx.commit().await {
            tracing::warn!(error = %e, "committing the observed state failed");
            return None;
        }
        Some(observed)
    }
}

/// Whether the agent has converged the jail's current generation to what is wanted.
fn settled(j: &Jail) -> bool {
    j.observed_generation >= j.generation
        && match (j.desired_state, j.observed_state) {
            (DesiredState::Running, ObservedState::Running)
            | (DesiredState::Stopped, ObservedState::Stopped)
            | (DesiredState::Deleted, ObservedState::Deleted) => true,
            // An app jail whose command has ended stays stopped.
            (DesiredState::Running, ObservedState::Stopped) => j.kind == JailKind::App,
            _ => false,
        }
}

fn count(by_state: &mut [u64; 5], s: ObservedState) {
    let i = ObservedState::ALL.iter().position(|x| *x == s).unwrap_or(0);
    by_state[i] += 1;
}

fn spec_of(jail: &Jail) -> JailSpec {
    JailSpec {
        name: jail.host_name(),
        hostname: jail.name.clone(),
        image: jail.image.clone(),
        kind: jail.kind,
        command: jail.command.clone(),
        limits: jail.limits,
        network: jail
            .address
            .as_deref()
            .and_then(|a| a.parse().ok())
            .map(stockade_jail::NetSpec::new),
        user_namespace: jail.user_namespace,
    }
}

/// Brings one jail to its desired state with idempotent engine steps.
/// Returns `Ok(None)` when nothing had to change and nothing is to record.
fn converge(
    engine: &Engine,
    jail: &Jail,
    full: bool,
    grace: Duration,
) -> Result<Option<ObservedState>, String> {
    let name = jail.host_name();
    let fail = |step: &str, e: stockade_jail::JailError| format!("{step}: {e}");
    let converged = jail.generation == jail.observed_generation;
    match jail.desired_state {
        DesiredState::Deleted => {
            if converged && jail.observed_state == ObservedState::Deleted {
                return Ok(None);
            }
            engine.destroy(&name).map_err(|e| fail("destroying", e))?;
            Ok(Some(ObservedState::Deleted))
        }
        DesiredState::Stopped => {
            let status = engine
                .status(&name)
                .map_err(|e| fail("reading status", e))?;
            if converged
                && jail.observed_state == ObservedState::Stopped
                && status == Some(JailStatus::Stopped)
                && !full
            {
                return Ok(None);
            }
            engine
                .create(&spec_of(jail))
                .map_err(|e| fail("creating", e))?;
            engine.stop(&name, grace).map_err(|e| fail("stopping", e))?;
            engine
                .update_limits(&name, &jail.limits)
                .map_err(|e| fail("applying limits", e))?;
            Ok(Some(ObservedState::Stopped))
        }
        DesiredState::Running => {
            let status = engine
                .status(&name)
                .map_err(|e| fail("reading status", e))?;
            let is_running = matches!(status, Some(JailStatus::Running { .. }));
            if is_running {
                if converged && jail.observed_state == ObservedState::Running && !full {
                    return Ok(None);
                }
                if jail.restart_generation > jail.observed_generation {
                    // What applies only at a start (a plan's user namespace).
                    engine
                        .create(&spec_of(jail))
                        .map_err(|e| fail("creating", e))?;
                    engine
                        .update_limits(&name, &jail.limits)
                        .map_err(|e| fail("applying limits", e))?;
                    engine
                        .restart(&name, grace)
                        .map_err(|e| fail("restarting", e))?;
                    return Ok(Some(ObservedState::Running));
                }
                // Live limits; also sets back a limit changed by hand.
                engine
                    .update_limits(&name, &jail.limits)
                    .map_err(|e| fail("applying limits", e))?;
                return Ok(Some(ObservedState::Running));
            }
            // An app jail whose command ended after running this generation
            // has done its job: it is stopped, not restarted.
            if jail.kind == JailKind::App
                && converged
                && jail.observed_state != ObservedState::Pending
                && jail.observed_state != ObservedState::Failed
            {
                return Ok(if jail.observed_state == ObservedState::Stopped {
                    None
                } else {
                    Some(ObservedState::Stopped)
                });
            }
            engine
                .create(&spec_of(jail))
                .map_err(|e| fail("creating", e))?;
            engine
                .update_limits(&name, &jail.limits)
                .map_err(|e| fail("applying limits", e))?;
            engine.start(&name).map_err(|e| fail("starting", e))?;
            Ok(Some(ObservedState::Running))
        }
    }
}
