//! Warm instances: a target's plugin instance kept after an invocation that ended cleanly, so
//! that the target's next invocation skips instantiation and runs in a runtime that has
//! already warmed up (an interpreter's heap, atoms and inline caches; pages already faulted
//! in). What reuse may and may not do:
//!
//! - An instance only ever serves the [`Binding`] it was made for: one target's plugin under
//!   that target's grants. What the plugin keeps in memory between calls stays that target's.
//! - One invocation at a time; at most the target's `instance_reuse` invocations in all.
//! - An invocation that did not end cleanly (a trap, a deadline, a memory-cap hit, a wrong
//!   number of results, a call cancelled at shutdown) drops its instance.
//! - An instance unused for [`IDLE_TTL`] is dropped, and with it the memory it touched.
//! - Idle instances keep their pool slot. An invocation that finds the pool full evicts the
//!   longest-idle instance of any target instead of waiting, and while any invocation waits for
//!   a slot, an instance that finishes is dropped rather than kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::host::HostState;
use super::output::TailPipe;
use super::pool::{Slot, Slots};
use super::{BatchReport, EventInput, Grants, Plugin, Report, batch_bindings, bindings};

/// An idle instance unused for this long is dropped.
pub(super) const IDLE_TTL: Duration = Duration::from_secs(10);

/// A plugin instance with its store, its pool slot and its captured output.
pub(super) struct Instance {
    pub(super) store: Store<HostState>,
    /// The instantiated exports; `None` until the first call instantiates the component.
    pub(super) exports: Option<Exports>,
    pub(super) stdout: TailPipe,
    pub(super) stderr: TailPipe,
    /// Invocations this instance has served.
    pub(super) uses: u32,
    _slot: Slot,
}

impl Instance {
    pub(super) fn new(store: Store<HostState>, stdout: TailPipe, stderr: TailPipe, slot: Slot) -> Self {
        Self {
            store,
            exports: None,
            stdout,
            stderr,
            uses: 0,
            _slot: slot,
        }
    }
}

/// The exports of an instantiated plugin, by world.
pub(super) enum Exports {
    Single(bindings::Target),
    Batch(batch_bindings::BatchTarget),
}

/// What [`Idle::take`] found: a warm instance of the binding, or a free slot for a new one.
pub(super) enum Taken<I = Instance> {
    Warm(I),
    Fresh(Slot),
}

/// The idle instances of every binding of one runtime. Generic over the instance only so that
/// its rules can be tested without a plugin; an instance must own its pool slot.
pub(super) struct Idle<I = Instance> {
    by_binding: Mutex<HashMap<u64, Vec<(Instant, I)>>>,
    next_key: AtomicU64,
    /// Invocations waiting for a pool slot.
    waiting: AtomicUsize,
}

impl<I> Default for Idle<I> {
    fn default() -> Self {
        Self {
            by_binding: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
        }
    }
}

