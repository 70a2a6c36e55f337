//! The distribution spec's pull endpoints and its grammar for repository names, tags and
//! digests (OCI distribution spec 1.1, "Pulling"; the reference grammar of
//! `distribution/reference`). A path is served only when it parses here, so nothing the
//! upstream could read as another repository (`..;`, escapes, `;params`) is ever joined
//! after the upstream prefix.

/// Longest repository name (the spec's clients limit host + `/` + name to 255 bytes).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag.
pub const MAX_TAG_LEN: usize = 128;

/// A pull endpoint, parsed from the path after `/v2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `/<name>/manifests/<reference>`
    Manifest {
        name: &'a str,
        reference: Reference<'a>,
    },
    /// `/<name>/blobs/<digest>`
    Blob { name: &'a str, digest: &'a str },
    /// `/<name>/tags/list`
    TagList { name: &'a str },
    /// `/<name>/referrers/<digest>`
    Referrers { name: &'a str, digest: &'a str },
}

impl<'a> Endpoint<'a> {
    /// The repository name.
    pub fn name(&self) -> &'a str {
        match *self {
            Endpoint::Manifest { name, .. }
            | Endpoint::Blob { name, .. }
            | Endpoint::TagList { name }
            | Endpoint::Referrers { name, .. } => name,
        }
    }
}

/// A manifest reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference<'a> {
    Tag(&'a str),
    Digest(&'a str),
}

/// Why a path is not a pull endpoint; each maps to an OCI error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not one of the four pull endpoint shapes.
    NotAnEndpoint,
    /// The repository name breaks the grammar.
    Name,
    /// The tag breaks the grammar.
    Tag,
    /// The digest breaks the grammar.
    Digest,
}

impl Refusal {
    /// The OCI error code.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::NotAnEndpoint => "NAME_UNKNOWN",
            Refusal::Name => "NAME_INVALID",
            Refusal::Tag => "TAG_INVALID",
            Refusal::Digest => "DIGEST_INVALID",
        }
    }

    /// The error message.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::NotAnEndpoint => "not a registry pull endpoint",
            Refusal::Name => "repository name does not match the distribution grammar",
            Refusal::Tag => "tag does not match the distribution grammar",
            Refusal::Digest => "digest does not match the distribution grammar",
        }
    }
}

/// Parses `rest` (the path after `/v2`, starting with `/`). The endpoint kind is read from
/// the end, so a name may itself contain `manifests` or `blobs` components.
pub fn parse_endpoint(rest: &str) -> Result<Endpoint<'_>, Refusal> {
    let path = rest.strip_prefix('/').ok_or(Refusal::NotAnEndpoint)?;
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Ok(Endpoint::TagList {
            name: name_ok(name)?,
        });
    }
    let (before, last) = split_last(path).ok_or(Refusal::NotAnEndpoint)?;
    let (name, kind) = split_last(before).ok_or(Refusal::NotAnEndpoint)?;
    match kind {
        "manifests" => {
            let name = name_ok(name)?;
            let reference = if last.contains(':') {
                Reference::Digest(digest_ok(last)?)
            } else if is_tag(last) {
                Reference::Tag(last)
            } else {
                return Err(Refusal::Tag);
            };
            Ok(Endpoint::Manifest { name, reference })
        }
        "blobs" => Ok(Endpoint::Blob {
            name: name_ok(name)?,
            digest: digest_ok(last)?,
        }),
        "referrers" => Ok(Endpoint::Referrers {
            name: name_ok(name)?,
            digest: digest_ok(last)?,
        }),
        _ => Err(Refusal::NotAnEndpoint),
    }
}

/// `text` split at its last `/` (found with `memrchr`: every request's path goes through
/// here).
fn split_last(text: &str) -> Option<(&str, &str)> {
    let at = memchr::memrchr(b'/', text.as_bytes())?;
    Some((&text[..at], &text[at + 1..]))
}

fn name_ok(name: &str) -> Result<&str, Refusal> {
    if is_name(name) {
        Ok(name)
    } else {
        Err(Refusal::Name)
    }
}

