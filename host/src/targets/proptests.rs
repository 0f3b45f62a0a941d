//! Property tests of the manifest loader: whatever a manifest file holds, loading it returns a
//! target or an error that names the file (never a panic), the error shown to API clients
//! never quotes the file, and an accepted target keeps the documented ranges. Bounded (a few
//! hundred cases), so they run in every `cargo test`.

use std::path::Path;

use proptest::prelude::*;

use super::manifest::TargetSpec;
use crate::config::parse_toml;

/// Manifest lines: known keys with values of the right and wrong types, unknown keys, junk.
fn line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("timeout_ms"),
        Just("concurrency"),
        Just("memory_mb"),
        Just("instance_reuse"),
        Just("rate_per_sec"),
        Just("max_batch"),
        Just("linger_ms"),
        Just("ordered"),
        Just("allow_private"),
        Just("class"),
        Just("concurrency_mode"),
        Just("events"),
        Just("allowed_hosts"),
        Just("plugin"),
        Just("unknown_key"),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..5000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z.*:0-9-]{0,12}".prop_map(|s| format!("{s:?}")),
        prop::collection::vec("[a-z.*:0-9\\[\\]-]{0,12}", 0..3).prop_map(|v| format!("{v:?}")),
        "[ -~]{0,16}",
    ];
    prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop_oneof![
            Just("[retry]".to_owned()),
            Just("[breaker]".to_owned()),
            Just("[config]".to_owned()),
            Just("[log]".to_owned()),
        ],
        1 => "[ -~]{0,24}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_manifest_loads_or_is_refused_cleanly(lines in prop::collection::vec(line(), 0..8)) {
        let text = lines.join("\n") + "\n";
        let name = "fuzz".parse().unwrap();
        if let Ok(spec) = TargetSpec::from_toml(name, &text, Path::new("/plugins")) {
            prop_assert!(spec.concurrency >= 1 && spec.concurrency <= 1024);
            prop_assert!(spec.memory_bytes >= 1 << 20 && spec.memory_bytes <= 4096 << 20);
            prop_assert!(!spec.timeout.is_zero());
            prop_assert!(spec.retry.max_attempts >= 1);
            prop_assert!(spec.allowed_hosts.iter().all(|h| h.contains(':')));
        }
        // Read as a file: an error located for API clients never quotes the text.
        if let Err(e) = parse_toml::<toml::Table>(Path::new("/plugins/fuzz.toml"), &text) {
            let at = e.located();
            prop_assert!(at.line.is_some() && at.column.is_some(), "{e}");
            for l in &lines {
                if l.len() > 12 && !at.message.is_empty() {
                    prop_assert!(!at.message.contains(l.as_str()), "{} quotes {l:?}", at.message);
                }
            }
        }
    }
}
