//! The environment variables of the original archeio (and our admin port), applied over the
//! file.

use super::file::ArcheioConfig;
use super::ConfigError;

/// The environment variables [`ArcheioConfig::apply_env`] reads: the original archeio's, plus
/// our admin port.
pub const ENV_VARS: [&str; 6] = {
    let mut names = [""; 6];
    let mut i = 0;
    while i < ENV_KEYS.len() {
        names[i] = ENV_KEYS[i].0;
        i += 1;
    }
    names
};

/// Each variable and the key it sets, so that a bad value is reported by the variable.
pub(super) const ENV_KEYS: [(&str, &str); 6] = [
    ("PORT", "listen"),
    ("UPSTREAM_REGISTRY_ENDPOINT", "upstream.endpoints"),
    ("UPSTREAM_REGISTRY_PATH", "upstream.path"),
    ("SIGNATURE_UPSTREAM_ENDPOINT", "signature_upstream"),
    ("DEFAULT_AWS_BASE_URL", "mirrors.default"),
    ("ARCHEIO_ADMIN_PORT", "admin_listen"),
];

impl ArcheioConfig {
    /// Applies the original archeio's environment variables (and `ARCHEIO_ADMIN_PORT`) on top
    /// of the file. `get` looks a variable up; it is `std::env::var` outside tests.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let port = |name: &str, value: String| -> Result<String, ConfigError> {
            match value.trim().parse::<u16>() {
                Ok(p) if p > 0 => Ok(format!("0.0.0.0:{p}")),
                _ => Err(ConfigError {
                    source: format!("environment variable {name}"),
                    message: format!("expected a TCP port number (1-65535), got {value:?}"),
                }),
            }
        };
        if let Some(v) = get("PORT") {
            self.listen = vec![port("PORT", v)?.as_str().into()];
        }
        if let Some(v) = get("ARCHEIO_ADMIN_PORT") {
            self.admin_listen = vec![port("ARCHEIO_ADMIN_PORT", v)?];
        }
        if let Some(v) = get("UPSTREAM_REGISTRY_ENDPOINT") {
            self.upstream.endpoints = vec![v];
        }
        if let Some(v) = get("UPSTREAM_REGISTRY_PATH") {
            self.upstream.path = v;
        }
        if let Some(v) = get("SIGNATURE_UPSTREAM_ENDPOINT") {
            self.signature_upstream = Some(v).filter(|s| !s.is_empty());
        }
        if let Some(v) = get("DEFAULT_AWS_BASE_URL") {
            self.mirrors.default = v;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_override_the_file() {
        let mut c = ArcheioConfig::default();
        let env = |k: &str| match k {
            "PORT" => Some("5001".to_string()),
            "UPSTREAM_REGISTRY_ENDPOINT" => Some("http://up.example".to_string()),
            "UPSTREAM_REGISTRY_PATH" => Some("a/b".to_string()),
            "SIGNATURE_UPSTREAM_ENDPOINT" => Some("http://sig.example".to_string()),
            "DEFAULT_AWS_BASE_URL" => Some("http://mirror.example".to_string()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!(c.listen, ["0.0.0.0:5001".into()]);
        assert_eq!(c.admin_listen, ["0.0.0.0:9090"]);
        assert_eq!(c.upstream.endpoints, ["http://up.example"]);
        assert_eq!(c.upstream.path, "a/b");
        assert_eq!(c.signature_upstream.as_deref(), Some("http://sig.example"));
        assert_eq!(c.mirrors.default, "http://mirror.example");

        let err = c
            .apply_env(|k| (k == "PORT").then(|| "eighty".to_string()))
            .unwrap_err();
        assert_eq!(err.source, "environment variable PORT");
    }
}
