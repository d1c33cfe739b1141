//! The node's copy of the image catalogue: every registry image staff
//! added is pulled (into a staging layout, unpacked safely, renamed into
//! place whole), each pull's outcome recorded for the staff; a pulled
//! image taken out of the catalogue is removed once no jail of the node
//! uses it. Level-triggered like the jails: woken by catalogue changes,
//! and looked at again every resync period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crypto_box::SecretKey;
use sqlx::PgPool;
use stockade_image::registry::Credentials;
use stockade_jail::Engine;
use stockade_store::images::{self, Wanted};
use uuid::Uuid;

/// A failed pull is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);

pub(crate) struct Images {
    pool: PgPool,
    engine: Arc<Engine>,
    node_id: Uuid,
    secret: Arc<SecretKey>,
    /// Image name → (reference, when its last pull failed).
    failed: Mutex<HashMap<String, (String, Instant)>>,
    /// The catalogue's names at the last sweep that forgot old pulls: they
    /// are looked at again only when it changed, not on every wake.
    forgotten_for: Mutex<Option<Vec<String>>>,
}

impl Images {
    pub(crate) fn new(
        pool: PgPool,
        engine: Arc<Engine>,
        node_id: Uuid,
        secret: Arc<SecretKey>,
    ) -> Self {
        Images {
            pool,
            engine,
            node_id,
            secret,
            failed: Mutex::new(HashMap::new()),
            forgotten_for: Mutex::new(None),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> Result<T, stockade_jail::JailError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let engine = self.engine.clone();
        Ok(tokio::task::spawn_blocking(move || f(&engine)).await??)
    }

    /// Pulls what is missing, removes what is no longer wanted, and
    /// reports the node's images when they changed.
    pub(crate) async fn sweep(&self) {
        let wanted = match images::wanted(&self.pool).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "reading the image catalogue failed");
                return;
            }
        };
        let present = match self.blocking(|e| e.images()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "listing the node's images failed");
                return;
            }
        };
        let mut changed = false;
        for w in &wanted {
            if present.contains(&w.name) {
                if !self.pulled_as(&w.name, &w.reference).await {
                    // Another image holds the name here: never shown as this one.
                    let why = format!(
                        "an image named {} is already on this node (put there by hand, or kept \
                         for its jails from another reference): remove it there, or add this \
                         one under another name",
                        w.name
                    );
                    self.record(&w.name, Err(&why)).await;
                }
                continue;
            }
            if self.recently_failed(w) {
                continue;
            }
            match self.pull(w).await {
                Ok(digest) => {
                    tracing::info!(image = %w.name, reference = %w.reference, %digest, "image pulled");
                    self.failed.lock().expect("not poisoned").remove(&w.name);
                    self.record(&w.name, Ok(&digest)).await;
                    changed = true;
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    tracing::warn!(image = %w.name, error = %why, "pulling an image failed");
                    self.failed
                        .lock()
                        .expect("not poisoned")
                        .insert(w.name.clone(), (w.reference.clone(), Instant::now()));
                    self.record(&w.name, Err(&why)).await;
                }
            }
        }
        for name in &present {
            if self.unwanted(name, &wanted).await {
                let n = name.clone();
                match self.blocking(move |e| e.remove_image(&n)).await {
                    Ok(()) => {
                        tracing::info!(image = %name, "image no longer in the catalogue removed");
                        if let Err(e) = images::forget_pull(&self.pool, self.node_id, name).await {
                            tracing::warn!(error = %e, "forgetting an image's pull failed");
                        }
                        changed = true;
                    }
                    // Still used by a jail here: kept until it is not.
                    Err(e) => tracing::debug!(image = %name, error = %e, "image kept"),
                }
            }
        }
        let names: Vec<String> = wanted.iter().map(|w| w.name.clone()).collect();
        let catalogue_changed =
            self.forgotten_for.lock().expect("not poisoned").as_ref() != Some(&names);
        if catalogue_changed {
            let keep: Vec<String> = names.iter().chain(&present).cloned().collect();
            match images::forget_pulls_except(&self.pool, self.node_id, &keep).await {
                Ok(()) => *self.forgotten_for.lock().expect("not poisoned") = Some(names),
                Err(e) => tracing::warn!(error = %e, "forgetting old image pulls failed"),
            }
        }
        if changed {
            match self.blocking(|e| e.images()).await {
                Ok(now) => {
                    if let Err(e) =
                        stockade_store::nodes::heartbeat(&self.pool, self.node_id, Some(&now)).await
                    {
                        tracing::warn!(error = %e, "reporting the node's images failed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing the node's images failed"),
            }
        }
    }

    fn recently_failed(&self, w: &Wanted) -> bool {
        self.failed
            .lock()
            .expect("not poisoned")
            .get(&w.name)
            .is_some_and(|(r, at)| *r == w.reference && at.elapsed() < RETRY_AFTER)
    }

    /// Whether the image `name` here was pulled from `reference`.
    async fn pulled_as(&self, name: &str, reference: &str) -> bool {
        let n = name.to_owned();
        matches!(
            self.blocking(move |e| e.image_config(&n)).await,
            Ok(Some(config)) if config.source == reference
        )
    }

    /// Whether `name` is an image this node pulled that the catalogue no
    /// longer wants as it is (removed, or now another reference).
    async fn unwanted(&self, name: &str, wanted: &[Wanted]) -> bool {
        let n = name.to_owned();
        let Ok(Some(config)) = self.blocking(move |e| e.image_config(&n)).await else {
            return false;
        };
        !config.source.is_empty()
            && !wanted
                .iter()
                .any(|w| w.name == name && w.reference == config.source)
    }

    async fn record(&self, name: &str, outcome: Result<&str, &str>) {
        if let Err(e) = images::record_pull(&self.pool, self.node_id, name, outcome).await {
            tracing::warn!(error = %e, "recording an image pull failed");
        }
    }

    /// Pulls one image into a staging layout and unpacks it into place.
    async fn pull(&self, w: &Wanted) -> anyhow::Result<String> {
        let credentials = match (&w.registry_username, &w.registry_password_sealed) {
            (Some(username), Some(sealed)) => Some(Credentials {
                username: username.clone(),
                password: stockade_store::certificates::open(&self.secret, sealed)?,
            }),
            _ => None,
        };
        let name = w.name.clone();
        let staging = self.blocking(move |e| e.image_staging(&name)).await?;
        let bounds = stockade_image::Bounds::default();
        let pulled =
            stockade_image::registry::pull(&w.reference, credentials.as_ref(), &staging, &bounds)
                .await;
        let result = match pulled {
            Ok(digest) => {
                let (name, reference, dir) = (w.name.clone(), w.reference.clone(), staging.clone());
                let d = digest.clone();
                self.blocking(move |e| {
                    e.import_oci_image(&name, &dir, &bounds, Some((&reference, &d)))
                })
                .await
                .map(|_| digest)
            }
            Err(e) => Err(e.into()),
        };
        let _ = tokio::fs::remove_dir_all(&staging).await;
        result
    }
}
