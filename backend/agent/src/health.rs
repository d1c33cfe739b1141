//! Jails' health checks: the node probes each running jail that has one,
//! from the host, at its interval (a connection, or `GET path` answered
//! 2xx/3xx), and records a change of health (healthy after a probe that
//! passes, unhealthy after as many failures in a row as the check allows)
//! with a `jail.state_changed` event. The tasks loop for ever.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use stockade_domain::{Health, HealthCheck, ProbeKind};
use stockade_store::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use uuid::Uuid;

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

struct Tracked {
    check: HealthCheck,
    health: Health,
    failures: u32,
    next: Instant,
}

pub(crate) async fn health_task(pool: PgPool, node_id: Uuid) {
    let mut tracked: HashMap<Uuid, Tracked> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let probes = match stockade_store::jails::probes_on_node(&pool, node_id).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "reading health checks failed");
                continue;
            }
        };
        let now = Instant::now();
        tracked.retain(|id, _| probes.iter().any(|p| p.jail_id == *id));
        let mut due = tokio::task::JoinSet::new();
        for p in probes {
            let t = tracked.entry(p.jail_id).or_insert_with(|| Tracked {
                check: p.check.clone(),
                health: p.health,
                failures: 0,
                next: now,
            });
            if t.health != p.health {
                // Set anew in the database (a check saved again): start over.
                t.health = p.health;
                t.failures = 0;
            }
            if t.check != p.check {
                // A new check starts over.
                *t = Tracked {
                    check: p.check.clone(),
                    health: p.health,
                    failures: 0,
                    next: now,
                };
            }
            if t.next > now {
                continue;
            }
            t.next = now + Duration::from_secs(u64::from(t.check.interval_secs));
            let addr = SocketAddr::from((p.address, p.check.port));
            let check = p.check.clone();
            due.spawn(async move { (p.jail_id, probe(addr, &check).await) });
        }
        while let Some(Ok((jail, outcome))) = due.join_next().await {
            let Some(t) = tracked.get_mut(&jail) else {
                continue;
            };
            let (health, detail) = match outcome {
                Ok(()) => {
                    t.failures = 0;
                    (Health::Healthy, None)
                }
                Err(why) => {
                    t.failures = t.failures.saturating_add(1);
                    if t.failures < t.check.failures {
                        continue;
                    }
                    (Health::Unhealthy, Some(why))
                }
            };
            if health == t.health {
                continue;
            }
            match stockade_store::jails::record_health(&pool, jail, health, detail.as_deref()).await
            {
                Ok(()) => t.health = health,
                Err(e) => tracing::warn!(error = %e, "recording a jail's health failed"),
            }
        }
    }
}

/// Probes `addr` as `check` says; why it failed, in words.
async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("port {} took no connection ({e})", addr.port()))?;
        if check.kind == ProbeKind::Tcp {
            return Ok(());
        }
        let path = check.http_path();
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: stockade-health\r\n\r\n",
            addr.ip()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let mut head = [0u8; 64];
        let mut got = 0;
        while got < 12 {
            let n = stream
                .read(&mut head[got..])
                .await
                .map_err(|e| format!("GET {path}: {e}"))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let line = String::from_utf8_lossy(&head[..got]);
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("GET {path} got no HTTP answer"))?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("GET {path} answered {status}"))
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_pass_on_an_answer_and_say_why_they_fail() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let asked = String::from_utf8_lossy(&buf[..n]).into_owned();
                let status = if asked.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "503 Busy"
                };
                let _ = s
                    .write_all(format!("HTTP/1.0 {status}\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let http = |path: &str| HealthCheck {
            kind: ProbeKind::Http,
            port: addr.port(),
            path: Some(path.into()),
            interval_secs: 1,
            failures: 1,
        };
        assert_eq!(probe(addr, &http("/ok")).await, Ok(()));
        assert_eq!(
            probe(addr, &http("/down")).await,
            Err("GET /down answered 503".into())
        );
        let tcp = HealthCheck {
            kind: ProbeKind::Tcp,
            path: None,
            ..http("/")
        };
        assert_eq!(probe(addr, &tcp).await, Ok(()));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = probe(closed, &tcp).await.unwrap_err();
        assert!(
            err.starts_with(&format!("port {} took no connection", closed.port())),
            "{err}"
        );
    }
}
