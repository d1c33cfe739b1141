//! The agent's own health in Prometheus text format, served on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stockade_domain::ObservedState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Counters and gauges of the agent.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reconcile passes run.
    pub passes: AtomicU64,
    /// Total time of all passes, microseconds.
    pub pass_usec_total: AtomicU64,
    /// Duration of the last pass, microseconds.
    pub last_pass_usec: AtomicU64,
    /// Failed reconcile steps and reads.
    pub errors: AtomicU64,
    /// Jails by observed state, in `ObservedState::ALL` order.
    pub jails: [AtomicU64; 5],
    /// Wall-clock duration of the last sampling sweep's reads, microseconds.
    pub last_sweep_usec: AtomicU64,
    /// CPU time of the last sampling sweep's reads, microseconds.
    pub last_sweep_cpu_usec: AtomicU64,
    /// Jails read in the last sweep.
    pub last_sweep_jails: AtomicU64,
    /// Parts of the node's network found changed by hand and put back.
    pub network_repairs: AtomicU64,
    /// Parts of running jails (cgroup limits, links, addresses, routes,
    /// rates) found changed on the host and put back.
    pub jail_repairs: AtomicU64,
    /// Usage samples kept in memory, waiting for the database.
    pub samples_pending: AtomicU64,
    /// Usage samples dropped because too many were waiting.
    pub samples_dropped: AtomicU64,
}

fn usec(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Metrics {
    pub(crate) fn observe_pass(&self, d: Duration) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.pass_usec_total.fetch_add(usec(d), Ordering::Relaxed);
        self.last_pass_usec.store(usec(d), Ordering::Relaxed);
    }

    pub(crate) fn observe_sweep(&self, wall: Duration, cpu: Duration, jails: usize) {
        self.last_sweep_usec.store(usec(wall), Ordering::Relaxed);
        self.last_sweep_cpu_usec.store(usec(cpu), Ordering::Relaxed);
        self.last_sweep_jails
            .store(u64::try_from(jails).unwrap_or(0), Ordering::Relaxed);
    }

    pub(crate) fn set_samples_pending(&self, n: usize) {
        self.samples_pending
            .store(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn samples_dropped(&self, n: usize) {
        self.samples_dropped
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn set_jails_by_state(&self, counts: [u64; 5]) {
        for (slot, v) in self.jails.iter().zip(counts) {
            slot.store(v, Ordering::Relaxed);
        }
    }

    /// The metrics in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let secs = |us: u64| format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
        out.push_str("# HELP stockade_agent_reconcile_passes_total Reconcile passes run.\n# TYPE stockade_agent_reconcile_passes_total counter\n");
        out.push_str(&format!(
            "stockade_agent_reconcile_passes_total {}\n",
            g(&self.passes)
        ));
        out.push_str("# HELP stockade_agent_reconcile_seconds_total Time spent in reconcile passes.\n# TYPE stockade_agent_reconcile_seconds_total counter\n");
        out.push_str(&format!(
            "stockade_agent_reconcile_seconds_total {}\n",
            secs(g(&self.pass_usec_total))
        ));
        out.push_str("# HELP stockade_agent_reconcile_last_seconds Duration of the last reconcile pass.\n# TYPE stockade_agent_reconcile_last_seconds gauge\n");
        out.push_str(&format!(
            "stockade_agent_reconcile_last_seconds {}\n",
            secs(g(&self.last_pass_usec))
        ));
        out.push_str("# HELP stockade_agent_errors_total Failed reconcile steps and reads.\n# TYPE stockade_agent_errors_total counter\n");
        out.push_str(&format!(
            "stockade_agent_errors_total {}\n",
            g(&self.errors)
        ));
        out.push_str("# HELP stockade_agent_jails Jails of this node by observed state.\n# TYPE stockade_agent_jails gauge\n");
        for (state, v) in ObservedState::ALL.iter().zip(&self.jails) {
            out.push_str(&format!(
                "stockade_agent_jails{{state=\"{state}\"}} {}\n",
                g(v)
            ));
        }
        out.push_str("# HELP stockade_agent_sample_sweep_seconds Wall-clock time of the last sampling sweep's reads.\n# TYPE stockade_agent_sample_sweep_seconds gauge\n");
        out.push_str(&format!(
            "stockade_agent_sample_sweep_seconds {}\n",
            secs(g(&self.last_sweep_usec))
        ));
        out.push_str("# HELP stockade_agent_sample_sweep_cpu_seconds CPU time (user and system) of the last sampling sweep's reads.\n# TYPE stockade_agent_sample_sweep_cpu_seconds gauge\n");
        out.push_str(&format!(
            "stockade_agent_sample_sweep_cpu_seconds {}\n",
            secs(g(&self.last_sweep_cpu_usec))
        ));
        out.push_str("# HELP stockade_agent_sample_sweep_jails Jails read in the last sampling sweep.\n# TYPE stockade_agent_sample_sweep_jails gauge\n");
        out.push_str(&format!(
            "stockade_agent_sample_sweep_jails {}\n",
            g(&self.last_sweep_jails)
        ));
        out.push_str("# HELP stockade_agent_network_repairs_total Parts of the node's network (bridge, firewall table) found changed and put back.\n# TYPE stockade_agent_network_repairs_total counter\n");
        out.push_str(&format!(
            "stockade_agent_network_repairs_total {}\n",
            g(&self.network_repairs)
        ));
        out.push_str("# HELP stockade_agent_jail_repairs_total Parts of running jails (cgroup limits, links, addresses, routes, rates) found changed on the host and put back.\n# TYPE stockade_agent_jail_repairs_total counter\n");
        out.push_str(&format!(
            "stockade_agent_jail_repairs_total {}\n",
            g(&self.jail_repairs)
        ));
        out.push_str("# HELP stockade_agent_samples_pending Usage samples kept in memory until the database takes them.\n# TYPE stockade_agent_samples_pending gauge\n");
        out.push_str(&format!(
            "stockade_agent_samples_pending {}\n",
            g(&self.samples_pending)
        ));
        out.push_str("# HELP stockade_agent_samples_dropped_total Usage samples dropped because too many waited for the database.\n# TYPE stockade_agent_samples_dropped_total counter\n");
        out.push_str(&format!(
            "stockade_agent_samples_dropped_total {}\n",
            g(&self.samples_dropped)
        ));
        out
    }
}

/// Serves `GET /metrics` on `addr` until shutdown; refuses non-loopback addresses.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        anyhow::bail!("agent metrics must listen on a loopback address, not {addr}");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for agent metrics on {addr}: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "agent metrics listening");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.changed() => if *shutdown.borrow() { return },
                conn = listener.accept() => {
                    let Ok((mut sock, _)) = conn else { continue };
                    let metrics = metrics.clone();
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        let n = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf)).await.ok().and_then(Result::ok).unwrap_or(0);
                        let req = String::from_utf8_lossy(&buf[..n]);
                        let (status, body) = if req.starts_with("GET /metrics ") {
                            ("200 OK", metrics.render())
                        } else {
                            ("404 Not Found", "not found\n".to_owned())
                        };
                        let head = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(body.as_bytes()).await;
                    });
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_is_exported_with_its_wall_and_cpu_time() {
        let m = Metrics::default();
        m.observe_sweep(
            Duration::from_micros(31_250),
            Duration::from_micros(29_500),
            1000,
        );
        let text = m.render();
        for line in [
            "stockade_agent_sample_sweep_seconds 0.031250\n",
            "stockade_agent_sample_sweep_cpu_seconds 0.029500\n",
            "stockade_agent_sample_sweep_jails 1000\n",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
