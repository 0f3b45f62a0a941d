//! The shared attempt pool: at most `max_in_flight` attempts of non-slow targets run at once,
//! and when the pool is saturated a freed slot goes to the waiting lane of the highest
//! priority (critical first, then batched, then best-effort), first come first served within
//! a priority. Slow targets run on their own concurrency only, so a slow backlog never
//! takes slots from the others.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// A priority-ordered counting semaphore.
#[derive(Debug)]
pub struct PriorityPool {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    available: usize,
    waiters: BTreeMap<(u8, u64), oneshot::Sender<PoolPermit>>,
    next_seq: u64,
}

/// One slot of the pool, returned when dropped.
#[derive(Debug)]
pub struct PoolPermit {
    pool: Option<Arc<PriorityPool>>,
}

impl Drop for PoolPermit {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.release();
        }
    }
}

impl PriorityPool {
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                available: size,
                waiters: BTreeMap::new(),
                next_seq: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot now, if one is free and nobody is waiting for it.
    pub fn try_acquire(self: &Arc<Self>) -> Option<PoolPermit> {
        let mut state = self.lock();
        if state.available > 0 && state.waiters.is_empty() {
            state.available -= 1;
            Some(PoolPermit {
                pool: Some(Arc::clone(self)),
            })
        } else {
            None
        }
    }

    /// Waits for a slot; lower `priority` values are served first. Cancel-safe: a slot
    /// handed to a waiter that has gone away is passed on.
    pub async fn acquire(self: &Arc<Self>, priority: u8) -> PoolPermit {
        let rx = {
            let mut state = self.lock();
            if state.available > 0 && state.waiters.is_empty() {
                state.available -= 1;
                return PoolPermit {
                    pool: Some(Arc::clone(self)),
                };
            }
            let (tx, rx) = oneshot::channel();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.waiters.insert((priority, seq), tx);
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // Unreachable while the pool lives (senders are only dropped by handing over a
            // permit); wait again rather than panic.
            Err(_) => Box::pin(self.acquire(priority)).await,
        }
    }

    fn release(self: &Arc<Self>) {
        let mut state = self.lock();
        while let Some((_, tx)) = state.waiters.pop_first() {
            let permit = PoolPermit {
                pool: Some(Arc::clone(self)),
            };
            match tx.send(permit) {
                Ok(()) => return,
                // The waiter is gone: take the slot back without releasing it again.
                Err(mut permit) => permit.pool = None,
            }
        }
        state.available += 1;
    }

    /// Free slots (for tests and metrics).
    pub fn available(&self) -> usize {
        self.lock().available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn freed_slots_go_to_the_highest_priority_waiter() {
        let pool = PriorityPool::new(1);
        let held = pool.acquire(0).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, prio) in [("best-effort", 3u8), ("critical", 0), ("batched", 1), ("critical-2", 0)] {
            let pool = Arc::clone(&pool);
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                let _p = pool.acquire(prio).await;
                order.lock().unwrap().push(name);
            }));
            tokio::task::yield_now().await; // queue them in this order
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["critical", "critical-2", "batched", "best-effort"]
        );
        assert_eq!(pool.available(), 1);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_leak_its_slot() {
        let pool = PriorityPool::new(1);
        let held = pool.acquire(0).await;
        let waiter = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.acquire(0).await })
        };
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        assert!(pool.try_acquire().is_some(), "the slot came back to the pool");
    }
}
