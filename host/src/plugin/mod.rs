//! The plugin runtime: the only module that knows wasmtime. It compiles a component once
//! (validating that it implements the `outboxd:target` world), and runs each invocation in an
//! instance of its own target (fresh, or a warm one the target's previous invocation left
//! clean: see [`warm`]) with a deadline (epoch interruption), a memory cap and a WASI context
//! that grants nothing: no files, no environment, no sockets. The plugin reaches the world only
//! through the host imports in [`host`]. A trap, deadline overrun or memory-cap hit becomes a
//! retryable [`Outcome`]; it never takes the host down.

mod cache;
mod host;
pub mod logbudget;
pub mod oauth2;
mod output;
mod pool;
mod reach;
pub mod tls;
mod warm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtx;

use crate::domain::{MAX_REASON_TEXT, Outcome, cap_text};
use crate::secret::ConfigValue;
use crate::telemetry::trace_context::TraceParent;
use host::HostState;
pub use host::{HttpExchange, LogLevel, LogLine};
pub use logbudget::LogBudget;
use output::TailPipe;
pub use output::{GuestOutput, Tail};
pub use pool::PoolSize;
pub use warm::Binding;
use warm::IDLE_TTL;
use warm::{Exports, Instance, Taken};

// The newest version of the contract. Adapters built against an older 0.1 version (0.1.0,
// `wit/target.wit`) load all the same: the linker matches their imports by semver, and they
// just do not import what is newer.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.1",
        world: "target",
        imports: { default: async },
        exports: { default: async },
    });
}

mod batch_bindings {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.1",
        world: "batch-target",
        imports: { default: async },
        exports: { default: async },
        with: {
            "outboxd:target/types": super::bindings::outboxd::target::types,
            "outboxd:target/http": super::bindings::outboxd::target::http,
            "outboxd:target/log": super::bindings::outboxd::target::log,
            "outboxd:target/config": super::bindings::outboxd::target::config,
            "outboxd:target/report": super::bindings::outboxd::target::report,
        },
    });
}

use bindings::outboxd::target::types::{DeliveryError, Event as WitEvent};

/// Which world a compiled plugin implements.
enum Kind {
    Single(bindings::TargetPre<HostState>),
    Batch(batch_bindings::BatchTargetPre<HostState>),
}

/// At most this many bytes of the guest's stderr go into a trap's reason.
const TRAP_STDERR_BYTES: usize = 1000;

/// The environment variable that turns on a profiler for plugin code (`perfmap`).
pub const PROFILER_ENV: &str = "OUTBOXD_WASM_PROFILER";

/// How often the epoch ticks: the granularity of deadlines and of cooperative yields.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A file that cannot be used as a plugin.
#[derive(Debug, Error)]
pub enum PluginError {
    #[error("not a WebAssembly file (no `\\0asm` header)")]
    NotWasm,
    #[error("a core WebAssembly module, not a component: build it as a component (e.g. `--target wasm32-wasip2`)")]
    CoreModule,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error(
        "imports something the host does not provide: {0} (the host provides outboxd:target/{{http,log,config,report}}@0.1.1, which also serve 0.1.0, and WASI 0.2 without files, environment or sockets; no wasi:http)"
    )]
    Imports(String),
    #[error("does not implement world `outboxd:target/target@0.1.0` or `outboxd:target/batch-target@0.1.0`: {0}")]
    WrongWorld(String),
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// The WebAssembly engine, its linker with the host imports, and the shared HTTP client.
/// Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    /// The HTTP client of each [`reach::Reach`] and TLS configuration (most targets share
    /// the default one).
    http: std::sync::Mutex<std::collections::HashMap<ClientKey, reqwest::Client>>,
    cache: Option<cache::CompileCache>,
    slots: pool::Slots,
    idle: Arc<warm::Idle>,
}

/// What tells HTTP clients apart: where names may resolve to, and the TLS configuration (its
/// digest) of a target with `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct ClientKey {
    reach: reach::Reach,
    tls: Option<String>,
}

