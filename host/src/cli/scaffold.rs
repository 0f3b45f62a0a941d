//! `outboxd plugin wit` and `outboxd plugin new`: what a plugin author outside this repository
//! needs to start. The WIT contract is embedded at build time, so the binary always hands out
//! the contract it implements; `plugin new` writes a project (Rust, JavaScript or Python) whose
//! build, native unit tests and `plugin run` work without edits. The toolchain pins come from
//! the repository's own builds (`plugins/Cargo.toml`, `plugins/js`, `plugins/python`), so a
//! scaffold builds with exactly the versions the project tests.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::CliError;

/// The WIT package `outboxd:target@0.1.0` this binary implements (`wit/target.wit`).
pub const WIT: &str = include_str!("../../../wit/target.wit");

const PLUGINS_CARGO_TOML: &str = include_str!("../../../plugins/Cargo.toml");
const JS_PACKAGE_JSON: &str = include_str!("../../../plugins/js/package.json");
const JS_PACKAGE_LOCK: &str = include_str!("../../../plugins/js/package-lock.json");
const PY_REQUIREMENTS: &str = include_str!("../../../plugins/python/requirements.txt");

/// The language of a new plugin project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Python,
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Js => "js",
            Lang::Python => "python",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::Python => "Python",
        }
    }
}

/// The WIT world a new plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum World {
    /// One event per call (`deliver`): every ordinary target.
    Target,
    /// Many events per call (`deliver-batch`), for manifests with `class = "batched"`.
    BatchTarget,
}

impl World {
    pub fn as_str(self) -> &'static str {
        match self {
            World::Target => "target",
            World::BatchTarget => "batch-target",
        }
    }
}

/// Options of `outboxd plugin new`.
#[derive(Debug, Clone, clap::Args)]
pub struct NewOptions {
    /// The plugin's name: the directory created under the current one, the component's file
    /// stem and the sample manifest's target name. 1-64 of a-z, 0-9, `-`, `_`, starting with a
    /// letter.
    pub name: String,
    /// The language of the adapter.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// The world it implements.
    #[arg(long, value_enum, default_value_t = World::Target)]
    pub world: World,
}

/// `outboxd plugin wit [--out DIR]`: the WIT text for stdout, or written as `DIR/target.wit`
/// (and a line saying so).
pub fn plugin_wit(out: Option<&Path>) -> Result<String, CliError> {
    let Some(dir) = out else {
        return Ok(WIT.to_owned());
    };
    let file = dir.join("target.wit");
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&file, WIT))
        .map_err(|e| CliError::Input(format!("cannot write {}: {e}", file.display())))?;
    Ok(format!("wrote {}\n", file.display()))
}

/// One file of a project: its path inside the project, its text, and whether it is a script.
struct File {
    path: String,
    text: String,
    executable: bool,
}

fn file(path: impl Into<String>, text: impl Into<String>) -> File {
    File {
        path: path.into(),
        text: text.into(),
        executable: false,
    }
}

fn script(path: &'static str, text: impl Into<String>) -> File {
    File {
        path: path.into(),
        text: text.into(),
        executable: true,
    }
}

fn check_name(name: &str) -> Result<(), CliError> {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    let starts_well = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if starts_well && name.len() <= 64 && name.chars().all(valid_char) {
        Ok(())
    } else {
        Err(CliError::Input(format!(
            "`{name}` is not a valid plugin name: use 1-64 of a-z, 0-9, `-`, `_`, starting with a letter"
        )))
    }
}

/// The exact wit-bindgen version `plugins/` builds with.
fn wit_bindgen_version() -> String {
    let parsed: toml::Table = PLUGINS_CARGO_TOML.parse().expect("plugins/Cargo.toml is valid TOML");
    parsed["workspace"]["dependencies"]["wit-bindgen"]["version"]
        .as_str()
        .expect("plugins/Cargo.toml pins wit-bindgen")
        .to_owned()
}

/// `devDependencies` of `plugins/js/package.json`, as JSON indented for a nested key.
fn js_dev_dependencies() -> String {
    let parsed: serde_json::Value = serde_json::from_str(JS_PACKAGE_JSON).expect("plugins/js/package.json is JSON");
    serde_json::to_string_pretty(&parsed["devDependencies"])
        .expect("JSON serializes")
        .replace('\n', "\n  ")
}

