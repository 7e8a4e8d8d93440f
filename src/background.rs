//! Work that runs after a response is sent (issuing codes, sending mail), counted so
//! shutdown can wait for it and tests can wait until it has settled.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct Background {
    inner: Arc<(AtomicUsize, Notify)>,
}

impl Background {
    /// Runs `task` on the runtime, counted until it finishes.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        inner.0.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            // Decrement even if the task panics.
            struct Done(Arc<(AtomicUsize, Notify)>);
            impl Drop for Done {
                fn drop(&mut self) {
                    if self.0 .0.fetch_sub(1, Ordering::SeqCst) == 1 {
                        self.0 .1.notify_waiters();
                    }
                }
            }
            let _done = Done(inner);
            task.await;
        });
    }

    /// How many tasks are running.
    pub fn pending(&self) -> usize {
        self.inner.0.load(Ordering::SeqCst)
    }

    /// Waits until no task runs (tasks spawned by tasks included), at most `limit`;
    /// returns how many were still running.
    pub async fn wait_idle(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.inner.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.pending();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_nested_tasks() {
        let background = Background::default();
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (inner_bg, inner_flag) = (background.clone(), flag.clone());
        background.spawn(async move {
            tokio::task::yield_now().await;
            inner_bg.spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                inner_flag.store(true, Ordering::SeqCst);
            });
        });
        assert_eq!(background.wait_idle(Duration::from_secs(5)).await, 0);
        assert!(flag.load(Ordering::SeqCst));
    }
}