impl Runtime {
    /// The HTTP client for a target's grants: one per distinct [`reach::Reach`], so that a
    /// target never resolves a name to an address only another target may reach, and per
    /// TLS configuration, so that a client certificate is presented for its target only.
    fn client_for(&self, grants: &Grants) -> reqwest::Client {
        let key = ClientKey {
            reach: reach::Reach::new(&grants.allowed_hosts, grants.allow_private),
            tls: grants.tls.as_ref().map(|t| t.digest().to_owned()),
        };
        let mut clients = self.inner.http.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        match http_client_for(key.reach.clone(), grants.tls.as_deref()) {
            Ok(client) => clients.entry(key).or_insert(client).clone(),
            Err(e) => {
                // Public addresses only, and no client certificate: never more than the target
                // was granted (a server that wants the certificate refuses the handshake).
                tracing::error!(error = %e, "cannot build an HTTP client; the target reaches public addresses only");
                clients[&ClientKey::default()].clone()
            }
        }
    }

    /// A runtime for one plugin run at a time (`plugin check|run`): see [`Runtime::with_pool`].
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        Self::with_pool(cache_dir, PoolSize::SMALL)
    }

    /// Sets up the engine with an instance pool of `pool` and starts its epoch ticker (a plain
    /// thread, outside tokio, that ends when the engine is dropped). With `cache_dir`,
    /// compiled plugins are kept there and reused across restarts.
    pub fn with_pool(cache_dir: Option<PathBuf>, pool: PoolSize) -> Result<Self, PluginError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // `OUTBOXD_WASM_PROFILER=perfmap` names the compiled plugin functions for `perf`
        // (in /tmp/perf-<pid>.map), so that a profile shows where a plugin spends its time.
        if std::env::var_os(PROFILER_ENV).is_some_and(|v| v == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        pool::configure(&mut config, pool);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        bindings::Target::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;

        let http = std::sync::Mutex::new(std::collections::HashMap::from([(
            ClientKey::default(),
            http_client()?,
        )]));

        // The ticker also drops instances idle for longer than `IDLE_TTL`, about once a
        // second.
        let idle = Arc::new(warm::Idle::default());
        let weak = engine.weak();
        let weak_idle = Arc::downgrade(&idle);
        let sweep_every = (Duration::from_secs(1).as_millis() / EPOCH_TICK.as_millis()).max(1) as u32;
        std::thread::Builder::new()
            .name("outboxd-epoch".into())
            .spawn(move || {
                let mut ticks = 0u32;
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(sweep_every)
                        && let Some(idle) = weak_idle.upgrade()
                    {
                        idle.sweep(IDLE_TTL);
                    }
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| PluginError::Engine(format!("epoch ticker: {e}")))?;

        let cache = cache_dir.and_then(|dir| match cache::CompileCache::new(dir, &engine) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::error!(error = %e, "not using the compile cache: plugins are compiled at every start");
                None
            }
        });
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                http,
                cache,
                slots: pool::Slots::new(pool),
                idle,
            }),
        })
    }

    /// Compiles and validates a component. CPU-heavy and blocking: call it off the async
    /// threads (`spawn_blocking`).
    pub fn compile(&self, bytes: &[u8]) -> Result<Plugin, PluginError> {
        match bytes.get(0..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => return Err(PluginError::CoreModule),
            Some([0, b'a', b's', b'm', ..]) => {}
            _ => return Err(PluginError::NotWasm),
        }
        let started = Instant::now();
        let hash = content_hash(bytes);
        let cache = self.inner.cache.as_ref();
        let (component, from_cache) = match cache.and_then(|c| c.load(&self.inner.engine, &hash)) {
            Some(component) => (component, true),
            None => {
                let component =
                    Component::new(&self.inner.engine, bytes).map_err(|e| PluginError::Invalid(format!("{e:#}")))?;
                (component, false)
            }
        };
        pool::check(&component)?;
        let info = self.describe(&component);
        let wrong_world = |e: wasmtime::Error| {
            let exports = if info.exports.is_empty() {
                "nothing".to_owned()
            } else {
                info.exports.join(", ")
            };
            PluginError::WrongWorld(format!("{e:#} (the component exports: {exports})"))
        };
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Imports(format!("{e:#}")))?;
        let kind = match bindings::TargetPre::new(pre.clone()) {
            Ok(single) => Kind::Single(single),
            Err(single_err) => match batch_bindings::BatchTargetPre::new(pre) {
                Ok(batch) => Kind::Batch(batch),
                Err(_) => return Err(wrong_world(single_err)),
            },
        };
        // Only a component that passed validation is worth caching.
        if let (Some(cache), false) = (cache, from_cache) {
            cache.store(&hash, &component);
        }
        Ok(Plugin {
            runtime: self.clone(),
            kind,
            hash,
            size: bytes.len(),
            compile_time: started.elapsed(),
            from_cache,
            info,
        })
    }

    fn describe(&self, component: &Component) -> PluginInfo {
        let ty = component.component_type();
        let engine = &self.inner.engine;
        let imports: Vec<String> = ty.imports(engine).map(|(name, _)| name.to_owned()).collect();
        let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_owned()).collect();
        let wit_version = imports
            .iter()
            .find_map(|i| i.strip_prefix("outboxd:target/"))
            .and_then(|i| i.split_once('@'))
            .map(|(_, v)| v.to_owned());
        let world = if exports.iter().any(|e| e == "deliver") {
            Some("target")
        } else if exports.iter().any(|e| e == "deliver-batch") {
            Some("batch-target")
        } else {
            None
        };
        PluginInfo {
            world,
            wit_version,
            imports,
            exports,
        }
    }
}

