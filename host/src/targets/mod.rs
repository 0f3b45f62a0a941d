//! The registry of live targets: each manifest paired with its compiled plugin, and the
//! routing table built from them. A reload scans the plugins directory, compiles what
//! changed off to the side, and swaps in a new immutable [`Snapshot`] at once; readers never
//! wait for a compile. Start-up is a reload from an empty registry.

pub mod credentials;
pub mod filter;
pub mod manifest;
#[cfg(test)]
mod proptests;
pub mod routing;
pub mod watcher;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use self::manifest::{TargetSpec, scan_targets};
use self::routing::Routes;
use crate::config::ConfigError;
use crate::domain::{Millis, TargetClass, TargetName, now_ms};
use crate::plugin::{Binding, Grants, Plugin, Runtime, content_hash};

/// A live target: its description, and its compiled plugin bound to the grants derived from
/// both (which keeps the target's warm instances).
#[derive(Debug)]
pub struct Target {
    pub spec: TargetSpec,
    pub binding: Binding,
    pub loaded_at: Millis,
}

/// A file that could not be loaded at the last reload, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The target the file belongs to, when that can be told.
    pub target: Option<TargetName>,
    pub file: PathBuf,
    /// The whole message, for the log: it may quote the file's text.
    pub message: String,
    /// Where in the file (1-based), when known.
    pub line: Option<u32>,
    pub column: Option<u32>,
    /// The message without any of the file's text: what API answers show.
    pub summary: String,
    pub at: Millis,
}

/// A target whose manifest is valid but whose plugin has never loaded: it is routed (its
/// events get deliveries) and its deliveries are held `paused`, with `reason`, until a good
/// plugin file appears.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldTarget {
    pub spec: TargetSpec,
    /// Why the plugin did not load.
    pub reason: String,
}

/// An immutable view of every live target, swapped whole on reload.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub targets: BTreeMap<TargetName, Arc<Target>>,
    /// Valid manifests whose plugin failed to load, with no earlier version to serve.
    pub held: BTreeMap<TargetName, HeldTarget>,
    pub routes: Routes,
    pub errors: Vec<LoadError>,
}

/// The live targets, shared by the API (routing) and the dispatcher (invocation).
pub struct Registry {
    runtime: Runtime,
    dir: PathBuf,
    current: RwLock<Arc<Snapshot>>,
    changed: watch::Sender<Arc<Snapshot>>,
}

impl Registry {
    /// An empty registry over `dir`; call [`Registry::reload`] to load it.
    pub fn new(runtime: Runtime, dir: PathBuf) -> Self {
        let empty = Arc::new(Snapshot::default());
        Self {
            runtime,
            dir,
            current: RwLock::new(Arc::clone(&empty)),
            changed: watch::channel(empty).0,
        }
    }

