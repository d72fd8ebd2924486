//! `monitor spool replay`: sends the dead letters (alerts the collector refused for good) to
//! the collector again, for an operator who fixed what made it refuse them.

use std::path::Path;

use anyhow::Context as _;
use tracing::{info, warn};

use super::{
    convert, exporter::DEAD_LETTER_DIR, settings::OtlpSettings, transport::ExportError, Transport,
};
use crate::output::spool::Spool;

/// Tries per batch when the collector asks to retry, before giving up for now.
const TRIES: u32 = 5;

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Alerts the collector accepted (and that left the dead letters).
    pub sent: u64,
    /// Of those, the ones it still rejected in a partial success (gone too: it says nothing of
    /// which).
    pub rejected: u64,
}

/// Sends every dead letter of the spool in `spool_dir` to the collector of `settings`,
/// oldest first; each batch leaves the dead letters once accepted. Stops at the first batch
/// the collector refuses again: what is left stays for the next replay.
pub async fn replay(settings: &OtlpSettings, spool_dir: &Path) -> anyhow::Result<Replayed> {
    let dir = spool_dir.join(DEAD_LETTER_DIR);
    if !dir.exists() {
        info!("no dead letters in {}", spool_dir.display());
        return Ok(Replayed::default());
    }
    // Never drops: the limit only matters to the monitor that writes here.
    let mut dead = Spool::open(&dir, u64::MAX).with_context(|| {
        format!(
            "failed to open the dead letters {} (a monitor may be writing to them right now: \
             try again)",
            dir.display()
        )
    })?;
    let mut transport = Transport::new(settings)?;
    let resource = convert::resource(&settings.resource);
    let mut done = Replayed::default();
    loop {
        let (batch, unreadable) = dead.next_batch(512, 1 << 20)?;
        if unreadable > 0 {
            warn!("{unreadable} dead letters could not be read back and are lost");
        }
        if batch.is_empty() {
            break;
        }
        let request = convert::logs_request(&resource, batch.iter().map(|s| &s.alert));
        let ids: Vec<_> = batch.iter().map(|s| s.id).collect();
        let mut attempt = 0;
        let accepted = loop {
            match transport.export_logs(request.clone()).await {
                Ok(accepted) => break accepted,
                Err(ExportError::Retryable {
                    reason,
                    retry_after,
                }) if attempt + 1 < TRIES => {
                    let delay = retry_after.unwrap_or_else(|| settings.backoff.delay(attempt));
                    warn!("replay: {reason}; trying again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => {
                    dead.sync()?;
                    anyhow::bail!(
                        "failed to replay the dead letters: {e}; {} sent, {} still kept in {} \
                         for the next replay",
                        done.sent,
                        dead.pending(),
                        dir.display()
                    );
                }
            }
        };
        let rejected = accepted.rejected.clamp(0, ids.len() as i64) as u64;
        if rejected > 0 {
            warn!(
                "the collector took the batch but rejected {rejected} of its {} alerts: {}",
                ids.len(),
                accepted.message
            );
        }
        dead.ack(&ids)?;
        done.sent += ids.len() as u64;
        done.rejected += rejected;
    }
    dead.sync()?;
    Ok(done)
}