/// The HTTP client behind `http.send`, shared by every plugin of a runtime whose targets
/// reach only public addresses: pooled
/// keep-alive connections (idle ones closed after 90 s; at most as many per host as requests
/// ran at once, which the targets' concurrency bounds), a 10 s connect timeout, no redirects
/// followed, proxy variables ignored, names resolved to public addresses only (see `reach`).
/// Public so that the benchmark measures the same stack.
pub fn http_client() -> Result<reqwest::Client, PluginError> {
    http_client_for(reach::Reach::default(), None)
}

/// With `tls`: its client identity is presented to every server that asks, and its CA
/// certificates, if any, are the only roots trusted.
fn http_client_for(reach: reach::Reach, tls: Option<&tls::ClientTls>) -> Result<reqwest::Client, PluginError> {
    let mut builder = reqwest::Client::builder()
        .dns_resolver(reach::GuardedResolver::new(reach))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90));
    if let Some(tls) = tls {
        if let Some(identity) = &tls.identity {
            builder = builder.identity(identity.clone());
        }
        if !tls.ca.is_empty() {
            builder = builder.tls_built_in_root_certs(false);
            for ca in &tls.ca {
                builder = builder.add_root_certificate(ca.clone());
            }
        }
    }
    builder
        .build()
        .map_err(|e| PluginError::Engine(format!("HTTP client: {e}")))
}