impl<I> Idle<I> {
    /// Registers a binding; its instances are kept under the returned key until
    /// [`Idle::forget`].
    pub(super) fn register(&self) -> u64 {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, Vec::new());
        key
    }

    /// Drops every idle instance of a binding and stops keeping its instances.
    pub(super) fn forget(&self, key: u64) {
        let gone = self.lock().remove(&key);
        drop(gone); // outside the lock: dropping a store resets its slot
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<(Instant, I)>>> {
        self.by_binding.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle instance of `key`.
    fn pop(&self, key: u64) -> Option<I> {
        self.lock().get_mut(&key).and_then(Vec::pop).map(|(_, i)| i)
    }

    /// Removes the longest-idle instance of any binding.
    fn evict_oldest(&self) -> Option<I> {
        let mut map = self.lock();
        let key = map
            .iter()
            .filter_map(|(k, v)| v.first().map(|(t, _)| (*t, *k)))
            .min()
            .map(|(_, k)| k)?;
        map.get_mut(&key).map(|v| v.remove(0).1)
    }

    /// A warm instance of `key` (when given), or a free slot for a new instance: evicting the
    /// longest-idle instance when the pool is full, else waiting for a slot.
    pub(super) async fn take(&self, key: Option<u64>, slots: &Slots) -> Taken<I> {
        if let Some(warm) = key.and_then(|k| self.pop(k)) {
            return Taken::Warm(warm);
        }
        if let Some(slot) = slots.try_acquire() {
            return Taken::Fresh(slot);
        }
        // From here on, instances that finish are dropped rather than kept (see `put`), so a
        // slot frees as soon as any invocation ends.
        let _waiting = Waiting::enter(&self.waiting);
        if let Some(warm) = key.and_then(|k| self.pop(k)) {
            return Taken::Warm(warm);
        }
        drop(self.evict_oldest());
        Taken::Fresh(slots.acquire().await)
    }

    /// Keeps an instance that ended its invocation cleanly and may serve another (`spent`
    /// false), unless an invocation waits for a slot or its binding is gone; else drops it.
    pub(super) fn put(&self, key: u64, instance: I, spent: bool) {
        if spent || self.waiting.load(Ordering::Acquire) > 0 {
            return;
        }
        let mut map = self.lock();
        if let Some(idle) = map.get_mut(&key) {
            idle.push((Instant::now(), instance));
        }
    }

    /// Drops the instances idle for longer than `ttl`; returns how many.
    pub(super) fn sweep(&self, ttl: Duration) -> usize {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut map = self.lock();
            for idle in map.values_mut() {
                // Oldest first: instances are pushed as they finish.
                let n = idle.iter().take_while(|(t, _)| now.duration_since(*t) >= ttl).count();
                expired.extend(idle.drain(..n));
            }
        }
        expired.len()
    }

    /// Idle instances, all bindings together.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

/// Counts an invocation waiting for a slot while it exists.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A plugin bound to one target's grants, with that target's warm instances: what the
/// dispatcher invokes. Dropping it (a reload replaced the target) drops its idle instances.
pub struct Binding {
    plugin: Arc<Plugin>,
    grants: Grants,
    key: u64,
    reuse: u32,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("target", &self.grants.target)
            .field("plugin", &self.plugin.hash())
            .field("reuse", &self.reuse)
            .finish()
    }
}

impl Binding {
    /// Binds `plugin` to a target's `grants`; an instance serves at most `reuse`
    /// invocations (1: a fresh instance for every invocation).
    pub fn new(plugin: Arc<Plugin>, grants: Grants, reuse: u32) -> Self {
        let key = plugin.runtime.inner.idle.register();
        Self {
            plugin,
            grants,
            key,
            reuse: reuse.max(1),
        }
    }

    /// The compiled plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// What the target's OAuth2 token cache holds (never the token), if it has `[oauth2]`.
    pub fn oauth2_status(&self) -> Option<super::oauth2::TokenStatus> {
        self.grants.oauth2.as_ref().map(|source| source.status())
    }

    /// Runs one event, in a warm instance of this binding when one is idle.
    pub async fn deliver(&self, event: EventInput) -> Report {
        self.plugin
            .invoke(&self.grants, Some((self.key, self.reuse)), vec![event])
            .await
            .into_single()
    }

