//! The on-disk cache of compiled plugins, so that a restart with unchanged plugins does not
//! recompile them. An entry is keyed by the plugin file's content hash and the engine's
//! compatibility hash. A cache entry is native code the host will run, so it is trusted only
//! when it is outboxd's own:
//!
//! - the directory is created `0700`, and one owned by another user, or writable by its
//!   group or by others, is refused (the host then compiles without a cache);
//! - each entry carries an HMAC-SHA256 of its name and body under a key kept outside the
//!   directory (`<cache_dir>.key`, created `0600`; refused when others may read or write it):
//!   an entry that is truncated, corrupt, from another engine, or planted by someone without
//!   the key is never deserialized; it is ignored and rebuilt.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8] = b"OUTBOXD-CWASM-2\n";
const MAC_LEN: usize = 32;
const KEY_LEN: usize = 32;

type Key = [u8; KEY_LEN];

/// A directory of compiled components for one engine configuration.
#[derive(Debug, Clone)]
pub(crate) struct CompileCache {
    dir: PathBuf,
    engine_hash: String,
    key: Key,
}

impl CompileCache {
    /// The cache in `dir`, or why it cannot be trusted (then the host compiles without one).
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Result<Self, String> {
        // DefaultHasher::new() has fixed keys: the same engine build and configuration give
        // the same value in every process.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        private_dir(&dir)?;
        let key = load_or_create_key(&key_path(&dir))?;
        Ok(Self {
            dir,
            engine_hash: format!("{:016x}", h.finish()),
            key,
        })
    }

    fn mac(&self, name: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(MAGIC);
        mac.update(name.as_bytes());
        mac
    }

    fn name(&self, content_hash: &str) -> String {
        format!("{content_hash}-{}.cwasm", self.engine_hash)
    }

    /// The cached component for `content_hash`, if a sound entry exists.
    pub(crate) fn load(&self, engine: &Engine, content_hash: &str) -> Option<Component> {
        let name = self.name(content_hash);
        let path = self.dir.join(&name);
        let bytes = std::fs::read(&path).ok()?;
        let body = match verify(self.mac(&name), &bytes) {
            Some(body) => body,
            None => {
                tracing::warn!(file = %path.display(), "compile cache entry is corrupt or not outboxd's own; recompiling");
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        // SAFETY: `body` is byte for byte what `store` wrote from `Component::serialize` (its
        // MAC under our key matched, so no one without the key wrote it), and its name pins
        // the engine build; wasmtime also checks the
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
        private_dir(&self.dir)?;
        let name = self.name(content_hash);
        let bytes = seal(self.mac(&name), &body);
        write_atomically(&self.dir.join(name), &bytes).map_err(|e| e.to_string())
    }
}

/// `MAGIC`, the MAC of the entry's name and body, and the body.
fn seal(mut mac: Hmac<Sha256>, body: &[u8]) -> Vec<u8> {
    mac.update(body);
    let mut bytes = Vec::with_capacity(MAGIC.len() + MAC_LEN + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&mac.finalize().into_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// The body of a cache file whose header and MAC check out (compared in constant time).
fn verify(mut mac: Hmac<Sha256>, bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(MAGIC)?;
    if rest.len() < MAC_LEN {
        return None;
    }
    let (tag, body) = rest.split_at(MAC_LEN);
    mac.update(body);
    mac.verify_slice(tag).ok().map(|()| body)
}

/// `<cache_dir>.key`: beside the directory, not in it, so that whoever may write entries
/// cannot also replace the key.
fn key_path(dir: &Path) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "outboxd-cache".into());
    name.push(".key");
    dir.with_file_name(name)
}

/// Creates `dir` (and its parents) with mode `0700`, or checks that the existing one is this
/// user's and not writable by anyone else.
fn private_dir(dir: &Path) -> Result<(), String> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| format!("cannot create the compile cache {}: {e}", dir.display()))?;
    check_private(dir, 0o022, "writable by its group or others")
}

