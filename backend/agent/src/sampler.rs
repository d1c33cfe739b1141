//! Usage sampling: one sweep reads every running jail's counters on a fixed
//! clock; a sender stores each batch. The two are apart so that a database
//! that is away, or hangs, never delays a sample: what cannot be sent is
//! kept in memory (bounded, and counted) and sent when the database is back.

use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use stockade_domain::JailName;
use stockade_jail::{Engine, UsageReader};
use stockade_store::PgPool;
use stockade_store::usage::{self, Sample};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::metrics::Metrics;

/// Reads the jails' counters.
pub(crate) struct Sampler {
    /// Keeps the jails' counter files open from one sweep to the next.
    reader: Arc<Mutex<UsageReader>>,
    metrics: Arc<Metrics>,
    /// Longest a sweep's reads are waited for.
    deadline: Duration,
    /// Where batches go to be stored.
    outbox: mpsc::UnboundedSender<Vec<Sample>>,
}

/// Stores batches, keeping what the database did not take.
pub(crate) struct Sender {
    pool: PgPool,
    node_id: Uuid,
    metrics: Arc<Metrics>,
    inbox: mpsc::UnboundedReceiver<Vec<Sample>>,
    /// Samples not stored yet, oldest first.
    pending: Vec<Sample>,
    /// When each tenant's monthly transfer was last checked.
    checked: std::collections::HashMap<Uuid, Instant>,
    /// Name used in audit entries.
    actor: String,
}

/// A tenant's monthly transfer is checked at most this often.
const TRANSFER_CHECK_EVERY: Duration = Duration::from_secs(60);

/// At most this many unsent samples are kept through a database outage
/// (some 20 MB: over an hour of a hundred jails sampled every five seconds).
const MAX_PENDING: usize = 100_000;

/// The sampler and the sender of one node.
pub(crate) fn new(
    pool: PgPool,
    engine: &Engine,
    node_id: Uuid,
    metrics: Arc<Metrics>,
    node_name: &str,
    deadline: Duration,
) -> (Sampler, Sender) {
    let (outbox, inbox) = mpsc::unbounded_channel();
    (
        Sampler {
            reader: Arc::new(Mutex::new(engine.usage_reader())),
            metrics: metrics.clone(),
            deadline,
            outbox,
        },
        Sender {
            pool,
            node_id,
            metrics,
            inbox,
            pending: Vec::new(),
            checked: std::collections::HashMap::new(),
            actor: format!("agent:{node_name}"),
        },
    )
}

impl Sampler {
    /// Reads every jail in `jails` and hands the batch to the sender.
    pub(crate) async fn sweep(&mut self, jails: Vec<(Uuid, Uuid, JailName)>) {
        if jails.is_empty() {
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
        if !samples.is_empty() {
            let _ = self.outbox.send(samples);
        }
    }
}

impl Sender {
    /// Stores batches as they come until the sampler is gone. A batch that
    /// fails is kept and sent with the next; while the database is away the
    /// next attempt waits for the next batch.
    pub(crate) async fn run(mut self) {
        while let Some(batch) = self.inbox.recv().await {
            self.pending.extend(batch);
            // Batches that queued while the last attempt waited go too.
            while let Ok(more) = self.inbox.try_recv() {
                self.pending.extend(more);
            }
            self.send().await;
        }
    }

    async fn send(&mut self) {
        // Sending again what may have been stored is harmless: a sample not
        // newer than the counters already counted is skipped.
        match usage::record(&self.pool, self.node_id, &self.pending).await {
            Ok(_) => {
                let tenants: std::collections::HashSet<Uuid> =
                    self.pending.iter().map(|s| s.tenant_id).collect();
                self.pending.clear();
                self.metrics.set_samples_pending(0);
                self.check_transfer(tenants.into_iter()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, kept = self.pending.len(), "storing usage samples failed; keeping them for the next batch");
                if self.pending.len() > MAX_PENDING {
                    let drop = self.pending.len() - MAX_PENDING;
                    self.pending.drain(..drop);
                    self.metrics.samples_dropped(drop);
                }
                self.metrics.set_samples_pending(self.pending.len());
            }
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
}
