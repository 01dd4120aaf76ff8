//! The environment a worker starts from: an allowlist of the supervisor's, plus what the
//! supervisor passes on purpose. Secret values never reach logs or `Debug` output.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// Variables copied from the supervisor's own environment. Everything else (notably a user's
/// `PYTHONPATH` or `PYTHONHOME`) is dropped, so workers behave the same from any shell.
pub const ENV_ALLOWLIST: &[&str] = &[
    "HOME",
    "PATH",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "LANG",
    "TZ",
    "TMPDIR",
    "VIRTUAL_ENV",
];

#[derive(Clone, Default)]
pub struct WorkerEnvironment {
    plain: BTreeMap<String, OsString>,
    secret: BTreeMap<String, SecretString>,
}

impl WorkerEnvironment {
    /// Starts from the allowlisted part of `vars` (usually `std::env::vars_os()`).
    pub fn from_allowlist(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let mut env = Self::default();
        for (key, value) in vars {
            let Some(key) = key.to_str() else { continue };
            if ENV_ALLOWLIST.contains(&key) || key.starts_with("LC_") {
                env.plain.insert(key.to_owned(), value);
            }
        }
        env
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<OsString>) {
        let key = key.into();
        self.secret.remove(&key);
        self.plain.insert(key, value.into());
    }

    pub fn set_secret(&mut self, key: impl Into<String>, value: SecretString) {
        let key = key.into();
        self.plain.remove(&key);
        self.secret.insert(key, value);
    }

    pub fn get(&self, key: &str) -> Option<&OsString> {
        self.plain.get(key)
    }

    /// Whether both hold the same variables with the same values, secrets included (compared
    /// here so their values never need to leave this type).
    pub fn same_as(&self, other: &Self) -> bool {
        self.plain == other.plain
            && self.secret.len() == other.secret.len()
            && self
                .secret
                .iter()
                .zip(&other.secret)
                .all(|((k1, v1), (k2, v2))| k1 == k2 && v1.expose_secret() == v2.expose_secret())
    }

    /// Every variable with its real value, for the spawn call only.
    pub(crate) fn exposed(&self) -> impl Iterator<Item = (&str, OsString)> {
        let plain = self.plain.iter().map(|(k, v)| (k.as_str(), v.clone()));
        let secret = self
            .secret
            .iter()
            .map(|(k, v)| (k.as_str(), OsString::from(v.expose_secret())));
        plain.chain(secret)
    }
}

impl fmt::Debug for WorkerEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.plain {
            map.entry(key, value);
        }
        for key in self.secret.keys() {
            map.entry(key, &"[redacted]");
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowlisted_variables_are_inherited() {
        let vars = [
            ("PATH", "/bin"),
            ("PYTHONPATH", "/evil"),
            ("LC_ALL", "C"),
            ("SECRET", "x"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = WorkerEnvironment::from_allowlist(vars);
        assert_eq!(env.get("PATH"), Some(&OsString::from("/bin")));
        assert_eq!(env.get("LC_ALL"), Some(&OsString::from("C")));
        assert_eq!(env.get("PYTHONPATH"), None);
        assert_eq!(env.get("SECRET"), None);
    }

    #[test]
    fn secrets_are_redacted_in_debug_output_but_reach_the_spawn() {
        let mut env = WorkerEnvironment::default();
        env.set_secret(
            "ANTHROPIC_API_KEY",
            SecretString::from("sk-ant-very-secret"),
        );
        assert!(!format!("{env:?}").contains("very-secret"));
        let exposed: Vec<_> = env.exposed().collect();
        assert_eq!(
            exposed,
            vec![("ANTHROPIC_API_KEY", OsString::from("sk-ant-very-secret"))]
        );
    }
}
