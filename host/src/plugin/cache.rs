//! The on-disk cache of compiled plugins, so that a restart with unchanged plugins does not
//! recompile them. An entry is keyed by the plugin file's content hash and the engine's
//! compatibility hash, and carries the SHA-256 of its own body: an entry that is truncated,
//! corrupt, or from another engine is never deserialized; it is ignored and rebuilt.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8] = b"OUTBOXD-CWASM-1\n";
const DIGEST_LEN: usize = 32;

/// A directory of compiled components for one engine configuration.
#[derive(Debug, Clone)]
pub(crate) struct CompileCache {
    dir: PathBuf,
    engine_hash: String,
}

impl CompileCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Self {
        // DefaultHasher::new() has fixed keys: the same engine build and configuration give
        // the same value in every process.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        Self {
            dir,
            engine_hash: format!("{:016x}", h.finish()),
        }
    }

    fn entry(&self, content_hash: &str) -> PathBuf {
        self.dir.join(format!("{content_hash}-{}.cwasm", self.engine_hash))
    }

    /// The cached component for `content_hash`, if a sound entry exists.
    pub(crate) fn load(&self, engine: &Engine, content_hash: &str) -> Option<Component> {
        let path = self.entry(content_hash);
        let bytes = std::fs::read(&path).ok()?;
        let body = match verify(&bytes) {
            Some(body) => body,
            None => {
                tracing::warn!(file = %path.display(), "compile cache entry is corrupt; recompiling");
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        // SAFETY: `body` is byte for byte what `store` wrote from `Component::serialize` (its
        // SHA-256 matched), and its name pins the engine build; wasmtime also checks the
        // engine compatibility header itself and fails rather than load a mismatch.
        match unsafe { Component::deserialize(engine, body) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "compile cache entry unusable; recompiling");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a compiled component; failures only cost a recompile later, so they are logged.
    pub(crate) fn store(&self, content_hash: &str, component: &Component) {
        if let Err(e) = self.try_store(content_hash, component) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the compile cache");
        }
    }

    fn try_store(&self, content_hash: &str, component: &Component) -> Result<(), String> {
        let body = component.serialize().map_err(|e| format!("{e:#}"))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let mut bytes = Vec::with_capacity(MAGIC.len() + DIGEST_LEN + body.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&Sha256::digest(&body));
        bytes.extend_from_slice(&body);
        let path = self.entry(content_hash);
        write_atomically(&path, &bytes).map_err(|e| e.to_string())
    }
}

/// The body of a cache file whose header and digest check out.
fn verify(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(MAGIC)?;
    if rest.len() < DIGEST_LEN {
        return None;
    }
    let (digest, body) = rest.split_at(DIGEST_LEN);
    (Sha256::digest(body).as_slice() == digest).then_some(body)
}

/// Writes to a temporary file beside `path`, then renames it into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_intact_entries_verify() {
        let body = b"compiled code";
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&Sha256::digest(body));
        bytes.extend_from_slice(body);
        assert_eq!(verify(&bytes), Some(&body[..]));

        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(verify(&flipped), None, "a flipped bit is caught");
        assert_eq!(verify(&bytes[..bytes.len() - 3]), None, "truncation is caught");
        assert_eq!(verify(b"OUTBOXD-CWASM-1\nshort"), None);
        assert_eq!(verify(b"garbage"), None);
    }
}
