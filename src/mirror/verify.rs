//! A proxied blob checked against its digest as it streams: each chunk is hashed and passed
//! on one chunk late, and the last one only once the whole body hashed to the digest. A
//! mirror object whose bytes are not the blob's therefore never reaches a client complete,
//! whatever the client checks itself. Only whole bodies can be checked: a `206` range is
//! passed on unchecked.

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256, Sha512};

/// The hash of a digest's algorithm.
enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// One body being checked.
pub struct Verifier {
    hasher: Hasher,
    /// The digest's bytes.
    expected: Vec<u8>,
    /// The chunk not yet passed on.
    held: Option<Bytes>,
    /// Bytes hashed so far.
    seen: u64,
}

/// The body did not hash to its digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// How many bytes the body had.
    pub bytes: u64,
}

impl Verifier {
    /// A check of the body of blob `digest` (`sha256:<hex>` or `sha512:<hex>`); `None` for
    /// an algorithm the gateway cannot hash.
    pub fn new(digest: &str) -> Option<Verifier> {
        let (algorithm, hex) = digest.split_once(':')?;
        let (hasher, len) = match algorithm {
            "sha256" => (Hasher::Sha256(Sha256::new()), 32),
            "sha512" => (Hasher::Sha512(Sha512::new()), 64),
            _ => return None,
        };
        let expected = decode_hex(hex).filter(|b| b.len() == len)?;
        Some(Verifier {
            hasher,
            expected,
            held: None,
            seen: 0,
        })
    }

    /// Whether `digest`'s algorithm can be checked.
    pub fn can_check(digest: &str) -> bool {
        Verifier::new(digest).is_some()
    }

    /// Takes the next chunk (`body`, replaced by what may be passed on now); at the end of
    /// the body, passes on the rest if the whole hashed to the digest, else nothing.
    pub fn pass(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<(), Mismatch> {
        if let Some(chunk) = body.take().filter(|c| !c.is_empty()) {
            match &mut self.hasher {
                Hasher::Sha256(h) => h.update(&chunk),
                Hasher::Sha512(h) => h.update(&chunk),
            }
            self.seen += chunk.len() as u64;
            *body = self.held.replace(chunk);
        }
        if !end {
            return Ok(());
        }
        let sum = match std::mem::replace(&mut self.hasher, Hasher::Sha256(Sha256::new())) {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        if sum != self.expected {
            *body = None;
            self.held = None;
            return Err(Mismatch { bytes: self.seen });
        }
        *body = match (body.take(), self.held.take()) {
            (Some(earlier), Some(last)) => {
                let mut both = BytesMut::with_capacity(earlier.len() + last.len());
                both.extend_from_slice(&earlier);
                both.extend_from_slice(&last);
                Some(both.freeze())
            }
            (earlier, last) => earlier.or(last),
        };
        Ok(())
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(data: &[u8]) -> String {
        let sum = Sha256::digest(data);
        format!(
            "sha256:{}",
            sum.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }

    /// Feeds `chunks` and returns what was passed on, or the mismatch.
    fn stream(digest: &str, chunks: &[&[u8]], last_empty: bool) -> Result<Vec<u8>, Mismatch> {
        let mut v = Verifier::new(digest).unwrap();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let end = !last_empty && i == chunks.len() - 1;
            let mut body = Some(Bytes::copy_from_slice(c));
            v.pass(&mut body, end)?;
            if end {
                out.extend_from_slice(&body.unwrap_or_default());
                return Ok(out);
            }
            // Never the last bytes before the end.
            out.extend_from_slice(&body.unwrap_or_default());
        }
        let mut body = None;
        v.pass(&mut body, true)?;
        out.extend_from_slice(&body.unwrap_or_default());
        Ok(out)
    }

    #[test]
    fn a_matching_body_passes_whole_in_order() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let d = sha256(&data);
        let chunks: Vec<&[u8]> = data.chunks(3000).collect();
        assert_eq!(stream(&d, &chunks, false).unwrap(), data);
        assert_eq!(stream(&d, &chunks, true).unwrap(), data);
        assert_eq!(stream(&d, &[&data], false).unwrap(), data);
        assert_eq!(stream(&sha256(b""), &[], true).unwrap(), b"");
    }

    #[test]
    fn a_mismatch_holds_back_the_last_chunk() {
        let data = vec![7u8; 9000];
        let d = sha256(&data);
        let mut bad = data.clone();
        bad[100] = 8;
        let mut v = Verifier::new(&d).unwrap();
        let mut passed = 0;
        for (i, c) in bad.chunks(3000).enumerate() {
            let mut body = Some(Bytes::copy_from_slice(c));
            let r = v.pass(&mut body, i == 2);
            passed += body.map_or(0, |b| b.len());
            if i == 2 {
                assert_eq!(r, Err(Mismatch { bytes: 9000 }));
            }
        }
        assert_eq!(
            passed, 3000,
            "the first chunk only: the body stays incomplete"
        );
    }

    #[test]
    fn only_known_algorithms_with_whole_digests_are_checked() {
        assert!(Verifier::can_check(&format!("sha512:{}", "ab".repeat(64))));
        assert!(!Verifier::can_check(&format!("sha512:{}", "ab".repeat(32))));
        assert!(!Verifier::can_check(
            "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564"
        ));
        assert!(!Verifier::can_check(&format!("sha256:{}", "AB".repeat(32))));
    }
}