/// Refuses `path` when another user owns it or its mode has any of `forbidden`.
#[cfg(unix)]
fn check_private(path: &Path, forbidden: u32, what: &str) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "{} is owned by user {}, not by this process's user {me}: refused, it could hold code \
             someone else planted",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & forbidden != 0 {
        return Err(format!(
            "{} is {what} (mode {:o}): refused; `chmod go-rwx` it",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path, _: u32, _: &str) -> Result<(), String> {
    Ok(())
}

/// Reads the cache key, or creates it (`0600`, random) when there is none.
fn load_or_create_key(path: &Path) -> Result<Key, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            check_private(path, 0o077, "readable or writable by its group or others")?;
            <Key>::try_from(bytes.as_slice())
                .map_err(|_| format!("{} is not a compile cache key ({KEY_LEN} bytes)", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: Key = rand::random();
            // Written whole beside it, then linked into place (which fails if the name exists):
            // a host starting at the same moment reads either no key or the whole of one.
            let tmp = path.with_extension(format!("key-{}", std::process::id()));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let linked = options
                .open(&tmp)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &key))
                .and_then(|()| std::fs::hard_link(&tmp, path));
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(key),
                // Another process created it at the same moment: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(path),
                Err(e) => Err(format!("cannot create the compile cache key {}: {e}", path.display())),
            }
        }
        Err(e) => Err(format!("cannot read the compile cache key {}: {e}", path.display())),
    }
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

    fn mac(key: &[u8], name: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
        mac.update(MAGIC);
        mac.update(name.as_bytes());
        mac
    }

    #[test]
    fn only_intact_entries_sealed_with_our_key_verify() {
        let body = b"compiled code";
        let bytes = seal(mac(b"k1", "a.cwasm"), body);
        assert_eq!(verify(mac(b"k1", "a.cwasm"), &bytes), Some(&body[..]));

        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(verify(mac(b"k1", "a.cwasm"), &flipped), None, "a flipped bit is caught");
        assert_eq!(
            verify(mac(b"k1", "a.cwasm"), &bytes[..bytes.len() - 3]),
            None,
            "truncation is caught"
        );
        assert_eq!(verify(mac(b"k2", "a.cwasm"), &bytes), None, "planted without the key");
        assert_eq!(verify(mac(b"k1", "b.cwasm"), &bytes), None, "moved to another name");
        // What the old cache wrote (an unkeyed SHA-256) is not accepted.
        let mut unkeyed = MAGIC.to_vec();
        unkeyed.extend_from_slice(&<Sha256 as sha2::Digest>::digest(body));
        unkeyed.extend_from_slice(body);
        assert_eq!(verify(mac(b"k1", "a.cwasm"), &unkeyed), None);
        assert_eq!(verify(mac(b"k1", "a.cwasm"), b"garbage"), None);
    }

    #[cfg(unix)]
    #[test]
    fn the_cache_is_private_and_its_key_outside_it() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        let engine = Engine::default();
        CompileCache::new(dir.clone(), &engine).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let key = root.path().join("cache.key");
        assert_eq!(mode(&key), 0o600);
        let first = std::fs::read(&key).unwrap();
        CompileCache::new(dir.clone(), &engine).unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), first, "the key is kept across starts");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = CompileCache::new(dir.clone(), &engine).unwrap_err();
        assert!(e.contains("writable by its group or others"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = CompileCache::new(dir.clone(), &engine).unwrap_err();
        assert!(e.contains("cache.key"), "{e}");
        // Owned by someone else: root's `/`, or (running as root) a cache given to nobody.
        let foreign = if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            dir.clone()
        } else {
            PathBuf::from("/")
        };
        let e = check_private(&foreign, 0o022, "x").unwrap_err();
        assert!(e.contains("is owned by user"), "{e}");
    }
}