/// `plugins/js/package-lock.json` with the project's name instead of the repository's.
fn js_package_lock(name: &str) -> String {
    JS_PACKAGE_LOCK
        .replace("\"name\": \"outboxd-js-plugins\"", &format!("\"name\": \"{name}\""))
        .replacen(
            "\"license\": \"Apache-2.0\",\n      \"devDependencies\"",
            "\"devDependencies\"",
            1,
        )
}

/// `plugins/python/requirements.txt`'s pins with a header of the project's own.
fn py_requirements() -> String {
    let pins: Vec<&str> = PY_REQUIREMENTS.lines().skip_while(|l| l.starts_with('#')).collect();
    format!(
        "# The toolchain, installed into .venv by build.sh with `pip --require-hashes`: the\n\
         # componentize-py that outboxd's own Python adapters are built and tested with.\n{}\n",
        pins.join("\n")
    )
}

/// The files of a new project, with every placeholder filled in.
fn project_files(name: &str, lang: Lang, world: World) -> Vec<File> {
    let batch = world == World::BatchTarget;
    let pick = |single: &'static str, batched: &'static str| if batch { batched } else { single };
    let mut files = match lang {
        Lang::Rust => vec![
            file("Cargo.toml", include_str!("templates/rust/Cargo.toml")),
            script("build.sh", include_str!("templates/rust/build.sh")),
            file(".gitignore", include_str!("templates/rust/gitignore")),
            file(
                "src/lib.rs",
                include_str!("templates/rust/src/lib.rs").replace(
                    "{{export}}",
                    pick(
                        include_str!("templates/rust/export/target.rs"),
                        include_str!("templates/rust/export/batch-target.rs"),
                    ),
                ),
            ),
            file("src/mapping.rs", include_str!("templates/rust/src/mapping.rs")),
        ],
        Lang::Js => vec![
            file("package.json", include_str!("templates/js/package.json")),
            file("package-lock.json", js_package_lock(name)),
            script("build.sh", include_str!("templates/js/build.sh")),
            file(".gitignore", include_str!("templates/js/gitignore")),
            file(
                "src/index.js",
                include_str!("templates/js/src/index.js").replace(
                    "{{export}}",
                    pick(
                        include_str!("templates/js/export/target.js"),
                        include_str!("templates/js/export/batch-target.js"),
                    ),
                ),
            ),
            file("src/mapping.js", include_str!("templates/js/src/mapping.js")),
            file(
                "test/mapping.test.js",
                include_str!("templates/js/test/mapping.test.js"),
            ),
        ],
        Lang::Python => vec![
            file("requirements.txt", py_requirements()),
            script("build.sh", include_str!("templates/python/build.sh")),
            file(".gitignore", include_str!("templates/python/gitignore")),
            file(
                "src/app.py",
                include_str!("templates/python/src/app.py").replace(
                    "{{export}}",
                    pick(
                        include_str!("templates/python/export/target.py"),
                        include_str!("templates/python/export/batch-target.py"),
                    ),
                ),
            ),
            file("src/mapping.py", include_str!("templates/python/src/mapping.py")),
            file("tests/__init__.py", include_str!("templates/python/tests/__init__.py")),
            file(
                "tests/test_mapping.py",
                include_str!("templates/python/tests/test_mapping.py"),
            ),
        ],
    };
    let (build_command, test_command) = commands(lang);
    let files_table: String = files
        .iter()
        .filter(|f| f.path != ".gitignore")
        .map(|f| format!("| `{}` | {} |\n", f.path, describe_file(&f.path)))
        .collect();
    files.push(file("wit/target.wit", WIT));
    files.push(file(format!("{name}.toml"), include_str!("templates/manifest.toml")));
    files.push(file("README.md", include_str!("templates/README.md")));
    let fill = |text: &str| {
        text.replace("{{files_table}}\n", &files_table)
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{world}}", world.as_str())
            .replace("{{language}}", lang.title())
            .replace("{{build_command}}", build_command)
            .replace("{{test_command}}", test_command)
            .replace("{{wit_bindgen_version}}", &wit_bindgen_version())
            .replace("{{dev_dependencies}}", &js_dev_dependencies())
            .replace("{{class_line}}", if batch { "class = \"batched\"\n" } else { "" })
    };
    for f in &mut files {
        // The WIT and the lock file are copied verbatim.
        if f.path != "wit/target.wit" && f.path != "package-lock.json" {
            f.text = fill(&f.text);
        }
    }
    files
}

