//! Layered `.properties` loading: built-in defaults, `project.properties`, `local.properties`,
//! then SAP approuter's `EXT_SESSION_MGT` with its `VCAP_SERVICES` binding, then `y_…`
//! environment variables, each remembering where its value came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use java_properties::{LineContent, PropertiesIter};

use super::Error;
use super::keys::{self, KEYS};

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The built-in default of [`keys::KEYS`].
    Builtin,
    /// A line of a properties file.
    File {
        /// The file.
        path: PathBuf,
        /// The 1-based line the key starts on.
        line: usize,
    },
    /// An environment variable.
    Env {
        /// The variable's name.
        var: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Builtin => f.write_str("built-in default"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Env { var } => write!(f, "environment variable {var}"),
        }
    }
}

/// A value and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The value, placeholders expanded.
    pub value: String,
    /// Where it was set.
    pub source: Source,
}

/// The effective properties: every layer merged, placeholders expanded.
#[derive(Clone, Debug, Default)]
pub struct Properties {
    entries: BTreeMap<String, Setting>,
}

/// The prefix of environment variables that override properties.
pub const ENV_PREFIX: &str = "y_";

impl Properties {
    /// The built-in defaults alone.
    pub fn builtin() -> Self {
        let entries = KEYS
            .iter()
            .filter(|spec| !spec.default.is_empty())
            .map(|spec| {
                let setting = Setting {
                    value: spec.default.to_owned(),
                    source: Source::Builtin,
                };
                (spec.key.to_owned(), setting)
            })
            .collect();
        Self { entries }
    }

    /// Loads `dir/project.properties` and `dir/local.properties` over the built-in defaults, then
    /// `EXT_SESSION_MGT` and the binding it names in `VCAP_SERVICES`, then the environment
    /// variables `vars` (see [`env_var_to_key`]), then expands placeholders.
    ///
    /// A missing file is skipped; a file that exists but cannot be read or parsed is an error.
    pub fn load(
        dir: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let mut properties = Self::builtin();
        for name in ["project.properties", "local.properties"] {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => properties.merge_file(&path, &bytes)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Read { path, source }),
            }
        }
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let var = |name: &str| {
            vars.iter()
                .find(|(v, _)| v == name)
                .map(|(_, x)| x.as_str())
        };
        let binding = super::binding::properties(
            var(super::binding::EXT_SESSION_MGT),
            var(super::binding::VCAP_SERVICES),
        )?;
        for (key, value, source) in binding {
            properties.set(key, value, source);
        }
        for (var, value) in vars {
            if let Some(key) = env_var_to_key(&var) {
                properties.set(key, value, Source::Env { var });
            }
        }
        properties.expand_placeholders()?;
        Ok(properties)
    }

    /// Merges one file's key/value pairs (later lines win). The file must be UTF-8 (a UTF-8
    /// byte-order mark is allowed).
    pub fn merge_file(&mut self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        // Checked here, before the parser sees it: a UTF-16 file must be an error naming the
        // file and line, not a decoder panic.
        if let Err(e) = std::str::from_utf8(bytes) {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            return Err(Error::Parse {
                path: path.to_owned(),
                line: Some(line),
                message: "the file is not UTF-8 text; save it as UTF-8".to_owned(),
            });
        }
        for line in PropertiesIter::new_with_encoding(bytes, encoding_rs::UTF_8) {
            let line = line.map_err(|source| Error::Parse {
                path: path.to_owned(),
                line: source.line_number(),
                message: source.to_string(),
            })?;
            let number = line.line_number();
            if let LineContent::KVPair(key, value) = line.consume_content() {
                let source = Source::File {
                    path: path.to_owned(),
                    line: number,
                };
                self.set(key, value, source);
            }
        }
        Ok(())
    }

    /// Sets one value (trimmed of surrounding whitespace, which `.properties` keeps at the end).
    pub fn set(&mut self, key: String, value: String, source: Source) {
        let value = value.trim().to_owned();
        self.entries.insert(key, Setting { value, source });
    }

    /// The setting of `key`, if any layer set it.
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.entries.get(key)
    }

    /// Every effective setting, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Setting)> {
        self.entries
            .iter()
            .map(|(key, setting)| (key.as_str(), setting))
    }

    /// Warnings for keys in our namespaces that name nothing we read, with the nearest known key.
    pub fn unknown_key_warnings(&self) -> Vec<String> {
        self.iter()
            .filter(|(key, _)| keys::is_unknown(key))
            .map(|(key, setting)| {
                let hint = keys::nearest(key)
                    .map(|near| format!("; did you mean {near}?"))
                    .unwrap_or_default();
                format!("{}: unknown key {key}{hint}", setting.source)
            })
            .collect()
    }

    fn expand_placeholders(&mut self) -> Result<(), Error> {
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, s)| s.value.contains("${"))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let expanded = self.expand(&key, &mut Vec::new())?;
            if let Some(setting) = self.entries.get_mut(&key) {
                setting.value = expanded;
            }
        }
        Ok(())
    }

    fn expand(&self, key: &str, stack: &mut Vec<String>) -> Result<String, Error> {
        let setting = &self.entries[key];
        let fail = |reason: String| Error::Placeholder {
            origin: setting.source.clone(),
            key: key.to_owned(),
            reason,
        };
        if stack.iter().any(|k| k == key) {
            stack.push(key.to_owned());
            return Err(fail(format!(
                "placeholders form a cycle: {}",
                stack.join(" -> ")
            )));
        }
        stack.push(key.to_owned());
        let mut out = String::with_capacity(setting.value.len());
        let mut rest = setting.value.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            // The value itself is not quoted: it may be a secret.
            let end = after
                .find('}')
                .ok_or_else(|| fail("unterminated placeholder: \"${\" without \"}\"".to_owned()))?;
            let name = &after[..end];
            if !self.entries.contains_key(name) {
                return Err(fail(format!("${{{name}}} names a key that is not set")));
            }
            out.push_str(&self.expand(name, stack)?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        stack.pop();
        Ok(out)
    }
}