fn digest_ok(digest: &str) -> Result<&str, Refusal> {
    if is_digest(digest) {
        Ok(digest)
    } else {
        Err(Refusal::Digest)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most
/// [`MAX_NAME_LEN`] bytes.
pub fn is_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('/').all(is_component)
}

fn is_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run between two alphanumerics: '.', '_', '__', or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let ok = match &b[start..i] {
            b"." | b"_" | b"__" => true,
            run => run.iter().all(|x| *x == b'-'),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub fn is_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'))
}

/// `algorithm ":" encoded` with `algorithm` = `[a-z0-9]+([+._-][a-z0-9]+)*` and `encoded` =
/// `[a-zA-Z0-9=_-]+`; the registered algorithms `sha256` and `sha512` need exactly 64 and 128
/// lowercase hex digits.
pub fn is_digest(digest: &str) -> bool {
    // Nearly every digest is one: checked without taking the algorithm apart.
    if let Some(encoded) = digest.strip_prefix("sha256:") {
        return is_lower_hex(encoded, 64);
    }
    let Some((alg, encoded)) = digest.split_once(':') else {
        return false;
    };
    let alg_ok = !alg.is_empty()
        && alg.split(['+', '.', '_', '-']).all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit())
        });
    let encoded_ok = match alg {
        "sha256" => is_lower_hex(encoded, 64),
        "sha512" => is_lower_hex(encoded, 128),
        _ => {
            !encoded.is_empty()
                && encoded
                    .bytes()
                    .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'=' | b'_' | b'-'))
        }
    };
    alg_ok && encoded_ok
}

/// Exactly `len` lowercase hex digits.
pub fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|x| x.is_ascii_digit() || (b'a'..=b'f').contains(&x))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "4a1c4b21597c1b4415bdbecb28a3296c6b5e23ca4f9feeb599860a1dac6a0108";

    #[test]
    fn names_follow_the_grammar() {
        for ok in [
            "a",
            "pause",
            "a/b/c",
            "a.b",
            "a_b",
            "a__b",
            "a-b",
            "a---b",
            "k8s-artifacts-prod/images/kube-apiserver",
            "0",
        ] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "..;", ".;x", "..", "a..b", "a___b", "a_-b", "-a", "a-",
            "a.", "a;b", "a%2e", "é", "a b",
        ] {
            assert!(!is_name(bad), "{bad:?}");
        }
        assert!(is_name(&"a".repeat(MAX_NAME_LEN)));
        assert!(!is_name(&"a".repeat(MAX_NAME_LEN + 1)));
    }

    #[test]
    fn tags_and_digests_follow_the_grammar() {
        for ok in [
            "latest",
            "v1.2.3",
            "_x",
            "3.10",
            "A-b_c.d",
            &"t".repeat(128),
        ] {
            assert!(is_tag(ok), "{ok}");
        }
        for bad in [
            "",
            ".x",
            "-x",
            "..;",
            "a;b",
            "a%20b",
            "a:b",
            &"t".repeat(129),
        ] {
            assert!(!is_tag(bad), "{bad:?}");
        }
        let sha512 = format!("sha512:{}", "ab".repeat(64));
        for ok in [
            format!("sha256:{HEX}"),
            sha512,
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8".into(),
            "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564".into(),
        ] {
            assert!(is_digest(&ok), "{ok}");
        }
        for bad in [
            "sha256:abc".to_string(),
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha256:{HEX}0"),
            "sha512:abc".into(),
            ":abc".into(),
            "sha256:".into(),
            "SHA256:abc".into(),
            "a++b:x".into(),
            "a:x;y".into(),
            "a:x.y".into(),
        ] {
            assert!(!is_digest(&bad), "{bad}");
        }
    }

    #[test]
    fn endpoints_are_read_from_the_end() {
        let d = format!("sha256:{HEX}");
        assert_eq!(
            parse_endpoint("/a/manifests/b/manifests/latest"),
            Ok(Endpoint::Manifest {
                name: "a/manifests/b",
                reference: Reference::Tag("latest")
            })
        );
        assert_eq!(
            parse_endpoint(&format!("/a/b/blobs/{d}")),
            Ok(Endpoint::Blob {
                name: "a/b",
                digest: &d
            })
        );
        assert_eq!(
            parse_endpoint("/a/tags/list"),
            Ok(Endpoint::TagList { name: "a" })
        );
        assert_eq!(
            parse_endpoint(&format!("/a/referrers/{d}")),
            Ok(Endpoint::Referrers {
                name: "a",
                digest: &d
            })
        );
        assert_eq!(
            parse_endpoint(&format!("/a/manifests/{d}")).map(|e| e.name()),
            Ok("a")
        );
        for (path, why) in [
            ("/a/blobs/uploads", Refusal::Digest),
            ("/a/other/x", Refusal::NotAnEndpoint),
            ("/manifests/latest", Refusal::NotAnEndpoint),
            ("/tags/list", Refusal::NotAnEndpoint),
            ("/..;/..;/other/manifests/latest", Refusal::Name),
            ("/a/manifests/..;", Refusal::Tag),
            ("/a/referrers/latest", Refusal::Digest),
            ("/a", Refusal::NotAnEndpoint),
        ] {
            assert_eq!(parse_endpoint(path), Err(why), "{path}");
        }
    }
}