/// The hex SHA-256 of a plugin file: its version identity.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The limits and grants of one target, handed to every invocation.
#[derive(Debug, Clone)]
pub struct Grants {
    /// The target's name, for log lines.
    pub target: Arc<str>,
    /// What the plugin's `config.get` returns (secrets redacted from `Debug`).
    pub config: Arc<BTreeMap<String, ConfigValue>>,
    /// Lower-cased `host:port` pairs the plugin may reach.
    pub allowed_hosts: Arc<[String]>,
    /// Headers the host sets on every request the plugin sends, parsed once at load and
    /// marked sensitive (the manifest's `[headers]`:
    /// credentials the plugin never sees), replacing any of the same name the plugin set.
    pub headers: Arc<[(reqwest::header::HeaderName, reqwest::header::HeaderValue)]>,
    /// The manifest's `[oauth2]`: the token source (and cache) of the loaded target version,
    /// whose token the host sets on requests to its hosts.
    pub oauth2: Option<Arc<oauth2::TokenSource>>,
    /// The manifest's `[tls]`: the client certificate and CA of the target's HTTP client.
    pub tls: Option<Arc<tls::ClientTls>>,
    /// Names in `allowed_hosts` may resolve to loopback, private and link-local addresses
    /// (`allow_private = true`); otherwise only to public ones or those listed.
    pub allow_private: bool,
    /// Deadline of one invocation, outbound HTTP included.
    pub timeout: Duration,
    /// Linear-memory cap of the instance, in bytes.
    pub memory_bytes: usize,
    /// What one invocation may write to the log.
    pub log_budget: LogBudget,
}

/// One event as a plugin sees it.
#[derive(Debug, Clone)]
pub struct EventInput {
    pub id: String,
    pub event_type: String,
    pub payload: String,
    pub idempotency_key: String,
    pub attempt: u32,
    pub created_at_ms: u64,
    pub headers: Vec<(String, String)>,
    /// The trace context the host hands on, as children, in the outbound requests of this
    /// event's attempt (the plugin never sees it; see `telemetry::traces`).
    pub trace: Option<TraceParent>,
}

/// What one batch invocation did: one outcome per event, in order, and what the plugin
/// logged and requested.
#[derive(Debug, Clone)]
pub struct BatchReport {
    pub outcomes: Vec<Outcome>,
    /// What the plugin attached to each event's attempt (`report.detail`), in event order.
    pub details: Vec<Option<String>>,
    pub logs: Vec<LogLine>,
    pub requests: Vec<HttpExchange>,
    pub duration: Duration,
    /// The end of what the guest wrote to stdout and stderr.
    pub output: GuestOutput,
}

/// What one invocation did: its outcome, and what the plugin logged and requested.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    /// What the plugin attached to the attempt (`report.detail`).
    pub detail: Option<String>,
    pub logs: Vec<LogLine>,
    pub requests: Vec<HttpExchange>,
    pub duration: Duration,
    /// The end of what the guest wrote to stdout and stderr.
    pub output: GuestOutput,
}

/// What a component declares: the world it implements, the WIT version of its
/// `outboxd:target` imports, and every import and export by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// `target` when it exports `deliver`, `batch-target` when it exports `deliver-batch`.
    pub world: Option<&'static str>,
    pub wit_version: Option<String>,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// A compiled, validated plugin, ready to instantiate. Cheap to share behind an `Arc`.
pub struct Plugin {
    runtime: Runtime,
    kind: Kind,
    hash: String,
    size: usize,
    compile_time: Duration,
    from_cache: bool,
    info: PluginInfo,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("hash", &self.hash)
            .field("size", &self.size)
            .finish()
    }
}

impl Plugin {
    /// Hex SHA-256 of the file this was compiled from.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Size of the file in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How long compiling and validating took.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Whether the compiled code came from the on-disk cache rather than a compile.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// The world, WIT version, imports and exports of the component.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Whether the plugin implements the `batch-target` world.
    pub fn is_batch(&self) -> bool {
        matches!(self.kind, Kind::Batch(_))
    }

    /// Runs one event in a fresh instance under `grants` (the CLI's `plugin run`; the
    /// dispatcher goes through a [`Binding`], which reuses instances).
    pub async fn deliver(&self, grants: &Grants, event: EventInput) -> Report {
        self.invoke(grants, None, vec![event]).await.into_single()
    }

    /// Runs events in one fresh instance under `grants`: one `deliver-batch` call for a
    /// batch plugin, one `deliver` call after another for a single-event plugin. A trap,
    /// deadline overrun or memory-cap hit fails every event of the call (retryable).
    pub async fn deliver_batch(&self, grants: &Grants, events: Vec<EventInput>) -> BatchReport {
        self.invoke(grants, None, events).await
    }

