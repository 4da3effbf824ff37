//! The shell scripts a newcomer runs first (`scripts/*.sh`, `.ci/run`) parse, pass shellcheck when it
//! is installed, and the README names the Rust version Cargo.toml requires.

use std::path::{Path, PathBuf};
use std::process::Command;

fn scripts() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(root.join("scripts"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sh"))
        .collect();
    scripts.sort();
    scripts.push(root.join(".ci/run"));
    assert!(scripts.len() >= 3, "scripts/install-deps.sh, scripts/demo.sh and .ci/run: {scripts:?}");
    scripts
}

#[test]
fn every_script_parses_and_passes_shellcheck() {
    let shellcheck = Command::new("shellcheck").arg("--version").output().is_ok_and(|out| out.status.success());
    if !shellcheck {
        eprintln!("shellcheck is not installed: only `bash -n` checks the scripts");
    }
    for script in scripts() {
        let out = Command::new("bash").arg("-n").arg(&script).output().unwrap();
        assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
        if shellcheck {
            let out = Command::new("shellcheck").arg(&script).output().unwrap();
            assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stdout));
        }
    }
}

#[test]
fn the_readme_names_the_minimum_rust_version() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let version = cargo
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("Cargo.toml sets rust-version");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains(&format!("Rust {version} or newer")), "README.md must say \"Rust {version} or newer\"");
}

#[test]
fn the_scripts_refuse_unknown_arguments() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for script in ["scripts/install-deps.sh", "scripts/demo.sh"] {
        let out = Command::new(root.join(script)).arg("--no-such-option").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{script}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("unknown argument --no-such-option") && said.contains("usage"), "{script}: {said}");
    }
}
