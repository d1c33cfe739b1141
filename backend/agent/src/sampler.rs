//! Usage sampling: one sweep reads every running jail's counters and stores
//! them in one batch.

use std::sync::{Arc, Mutex, TryLockError};
use std::time::Instant;

use stockade_domain::JailName;
use stockade_jail::{Engine, UsageReader};
use stockade_store::PgPool;
use stockade_store::usage::{self, Sample};
use uuid::Uuid;

use crate::metrics::Metrics;

pub(crate) struct Sampler {
    pool: PgPool,
    /// Keeps the jails' counter files open from one sweep to the next.
    reader: Arc<Mutex<UsageReader>>,
    node_id: Uuid,
    metrics: Arc<Metrics>,
    /// Samples read while the database was unreachable, sent with the next batch.
    pending: Vec<Sample>,
    /// When each tenant's monthly transfer was last checked.
    checked: std::collections::HashMap<Uuid, Instant>,
    /// Name used in audit entries.
    actor: String,
    /// Longest a sweep's reads are waited for.
    deadline: std::time::Duration,
}

/// A tenant's monthly transfer is checked at most this often.
const TRANSFER_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// At most this many unsent samples are kept through a database outage.
const MAX_PENDING: usize = 100_000;

impl Sampler {
    pub(crate) fn new(
        pool: PgPool,
        engine: Arc<Engine>,
        node_id: Uuid,
        metrics: Arc<Metrics>,
        node_name: &str,
        deadline: std::time::Duration,
    ) -> Self {
        Self {
            pool,
            reader: Arc::new(Mutex::new(engine.usage_reader())),
            node_id,
            metrics,
            pending: Vec::new(),
            checked: std::collections::HashMap::new(),
            actor: format!("agent:{node_name}"),
            deadline,
        }
    }

    /// Checks the monthly transfer of the tenants just sampled.
    async fn check_transfer(&mut self, tenants: impl Iterator<Item = Uuid>) {
        let now = Instant::now();
        for tenant in tenants {
            if self
                .checked
                .get(&tenant)
                .is_some_and(|t| now.duration_since(*t) < TRANSFER_CHECK_EVERY)
            {
                continue;
            }
            self.checked.insert(tenant, now);
            match stockade_store::transfer::check(&self.pool, tenant, &self.actor).await {
                Ok(stockade_store::transfer::Outcome::Nothing) => {}
                Ok(outcome) => tracing::info!(%tenant, ?outcome, "monthly transfer quota acted on"),
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "checking the monthly transfer failed")
                }
            }
        }
    }

    /// Reads every jail in `jails` and records the batch.
    pub(crate) async fn sweep(&mut self, jails: Vec<(Uuid, Uuid, JailName)>) {
        if jails.is_empty() && self.pending.is_empty() {
            return;
        }
        let reader = self.reader.clone();
        let read = tokio::task::spawn_blocking(move || {
            let now = chrono::Utc::now();
            // A sweep abandoned past its deadline may still hold the reader:
            // this one is skipped rather than queued behind it.
            let mut reader = match reader.try_lock() {
                Ok(r) => r,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return None,
            };
            let sweep = reader.sweep(jails.iter().map(|(_, _, name)| name));
            let samples: Vec<Sample> = jails
                .iter()
                .zip(sweep.usage)
                .filter_map(|((jail_id, tenant_id, _), u)| {
                    let u = u.ok()?;
                    Some(Sample {
                        jail_id: *jail_id,
                        tenant_id: *tenant_id,
                        sampled_at: now,
                        cpu_usec: u.cpu_usec,
                        memory_bytes: u.memory_bytes,
                        memory_peak_bytes: u.memory_peak_bytes,
                        pids: u.pids,
                        io_read_bytes: u.io_read_bytes,
                        io_write_bytes: u.io_write_bytes,
                        disk_used_bytes: u.disk_used_bytes,
                        oom_kills: u.oom_kills,
                        memory_limit_hits: u.memory_limit_hits,
                        pids_limit_hits: u.pids_limit_hits,
                        cpu_throttled_periods: u.cpu_throttled_periods,
                        net_rx_bytes: u.net_rx_bytes,
                        net_tx_bytes: u.net_tx_bytes,
                        net_rx_packets: u.net_rx_packets,
                        net_tx_packets: u.net_tx_packets,
                    })
                })
                .collect();
            Some((samples, sweep.wall, sweep.cpu))
        });
        let (samples, wall, cpu) = match tokio::time::timeout(self.deadline, read).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => {
                tracing::warn!("an earlier usage sweep is still reading; this one is skipped");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "a usage sweep panicked");
                return;
            }
            Err(_) => {
                tracing::error!(deadline = ?self.deadline, "a usage sweep did not finish in time; abandoned");
                return;
            }
        };
        self.metrics.observe_sweep(wall, cpu, samples.len());
        let tenants: std::collections::HashSet<Uuid> =
            samples.iter().map(|s| s.tenant_id).collect();
        self.pending.extend(samples);
        match usage::record(&self.pool, self.node_id, &self.pending).await {
            Ok(_) => {
                self.pending.clear();
                self.check_transfer(tenants.into_iter()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, kept = self.pending.len(), "storing usage samples failed; keeping them for the next sweep");
                if self.pending.len() > MAX_PENDING {
                    let drop = self.pending.len() - MAX_PENDING;
                    self.pending.drain(..drop);
                }
            }
        }
    }
}
