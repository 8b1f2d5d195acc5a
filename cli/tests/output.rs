//! What `sandboxctl` prints, without a VM: listings as aligned tables or JSON (`--json`,
//! `-o json`), and logs without ANSI colour codes unless written to a terminal without
//! `NO_COLOR`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn sandboxctl(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandboxctl"));
    cmd.arg("--config").arg(config).args(args).stdin(Stdio::null()).env_remove("NO_COLOR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running sandboxctl")
}

fn ok(config: &Path, args: &[&str]) -> String {
    let out = sandboxctl(config, args, &[]);
    assert!(out.status.success(), "sandboxctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A config with an fs store and a plugin directory holding one file that is no plugin (so
/// discovery logs its refusal, at INFO).
fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).expect("plugin dir");
    std::fs::write(plugins.join("libnot_a_plugin.so"), b"not an ELF file").expect("bad plugin");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[plugins]\ndirs = ['plugins']\n[storage]\nplugin = 'fs'\npath = 'store'\n").expect("config");
    (dir, config)
}

/// The column at which `title` starts in the first line, and the same column in each other line
/// holds a non-blank character preceded by a blank (a cell starts there).
fn assert_aligned(text: &str, title: &str) {
    let mut lines = text.lines();
    let header = lines.next().expect("a title line");
    let col = header.find(title).unwrap_or_else(|| panic!("no {title} in {header:?}"));
    for line in lines {
        let chars: Vec<char> = line.chars().collect();
        assert!(chars.len() > col && chars[col] != ' ' && chars[col - 1] == ' ', "column {title} not aligned in {line:?}:\n{text}");
    }
}

#[test]
fn store_list_is_a_table_or_json() {
    let (_dir, config) = setup();
    for key in ["k/short", "k/a-much-much-longer-key-than-the-others"] {
        ok(&config, &["store", "put", key, "v"]);
    }
    let table = ok(&config, &["store", "list", "k/"]);
    assert_eq!(table.lines().collect::<Vec<_>>(), ["KEY", "k/a-much-much-longer-key-than-the-others", "k/short"], "{table}");
    for flags in [&["--json"][..], &["-o", "json"], &["--output", "json"]] {
        let args: Vec<&str> = ["store", "list", "k/"].iter().chain(flags).copied().collect();
        let keys: Vec<String> = serde_json::from_str(&ok(&config, &args)).expect("JSON");
        assert_eq!(keys, ["k/a-much-much-longer-key-than-the-others", "k/short"]);
    }
}

#[test]
fn plugins_is_an_aligned_table_or_json() {
    let (_dir, config) = setup();
    let table = ok(&config, &["plugins"]);
    let rows: Vec<&str> = table.lines().take_while(|l| !l.starts_with("refused:")).collect();
    assert!(rows.len() >= 5, "the title and the four built-in plugins: {table}");
    for title in ["NAME", "VERSION", "API", "VENDOR", "SOURCE"] {
        assert_aligned(&rows.join("\n"), title);
    }
    assert!(table.lines().any(|l| l.starts_with("refused: ") && l.contains("libnot_a_plugin.so")), "{table}");
    let json: serde_json::Value = serde_json::from_str(&ok(&config, &["--json", "plugins"])).expect("JSON");
    let names: Vec<&str> = json["plugins"].as_array().expect("plugins").iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(names.contains(&"fs") && names.contains(&"qemu"), "{json}");
    assert!(json["refused"][0]["path"].as_str().is_some_and(|p| p.ends_with("libnot_a_plugin.so")), "{json}");
}

#[test]
fn list_without_sandboxes_is_a_title_or_an_empty_array() {
    let (_dir, config) = setup();
    assert_eq!(ok(&config, &["list"]).trim_end(), "ID   STATE   VM   HYPERVISOR   CONTAINERS");
    let json: serde_json::Value = serde_json::from_str(&ok(&config, &["list", "--json"])).expect("JSON");
    assert_eq!(json, serde_json::json!([]));
}

#[test]
fn a_refused_library_is_told_once_and_named_where_it_matters() {
    let (dir, config) = setup();
    let out = sandboxctl(&config, &["plugins"], &[]);
    let told = String::from_utf8_lossy(&out.stdout).matches("libnot_a_plugin.so").count()
        + String::from_utf8_lossy(&out.stderr).matches("libnot_a_plugin.so").count();
    assert_eq!(told, 1, "{out:?}");
    std::fs::write(&config, "[plugins]\ndirs = ['plugins']\n[storage]\nplugin = 'not_a_plugin'\n").expect("config");
    let out = sandboxctl(&config, &["store", "list"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(&format!("{}, table [storage]", config.display())), "names the file and table: {err}");
    assert!(err.contains("no storage plugin named \"not_a_plugin\"") && err.contains("refused: ") && err.contains("libnot_a_plugin.so"), "{err}");
    drop(dir);
}

#[test]
fn a_plugin_setting_error_names_the_file_table_and_key() {
    let (_dir, config) = setup();
    std::fs::write(&config, "[storage]\nplugin = 'fs'\npath = 'store'\ncolour = 'blue'\n").expect("config");
    let out = sandboxctl(&config, &["store", "list"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        err.trim_end(),
        format!(
            "error: config file {}, table [storage]: storage plugin \"fs\" failed to start: invalid input: storage-fs config: unknown field `colour`, expected `path`",
            config.display()
        )
    );
}

#[test]
fn an_unknown_output_format_is_refused_by_name() {
    let (_dir, config) = setup();
    let out = sandboxctl(&config, &["-o", "yaml", "list"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("yaml") && err.contains("table") && err.contains("json"), "{err}");
}

#[test]
fn logs_to_a_pipe_carry_no_colour() {
    let (_dir, config) = setup();
    let out = sandboxctl(&config, &["--log", "info", "plugins"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INFO") && err.contains("libnot_a_plugin.so"), "the refused plugin is logged: {err}");
    assert!(!err.contains('\u{1b}'), "no escape codes in a pipe: {err:?}");
}

#[test]
fn logs_to_a_terminal_are_coloured_unless_no_color() {
    let (_dir, config) = setup();
    // script(1) gives sandboxctl a terminal; its output is what the terminal showed.
    let on_terminal = |no_color: Option<&str>| {
        let cmd = format!("{} --config {} --log info plugins", env!("CARGO_BIN_EXE_sandboxctl"), config.display());
        let mut script = Command::new("script");
        script.args(["-qec", &cmd, "/dev/null"]).stdin(Stdio::null()).env_remove("NO_COLOR");
        if let Some(v) = no_color {
            script.env("NO_COLOR", v);
        }
        let out = script.output().expect("script(1) (Debian package bsdutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_terminal(None);
    assert!(coloured.contains("INFO") && coloured.contains('\u{1b}'), "a terminal gets colour: {coloured:?}");
    let plain = on_terminal(Some("1"));
    assert!(plain.contains("INFO") && !plain.contains('\u{1b}'), "NO_COLOR=1 removes it: {plain:?}");
}
