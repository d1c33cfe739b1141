//! Certificates through ACME (HTTP-01), issued and renewed by the node that
//! runs a domain's jail: the challenge answers are served by the node's own
//! proxy, the key is made here, sealed to the provider's certificate key and
//! stored with the chain in PostgreSQL, from where the proxy serves them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crypto_box::SecretKey;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use stockade_store::PgPool;
use stockade_store::certificates::{self, Due};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

/// Where the node orders certificates.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The ACME directory URL.
    pub directory: String,
    /// A PEM root the directory's TLS certificate is checked against
    /// instead of the host's (a test CA).
    pub root: Option<PathBuf>,
    /// A contact address for the account (`mailto:` added), if any.
    pub email: Option<String>,
}

/// Challenge answers the proxy serves, shared between the ACME task and
/// the proxy task.
pub(crate) struct Challenges {
    /// Token → key authorization.
    answers: Mutex<BTreeMap<String, String>>,
    /// Bumped at each change of `answers`.
    generation: AtomicU64,
    /// Wakes the proxy task.
    pub(crate) changed: Notify,
    /// The generation the proxy last serves.
    applied: watch::Sender<u64>,
}

impl Challenges {
    pub(crate) fn new() -> (Arc<Self>, watch::Receiver<u64>) {
        let (applied, rx) = watch::channel(0);
        let c = Challenges {
            answers: Mutex::default(),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
            applied,
        };
        (Arc::new(c), rx)
    }

    /// The answers and their generation.
    pub(crate) fn snapshot(&self) -> (u64, BTreeMap<String, String>) {
        let answers = self
            .answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (self.generation.load(Ordering::Acquire), answers.clone())
    }

    /// The proxy serves generation `generation`.
    pub(crate) fn served(&self, generation: u64) {
        self.applied.send_replace(generation);
    }

    fn change(&self, f: impl FnOnce(&mut BTreeMap<String, String>)) -> u64 {
        let mut answers = self
            .answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut answers);
        let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        drop(answers);
        self.changed.notify_one();
        g
    }
}

/// Reads the node's certificate key from `path`, making one if missing.
pub fn certificate_key(path: &Path) -> anyhow::Result<SecretKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim())
                .map_err(|_| anyhow::anyhow!("{}: not a hex key", path.display()))?;
            SecretKey::from_slice(&bytes).map_err(|_| {
                anyhow::anyhow!("{}: a key is 32 bytes (64 hex digits)", path.display())
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let key = SecretKey::generate(&mut crypto_box::aead::OsRng);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            writeln!(f, "{}", hex::encode(key.to_bytes()))?;
            Ok(key)
        }
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// The node's ACME account: restored from `state`, or made and saved there.
async fn account(cfg: &AcmeConfig, state: &Path) -> anyhow::Result<Account> {
    let builder = || match &cfg.root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
    let file = state.join(format!(
        "account-{}.json",
        hex::encode(&sha_of(&cfg.directory)[..8])
    ));
    if let Ok(text) = std::fs::read_to_string(&file) {
        let creds: AccountCredentials = serde_json::from_str(&text)?;
        return Ok(builder()?.from_credentials(creds).await?);
    }
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await?;
    std::fs::create_dir_all(state)?;
    std::fs::write(&file, serde_json::to_string(&creds)?)?;
    Ok(account)
}

fn sha_of(s: &str) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes()).to_vec()
}

/// Orders a certificate for `names`, the proxy answering the challenges:
/// the chain and the key, in PEM.
async fn issue(
    account: &Account,
    names: &[String],
    challenges: &Challenges,
    served: &mut watch::Receiver<u64>,
) -> anyhow::Result<(String, String)> {
    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut tokens = Vec::new();
    let result = async {
        let mut ready = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| anyhow::anyhow!("the CA offers no HTTP-01 challenge"))?;
            let token = challenge.token.clone();
            let answer = challenge.key_authorization().as_str().to_owned();
            let g = challenges.change(|m| {
                m.insert(token.clone(), answer);
            });
            tokens.push(token);
            ready.push(g);
        }
        // The proxy serves the answers before the CA is told to look.
        let wanted = ready.iter().copied().max().unwrap_or(0);
        tokio::time::timeout(Duration::from_secs(30), served.wait_for(|g| *g >= wanted))
            .await
            .map_err(|_| anyhow::anyhow!("the proxy did not take the challenge answers"))??;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            if let Some(mut c) = authz.challenge(ChallengeType::Http01) {
                c.set_ready().await?;
            }
        }
        let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
        let status = order.poll_ready(&retry).await?;
        if status != OrderStatus::Ready {
            let why = order
                .state()
                .error
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| format!("{status:?}"));
            anyhow::bail!("the CA did not validate the names: {why}");
        }
        let key = order.finalize().await?;
        let chain = order.poll_certificate(&retry).await?;
        Ok((chain, key))
    }
    .await;
    challenges.change(|m| {
        for t in &tokens {
            m.remove(t);
        }
    });
    result
}

/// Issues and renews the certificates of this node's domains.
pub(crate) async fn acme_task(
    pool: PgPool,
    node_id: Uuid,
    cfg: AcmeConfig,
    state: PathBuf,
    secret: Arc<SecretKey>,
    (challenges, mut served): (Arc<Challenges>, watch::Receiver<u64>),
    retry_after: Duration,
) {
    let public = secret.public_key();
    let mut account_cache: Option<Account> = None;
    loop {
        match certificates::due_for_acme(&pool, node_id, retry_after).await {
            Ok(due) => {
                for d in due {
                    let r = async {
                        if account_cache.is_none() {
                            account_cache = Some(account(&cfg, &state).await?);
                        }
                        let account = account_cache.as_ref().expect("set above");
                        let (chain, key) =
                            issue(account, &d.names, &challenges, &mut served).await?;
                        store(&pool, &d, &chain, &key, &public).await
                    }
                    .await;
                    let error = r.as_ref().err().map(|e| format!("{e:#}"));
                    match &error {
                        None => tracing::info!(names = ?d.names, "certificate issued"),
                        Some(e) => {
                            tracing::warn!(names = ?d.names, error = %e, "certificate not issued")
                        }
                    }
                    if let Err(e) =
                        certificates::record_attempt(&pool, d.domain_id, error.as_deref()).await
                    {
                        tracing::warn!(error = %e, "recording a certificate attempt failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the domains due a certificate failed"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn store(
    pool: &PgPool,
    d: &Due,
    chain: &str,
    key: &str,
    public: &crypto_box::PublicKey,
) -> anyhow::Result<()> {
    let info = certificates::inspect(chain)?;
    let sealed = certificates::seal(public, key)?;
    certificates::store(
        pool,
        d.tenant_id,
        d.domain_id,
        "acme",
        chain,
        &sealed,
        &info,
    )
    .await?;
    Ok(())
}
