//! The instance pool: wasmtime's pooling allocator, so that a delivery's fresh instance costs
//! microseconds. Every slot (linear memory, tables, instance metadata, async stack) is
//! reserved once at start-up and reused: instantiating takes a slot that last ran the same
//! plugin (its copy-on-write memory image still mapped), and tearing down only resets the
//! pages the instance dirtied. Without it, every instance mapped and unmapped a 4 GiB
//! reservation and faulted its memory image in afresh.
//!
//! Sizing. A memory slot reserves 4 GiB of address space plus guard pages (no RAM until
//! touched): every allowed `memory_mb` fits, and the compiled code needs no bounds checks. The
//! pool holds [`PoolSize::instances`] plugin instances at once; an invocation waits for a free
//! one (counted against its deadline) rather than failing. A component needing more memories
//! or larger tables than a slot holds is refused when it is compiled, with the reason.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::Component;
use wasmtime::{Config, Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::PluginError;

/// Linear memories one plugin instance may define (components built by Rust's
/// `wasm32-wasip2`, componentize-js and componentize-py define one).
const MEMORIES_PER_INSTANCE: u32 = 1;
/// Tables one plugin instance may define (the same toolchains define two).
const TABLES_PER_INSTANCE: u32 = 4;
/// Core module instances one plugin instance may create (its modules, adapters and shims).
const CORE_INSTANCES_PER_INSTANCE: u32 = 32;
/// Elements of the largest table (the JavaScript and Python interpreters start with about
/// 6,000 to 8,000 entries).
const TABLE_ELEMENTS: usize = 50_000;
/// Largest memory cap of a target (`memory_mb` at most 4096).
const MAX_MEMORY: u64 = 4 << 30;
/// Low bytes of a linear memory reset in place rather than returned to the kernel: a Rust
/// guest's stack ends at 1 MiB with its data and heap above, so 2 MiB covers what a small
/// plugin touches. Only dirtied pages stay resident (with PAGEMAP_SCAN), so the cost in RSS
/// is what instances actually used.
const KEEP_RESIDENT: usize = 2 << 20;
/// The same for tables (8 bytes per element; the interpreters' tables are about 64 KiB).
const TABLE_KEEP_RESIDENT: usize = 128 << 10;
/// Slot resets gathered into one batch of `madvise` calls.
const DECOMMIT_BATCH: usize = 16;

/// How many plugin instances may exist at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    pub instances: u32,
}

impl PoolSize {
    /// For one plugin run at a time (`outboxd plugin run`).
    pub const SMALL: PoolSize = PoolSize { instances: 4 };
}

/// Configures the engine's pooling allocator for `size`.
pub(super) fn configure(config: &mut Config, size: PoolSize) {
    let n = size.instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n * CORE_INSTANCES_PER_INSTANCE)
        .max_core_instances_per_component(CORE_INSTANCES_PER_INSTANCE)
        .total_memories(n * MEMORIES_PER_INSTANCE)
        .max_memories_per_component(MEMORIES_PER_INSTANCE)
        .max_memories_per_module(1)
        .max_memory_size(MAX_MEMORY as usize)
        .total_tables(n * TABLES_PER_INSTANCE)
        .max_tables_per_component(TABLES_PER_INSTANCE)
        .max_tables_per_module(1)
        .table_elements(TABLE_ELEMENTS)
        .total_stacks(n)
        // Resetting a slot: rather than `madvise` over the whole memory (a system call and a
        // TLB shootdown on every core, per delivery: a tenth of the drain's CPU in a profile),
        // reset the pages the instance dirtied in its low `KEEP_RESIDENT` bytes with `memset`,
        // found with the PAGEMAP_SCAN ioctl where the kernel has it (6.7+), and batch the
        // `madvise` calls that remain.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .pagemap_scan(Enabled::Auto)
        .decommit_batch_size(DECOMMIT_BATCH);
    config.memory_reservation(MAX_MEMORY);
    config.memory_init_cow(true);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
}

/// Refuses a component that could never be instantiated in a pool slot.
pub(super) fn check(component: &Component) -> Result<(), PluginError> {
    let Some(needs) = component.resources_required() else {
        return Err(PluginError::Invalid(
            "the component instantiates modules dynamically, which the host does not support".into(),
        ));
    };
    if needs.num_memories > MEMORIES_PER_INSTANCE {
        return Err(PluginError::Invalid(format!(
            "the component defines {} linear memories; the host allows at most {MEMORIES_PER_INSTANCE}",
            needs.num_memories
        )));
    }
    if needs.num_tables > TABLES_PER_INSTANCE {
        return Err(PluginError::Invalid(format!(
            "the component defines {} tables; the host allows at most {TABLES_PER_INSTANCE}",
            needs.num_tables
        )));
    }
    if let Some(elements) = needs.max_initial_table_size.filter(|e| *e > TABLE_ELEMENTS as u64) {
        return Err(PluginError::Invalid(format!(
            "the component has a table of {elements} elements; the host allows at most {TABLE_ELEMENTS}"
        )));
    }
    Ok(())
}

/// The right to one instance of the pool, held for an invocation.
pub(super) type Slot = OwnedSemaphorePermit;

/// Counts the pool's instances, so that an invocation waits for a free one.
#[derive(Debug, Clone)]
pub(super) struct Slots(Arc<Semaphore>);

impl Slots {
    pub(super) fn new(size: PoolSize) -> Self {
        Self(Arc::new(Semaphore::new(size.instances.max(1) as usize)))
    }

    /// A free instance, if there is one now.
    pub(super) fn try_acquire(&self) -> Option<Slot> {
        Arc::clone(&self.0).try_acquire_owned().ok()
    }

    /// Waits for a free instance.
    pub(super) async fn acquire(&self) -> Slot {
        Arc::clone(&self.0)
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed")
    }
}
