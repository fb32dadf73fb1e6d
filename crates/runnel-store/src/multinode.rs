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

use crate::Result;

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
}

impl Signal {
    pub const ALL: [Signal; 3] = [
        Signal::RunsAvailable,
        Signal::AttemptsChanged,
        Signal::WorkersChanged,
    ];

    /// The PostgreSQL `NOTIFY` channel of this signal.
    pub fn channel(self) -> &'static str {
        match self {
            Signal::RunsAvailable => "runnel_runs",
            Signal::AttemptsChanged => "runnel_attempts",
            Signal::WorkersChanged => "runnel_workers",
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
                return Ok(Some(Announcement {
                    signal,
                    origin: notification.payload().to_owned(),
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
