//! `client_auth: local`: the gateway checks its clients itself. Users and bcrypt hashes come
//! from an htpasswd file (read again when it changes); a client sends Basic credentials, or
//! a Bearer token the gateway's `/token` issued for the repositories it asked for and may
//! pull. Verified Basic credentials are remembered briefly under a keyed digest, since
//! bcrypt is slow by design.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use globset::GlobSet;
use log::{info, warn};
use quick_cache::sync::Cache;

use super::htpasswd::Htpasswd;
use super::relay::TokenAnswer;
use super::token::{Claims, Tokens};
use super::CredentialKey;
use crate::routing::grammar::is_name;
use crate::routing::policy::glob_set;
use crate::routing::Grants;

/// How long a checked Basic credential (good or bad) is remembered.
const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// Who a request's credentials say it is.
#[derive(Debug)]
pub enum Identity {
    /// No credentials, or ones that did not verify.
    Nobody,
    /// A user by its password (the name shared with the remembered check: no copy a request).
    User(Arc<str>),
    /// A token's holder, with what the token grants.
    Token(Claims),
}

#[derive(Clone)]
struct Verified {
    user: Option<Arc<str>>,
    /// Since [`LocalAuth::epoch`], in milliseconds.
    expires_ms: u64,
}

/// The users, their grants, the tokens.
pub struct LocalAuth {
    htpasswd_file: PathBuf,
    users: ArcSwap<Htpasswd>,
    /// The file's bytes last read, to notice a change.
    last_read: Mutex<Vec<u8>>,
    /// User to the repositories it may pull; `None`: every user, every repository.
    grants: Option<HashMap<String, GlobSet>>,
    tokens: Tokens,
    digests: CredentialKey,
    verified: Cache<u128, Verified>,
    epoch: Instant,
}

