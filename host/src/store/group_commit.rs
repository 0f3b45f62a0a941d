//! Group commit: concurrent callers of one write operation share one transaction, and so one
//! fsync. Each caller queues its request and then waits for the writer; whoever gets the
//! writer first takes every request queued by then and writes them together, answering each
//! caller only after the commit. A caller whose request was taken by another finds its answer
//! waiting and never writes. Under no concurrency this is one transaction per request, as
//! before; under load the transaction rate stays at the disk's fsync rate while the requests
//! per transaction grow.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Most requests written in one group; the rest wait for the next.
const MAX_GROUP: usize = 256;

/// A queued request and the way to answer it.
pub(super) struct Waiter<T, R> {
    pub(super) request: T,
    reply: oneshot::Sender<R>,
}

impl<T, R> Waiter<T, R> {
    /// Answers the caller (who may have gone away: then nobody is listening).
    pub(super) fn answer(self, result: R) {
        let _ = self.reply.send(result);
    }
}

/// The queue of one grouped operation.
pub(super) struct GroupCommit<T, R> {
    queue: Mutex<Vec<Waiter<T, R>>>,
}

impl<T, R> Default for GroupCommit<T, R> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    /// Queues `request`, then waits for either its answer or a writer: `gate`, or `spare` when
    /// given (a second writer the caller lets only some requests take). With a writer, hands
    /// every queued request (up to [`MAX_GROUP`]) and the writer's permit to `write`, which
    /// must answer each of them, typically from a task that holds the permit until its commit
    /// is done. Returns `None` if the request was dropped unanswered.
    pub(super) async fn submit<W>(
        &self,
        request: T,
        gate: &Arc<Semaphore>,
        spare: Option<&Arc<Semaphore>>,
        write: W,
    ) -> Option<R>
    where
        W: FnOnce(OwnedSemaphorePermit, Vec<Waiter<T, R>>),
    {
        let (reply, mut answer) = oneshot::channel();
        self.lock().push(Waiter { request, reply });
        let spare = spare.map(Arc::clone);
        let permit = tokio::select! {
            biased;
            result = &mut answer => return result.ok(),
            permit = Arc::clone(gate).acquire_owned() => permit.ok()?,
            permit = async move {
                match spare {
                    Some(spare) => spare.acquire_owned().await.ok(),
                    None => std::future::pending().await,
                }
            } => permit?,
        };
        let group: Vec<Waiter<T, R>> = {
            let mut queue = self.lock();
            let n = queue.len().min(MAX_GROUP);
            queue.drain(..n).collect()
        };
        if group.is_empty() {
            // Another caller took this request and has written it, since it held the gate.
            drop(permit);
        } else {
            write(permit, group);
        }
        answer.await.ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiter<T, R>>> {
        // The queue holds no invariant a panic could break.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_requests_share_one_write() {
        let group: Arc<GroupCommit<u32, u32>> = Arc::default();
        let gate = Arc::new(Semaphore::new(1));
        // Hold the gate so that every request queues behind it.
        let held = Arc::clone(&gate).acquire_owned().await.unwrap();
        let writes = Arc::new(Mutex::new(Vec::new()));
        let mut callers = Vec::new();
        for i in 0..5u32 {
            let (group, gate, writes) = (Arc::clone(&group), Arc::clone(&gate), Arc::clone(&writes));
            callers.push(tokio::spawn(async move {
                group
                    .submit(i, &gate, None, |permit, waiters| {
                        writes.lock().unwrap().push(waiters.len());
                        for w in waiters {
                            let r = w.request * 10;
                            w.answer(r);
                        }
                        drop(permit);
                    })
                    .await
            }));
        }
        tokio::task::yield_now().await;
        while group.lock().len() < 5 {
            tokio::task::yield_now().await;
        }
        drop(held);
        let mut answers = Vec::new();
        for c in callers {
            answers.push(c.await.unwrap());
        }
        assert_eq!(answers, (0..5).map(|i| Some(i * 10)).collect::<Vec<_>>());
        assert_eq!(*writes.lock().unwrap(), vec![5], "one write carried all five requests");
    }

    #[tokio::test]
    async fn the_spare_writer_takes_only_the_requests_let_through() {
        let group: Arc<GroupCommit<u32, u32>> = Arc::default();
        let (gate, spare) = (Arc::new(Semaphore::new(1)), Arc::new(Semaphore::new(1)));
        let held = Arc::clone(&gate).acquire_owned().await.unwrap();
        let write = |permit: OwnedSemaphorePermit, waiters: Vec<Waiter<u32, u32>>| {
            for w in waiters {
                let r = w.request + 100;
                w.answer(r);
            }
            drop(permit);
        };
        // Without the spare, a request waits for the busy writer.
        let (g, gt) = (Arc::clone(&group), Arc::clone(&gate));
        let small = tokio::spawn(async move { g.submit(1, &gt, None, write).await });
        while group.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!small.is_finished(), "a request not let through to the spare waits");
        // With it, the request is written by the spare, and so is the one queued before it.
        let big = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            group.submit(2, &gate, Some(&spare), write),
        )
        .await
        .expect("written by the spare writer while the gate is held");
        assert_eq!(big, Some(102));
        assert_eq!(small.await.unwrap(), Some(101));
        assert_eq!(spare.available_permits(), 1, "the spare writer's permit came back");
        drop(held);
    }

    #[tokio::test]
    async fn an_unanswered_request_is_reported() {
        let group: GroupCommit<u32, u32> = GroupCommit::default();
        let gate = Arc::new(Semaphore::new(1));
        let r = group.submit(1, &gate, None, |_permit, waiters| drop(waiters)).await;
        assert_eq!(r, None);
    }
}
