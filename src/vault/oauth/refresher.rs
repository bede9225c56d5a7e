//! The background refresher: a tokio task the host starts from the vault, which every
//! interval pages through the credentials whose `expires_at` falls inside the refresh window
//! (by the column: nothing else is opened) and refreshes them with bounded concurrency. It
//! holds the vault weakly: dropping every `Vault` ends it, and so does its handle.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, Semaphore};

use super::super::{Inner, Vault};
use super::is_oauth_type;
use super::refresh::{RefreshOutcome, Trigger};
use crate::error::Result;
use crate::model::{CredentialId, Timestamp};
use crate::store::{Batch, ListFilter, Mutation, ReadStamp, RecordFilter};
use crate::vault::trace;

/// How the refresher runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RefresherConfig {
    /// Time between passes (default 5 minutes).
    pub interval: Duration,
    /// Refreshes running at once (default 16).
    pub concurrency: usize,
    /// Credentials read per page (default 500).
    pub page_size: usize,
}

impl Default for RefresherConfig {
    fn default() -> Self {
        RefresherConfig {
            interval: Duration::from_secs(300),
            concurrency: 16,
            page_size: 500,
        }
    }
}

impl RefresherConfig {
    /// With this interval between passes.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// With this many refreshes at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefreshPass {
    /// Credentials found due.
    pub due: u64,
    /// Refreshed.
    pub refreshed: u64,
    /// Refreshed by someone else first, or being refreshed elsewhere.
    pub skipped: u64,
    /// Failed and will be retried.
    pub retrying: u64,
    /// Now `expired`.
    pub expired: u64,
    /// Errors that are not the provider's answer (no client registered, a store error).
    pub errors: u64,
    /// Lapsed pending logins deleted.
    pub swept: u64,
    /// Provisioned GitLab tokens due for rotation that the pass tried (see
    /// `Vault::rotate_provisioned_tokens`).
    pub rotated: u64,
}

/// Stops the refresher: [`RefresherHandle::stop`] ends it and waits for it; dropping the
/// handle ends it too. Refreshes already sent to a provider finish in the background (their
/// answer may carry the only valid refresh token), whatever stops the refresher.
#[derive(Debug)]
pub struct RefresherHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RefresherHandle {
    /// Stops the refresher and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RefresherHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Vault {
    /// Starts the background refresher (on the current tokio runtime). It acts as the
    /// vault's OAuth service principal and does not keep the vault alive.
    pub fn start_refresher(&self, config: RefresherConfig) -> RefresherHandle {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(config.interval) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let vault = Vault { inner };
                let pass = tokio::select! {
                    _ = &mut stopped => return,
                    pass = vault.refresh_due_now(&config) => pass,
                };
                match pass {
                    Ok(pass) if pass.due > 0 => tracing::info!(?pass, "OAuth refresh pass"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "OAuth refresh pass failed"),
                }
            }
        });
        RefresherHandle {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// One refresher pass, now: every OAuth credential whose token expires inside the
    /// window is refreshed (at most `config.concurrency` at once), each under its lease.
    pub async fn refresh_due_now(&self, config: &RefresherConfig) -> Result<RefreshPass> {
        trace::op("refresh_due_now")
            .actor(&Vault::oauth_service())
            .run(async move {
                let window = self.inner.oauth.window;
                let before = Timestamp::now().saturating_add(window);
                let mut pass = RefreshPass::default();
                let mut after: Option<CredentialId> = None;
                let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
                // Each refresh is a task of its own, so stopping the refresher (which drops this
                // pass) never cancels a refresh the provider may have answered already.
                let mut running = Vec::new();
                loop {
                    let page = self
                        .inner
                        .store
                        .list(&ListFilter {
                            expires_before: Some(before),
                            after_id: after.clone(),
                            limit: Some(config.page_size.max(1)),
                            ..ListFilter::default()
                        })
                        .await?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.id.clone());
                    let now = Timestamp::now();
                    for record in page {
                        if !is_oauth_type(&record.handler_type) || !self.refresh_due(&record, now) {
                            continue;
                        }
                        pass.due += 1;
                        let permit =
                            permits.clone().acquire_owned().await.map_err(|_| {
                                crate::Error::config("the refresher's limiter closed")
                            })?;
                        let vault = self.clone();
                        running.push(tokio::spawn(async move {
                            let _permit = permit;
                            vault
                                .refresh_record(
                                    &Vault::oauth_service(),
                                    &record.id,
                                    Trigger::Schedule,
                                    false,
                                )
                                .await
                        }));
                    }
                }
                for task in running {
                    tally(&mut pass, task.await);
                }
                pass.swept = self.sweep_lapsed_flows(config.page_size.max(1)).await?;
                // The vault's other tokens with a life: provisioned GitLab tokens nearing their
                // expiry are rotated in the same pass (each under its own lease).
                match self.rotate_provisioned_tokens(Timestamp::now()).await {
                    Ok(report) => pass.rotated = report.tokens.len() as u64,
                    Err(e) => {
                        tracing::warn!(error = %e, "GitLab token rotation pass failed");
                        pass.errors += 1;
                    }
                }
                Ok(pass)
            })
            .await
    }

    /// Deletes pending authorization-code flows that lapsed (nobody can complete them any
    /// more; they hold only a sealed verifier). Each delete is if-version: a flow completed
    /// or swept meanwhile by another instance is left to it.
    async fn sweep_lapsed_flows(&self, page_size: usize) -> Result<u64> {
        let mut swept = 0;
        let filter = RecordFilter::kind(super::PENDING_KIND)
            .expires_before(Timestamp::now())
            .limit(page_size);
        loop {
            let lapsed = self.inner.store.records(&filter).await?;
            if lapsed.is_empty() {
                return Ok(swept);
            }
            let n = lapsed.len();
            let batch = Batch {
                mutations: lapsed.iter().map(Mutation::delete_record).collect(),
                events: vec![],
            };
            match self.commit(batch, ReadStamp::UNCHECKED).await {
                Ok(_) => swept += n as u64,
                // Someone else swept or completed one of them: the next pass tries again.
                Err(e) if crate::store::lease::Lease::lost_race(&e) => return Ok(swept),
                Err(e) => return Err(e),
            }
            if n < page_size {
                return Ok(swept);
            }
        }
    }
}

fn tally(
    pass: &mut RefreshPass,
    done: std::result::Result<Result<RefreshOutcome>, tokio::task::JoinError>,
) {
    match done {
        Ok(Ok(RefreshOutcome::Refreshed { .. })) => pass.refreshed += 1,
        Ok(Ok(RefreshOutcome::Busy | RefreshOutcome::NotDue)) => pass.skipped += 1,
        Ok(Ok(RefreshOutcome::Retrying { .. })) => pass.retrying += 1,
        Ok(Ok(RefreshOutcome::Expired { .. })) => pass.expired += 1,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "OAuth refresh failed");
            pass.errors += 1;
        }
        Err(_) => pass.errors += 1,
    }
}