/// The property an environment variable overrides, by the Commerce rule: `y_` then the key with
/// `.` written as `_` and a literal `_` written as `__` (`y_spring_session_enabled` sets
/// `spring.session.enabled`; `y_session_node_name` sets `session.node.name`).
pub fn env_var_to_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    if rest.is_empty() {
        return None;
    }
    let mut key = String::with_capacity(rest.len());
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '_' if chars.peek() == Some(&'_') => {
                chars.next();
                key.push('_');
            }
            '_' => key.push('.'),
            c => key.push(c),
        }
    }
    Some(key)
}

/// The environment variable that overrides `key` (the inverse of [`env_var_to_key`]).
pub fn key_to_env_var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('_', "__").replace('.', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_rule_round_trips() {
        for key in [
            "spring.session.enabled",
            "session.store.url",
            "spring.session.my_app.save",
        ] {
            let var = key_to_env_var(key);
            assert_eq!(env_var_to_key(&var).as_deref(), Some(key), "{var}");
        }
        assert_eq!(
            key_to_env_var("spring.session.my_app.save"),
            "y_spring_session_my__app_save"
        );
        assert_eq!(env_var_to_key("PATH"), None);
        assert_eq!(env_var_to_key("y_"), None);
    }

    #[test]
    fn only_utf8_files_are_read() {
        let mut p = Properties::default();
        let utf16 = b"\xff\xfes\x00.\x00t\x00=\x001\x00\n";
        let err = p
            .merge_file(Path::new("local.properties"), utf16)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("local.properties:1") && err.contains("not UTF-8"),
            "{err}"
        );
        let err = p
            .merge_file(Path::new("l"), b"a=1\nb=caf\xe9\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("l:2"), "{err}");
        p.merge_file(Path::new("l"), b"\xef\xbb\xbfsession.timeout=5\n")
            .unwrap();
        assert_eq!(p.get("session.timeout").unwrap().value, "5");
        // Whatever the bytes, an error and never a panic.
        for bytes in [
            &b"\xff\xfeabc"[..],
            b"\xfe\xff\x00",
            b"\\u12",
            b"a=\\uZZZZ",
            b"\xc3",
        ] {
            let _ = p.merge_file(Path::new("l"), bytes);
        }
    }

    #[test]
    fn layers_and_sources() {
        let mut p = Properties::builtin();
        p.merge_file(
            Path::new("p"),
            b"# c\nsession.timeout = 60 \nserver.bind: 0.0.0.0:1\n",
        )
        .unwrap();
        assert_eq!(p.get("session.timeout").unwrap().value, "60");
        assert_eq!(
            p.get("server.bind").unwrap().source,
            Source::File {
                path: "p".into(),
                line: 3
            }
        );
        assert_eq!(
            p.get("session.cache.max.entries").unwrap().source,
            Source::Builtin
        );
    }

    #[test]
    fn placeholders_expand_and_fail_clearly() {
        let mut p = Properties::builtin();
        p.merge_file(
            Path::new("p"),
            b"a.dir=/var\nsession.store.url=sqlite://${a.dir}/s.db\n",
        )
        .unwrap();
        p.expand_placeholders().unwrap();
        assert_eq!(
            p.get("session.store.url").unwrap().value,
            "sqlite:///var/s.db"
        );

        let mut cyc = Properties::default();
        cyc.merge_file(Path::new("p"), b"a=${b}\nb=${a}\n").unwrap();
        let err = cyc.expand_placeholders().unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");

        let mut missing = Properties::default();
        missing
            .merge_file(Path::new("p"), b"\na=${nope}\n")
            .unwrap();
        let err = missing.expand_placeholders().unwrap_err().to_string();
        assert!(err.contains("p:2") && err.contains("${nope}"), "{err}");

        let mut open = Properties::default();
        open.merge_file(Path::new("p"), b"a=${x\n").unwrap();
        assert!(
            open.expand_placeholders()
                .unwrap_err()
                .to_string()
                .contains("unterminated")
        );
    }
}