/// The build and native test commands of a project, run in its directory.
fn commands(lang: Lang) -> (&'static str, &'static str) {
    match lang {
        Lang::Rust => ("./build.sh", "cargo test"),
        Lang::Js => ("./build.sh", "npm test"),
        Lang::Python => ("./build.sh", "python3 -m unittest"),
    }
}

fn describe_file(path: &str) -> &'static str {
    match path {
        "Cargo.toml" => "the crate; wit-bindgen generates the bindings from `wit/`",
        "package.json" | "package-lock.json" => "the pinned toolchain (componentize-js) and `npm test`",
        "requirements.txt" => "the pinned toolchain (componentize-py), installed into `.venv`",
        "build.sh" => "builds `dist/<name>.wasm`, installing the toolchain on first use",
        "src/lib.rs" | "src/index.js" | "src/app.py" => "the adapter: connects the mapping to the host imports",
        "src/mapping.rs" | "src/mapping.js" | "src/mapping.py" => {
            "the mapping: what to send, what an answer means (plain functions)"
        }
        "test/mapping.test.js" | "tests/test_mapping.py" => "native unit tests of the mapping",
        "tests/__init__.py" => "puts `src/` on the test path",
        _ => "",
    }
}

/// `outboxd plugin new NAME --lang LANG [--world WORLD]`: writes the project into
/// `base/NAME` (which must not exist) and returns what was done and what to do next.
pub fn plugin_new(opts: &NewOptions, base: &Path) -> Result<String, CliError> {
    check_name(&opts.name)?;
    let dir = base.join(&opts.name);
    let files = project_files(&opts.name, opts.lang, opts.world);
    std::fs::create_dir(&dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => CliError::Input(format!(
            "{} already exists: choose another name or remove it",
            dir.display()
        )),
        _ => CliError::Input(format!("cannot create {}: {e}", dir.display())),
    })?;
    if let Err(e) = write_files(&dir, &files) {
        // Leave nothing half-written behind.
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let name = &opts.name;
    let (build, test) = commands(opts.lang);
    let mut out = format!(
        "created {name}/: a {} plugin of world outboxd:target/{}@0.1.0\n",
        opts.lang.title(),
        opts.world.as_str()
    );
    for f in &files {
        let _ = writeln!(out, "  {name}/{}", f.path);
    }
    let _ = write!(
        out,
        "next:\n  cd {name}\n  {build}    # writes dist/{name}.wasm (the first run installs the toolchain)\n  \
         {test}\n  outboxd plugin run dist/{name}.wasm --event '{{\"type\":\"order.created\",\"payload\":{{\"id\":1}}}}' \\\n    \
         --config url=http://127.0.0.1:9100/{name} --allow-host 127.0.0.1:9100\n"
    );
    Ok(out)
}

