//! Moving token scopes and challenges between the client's name space and the upstream's
//! (the upstream path prefix), pure: no I/O.
//!
//! A client names `app`; the upstream knows it as `<prefix>/app`. Challenges the upstream
//! sends name its own token realm (which clients may not reach) and its own scopes; the
//! gateway hands clients its `/token` instead and the scopes in their names. Token requests
//! come back with the client's scopes, which go to the real realm in the upstream's names.
//! Only `repository:<name>:pull` is relayed: the gateway serves reads, and a scope it does
//! not understand is dropped rather than passed on.

use crate::routing::grammar::is_name;
use crate::upstream::auth::auth_params;

/// The upstream's `WWW-Authenticate` value as the client should see it: a Bearer challenge
/// names `token_url` as its realm and its scopes without `name_prefix`; anything else (Basic)
/// is returned as it was. `None` when a Bearer challenge cannot be read.
pub fn client_challenge(value: &str, token_url: &str, name_prefix: &str) -> Option<String> {
    let trimmed = value.trim();
    let (scheme, params) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Some(value.to_string());
    }
    let mut out = format!("Bearer realm=\"{}\"", escape(token_url));
    let (params, closed) = auth_params(params);
    if !closed {
        return None;
    }
    for (key, val) in params {
        match key.to_ascii_lowercase().as_str() {
            "realm" => {}
            "scope" => {
                let scopes: Vec<String> = val
                    .split(' ')
                    .filter_map(|s| move_scope(s, name_prefix, "")?.into())
                    .collect();
                if !scopes.is_empty() {
                    out.push_str(&format!(",scope=\"{}\"", escape(&scopes.join(" "))));
                }
            }
            "service" | "error" => out.push_str(&format!(
                ",{}=\"{}\"",
                key.to_ascii_lowercase(),
                escape(&val)
            )),
            _ => {}
        }
    }
    Some(out)
}

/// The query for the upstream's token service from a client's `/token` query: `service`
/// and `account` kept, each `scope` moved into the upstream's names with `name_prefix`
/// (only repository pulls), anything else dropped. Pairs, not yet encoded.
pub fn upstream_token_query(query: &str, name_prefix: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter_map(|(key, value)| match &*key {
            "service" | "account" => Some((key.into_owned(), value.into_owned())),
            "scope" => {
                let scopes: Vec<String> = value
                    .split(' ')
                    .filter_map(|s| move_scope(s, "", name_prefix))
                    .collect();
                (!scopes.is_empty()).then(|| ("scope".to_string(), scopes.join(" ")))
            }
            _ => None,
        })
        .collect()
}

/// `repository:<from><name>:<actions>` as `repository:<to><name>:pull` when the actions
/// include `pull`; `None` for any other scope (or a name outside `from`).
fn move_scope(scope: &str, from: &str, to: &str) -> Option<String> {
    let rest = scope.strip_prefix("repository:")?;
    let (name, actions) = rest.rsplit_once(':')?;
    if !actions.split(',').any(|a| a == "pull" || a == "*") {
        return None;
    }
    let name = name.strip_prefix(from)?;
    is_name(name).then(|| format!("repository:{to}{name}:pull"))
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_challenge_names_the_gateway_and_the_client_s_scopes() {
        let upstream = r#"Bearer realm="http://10.0.0.5:5001/auth",service="registry.internal",scope="repository:test/app:pull,push",error="insufficient_scope""#;
        assert_eq!(
            client_challenge(upstream, "https://gw.example/token", "test/").unwrap(),
            r#"Bearer realm="https://gw.example/token",service="registry.internal",scope="repository:app:pull",error="insufficient_scope""#
        );
        // A scope outside the prefix (or not a pull) is not offered to the client.
        let other = r#"Bearer realm="http://x/auth",service="s",scope="repository:elsewhere/app:pull registry:catalog:*""#;
        assert_eq!(
            client_challenge(other, "https://gw/token", "test/").unwrap(),
            r#"Bearer realm="https://gw/token",service="s""#
        );
        assert_eq!(
            client_challenge(r#"Basic realm="Registry""#, "https://gw/token", "test/").unwrap(),
            r#"Basic realm="Registry""#
        );
        assert_eq!(client_challenge(r#"Bearer realm="open"#, "t", ""), None);
    }

    #[test]
    fn token_requests_move_into_the_upstream_s_names_and_keep_only_pulls() {
        let q = "service=registry.internal&scope=repository%3Aapp%3Apull&scope=repository:team/x:push,pull&account=alice&client_id=docker&scope=registry:catalog:*";
        assert_eq!(
            upstream_token_query(q, "test/"),
            [
                ("service".to_string(), "registry.internal".to_string()),
                ("scope".into(), "repository:test/app:pull".into()),
                ("scope".into(), "repository:test/team/x:pull".into()),
                ("account".into(), "alice".into()),
            ]
        );
        // A push-only scope, or a name outside the distribution grammar, is dropped.
        assert!(upstream_token_query("scope=repository:app:push", "").is_empty());
        assert!(upstream_token_query("scope=repository:a/../b:pull", "").is_empty());
        assert!(upstream_token_query("scope=repository:APP:pull", "").is_empty());
        assert!(upstream_token_query("scope=repository::pull", "").is_empty());
        assert_eq!(
            upstream_token_query("scope=repository:a:pull repository:b:pull", "p/"),
            [(
                "scope".to_string(),
                "repository:p/a:pull repository:p/b:pull".to_string()
            )]
        );
    }
}
