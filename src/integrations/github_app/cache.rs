//! Installation tokens cached until five minutes before they expire, minted once per key.

use super::*;

/// One cached token.
pub(super) struct Cached {
    pub(super) token: SecretString,
    pub(super) expires_at: Timestamp,
}

impl Cached {
    /// Good until [`REFRESH_MARGIN`] before it expires.
    pub(super) fn fresh_at(&self, now: Timestamp) -> bool {
        let margin = i64::try_from(REFRESH_MARGIN.as_millis()).unwrap_or(i64::MAX);
        now.as_millis() < self.expires_at.as_millis().saturating_sub(margin)
    }
}

pub(super) struct Entry {
    installation_id: u64,
    slot: Arc<tokio::sync::Mutex<Option<Cached>>>,
}

/// Installation tokens cached per (base URL, App, installation, narrowing), each until five
/// minutes before its `expires_at` ([`REFRESH_MARGIN`]).
///
/// Minting is single-flight per key: callers that find the same stale entry wait for one
/// request instead of each sending their own. The map's lock is never held across an
/// await. `Debug` shows the number of entries only.
#[derive(Default)]
pub struct InstallationTokenCache {
    entries: std::sync::Mutex<HashMap<String, Entry>>,
}

impl InstallationTokenCache {
    /// An empty cache.
    pub fn new() -> InstallationTokenCache {
        InstallationTokenCache::default()
    }

    /// The token for this installation and narrowing: the cached one while `now` is more
    /// than five minutes before its expiry, else a new one from [`installation_token`]
    /// (minted with a JWT for `now`). A failed mint caches nothing.
    pub async fn get_or_mint(
        &self,
        http: &dyn HttpTransport,
        base_url: &str,
        app: &GithubApp,
        narrow: &TokenNarrowing,
        now: Timestamp,
    ) -> Result<SecretString> {
        let slot = self.slot(base_url, app, narrow);
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.fresh_at(now)) {
            return Ok(c.token.clone());
        }
        let minted = installation_token_at(http, base_url, app, narrow, now).await?;
        let token = minted.token.clone();
        *cached = Some(Cached {
            token: minted.token,
            expires_at: minted.expires_at,
        });
        Ok(token)
    }

    /// Forgets every token of this installation (for unlinking, or after GitHub refused
    /// one); the next [`get_or_mint`](Self::get_or_mint) mints afresh.
    pub fn invalidate(&self, installation_id: u64) {
        self.map()
            .retain(|_, e| e.installation_id != installation_id);
    }

    /// Forgets every token.
    pub fn clear(&self) {
        self.map().clear();
    }

    /// How many (installation, narrowing) entries the cache holds.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The map is consistent after any panic (every update is one call), so a poisoned
        // lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slot(
        &self,
        base_url: &str,
        app: &GithubApp,
        narrow: &TokenNarrowing,
    ) -> Arc<tokio::sync::Mutex<Option<Cached>>> {
        let base = base_url.trim().trim_end_matches('/');
        let mut key = String::with_capacity(base.len() + 64);
        key.push_str(base);
        key.push('\u{0}');
        key.push_str(&app.app_id);
        key.push('\u{0}');
        key.push_str(&app.installation_id.to_string());
        key.push('\u{0}');
        narrow.canonical(&mut key);
        let mut map = self.map();
        if let Some(e) = map.get(&key) {
            return Arc::clone(&e.slot);
        }
        let slot = Arc::new(tokio::sync::Mutex::new(None));
        map.insert(
            key,
            Entry {
                installation_id: app.installation_id,
                slot: Arc::clone(&slot),
            },
        );
        slot
    }
}

impl fmt::Debug for InstallationTokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallationTokenCache")
            .field("entries", &self.len())
            .finish()
    }
}
