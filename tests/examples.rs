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

/// The networks of `conf/examples/geo-sample.mmdb` (documentation addresses only): network,
/// country, continent, AS number (0: none).
const GEO_SAMPLE: [(&str, &str, &str, u32); 5] = [
    ("192.0.2.0/24", "JP", "AS", 0),
    ("198.51.100.0/24", "DE", "EU", 0),
    ("203.0.113.0/25", "US", "NA", 0),
    ("203.0.113.128/25", "US", "NA", 64512),
    ("2001:db8::/32", "BR", "SA", 0),
];

/// The sample database the geo example reads is exactly [`GEO_SAMPLE`] in the GeoLite2
/// layout; `ARCHEIO_WRITE_GEO_SAMPLE=1` writes it again after a change of the table.
#[test]
fn the_sample_geo_database_holds_what_its_table_says() {
    let mut w = mmdb_writer::Writer::new("archeio-example-country-asn");
    for (net, country, continent, asn) in GEO_SAMPLE {
        let mut record = serde_json::json!({
            "continent": {"code": continent},
            "country": {"iso_code": country},
        });
        if asn != 0 {
            record["autonomous_system_number"] = serde_json::json!(asn);
        }
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), &record)
            .unwrap();
    }
    let want = w.to_bytes().unwrap();
    let path = repo_file("conf/examples/geo-sample.mmdb");
    if std::env::var_os("ARCHEIO_WRITE_GEO_SAMPLE").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read(&path).unwrap_or_default();
    // The metadata's build time differs between writes; the tree and records must not.
    let records = |db: &[u8]| {
        let marker = b"\xab\xcd\xefMaxMind.com";
        let end = db
            .windows(marker.len())
            .rposition(|w| w == marker)
            .unwrap_or(db.len());
        db[..end].to_vec()
    };
    assert!(
        records(&have) == records(&want),
        "{} is not what GEO_SAMPLE says: run ARCHEIO_WRITE_GEO_SAMPLE=1 cargo test --test examples",
        path.display()
    );
}
