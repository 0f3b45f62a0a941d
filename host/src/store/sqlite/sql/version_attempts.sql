SELECT target, plugin_hash, attempts FROM version_attempts
