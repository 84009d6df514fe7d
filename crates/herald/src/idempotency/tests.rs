use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;

#[tokio::test]
async fn a_key_publishes_once_within_its_window_and_failures_free_it() {
    let claims = LocalClaims::default();
    let runs = AtomicUsize::new(0);
    let runs = &runs;
    let publish = |ok: bool| {
        move || {
            runs.fetch_add(1, Ordering::Relaxed);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(BrokerError::Stopped)
                }
            }
        }
    };
    let window = Duration::from_secs(60);
    // A failed publish gives the key back…
    assert!(once(&claims, "c", "k", window, publish(false))
        .await
        .is_err());
    // …so the retry publishes, and the next retries do not.
    assert!(once(&claims, "c", "k", window, publish(true))
        .await
        .unwrap());
    assert!(!once(&claims, "c", "k", window, publish(true))
        .await
        .unwrap());
    assert!(once(&claims, "other", "k", window, publish(true))
        .await
        .unwrap());
    assert_eq!(runs.load(Ordering::Relaxed), 3, "a retry does not publish");
    // Past the window the key is free again.
    let short = Duration::from_millis(10);
    assert!(once(&claims, "c", "s", short, publish(true)).await.unwrap());
    // Time must pass: the window has to end.
    tokio::time::sleep(Duration::from_millis(20)).await;
    claims.sweep();
    assert!(once(&claims, "c", "s", short, publish(true)).await.unwrap());
}

#[tokio::test]
async fn a_retry_during_the_first_publish_waits_for_it() {
    let claims = Arc::new(LocalClaims::default());
    let window = Duration::from_secs(60);
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let first = {
        let claims = claims.clone();
        tokio::spawn(async move {
            once(&*claims, "c", "k", window, || async {
                let _ = wait.await;
                Ok(())
            })
            .await
        })
    };
    // The retry claims while the first is pending, then sees it done.
    tokio::task::yield_now().await;
    let retry = {
        let claims = claims.clone();
        tokio::spawn(async move { once(&*claims, "c", "k", window, || async { Ok(()) }).await })
    };
    tokio::task::yield_now().await;
    release.send(()).unwrap();
    assert!(first.await.unwrap().unwrap());
    assert!(!retry.await.unwrap().unwrap(), "published once");
}