impl LocalAuth {
    /// Reads the htpasswd file and the token key; errors name the `client_auth` key.
    pub fn new(
        htpasswd_file: PathBuf,
        users: &std::collections::BTreeMap<String, Vec<String>>,
        token_lifetime: Duration,
        token_key_file: Option<&std::path::Path>,
    ) -> Result<LocalAuth, String> {
        let bytes = std::fs::read(&htpasswd_file).map_err(|e| {
            format!(
                "client_auth.htpasswd_file: cannot read {}: {e}",
                htpasswd_file.display()
            )
        })?;
        let file =
            parse(&bytes, &htpasswd_file).map_err(|e| format!("client_auth.htpasswd_file: {e}"))?;
        let key = match token_key_file {
            Some(path) => {
                let key = std::fs::read(path).map_err(|e| {
                    format!(
                        "client_auth.token_key_file: cannot read {}: {e}",
                        path.display()
                    )
                })?;
                if key.trim_ascii().len() < 32 {
                    return Err(format!(
                        "client_auth.token_key_file: {} holds fewer than 32 bytes",
                        path.display()
                    ));
                }
                Some(key.trim_ascii().to_vec())
            }
            None => None,
        };
        let grants = match users.is_empty() {
            true => None,
            false => Some(
                users
                    .iter()
                    .map(|(user, globs)| {
                        glob_set(globs)
                            .map(|g| (user.clone(), g))
                            .map_err(|e| format!("client_auth.users.{user}: {e}"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(LocalAuth {
            htpasswd_file,
            users: ArcSwap::from_pointee(file),
            last_read: Mutex::new(bytes),
            grants,
            tokens: Tokens::new(key.as_deref(), token_lifetime),
            digests: CredentialKey::generate(),
            verified: Cache::new(10_000),
            epoch: Instant::now(),
        })
    }

    /// Who `authorization` (the request's header, if any) is.
    pub async fn identify(&self, authorization: Option<&[u8]>) -> Identity {
        let Some(value) = authorization.and_then(|v| std::str::from_utf8(v).ok()) else {
            return Identity::Nobody;
        };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return match self.tokens.verify(rest.trim(), SystemTime::now()) {
                Some(claims) => Identity::Token(claims),
                None => Identity::Nobody,
            };
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Identity::Nobody;
        }
        match self.check_basic(value.as_bytes(), rest.trim()).await {
            Some(user) => Identity::User(user),
            None => Identity::Nobody,
        }
    }

    /// What `identity` may read.
    pub fn grants<'a>(&'a self, identity: &'a Identity) -> Grants<'a> {
        match identity {
            Identity::Nobody => Grants::Nobody,
            Identity::Token(claims) => Grants::Names(&claims.repos),
            Identity::User(user) => match &self.grants {
                None => Grants::All,
                Some(grants) => grants
                    .get(&**user)
                    .map_or(Grants::Names(&[]), Grants::Globs),
            },
        }
    }

    /// The answer to `/token?<query>`: a token for the scopes asked for that the user (by
    /// its Basic credentials) may pull; `401` without good credentials.
    pub async fn token(&self, query: Option<&str>, authorization: Option<&[u8]>) -> TokenAnswer {
        let identity = self.identify(authorization).await;
        let Identity::User(user) = &identity else {
            // A token buys no new token: a password is needed.
            let body =
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
            return TokenAnswer {
                status: 401,
                content_type: Some("application/json".into()),
                body: Bytes::from_static(body.as_bytes()),
                challenge: Some("Basic realm=\"archeio\"".into()),
            };
        };
        let grants = self.grants(&identity);
        let mut repos: Vec<String> = Vec::new();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if key != "scope" {
                continue;
            }
            for scope in value.split(' ') {
                let Some((name, actions)) = scope
                    .strip_prefix("repository:")
                    .and_then(|r| r.rsplit_once(':'))
                else {
                    continue;
                };
                let pull = actions.split(',').any(|a| a == "pull" || a == "*");
                if pull && is_name(name) && grants.allows(name) && !repos.iter().any(|r| r == name)
                {
                    repos.push(name.to_string());
                }
            }
        }
        let now = SystemTime::now();
        let token = self.tokens.issue(user, repos, now);
        let body = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": self.tokens.lifetime().as_secs(),
        });
        TokenAnswer {
            status: 200,
            content_type: Some("application/json".into()),
            body: Bytes::from(body.to_string()),
            challenge: None,
        }
    }

    /// The user whose Basic credentials `encoded` (base64 `user:password`) are, checked
    /// against the htpasswd file off the async threads, remembered for [`VERIFIED_TTL`].
    async fn check_basic(&self, header: &[u8], encoded: &str) -> Option<Arc<str>> {
        let key = self.digests.digest(header, b"");
        let now = self.now_ms();
        if let Some(v) = self.verified.get(&key).filter(|v| v.expires_ms > now) {
            return v.user;
        }
        let decoded = STANDARD.decode(encoded).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        let (user, password) = (user.to_string(), password.to_string());
        let file = self.users.load_full();
        let ok = tokio::task::spawn_blocking(move || file.verify(&user, &password).then_some(user))
            .await
            .ok()
            .flatten();
        let user: Option<Arc<str>> = ok.map(Into::into);
        self.verified.insert(
            key,
            Verified {
                user: user.clone(),
                expires_ms: self.now_ms() + VERIFIED_TTL.as_millis() as u64,
            },
        );
        user
    }

    /// Reads the htpasswd file again if it changed: new users and passwords apply at once,
    /// remembered checks are forgotten; a file that no longer parses keeps the old users.
    pub fn reload(&self) {
        let bytes = match std::fs::read(&self.htpasswd_file) {
            Ok(b) => b,
            Err(e) => {
                warn!(
                    "client_auth.htpasswd_file: cannot read {}: {e}; keeping the users read before",
                    self.htpasswd_file.display()
                );
                return;
            }
        };
        let mut last = self.last_read.lock().expect("lock is never poisoned");
        if *last == bytes {
            return;
        }
        match parse(&bytes, &self.htpasswd_file) {
            Ok(file) => {
                self.users.store(Arc::new(file));
                self.verified.clear();
                info!(
                    "client_auth.htpasswd_file: {} read again",
                    self.htpasswd_file.display()
                );
            }
            Err(e) => warn!("client_auth.htpasswd_file: {e}; keeping the users read before"),
        }
        *last = bytes;
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

fn parse(bytes: &[u8], path: &std::path::Path) -> Result<Htpasswd, String> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", path.display()))?;
    Htpasswd::parse(text).map_err(|e| format!("{}: {e}", path.display()))
}
