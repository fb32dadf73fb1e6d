//! Signals between server nodes that share one database.
//!
//! A node wakes its own long-polling dequeuers and heartbeats in memory. Nodes sharing a
//! PostgreSQL database also tell each other: [`Store::signal_publish`] sends
//! `pg_notify('runnel_runs' | 'runnel_attempts', <origin node>)`, and every node holds one
//! `LISTEN` connection ([`Store::signal_listen`]) whose notifications it turns into the
//! same local wake. The payload is the publishing node's id, so a node skips its own
//! signals (it woke its pollers already).
//!
//! Signals only shorten waits; they carry no state. A lost one (the listening connection
//! dropped and reconnected meanwhile) delays a worker until its long poll ends and it
//! asks again, never loses a run. SQLite has one process, so there is nothing to tell:
//! publishing does nothing and there is no listener.
//!
//! [`Store::signal_publish`]: crate::NodeStore::signal_publish
//! [`Store::signal_listen`]: crate::NodeStore::signal_listen

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool};

use runnel_core::RunId;

use crate::Result;

/// Longest payload of one `runnel_run_changes` notification (PostgreSQL's limit is 8000
/// bytes).
const CHANGES_PAYLOAD_MAX: usize = 7_900;

/// Something another node may want to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Runs may have become available to dequeue (trigger, promotion, retry, release).
    RunsAvailable,
    /// Attempts that workers hold may have ended (cancel, rescue): heartbeats should look.
    AttemptsChanged,
    /// A worker version was registered: what serves a task, and on which queue, may have
    /// changed (nodes forget the task queues they remembered).
    WorkersChanged,
    /// Runs were written ([`Announcement::runs`] names them): realtime subscriptions and
    /// live views should read them again. Published by [`pg_publish_changes`], not by
    /// `signal_publish`.
    RunsChanged,
}

impl Signal {
    pub const ALL: [Signal; 4] = [
        Signal::RunsAvailable,
        Signal::AttemptsChanged,
        Signal::WorkersChanged,
        Signal::RunsChanged,
    ];

    /// The PostgreSQL `NOTIFY` channel of this signal.
    pub fn channel(self) -> &'static str {
        match self {
            Signal::RunsAvailable => "runnel_runs",
            Signal::AttemptsChanged => "runnel_attempts",
            Signal::WorkersChanged => "runnel_workers",
            Signal::RunsChanged => "runnel_run_changes",
        }
    }

    fn from_channel(channel: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.channel() == channel)
    }
}

/// A signal as a listener receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub signal: Signal,
    /// The id the publishing node gave ([`Store::signal_publish`]'s `origin`).
    ///
    /// [`Store::signal_publish`]: crate::NodeStore::signal_publish
    pub origin: String,
    /// For [`Signal::RunsChanged`]: the runs written; empty means changes were lost
    /// (the publisher dropped some) and everything should be read again.
    pub runs: Vec<RunId>,
}

/// Receives the signals every node publishes (its own included).
#[async_trait]
pub trait SignalListener: Send + std::fmt::Debug {
    /// Waits for the next signal. `None` means the connection was lost: signals sent
    /// until the next call reconnects are missed, so the caller should wake everything
    /// it would wake on a signal. An error means reconnecting failed.
    async fn recv(&mut self) -> Result<Option<Announcement>>;
}

/// PostgreSQL: `LISTEN` on a dedicated connection (one more than the pool's).
#[derive(Debug)]
pub(crate) struct PgSignalListener {
    listener: PgListener,
}

#[async_trait]
impl SignalListener for PgSignalListener {
    async fn recv(&mut self) -> Result<Option<Announcement>> {
        loop {
            // `try_recv` answers `None` once when the connection drops and reconnects
            // (re-issuing the `LISTEN`s) on the next call.
            let Some(notification) = self.listener.try_recv().await? else {
                return Ok(None);
            };
            if let Some(signal) = Signal::from_channel(notification.channel()) {
                let payload = notification.payload();
                if signal != Signal::RunsChanged {
                    return Ok(Some(Announcement {
                        signal,
                        origin: payload.to_owned(),
                        runs: Vec::new(),
                    }));
                }
                let (origin, ids) = payload.split_once(' ').unwrap_or((payload, ""));
                return Ok(Some(Announcement {
                    signal,
                    origin: origin.to_owned(),
                    runs: ids.split(',').filter_map(RunId::parse).collect(),
                }));
            }
        }
    }
}

pub(crate) async fn pg_listen(pool: &PgPool) -> Result<PgSignalListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    let channels: Vec<&str> = Signal::ALL.iter().map(|s| s.channel()).collect();
    listener.listen_all(channels).await?;
    Ok(PgSignalListener { listener })
}

/// One round trip whatever the number of signals.
pub(crate) async fn pg_publish(pool: &PgPool, signals: &[Signal], origin: &str) -> Result<()> {
    if signals.is_empty() {
        return Ok(());
    }
    let channels: Vec<&str> = signals.iter().map(|s| s.channel()).collect();
    sqlx::query("SELECT pg_notify(channel, $2) FROM unnest($1::text[]) AS c(channel)")
        .bind(&channels)
        .bind(origin)
        .execute(pool)
        .await?;
    Ok(())
}

/// Publishes written runs as `runnel_run_changes` notifications: `<origin> <id>,<id>,…`,
/// as many as the payload limit needs, in one round trip; with `missed`, also one with
/// no ids (receivers read everything again).
pub(crate) async fn pg_publish_changes(
    pool: &PgPool,
    runs: &[RunId],
    missed: bool,
    origin: &str,
) -> Result<()> {
    let payloads = change_payloads(runs, missed, origin);
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify('runnel_run_changes', p) FROM unnest($1::text[]) AS c(p)")
        .bind(&payloads)
        .execute(pool)
        .await?;
    Ok(())
}

fn change_payloads(runs: &[RunId], missed: bool, origin: &str) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for run in runs {
        if !current.is_empty() && current.len() + 1 + run.as_str().len() > CHANGES_PAYLOAD_MAX {
            payloads.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push_str(origin);
            current.push(' ');
        } else {
            current.push(',');
        }
        current.push_str(run.as_str());
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    if missed {
        payloads.push(origin.to_owned());
    }
    payloads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_payloads_stay_under_the_notify_limit_and_name_every_run() {
        let runs: Vec<RunId> = (0..1_000)
            .map(|i| RunId::generate(1_700_000_000_000 + i))
            .collect();
        let payloads = change_payloads(&runs, false, "node_1");
        assert!(
            payloads.len() > 1,
            "a thousand ids do not fit one notification"
        );
        let mut seen = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= CHANGES_PAYLOAD_MAX);
            let (origin, ids) = payload.split_once(' ').unwrap();
            assert_eq!(origin, "node_1");
            seen.extend(ids.split(',').map(|id| RunId::parse(id).unwrap()));
        }
        assert_eq!(seen, runs);
        assert_eq!(
            change_payloads(&[], true, "node_1"),
            vec!["node_1".to_owned()]
        );
        assert!(change_payloads(&[], false, "node_1").is_empty());
    }
}