    /// Runs events in one invocation (see [`Plugin::deliver_batch`]), in a warm instance of
    /// this binding when one is idle.
    pub async fn deliver_batch(&self, events: Vec<EventInput>) -> BatchReport {
        self.plugin
            .invoke(&self.grants, Some((self.key, self.reuse)), events)
            .await
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        self.plugin.runtime.inner.idle.forget(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::PoolSize;

    /// A stand-in instance: a name and the slot it holds.
    type Fake = (&'static str, Slot);

    fn pool(instances: u32) -> (Idle<Fake>, Slots) {
        (Idle::default(), Slots::new(PoolSize { instances }))
    }

    async fn fresh(idle: &Idle<Fake>, key: u64, slots: &Slots) -> Slot {
        match idle.take(Some(key), slots).await {
            Taken::Fresh(slot) => slot,
            Taken::Warm((name, _)) => panic!("expected a free slot, got warm instance {name}"),
        }
    }

    #[tokio::test]
    async fn a_binding_gets_back_its_own_most_recent_instance_and_never_another_bindings() {
        let (idle, slots) = pool(4);
        let (a, b) = (idle.register(), idle.register());
        let (s1, s2) = (fresh(&idle, a, &slots).await, fresh(&idle, a, &slots).await);
        idle.put(a, ("a1", s1), false);
        idle.put(a, ("a2", s2), false);
        assert!(
            matches!(idle.take(Some(b), &slots).await, Taken::Fresh(_)),
            "b must not get a's instance"
        );
        assert!(matches!(idle.take(Some(a), &slots).await, Taken::Warm(("a2", _))));
        assert!(matches!(idle.take(Some(a), &slots).await, Taken::Warm(("a1", _))));
        // Without a binding (`plugin run`), never a warm instance.
        let s3 = fresh(&idle, a, &slots).await;
        idle.put(a, ("a3", s3), false);
        assert!(matches!(idle.take(None, &slots).await, Taken::Fresh(_)));
    }

    #[tokio::test]
    async fn a_spent_instance_or_one_of_a_forgotten_binding_is_dropped_with_its_slot() {
        let (idle, slots) = pool(1);
        let a = idle.register();
        let s = fresh(&idle, a, &slots).await;
        idle.put(a, ("a1", s), true);
        assert_eq!(idle.len(), 0);
        let s = fresh(&idle, a, &slots).await; // the slot was freed
        idle.put(a, ("a2", s), false);
        assert_eq!(idle.len(), 1);
        idle.forget(a);
        assert_eq!(idle.len(), 0);
        let s = fresh(&idle, a, &slots).await;
        idle.put(a, ("a3", s), false);
        assert_eq!(idle.len(), 0, "a forgotten binding keeps nothing");
        assert!(slots.try_acquire().is_some());
    }

    #[tokio::test]
    async fn a_full_pool_evicts_the_longest_idle_instance_of_another_binding() {
        let (idle, slots) = pool(2);
        let (a, b, c) = (idle.register(), idle.register(), idle.register());
        let (sa, sb) = (fresh(&idle, a, &slots).await, fresh(&idle, b, &slots).await);
        idle.put(a, ("a", sa), false);
        idle.put(b, ("b", sb), false);
        // c finds the pool full of idle instances: a's, the older, makes room.
        let sc = fresh(&idle, c, &slots).await;
        assert_eq!(idle.len(), 1);
        assert!(matches!(idle.take(Some(b), &slots).await, Taken::Warm(("b", _))));
        drop(sc);
    }

    #[tokio::test]
    async fn an_instance_finishing_while_an_invocation_waits_for_a_slot_is_dropped() {
        let (idle, slots) = pool(1);
        let idle = Arc::new(idle);
        let (a, b) = (idle.register(), idle.register());
        let sa = fresh(&idle, a, &slots).await; // a's invocation runs
        let waiter = {
            let (idle, slots) = (Arc::clone(&idle), slots.clone());
            tokio::spawn(async move { matches!(idle.take(Some(b), &slots).await, Taken::Fresh(_)) })
        };
        while idle.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        idle.put(a, ("a", sa), false); // a ends: its instance must not keep the slot
        assert!(waiter.await.unwrap(), "the waiting invocation got the slot");
        assert_eq!(idle.len(), 0);
    }

    #[tokio::test]
    async fn the_sweep_drops_only_instances_idle_for_the_ttl() {
        let (idle, slots) = pool(2);
        let a = idle.register();
        let s = fresh(&idle, a, &slots).await;
        idle.put(a, ("old", s), false);
        assert_eq!(idle.sweep(Duration::from_secs(3600)), 0);
        assert_eq!(idle.sweep(Duration::ZERO), 1);
        assert_eq!(idle.len(), 0);
        assert_eq!(
            [slots.try_acquire(), slots.try_acquire()]
                .iter()
                .filter(|s| s.is_some())
                .count(),
            2,
            "the swept instance's slot is free again"
        );
    }
}