    /// One invocation. With `warm = Some((key, reuse))` it runs in an idle instance of that
    /// binding when there is one, and keeps its instance afterwards if it ended cleanly (see
    /// [`warm`]); with `None`, in a fresh instance dropped afterwards.
    async fn invoke(&self, grants: &Grants, warm: Option<(u64, u32)>, events: Vec<EventInput>) -> BatchReport {
        let started = Instant::now();
        let deadline = started + grants.timeout;
        let count = events.len();
        let inner = &self.runtime.inner;
        // A warm instance or a free slot of the pool; waiting for one counts against the
        // deadline.
        let taken = tokio::time::timeout(grants.timeout, inner.idle.take(warm.map(|(key, _)| key), &inner.slots)).await;
        let mut instance = match taken {
            Ok(Taken::Warm(instance)) => instance,
            Ok(Taken::Fresh(slot)) => self.new_instance(grants, slot),
            Err(_) => {
                return BatchReport {
                    outcomes: vec![deadline_exceeded(grants.timeout); count],
                    details: vec![None; count],
                    logs: Vec::new(),
                    requests: Vec::new(),
                    duration: started.elapsed(),
                    output: GuestOutput::default(),
                };
            }
        };
        // A batch's requests join the trace of its first traced event.
        let trace = events.iter().find_map(|e| e.trace);
        instance.store.data_mut().begin(deadline, trace);
        // Every tick: yield to the executor (a busy plugin never starves other tasks), and
        // interrupt once the deadline has passed (see `new_instance`).
        instance.store.set_epoch_deadline(1);

        let wit_events: Vec<WitEvent> = events
            .into_iter()
            .map(|event| WitEvent {
                id: event.id,
                event_type: event.event_type,
                payload: event.payload,
                idempotency_key: event.idempotency_key,
                attempt: event.attempt,
                created_at_ms: event.created_at_ms,
                headers: event.headers,
            })
            .collect();
        let call = async {
            let Instance { store, exports, .. } = &mut instance;
            let exports = match exports {
                Some(exports) => exports,
                None => exports.insert(match &self.kind {
                    Kind::Single(pre) => Exports::Single(pre.instantiate_async(&mut *store).await?),
                    Kind::Batch(pre) => Exports::Batch(pre.instantiate_async(&mut *store).await?),
                }),
            };
            match exports {
                Exports::Single(target) => {
                    let mut results = Vec::with_capacity(count);
                    for event in &wit_events {
                        results.push(target.call_deliver(&mut *store, event).await?);
                    }
                    Ok::<_, wasmtime::Error>(results)
                }
                Exports::Batch(target) => target.call_deliver_batch(&mut *store, &wit_events).await,
            }
        };
        // Host calls honour the deadline themselves; this is the backstop for anything that
        // would not return (grace: two ticks).
        let result = tokio::time::timeout(grants.timeout + 2 * EPOCH_TICK, call).await;
        let clean = matches!(&result, Ok(Ok(results)) if results.len() == count);
        let outcomes = match result {
            Err(_) => vec![deadline_exceeded(grants.timeout); count],
            Ok(Err(err)) => vec![classify_trap(&err, grants, &instance.stderr.tail()); count],
            Ok(Ok(results)) if results.len() != count => vec![
                Outcome::Retry {
                    reason: format!("the plugin returned {} results for {count} events", results.len()),
                    after: None,
                };
                count
            ],
            Ok(Ok(results)) => results
                .into_iter()
                .map(|r| match r {
                    Ok(()) => Outcome::Delivered,
                    // A reason is shown and sent on (`outboxd.delivery.dead`): URLs in it keep
                    // only scheme, host and port.
                    Err(DeliveryError::Retry(info)) => Outcome::Retry {
                        reason: cap_text(crate::redact::urls(&info.reason).into_owned(), MAX_REASON_TEXT),
                        after: info.after_ms.map(Duration::from_millis),
                    },
                    Err(DeliveryError::Permanent(reason)) => Outcome::Permanent {
                        reason: cap_text(crate::redact::urls(&reason).into_owned(), MAX_REASON_TEXT),
                    },
                })
                .collect(),
        };
        // A request the host could not authenticate fails the attempt with the host's reason,
        // whatever the plugin made of it (events it delivered before stay delivered).
        let outcomes = match instance.store.data_mut().take_credential_failure() {
            Some(why) => outcomes
                .into_iter()
                .map(|o| match o {
                    Outcome::Delivered => Outcome::Delivered,
                    _ => Outcome::Retry {
                        reason: cap_text(why.clone(), MAX_REASON_TEXT),
                        after: None,
                    },
                })
                .collect(),
            None => outcomes,
        };
        let (logs, requests) = instance.store.data_mut().end();
        let details = instance
            .store
            .data_mut()
            .take_details(wit_events.iter().map(|e| e.id.as_str()));
        let output = GuestOutput {
            stdout: instance.stdout.take(),
            stderr: instance.stderr.take(),
        };
        instance.uses += 1;
        match warm {
            Some((key, reuse)) if clean => {
                let spent = instance.uses >= reuse;
                inner.idle.put(key, instance, spent);
            }
            _ => drop(instance),
        }
        BatchReport {
            outcomes,
            details,
            logs,
            requests,
            duration: started.elapsed(),
            output,
        }
    }

