//! An htpasswd file of bcrypt entries (`htpasswd -B`), and checking a user's password
//! against it. Other hash kinds (MD5 `$apr1$`, SHA1, crypt) are refused when the file is
//! read: they are fast to guess, and a gateway in front of private images should not
//! accept them.

use std::collections::HashMap;
use std::path::Path;

/// Users and their bcrypt hashes.
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("users", &self.users.len())
            .finish()
    }
}

impl Htpasswd {
    /// Reads `path`; an error says which line is wrong and why, never a hash.
    pub fn read(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Htpasswd::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses `user:hash` lines; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Htpasswd, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = n + 1;
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {n}: expected user:hash"))?;
            if user.is_empty() {
                return Err(format!("line {n}: empty user name"));
            }
            let bcrypt = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
            if !bcrypt || hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(format!(
                    "line {n}: user {user}: only bcrypt hashes are accepted (htpasswd -B)"
                ));
            }
            if users.insert(user.to_string(), hash.to_string()).is_some() {
                return Err(format!("line {n}: user {user} is listed twice"));
            }
        }
        if users.is_empty() {
            return Err("no users".into());
        }
        Ok(Htpasswd { users })
    }

    /// Whether `password` is `user`'s. Slow by design (bcrypt): call it off the async
    /// threads. An unknown user costs as much as a known one, so timing does not tell
    /// which names exist.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                // Any entry's hash: the same cost as a real check, and the answer is no.
                if let Some(hash) = self.users.values().next() {
                    let _ = bcrypt::verify(password, hash);
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_entries_verify_and_others_are_refused() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let file = Htpasswd::parse(&format!("# users\n\nalice:{hash}\n")).unwrap();
        assert!(file.verify("alice", "pw"));
        assert!(!file.verify("alice", "PW"));
        assert!(!file.verify("bob", "pw"));
        for (text, why) in [
            ("alice:$apr1$abc$def\n", "line 1: user alice: only bcrypt"),
            ("alice:{SHA}abc=\n", "only bcrypt"),
            ("alice:$2y$04$short\n", "only bcrypt"),
            ("alice\n", "line 1: expected user:hash"),
            (":$2y$04$abc\n", "empty user name"),
            ("", "no users"),
        ] {
            let e = Htpasswd::parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        let twice = format!("a:{hash}\na:{hash}\n");
        assert!(Htpasswd::parse(&twice)
            .unwrap_err()
            .contains("line 2: user a is listed twice"));
        assert!(!format!("{file:?}").contains("$2"));
    }
}