fn write_files(dir: &Path, files: &[File]) -> Result<(), CliError> {
    for f in files {
        let path: PathBuf = dir.join(&f.path);
        let fail = |e: std::io::Error| CliError::Input(format!("cannot write {}: {e}", path.display()));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(fail)?;
        }
        std::fs::write(&path, &f.text).map_err(fail)?;
        #[cfg(unix)]
        if f.executable {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(fail)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled_for_every_language_and_world() {
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            for world in [World::Target, World::BatchTarget] {
                for f in project_files("demo-x", lang, world) {
                    assert!(
                        !f.text.contains("{{"),
                        "{lang:?}/{world:?}: {} keeps a placeholder",
                        f.path
                    );
                    if f.path != "wit/target.wit" && f.path != "package-lock.json" {
                        assert!(
                            !f.text.contains("outboxd-js-plugins") && !f.text.contains("build-polyglot"),
                            "{}: repository internals leak",
                            f.path
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_pins_are_the_repositorys() {
        let rust = project_files("demo", Lang::Rust, World::Target);
        let cargo = &rust.iter().find(|f| f.path == "Cargo.toml").unwrap().text;
        assert!(
            cargo.contains(&format!("version = \"={}\"", wit_bindgen_version())),
            "{cargo}"
        );

        let js = project_files("demo", Lang::Js, World::Target);
        let package: serde_json::Value =
            serde_json::from_str(&js.iter().find(|f| f.path == "package.json").unwrap().text).unwrap();
        let repo: serde_json::Value = serde_json::from_str(JS_PACKAGE_JSON).unwrap();
        assert_eq!(package["devDependencies"], repo["devDependencies"]);
        assert_eq!(package["name"], "demo");
        let lock: serde_json::Value =
            serde_json::from_str(&js.iter().find(|f| f.path == "package-lock.json").unwrap().text).unwrap();
        assert_eq!(lock["name"], "demo");
        assert_eq!(lock["packages"][""]["name"], "demo");
        assert_eq!(lock["packages"][""]["devDependencies"], repo["devDependencies"]);
        assert!(lock["packages"][""].get("license").is_none());

        let py = project_files("demo", Lang::Python, World::Target);
        let req = &py.iter().find(|f| f.path == "requirements.txt").unwrap().text;
        let pin = PY_REQUIREMENTS
            .lines()
            .find(|l| l.starts_with("componentize-py=="))
            .unwrap();
        assert!(req.contains(pin) && req.matches("--hash=sha256:").count() >= 1, "{req}");
    }

    #[test]
    fn the_batch_world_changes_the_export_and_the_manifest_class() {
        let files = project_files("demo", Lang::Js, World::BatchTarget);
        let text = |p: &str| files.iter().find(|f| f.path == p).unwrap().text.clone();
        assert!(text("src/index.js").contains("export function deliverBatch"));
        assert!(text("build.sh").contains("--world-name batch-target"));
        assert!(text("demo.toml").contains("class = \"batched\""));
        let single = project_files("demo", Lang::Js, World::Target);
        let manifest = &single.iter().find(|f| f.path == "demo.toml").unwrap().text;
        assert!(!manifest.contains("class"), "{manifest}");
    }

    #[test]
    fn new_writes_a_project_and_refuses_bad_names_and_existing_directories() {
        let base = tempfile::tempdir().unwrap();
        let opts = |name: &str| NewOptions {
            name: name.into(),
            lang: Lang::Python,
            world: World::Target,
        };
        let out = plugin_new(&opts("demo-py"), base.path()).unwrap();
        assert!(
            out.contains("demo-py/src/app.py") && out.contains("./build.sh"),
            "{out}"
        );
        let dir = base.path().join("demo-py");
        assert_eq!(std::fs::read_to_string(dir.join("wit/target.wit")).unwrap(), WIT);
        assert!(
            std::fs::read_to_string(dir.join("demo-py.toml"))
                .unwrap()
                .contains("plugin = \"demo-py.wasm\"")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("build.sh")).unwrap().permissions().mode();
            assert_eq!(mode & 0o111, 0o111, "build.sh is executable");
        }

        let again = plugin_new(&opts("demo-py"), base.path()).unwrap_err().to_string();
        assert!(again.contains("already exists"), "{again}");
        for bad in ["", "Demo", "1demo", "de mo", "../demo"] {
            let err = plugin_new(&opts(bad), base.path()).unwrap_err().to_string();
            assert!(err.contains("not a valid plugin name"), "{bad}: {err}");
        }
        let entries = std::fs::read_dir(base.path()).unwrap().count();
        assert_eq!(entries, 1, "refused names created nothing");
    }

    #[test]
    fn wit_is_printed_or_written() {
        assert_eq!(plugin_wit(None).unwrap(), WIT);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("wit");
        plugin_wit(Some(&out)).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("target.wit")).unwrap(), WIT);
        assert!(WIT.contains("package outboxd:target@0.1.0;"));
    }
}
