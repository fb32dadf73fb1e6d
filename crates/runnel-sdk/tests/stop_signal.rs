//! The stop signal's semantics, as executors rely on them.

use std::time::Duration;

use runnel_sdk::{StopReason, StopSignal};

#[tokio::test]
async fn stop_wakes_every_clone_with_the_reason() {
    let (handle, signal) = StopSignal::channel();
    let mut waiter = signal.clone();
    let waiting = tokio::spawn(async move { waiter.stopped().await });
    assert_eq!(signal.reason(), None);
    assert_eq!(handle.reason(), None);
    handle.stop(StopReason::Canceled);
    assert_eq!(waiting.await.unwrap(), StopReason::Canceled);
    assert_eq!(signal.reason(), Some(StopReason::Canceled));
    // A clone made after the stop sees it at once.
    let mut late = signal.clone();
    assert_eq!(late.stopped().await, StopReason::Canceled);
}

#[tokio::test]
async fn the_first_reason_wins() {
    let (handle, mut signal) = StopSignal::channel();
    handle.stop(StopReason::TimedOut);
    handle.stop(StopReason::Shutdown);
    handle.stop(StopReason::Canceled);
    assert_eq!(handle.reason(), Some(StopReason::TimedOut));
    assert_eq!(signal.stopped().await, StopReason::TimedOut);
    // Asking again answers the same.
    assert_eq!(signal.stopped().await, StopReason::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_handle_never_stops() {
    let (handle, mut signal) = StopSignal::channel();
    drop(handle);
    let waited = tokio::time::timeout(Duration::from_secs(3600), signal.stopped()).await;
    assert!(waited.is_err(), "stopped() resolved without a stop");
    assert_eq!(signal.reason(), None);
}

#[tokio::test(start_paused = true)]
async fn without_a_stop_nothing_fires() {
    let (_handle, mut signal) = StopSignal::channel();
    let waited = tokio::time::timeout(Duration::from_secs(3600), signal.stopped()).await;
    assert!(waited.is_err());
}