    /// A store for a new instance in `slot`, under `grants`: a WASI context that grants
    /// nothing but captured stdout and stderr, the memory cap, and the epoch callback that
    /// enforces each invocation's deadline. The component is instantiated by its first call.
    fn new_instance(&self, grants: &Grants, slot: pool::Slot) -> Instance {
        let (stdout, stderr) = (TailPipe::new(), TailPipe::new());
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(grants.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState::new(
            wasi,
            ResourceTable::new(),
            limits,
            grants.clone(),
            self.runtime.client_for(grants),
        );
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline() {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Instance::new(store, stdout, stderr, slot)
    }
}

impl BatchReport {
    /// The report of a one-event invocation.
    fn into_single(self) -> Report {
        Report {
            outcome: self.outcomes.into_iter().next().unwrap_or(Outcome::Retry {
                reason: "the plugin returned no result".into(),
                after: None,
            }),
            detail: self.details.into_iter().next().flatten(),
            logs: self.logs,
            requests: self.requests,
            duration: self.duration,
            output: self.output,
        }
    }
}

fn deadline_exceeded(timeout: Duration) -> Outcome {
    Outcome::Retry {
        reason: format!("plugin deadline of {} ms exceeded", timeout.as_millis()),
        after: None,
    }
}

/// Turns a wasmtime error into a retryable outcome with a reason a person can act on: for a
/// trap, the end of the guest's stderr (where runtimes print an uncaught exception, a
/// traceback or a panic message) comes first, then wasmtime's account.
fn classify_trap(err: &wasmtime::Error, grants: &Grants, stderr: &Tail) -> Outcome {
    if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return deadline_exceeded(grants.timeout);
    }
    let text = format!("{err:#}");
    let reason = if text.contains("forcing trap when growing memory") {
        format!(
            "plugin exceeded its memory limit of {} MiB",
            grants.memory_bytes / (1024 * 1024)
        )
    } else {
        let mut t = if stderr.is_empty() {
            format!("plugin trapped: {}", text.replace('\n', " "))
        } else {
            format!(
                "plugin trapped: {}; {}",
                stderr.one_line(TRAP_STDERR_BYTES),
                text.replace('\n', " ")
            )
        };
        if t.len() > 2_000 {
            let mut cut = 2_000;
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            t.truncate(cut);
        }
        t
    };
    Outcome::Retry {
        reason: crate::redact::urls(&reason).into_owned(),
        after: None,
    }
}
