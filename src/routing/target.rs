//! The request line and target checks that run before any rule: what the HTTP parser would
//! change, and what a path may hold.

use super::{error_reply, method_not_allowed, Reply, Route};

/// Longest request target (path and query) accepted.
pub const MAX_TARGET_LEN: usize = 4096;

/// GET and HEAD (case-sensitive) are the only methods served.
pub(crate) fn served_method(method: &[u8]) -> bool {
    method == b"GET" || method == b"HEAD"
}

/// Checks a raw request line (`METHOD SP target SP HTTP/x.y`, without its `\n`) for what
/// the HTTP parser would change or refuse before [`decide`](super::decide) could see it: a target with bytes
/// it percent-encodes (space, `"`, `<`, `>`, control and non-ASCII bytes), a fragment it
/// drops, a target that is not a path (absolute form, whose `Host` check it answers with a
/// bare `400`), or a line that is not a request line at all. Such a request gets the answer
/// [`decide`](super::decide) would give: `405` for other methods, else `400`. `None`: the line is for
/// [`decide`](super::decide) to judge.
pub fn refuse_request_line(line: &[u8]) -> Option<Reply> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if is_plain_request_line(line) {
        return None;
    }
    refusal(line)
}

/// [`refuse_request_line`]'s answer for a line without its `\r`, part by part.
fn refusal(line: &[u8]) -> Option<Reply> {
    let mut parts = line.split(|b| *b == b' ');
    let (method, target, version) = (parts.next()?, parts.next(), parts.next());
    let api = target.is_some_and(|t| t.starts_with(b"/v2"));
    let version_ok = version.is_some_and(|v| {
        matches!(v, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit())
    });
    let refuse = |why: &'static str| {
        Some(if served_method(method) || !version_ok {
            error_reply(Route::Invalid, 400, "NAME_INVALID", why, api)
        } else {
            method_not_allowed(api)
        })
    };
    let (Some(target), true, None) = (target, version_ok, parts.next()) else {
        return refuse("not an HTTP/1 request line (a space in the target must be encoded)");
    };
    if target.first() != Some(&b'/') {
        return refuse("request target must be a path starting with '/'");
    }
    if target.contains(&b'#') {
        return refuse("request target has a fragment ('#')");
    }
    if target
        .iter()
        .any(|b| !(0x21..0x7f).contains(b) || matches!(b, b'"' | b'<' | b'>'))
    {
        return refuse("request target has a character that must be percent-encoded");
    }
    None
}

/// The usual request line, checked in one pass over its target: `METHOD SP /target SP
/// HTTP/d.d` with every target byte one the parser keeps as it is. False does not mean
/// refused: [`refuse_request_line`] then looks closer.
fn is_plain_request_line(line: &[u8]) -> bool {
    let Some(space) = memchr::memchr(b' ', line) else {
        return false;
    };
    let rest = &line[space + 1..];
    let Some(target_len) = rest.len().checked_sub(b" HTTP/1.1".len()) else {
        return false;
    };
    let (target, version) = rest.split_at(target_len);
    matches!(version, [b' ', b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
        && target.first() == Some(&b'/')
        && target.iter().all(|&b| PLAIN_TARGET_BYTE[usize::from(b)])
}

/// Bytes a request target may hold as they are: visible ASCII but `"`, `<`, `>` (which the
/// parser percent-encodes) and `#` (a fragment, which it drops).
static PLAIN_TARGET_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x21;
    while b < 0x7f {
        table[b] = !matches!(b as u8, b'"' | b'<' | b'>' | b'#');
        b += 1;
    }
    table
};

/// Splits and checks the raw target. Paths may hold only RFC 3986 path characters;
/// percent-escapes must be well formed and must not hide `/`, `.`, `\` or control bytes;
/// no segment may be `.`, `..` or empty (a trailing `/` counts as empty on API paths other
/// than `/v2/`). The query may hold the path characters, `/` and `?`.
pub(crate) fn parse_target(target: &[u8], api: bool) -> Result<(&str, Option<&str>), &'static str> {
    if target.len() > MAX_TARGET_LEN {
        return Err("request target is longer than 4096 bytes");
    }
    if target.first() != Some(&b'/') {
        return Err("request target must be a path starting with '/'");
    }
    let (path, query) = match target.iter().position(|b| *b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    check_chars(path, false)?;
    if let Some(q) = query {
        check_chars(q, true)?;
    }
    let mut segments = path[1..].split(|b| *b == b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            b"." | b".." => return Err("path has a '.' or '..' segment"),
            b"" if !last => return Err("path has an empty segment ('//')"),
            b"" if api && path != b"/v2/" && path != b"/" => {
                return Err("registry API path ends with '/'")
            }
            _ => {}
        }
    }
    Ok((ascii(path), query.map(ascii)))
}

/// Bytes that [`check_chars`] accepted, which are all ASCII.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("checked ASCII")
}

/// Byte classes for [`check_chars`], looked up once per byte.
const PATH: u8 = 1;
const QUERY: u8 = 2;
static CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let alnum = c.is_ascii_alphanumeric();
        let path = alnum
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        let mut class = 0;
        if path {
            class |= PATH | QUERY;
        }
        if c == b'?' {
            class |= QUERY;
        }
        t[b] = class;
        b += 1;
    }
    t
};

fn check_chars(part: &[u8], query: bool) -> Result<(), &'static str> {
    let allowed = if query { QUERY } else { PATH };
    let mut i = 0;
    while i < part.len() {
        let b = part[i];
        if CLASSES[b as usize] & allowed != 0 {
            i += 1;
            continue;
        }
        match b {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let decoded = match (
                    part.get(i + 1).and_then(|b| hex(*b)),
                    part.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(h), Some(l)) => (h * 16 + l) as u8,
                    _ => return Err("malformed percent-escape"),
                };
                if !query
                    && (matches!(decoded, b'/' | b'.' | b'\\') || decoded < 0x20 || decoded == 0x7f)
                {
                    return Err("path has a percent-escaped '/', '.', '\\' or control byte");
                }
                i += 3;
            }
            0..=0x1f | 0x7f => return Err("request target has a control byte"),
            _ => return Err("request target has a character that must be percent-encoded"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass check never lets through a line the part-by-part check refuses.
    #[test]
    fn plain_lines_are_never_refused() {
        let bytes = [
            b' ', b'/', b'#', b'"', b'<', b'>', b'%', b'?', b'a', b'H', b'T', b'P', b'1', b'.',
            b'\t', 0x7f, 0xc3, b'*',
        ];
        let base: &[u8] = b"GET /v2/a/manifests/x HTTP/1.1";
        let mut plain = 0;
        for at in 0..base.len() {
            for b in bytes {
                for insert in [false, true] {
                    let mut line = base.to_vec();
                    if insert {
                        line.insert(at, b);
                    } else {
                        line[at] = b;
                    }
                    if is_plain_request_line(&line) {
                        plain += 1;
                        assert!(refusal(&line).is_none(), "{}", line.escape_ascii());
                    }
                }
            }
        }
        assert!(plain > 100, "only {plain} lines were plain");
    }
}
