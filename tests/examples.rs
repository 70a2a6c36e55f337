//! Every worked example in `conf/examples` runs as its header says (issue 26): the
//! `archeio -t -c ... --explain ...` command in its first comment lines, with the variables
//! its `export` line names, from a working directory that is not the repository.

mod common;

use std::process::Command;

use common::{repo_file, BINARY};

/// The example's documented command, as arguments after `archeio`, and the variables its
/// `export` line names.
fn header_command(text: &str) -> (Vec<String>, Vec<String>) {
    let comments: Vec<&str> = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect();
    let exports = comments
        .iter()
        .filter_map(|l| l.strip_prefix("export "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
        .collect();
    let start = comments
        .iter()
        .position(|l| l.starts_with("archeio -t"))
        .expect("the header shows its archeio -t command");
    let mut line = String::new();
    for part in &comments[start..] {
        line.push_str(part.trim_end_matches('\\'));
        line.push(' ');
        if !part.ends_with('\\') {
            break;
        }
    }
    let args = line
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    (args, exports)
}

#[test]
fn every_example_runs_as_its_header_says_from_another_directory() {
    let elsewhere = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for entry in std::fs::read_dir(repo_file("conf/examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let (mut args, exports) = header_command(&text);
        for arg in &mut args {
            if arg.starts_with("conf/examples/") {
                *arg = repo_file(arg).display().to_string();
            }
        }
        let mut cmd = Command::new(BINARY);
        cmd.args(&args).current_dir(elsewhere.path());
        for var in archeio::config::ENV_VARS {
            cmd.env_remove(var);
        }
        for name in exports {
            // Base64, as an Azure account key must be; any string does for the others.
            cmd.env(name, "ZXhhbXBsZSBrZXk=");
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}: archeio {}\n{stdout}\n{stderr}",
            path.display(),
            args.join(" ")
        );
        assert!(
            stdout.contains("placement:") && stdout.contains("rule:"),
            "{}: no explanation\n{stdout}",
            path.display()
        );
        ran += 1;
    }
    assert!(ran >= 3, "{ran} examples found");
}