    /// The current snapshot. Never blocks on a reload.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Notified with every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.changed.subscribe()
    }

    /// The plugins directory this registry loads from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rescans the plugins directory and swaps in the result. A target whose files are
    /// broken keeps its previous version, if it had one; the errors are in the snapshot.
    pub async fn reload(&self) -> Arc<Snapshot> {
        let previous = self.snapshot();
        let now = now_ms();
        let mut errors = Vec::new();
        let scan = match scan_targets(&self.dir) {
            Ok(scan) => scan,
            Err(e) => {
                tracing::error!(error = %e, "cannot scan the plugins directory");
                errors.push(load_error(&e, None, now));
                return self.publish(Snapshot {
                    targets: previous.targets.clone(),
                    held: previous.held.clone(),
                    routes: previous.routes.clone(),
                    errors,
                });
            }
        };

        let mut targets = BTreeMap::new();
        let mut held = BTreeMap::new();
        // Plugins compiled during this reload, by content hash: targets sharing a file
        // compile it once.
        let mut compiled: HashMap<String, Arc<Plugin>> = previous
            .targets
            .values()
            .map(|t| (t.binding.plugin().hash().to_owned(), Arc::clone(t.binding.plugin())))
            .collect();
        for spec in scan.targets {
            let loaded = self.load_plugin(&spec, &mut compiled).await.and_then(|plugin| {
                if spec.class == TargetClass::Batched && !plugin.is_batch() {
                    Err(format!(
                        "{}: `class = \"batched\"` needs a plugin of world `batch-target` (exporting `deliver-batch`)",
                        spec.plugin_path.display()
                    ))
                } else {
                    Ok(plugin)
                }
            });
            match loaded {
                Ok(plugin) => {
                    let unchanged = previous
                        .targets
                        .get(&spec.name)
                        .filter(|old| old.spec == spec && Arc::ptr_eq(old.binding.plugin(), &plugin));
                    let target = match unchanged {
                        Some(old) => Arc::clone(old),
                        None => {
                            tracing::info!(
                                target = %spec.name,
                                plugin = %spec.plugin_path.display(),
                                hash = &plugin.hash()[..12],
                                source = if plugin.from_cache() { "cache" } else { "compiled" },
                                load_ms = plugin.compile_time().as_millis() as u64,
                                "target loaded"
                            );
                            Arc::new(Target {
                                binding: Binding::new(plugin, grants_for(&spec), spec.instance_reuse),
                                spec,
                                loaded_at: now,
                            })
                        }
                    };
                    targets.insert(target.spec.name.clone(), target);
                }
                Err(message) => {
                    tracing::error!(target = %spec.name, file = %spec.plugin_path.display(), %message, "plugin not loaded");
                    errors.push(LoadError {
                        target: Some(spec.name.clone()),
                        file: spec.plugin_path.clone(),
                        message: message.clone(),
                        line: None,
                        column: None,
                        summary: message.clone(),
                        at: now,
                    });
                    if let Some(old) = previous.targets.get(&spec.name) {
                        targets.insert(spec.name.clone(), Arc::clone(old));
                    } else {
                        // Nothing to serve with: route by the manifest all the same and hold
                        // the deliveries until a good plugin file appears.
                        held.insert(spec.name.clone(), HeldTarget { spec, reason: message });
                    }
                }
            }
        }
        for e in scan.errors {
            tracing::error!(error = %e, "target manifest not loaded");
            // A broken manifest keeps its target's previous version serving.
            let name = e
                .path()
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<TargetName>().ok());
            if let Some(name) = &name
                && let Some(old) = previous.targets.get(name)
            {
                targets.entry(name.clone()).or_insert_with(|| Arc::clone(old));
            } else if let Some(name) = &name
                && let Some(old) = previous.held.get(name)
            {
                // A held target whose manifest broke keeps being held as it was.
                held.entry(name.clone()).or_insert_with(|| old.clone());
            }
            errors.push(load_error(&e, name, now));
        }
        for name in previous.targets.keys().filter(|n| !targets.contains_key(*n)) {
            tracing::info!(target = %name, "target removed; its pending deliveries are paused");
        }
        let routes = Routes::new(
            targets
                .values()
                .map(|t| &t.spec)
                .chain(held.values().map(|h| &h.spec))
                .map(TargetSpec::route),
        );
        crate::telemetry::metrics::reload_finished(errors.len());
        self.publish(Snapshot {
            targets,
            held,
            routes,
            errors,
        })
    }

    async fn load_plugin(
        &self,
        spec: &TargetSpec,
        compiled: &mut HashMap<String, Arc<Plugin>>,
    ) -> Result<Arc<Plugin>, String> {
        let path = spec.plugin_path.clone();
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let hash = content_hash(&bytes);
        if let Some(plugin) = compiled.get(&hash) {
            return Ok(Arc::clone(plugin));
        }
        let runtime = self.runtime.clone();
        let plugin = tokio::task::spawn_blocking(move || runtime.compile(&bytes))
            .await
            .map_err(|e| format!("compiler task failed: {e}"))?
            .map_err(|e| format!("{}: {e}", path.display()))?;
        crate::telemetry::metrics::plugin_loaded(plugin.from_cache(), plugin.compile_time());
        let plugin = Arc::new(plugin);
        compiled.insert(hash, Arc::clone(&plugin));
        Ok(plugin)
    }

    fn publish(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let snapshot = Arc::new(snapshot);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&snapshot);
        self.changed.send_replace(Arc::clone(&snapshot));
        snapshot
    }
}

fn load_error(e: &ConfigError, target: Option<TargetName>, at: Millis) -> LoadError {
    let located = e.located();
    LoadError {
        target,
        file: located.file,
        message: e.to_string(),
        line: located.line,
        column: located.column,
        summary: located.message,
        at,
    }
}

fn grants_for(spec: &TargetSpec) -> Grants {
    Grants {
        target: Arc::from(spec.name.as_str()),
        config: Arc::new(spec.config.clone()),
        allowed_hosts: spec.allowed_hosts.clone().into(),
        headers: spec.held_headers().into(),
        oauth2: spec
            .oauth2
            .clone()
            .map(|c| Arc::new(crate::plugin::oauth2::TokenSource::new(c))),
        tls: spec.tls.clone(),
        allow_private: spec.allow_private,
        timeout: spec.timeout,
        memory_bytes: spec.memory_bytes,
        log_budget: spec.log_budget,
    }
}
