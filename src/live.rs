//! A part of the gateway that a configuration reload may replace whole (the range
//! refresher, the upstream endpoints), and the background work that follows whichever one is
//! current: the replaced one's loop ends, the new one's starts at once.

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

/// The current `T`; readers take it whole and keep it as long as they need it.
pub struct Live<T> {
    current: ArcSwap<T>,
    replaced: Notify,
}

impl<T> Live<T> {
    pub fn new(value: Arc<T>) -> Live<T> {
        Live {
            current: ArcSwap::new(value),
            replaced: Notify::new(),
        }
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Makes `value` current; [`Live::follow`] moves its work over to it.
    pub fn replace(&self, value: Arc<T>) {
        self.current.store(value);
        self.replaced.notify_waiters();
    }

    /// Runs `work` on the current value until `shutdown` changes (`work` returns then), and
    /// again on each new value as it replaces the one before.
    pub async fn follow<F, Fut>(&self, shutdown: watch::Receiver<bool>, work: F)
    where
        F: Fn(Arc<T>, watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            // Registered before the load: a replacement in between is not missed.
            let replaced = self.replaced.notified();
            tokio::pin!(replaced);
            replaced.as_mut().enable();
            let current = self.load();
            tokio::select! {
                _ = work(current, shutdown.clone()) => return,
                _ = replaced => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[tokio::test]
    async fn follow_moves_to_the_new_value_and_ends_with_shutdown() {
        let live = Arc::new(Live::new(Arc::new(1)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, shutdown) = watch::channel(false);
        let task = {
            let (live, seen) = (live.clone(), seen.clone());
            tokio::spawn(async move {
                live.follow(shutdown, |v, mut shutdown| {
                    seen.lock().unwrap().push(*v);
                    async move {
                        let _ = shutdown.changed().await;
                    }
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        live.replace(Arc::new(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("follow ends with the shutdown")
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![1, 2]);
    }
}
