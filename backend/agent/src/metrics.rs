//! The agent's own health in Prometheus text format, served on loopback by
//! hyper.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Counter, Gauge, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use stockade_domain::ObservedState;
use tokio::sync::watch;

/// How many observed states a jail can be in.
pub(crate) const STATES: usize = ObservedState::ALL.len();

/// Counters and gauges of the agent.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconcile passes run.
    passes: IntCounter,
    /// Time spent in reconcile passes.
    pass_seconds: Counter,
    /// Duration of the last pass.
    last_pass: Gauge,
    /// Failed reconcile steps and reads.
    pub(crate) errors: IntCounter,
    /// Jails by observed state.
    jails: IntGaugeVec,
    /// Wall-clock time of the last sampling sweep's reads.
    last_sweep: Gauge,
    /// CPU time of the last sampling sweep's reads.
    last_sweep_cpu: Gauge,
    /// Jails read in the last sweep.
    last_sweep_jails: IntGauge,
    /// Parts of the node's network found changed by hand and put back.
    pub(crate) network_repairs: IntCounter,
    /// Parts of running jails (cgroup limits, links, addresses, routes,
    /// rates) found changed on the host and put back.
    pub(crate) jail_repairs: IntCounter,
    /// Usage samples kept in memory, waiting for the database.
    samples_pending: IntGauge,
    /// Usage samples dropped because too many were waiting.
    samples_dropped: IntCounter,
}

fn count(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// The agent's metrics, registered and at zero.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        fn register<C: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            c: C,
        ) -> prometheus::Result<C> {
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let r = &registry;
        Ok(Self {
            passes: register(
                r,
                IntCounter::new(
                    "stockade_agent_reconcile_passes_total",
                    "Reconcile passes run.",
                )?,
            )?,
            pass_seconds: register(
                r,
                Counter::new(
                    "stockade_agent_reconcile_seconds_total",
                    "Time spent in reconcile passes.",
                )?,
            )?,
            last_pass: register(
                r,
                Gauge::new(
                    "stockade_agent_reconcile_last_seconds",
                    "Duration of the last reconcile pass.",
                )?,
            )?,
            errors: register(
                r,
                IntCounter::new(
                    "stockade_agent_errors_total",
                    "Failed reconcile steps and reads.",
                )?,
            )?,
            jails: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "stockade_agent_jails",
                        "Jails of this node by observed state.",
                    ),
                    &["state"],
                )?,
            )?,
            last_sweep: register(
                r,
                Gauge::new(
                    "stockade_agent_sample_sweep_seconds",
                    "Wall-clock time of the last sampling sweep's reads.",
                )?,
            )?,
            last_sweep_cpu: register(
                r,
                Gauge::new(
                    "stockade_agent_sample_sweep_cpu_seconds",
                    "CPU time (user and system) of the last sampling sweep's reads.",
                )?,
            )?,
            last_sweep_jails: register(
                r,
                IntGauge::new(
                    "stockade_agent_sample_sweep_jails",
                    "Jails read in the last sampling sweep.",
                )?,
            )?,
            network_repairs: register(
                r,
                IntCounter::new(
                    "stockade_agent_network_repairs_total",
                    "Parts of the node's network (bridge, firewall table) found changed and put back.",
                )?,
            )?,
            jail_repairs: register(
                r,
                IntCounter::new(
                    "stockade_agent_jail_repairs_total",
                    "Parts of running jails (cgroup limits, links, addresses, routes, rates) found changed on the host and put back.",
                )?,
            )?,
            samples_pending: register(
                r,
                IntGauge::new(
                    "stockade_agent_samples_pending",
                    "Usage samples kept in memory until the database takes them.",
                )?,
            )?,
            samples_dropped: register(
                r,
                IntCounter::new(
                    "stockade_agent_samples_dropped_total",
                    "Usage samples dropped because too many waited for the database.",
                )?,
            )?,
            registry,
        })
    }

    pub(crate) fn observe_pass(&self, d: Duration) {
        self.passes.inc();
        self.pass_seconds.inc_by(d.as_secs_f64());
        self.last_pass.set(d.as_secs_f64());
    }

    pub(crate) fn observe_sweep(&self, wall: Duration, cpu: Duration, jails: usize) {
        self.last_sweep.set(wall.as_secs_f64());
        self.last_sweep_cpu.set(cpu.as_secs_f64());
        self.last_sweep_jails.set(count(jails));
    }

    /// Jails by observed state, in `ObservedState::ALL` order.
    pub(crate) fn set_jails_by_state(&self, counts: [u64; STATES]) {
        for (state, n) in ObservedState::ALL.iter().zip(counts) {
            self.jails
                .with_label_values(&[state.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub(crate) fn set_samples_pending(&self, n: usize) {
        self.samples_pending.set(count(n));
    }

    pub(crate) fn samples_dropped(&self, n: usize) {
        self.samples_dropped
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// The metrics in Prometheus text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# the metrics could not be written: {e}\n"))
    }
}

/// The answer to one request: the metrics for `GET /metrics`, else 404.
fn answer(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = if req.method() == Method::GET && req.uri().path() == "/metrics" {
        (StatusCode::OK, metrics.render())
    } else {
        (StatusCode::NOT_FOUND, "not found\n".to_owned())
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

/// Serves `GET /metrics` on `addr` until shutdown; refuses non-loopback
/// addresses. Returns the address it listens on.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    if !addr.ip().is_loopback() {
        anyhow::bail!("agent metrics must listen on a loopback address, not {addr}");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for agent metrics on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "agent metrics listening");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.changed() => if *shutdown.borrow() { return },
                conn = listener.accept() => {
                    let Ok((stream, _)) = conn else { continue };
                    let metrics = metrics.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let res = answer(&metrics, &req);
                            async move { Ok::<_, Infallible>(res) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service);
                        // A scraper that keeps its connection is cut after a
                        // while; it opens another.
                        let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
                    });
                }
            }
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        sock.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_metrics_are_served_on_loopback_only() {
        let metrics = Arc::new(Metrics::new().unwrap());
        metrics.observe_pass(Duration::from_millis(3));
        metrics.errors.inc();
        metrics.set_jails_by_state([1, 2, 0, 0, 0, 0, 0]);
        metrics.set_samples_pending(7);
        let (stop, stopped) = watch::channel(false);
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            stopped.clone(),
        )
        .await
        .unwrap();
        let page = get(addr, "/metrics").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        for line in [
            "stockade_agent_reconcile_passes_total 1",
            "stockade_agent_errors_total 1",
            "stockade_agent_samples_pending 7",
            "# TYPE stockade_agent_jail_repairs_total counter",
        ] {
            assert!(page.contains(line), "{line} in {page}");
        }
        let state = ObservedState::ALL[1].as_str();
        assert!(
            page.contains(&format!("stockade_agent_jails{{state=\"{state}\"}} 2")),
            "{page}"
        );
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
        let err = serve("0.0.0.0:0".parse().unwrap(), metrics, stopped)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        stop.send(true).unwrap();
    }
}
