//! Where fulcrumctl finds the cluster and its token: flags first, then the environment, then
//! the config file; and the normal form of an endpoint.
//!
//! The environment is passed in as a function so the precedence can be tested without
//! touching the process's own variables.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use hyper::Uri;
use serde::Deserialize;

use crate::exit::{Exit, Failure};

/// The flags that say how to reach the cluster.
#[derive(Args, Debug, Default)]
pub(crate) struct ConnectionArgs {
    /// Admin API of a node, e.g. http://198.18.0.11:7100 or 198.18.0.11:7100; repeat it or
    /// separate with commas to fail over to the next when one is unreachable [default:
    /// $FULCRUM_ENDPOINTS, then the config file]
    #[arg(
        long = "endpoint",
        value_name = "URL",
        value_delimiter = ',',
        global = true,
        help_heading = "Global options"
    )]
    pub(crate) endpoints: Vec<String>,
    /// Bearer token of the admin API [default: $FULCRUM_TOKEN, then the config file]
    #[arg(
        long,
        value_name = "TOKEN",
        global = true,
        help_heading = "Global options",
        conflicts_with = "token_file"
    )]
    pub(crate) token: Option<String>,
    /// Read the bearer token from FILE (surrounding whitespace is ignored)
    #[arg(long, value_name = "FILE", global = true, help_heading = "Global options")]
    pub(crate) token_file: Option<PathBuf>,
    /// The CA (PEM) that signed the admin API's certificate, for https endpoints: only it is
    /// trusted [default: $FULCRUM_CA_FILE, then the config file's `ca_file`]
    #[arg(long, value_name = "FILE", global = true, help_heading = "Global options")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Config file with `endpoints = [...]`, `token` or `token_file`, and `ca_file`
    /// [default: $XDG_CONFIG_HOME/fulcrum/fulcrumctl.toml or ~/.config/fulcrum/fulcrumctl.toml]
    #[arg(long, value_name = "FILE", global = true, help_heading = "Global options")]
    pub(crate) config: Option<PathBuf>,
}

/// The config file's content.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    token: Option<String>,
    /// Relative to the config file's folder.
    #[serde(default)]
    token_file: Option<PathBuf>,
    /// Relative to the config file's folder.
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

/// What a command that talks to the cluster needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Tried in order until one answers.
    pub(crate) endpoints: Vec<Endpoint>,
    /// The bearer token.
    pub(crate) token: String,
    /// The CA trusted for https endpoints.
    pub(crate) ca_file: Option<PathBuf>,
}

/// An admin API base address in normal form: `http://host:port`, no trailing slash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint(String);

impl Endpoint {
    /// Accepts `http://host:port` and `https://host:port` (a trailing `/` too) and bare
    /// `host:port` (http).
    pub(crate) fn parse(text: &str) -> Result<Endpoint, String> {
        let text = text.trim();
        let full = if text.contains("://") { text.to_owned() } else { format!("http://{text}") };
        let example = "write e.g. https://198.18.0.11:7100";
        let uri: Uri =
            full.parse().map_err(|e| format!("invalid endpoint {text:?}: {e}; {example}"))?;
        let scheme = match uri.scheme_str() {
            Some(scheme @ ("http" | "https")) => scheme,
            _ => {
                return Err(format!(
                    "endpoint {text:?}: the scheme must be http or https; {example}"
                ));
            }
        };
        let Some(authority) = uri.authority() else {
            return Err(format!("endpoint {text:?} has no host; {example}"));
        };
        if authority.as_str().contains('@') {
            return Err(format!("endpoint {text:?}: give the token with --token, not in the URL"));
        }
        if authority.port_u16().is_none() {
            return Err(format!("endpoint {text:?} has no port; {example}"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("endpoint {text:?} must not have a path; {example}"));
        }
        Ok(Endpoint(format!("{scheme}://{authority}")))
    }

    /// Whether it is reached over TLS.
    pub(crate) fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }

    /// The full URL of `path_and_query` (which starts with `/`) on this endpoint.
    pub(crate) fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.0)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Resolves endpoints and token: flag > environment > config file, each on its own.
pub(crate) fn resolve(
    args: &ConnectionArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Settings> {
    // An empty variable is as good as none: `FULCRUM_TOKEN= fulcrumctl ...` unsets it.
    let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    let config_path = match &args.config {
        Some(path) => Some((path.clone(), true)),
        None => default_config_path(&env).map(|path| (path, false)),
    };
    let (file, file_dir) = match config_path {
        Some((path, explicit)) => match read_config_file(&path, explicit)? {
            Some(file) => {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (file, dir)
            }
            None => (ConfigFile::default(), PathBuf::new()),
        },
        None => (ConfigFile::default(), PathBuf::new()),
    };

    let endpoint_texts = if !args.endpoints.is_empty() {
        args.endpoints.clone()
    } else if let Some(list) = env("FULCRUM_ENDPOINTS") {
        list.split(',').map(str::to_owned).collect()
    } else {
        file.endpoints
    };
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for text in endpoint_texts.iter().filter(|t| !t.trim().is_empty()) {
        let endpoint = Endpoint::parse(text).map_err(|e| Failure::new(Exit::Usage, e))?;
        if !endpoints.contains(&endpoint) {
            endpoints.push(endpoint);
        }
    }
    if endpoints.is_empty() {
        return Err(Failure::new(
            Exit::Usage,
            "no endpoint: give --endpoint http://HOST:PORT, set FULCRUM_ENDPOINTS, or write \
             `endpoints = [\"http://HOST:PORT\"]` in the config file (see --config)",
        )
        .into());
    }

    let token = if let Some(token) = &args.token {
        token.trim().to_owned()
    } else if let Some(path) = &args.token_file {
        read_token_file(path)?
    } else if let Some(token) = env("FULCRUM_TOKEN") {
        token.trim().to_owned()
    } else {
        match (file.token, file.token_file) {
            (Some(_), Some(_)) => {
                return Err(Failure::new(
                    Exit::Usage,
                    "the config file gives both `token` and `token_file`: keep one",
                )
                .into());
            }
            (Some(token), None) => token.trim().to_owned(),
            (None, Some(path)) => read_token_file(&file_dir.join(path))?,
            (None, None) => String::new(),
        }
    };
    if token.is_empty() {
        return Err(Failure::new(
            Exit::Usage,
            "no token: give --token or --token-file, set FULCRUM_TOKEN, or write `token` or \
             `token_file` in the config file (see --config)",
        )
        .into());
    }
    let ca_file = match (&args.ca_file, env("FULCRUM_CA_FILE"), file.ca_file) {
        (Some(path), _, _) => Some(path.clone()),
        (None, Some(path), _) => Some(PathBuf::from(path)),
        (None, None, Some(path)) => Some(file_dir.join(path)),
        (None, None, None) => None,
    };
    if ca_file.is_none() && endpoints.iter().any(Endpoint::is_https) {
        return Err(Failure::new(
            Exit::Usage,
            "an https endpoint needs the CA that signed its certificate: give --ca-file, set \
             FULCRUM_CA_FILE, or write `ca_file` in the config file",
        )
        .into());
    }
    Ok(Settings { endpoints, token, ca_file })
}

/// `$XDG_CONFIG_HOME/fulcrum/fulcrumctl.toml`, else `~/.config/fulcrum/fulcrumctl.toml`.
fn default_config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("fulcrum").join("fulcrumctl.toml"))
}

/// Reads the config file; a default one that does not exist is no config file at all.
fn read_config_file(path: &Path, explicit: bool) -> anyhow::Result<Option<ConfigFile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read config file {}", path.display()));
        }
    };
    let file = toml::from_str(&text).map_err(|e| {
        Failure::new(Exit::Usage, format!("config file {} is not valid: {e}", path.display()))
    })?;
    Ok(Some(file))
}

fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(
            Failure::new(Exit::Usage, format!("token file {} is empty", path.display())).into()
        );
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn endpoints(texts: &[&str]) -> Vec<Endpoint> {
        texts.iter().map(|t| Endpoint::parse(t).unwrap()).collect()
    }

    /// A home folder holding a default config file with `content`.
    fn home_with_config(content: &str) -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".config/fulcrum");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fulcrumctl.toml"), content).unwrap();
        home
    }

    fn resolve_with(args: &ConnectionArgs, vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve(args, &|name| vars.get(name).cloned())
    }

    #[test]
    fn endpoints_are_normalised() {
        for (given, normal) in [
            ("http://198.18.0.11:7100", "http://198.18.0.11:7100"),
            ("http://198.18.0.11:7100/", "http://198.18.0.11:7100"),
            ("198.18.0.11:7100", "http://198.18.0.11:7100"),
            (" lb1.example.test:7100 ", "http://lb1.example.test:7100"),
            ("[2001:db8::1]:7100", "http://[2001:db8::1]:7100"),
            ("https://198.18.0.11:7100/", "https://198.18.0.11:7100"),
        ] {
            assert_eq!(Endpoint::parse(given).unwrap().to_string(), normal, "{given}");
        }
        assert_eq!(
            Endpoint::parse("198.18.0.11:7100").unwrap().url("/v1/status"),
            "http://198.18.0.11:7100/v1/status"
        );
    }

    #[test]
    fn bad_endpoints_say_why() {
        for (given, reason) in [
            ("ftp://198.18.0.11:7100", "scheme"),
            ("198.18.0.11", "no port"),
            ("http://198.18.0.11:7100/admin", "path"),
            ("http://user:pw@198.18.0.11:7100", "--token"),
            ("http://bad host:1", "invalid endpoint"),
        ] {
            let error = Endpoint::parse(given).unwrap_err();
            assert!(error.contains(reason), "{given}: {error}");
        }
    }

    #[test]
    fn flags_beat_environment_beat_config_file() {
        let home =
            home_with_config("endpoints = [\"http://198.18.0.13:7100\"]\ntoken = \"from-file\"\n");
        let home_var = home.path().to_str().unwrap();

        let from_file = resolve_with(&ConnectionArgs::default(), &[("HOME", home_var)]).unwrap();
        assert_eq!(from_file.endpoints, endpoints(&["198.18.0.13:7100"]));
        assert_eq!(from_file.token, "from-file");

        let vars = [
            ("HOME", home_var),
            ("FULCRUM_ENDPOINTS", "198.18.0.11:7100, 198.18.0.12:7100"),
            ("FULCRUM_TOKEN", "from-env\n"),
        ];
        let from_env = resolve_with(&ConnectionArgs::default(), &vars).unwrap();
        assert_eq!(from_env.endpoints, endpoints(&["198.18.0.11:7100", "198.18.0.12:7100"]));
        assert_eq!(from_env.token, "from-env");

        let flags = ConnectionArgs {
            endpoints: vec!["http://198.18.0.12:7100".into(), "198.18.0.12:7100".into()],
            token: Some("from-flag".into()),
            ..ConnectionArgs::default()
        };
        let from_flags = resolve_with(&flags, &vars).unwrap();
        // Duplicates collapse once normalised.
        assert_eq!(from_flags.endpoints, endpoints(&["198.18.0.12:7100"]));
        assert_eq!(from_flags.token, "from-flag");

        // Each setting falls back on its own: endpoints from the file, token from the flag.
        let token_only = ConnectionArgs { token: Some("t".into()), ..ConnectionArgs::default() };
        let mixed = resolve_with(&token_only, &[("HOME", home_var), ("FULCRUM_TOKEN", "")]);
        assert_eq!(mixed.unwrap().endpoints, endpoints(&["198.18.0.13:7100"]));
    }

    #[test]
    fn xdg_config_home_wins_over_home() {
        let home = home_with_config("endpoints = [\"198.18.0.13:7100\"]\ntoken = \"home\"\n");
        let xdg = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(xdg.path().join("fulcrum")).unwrap();
        std::fs::write(
            xdg.path().join("fulcrum/fulcrumctl.toml"),
            "endpoints = [\"198.18.0.14:7100\"]\ntoken = \"xdg\"\n",
        )
        .unwrap();
        let vars = [
            ("HOME", home.path().to_str().unwrap()),
            ("XDG_CONFIG_HOME", xdg.path().to_str().unwrap()),
        ];
        assert_eq!(resolve_with(&ConnectionArgs::default(), &vars).unwrap().token, "xdg");
    }

    #[test]
    fn token_files_are_trimmed_and_relative_to_the_config_file() {
        let home = home_with_config("endpoints = [\"198.18.0.11:7100\"]\ntoken_file = \"token\"\n");
        std::fs::write(home.path().join(".config/fulcrum/token"), "  s3cret\n\n").unwrap();
        let vars = [("HOME", home.path().to_str().unwrap())];
        assert_eq!(resolve_with(&ConnectionArgs::default(), &vars).unwrap().token, "s3cret");

        let flag_file = home.path().join("other-token");
        std::fs::write(&flag_file, "flag-token\r\n").unwrap();
        let args = ConnectionArgs { token_file: Some(flag_file), ..ConnectionArgs::default() };
        assert_eq!(resolve_with(&args, &vars).unwrap().token, "flag-token");

        let empty = home.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let args = ConnectionArgs { token_file: Some(empty), ..ConnectionArgs::default() };
        let error = resolve_with(&args, &vars).unwrap_err();
        assert!(error.to_string().contains("is empty"), "{error}");
    }

    #[test]
    fn missing_settings_are_usage_errors() {
        let nothing = tempfile::tempdir().unwrap();
        let vars = [("HOME", nothing.path().to_str().unwrap())];
        let error = resolve_with(&ConnectionArgs::default(), &vars).unwrap_err();
        assert_eq!(Exit::of(&error), Exit::Usage);
        assert!(error.to_string().contains("--endpoint"), "{error}");

        let vars = [("HOME", nothing.path().to_str().unwrap()), ("FULCRUM_ENDPOINTS", "h:1")];
        let error = resolve_with(&ConnectionArgs::default(), &vars).unwrap_err();
        assert_eq!(Exit::of(&error), Exit::Usage);
        assert!(error.to_string().contains("FULCRUM_TOKEN"), "{error}");
    }

    #[test]
    fn config_file_problems_are_reported() {
        let typo = home_with_config("endpoint = [\"198.18.0.11:7100\"]\n");
        let vars = [("HOME", typo.path().to_str().unwrap())];
        let error = resolve_with(&ConnectionArgs::default(), &vars).unwrap_err();
        assert!(error.to_string().contains("unknown field"), "{error}");

        let both = home_with_config("endpoints = [\"h:1\"]\ntoken = \"a\"\ntoken_file = \"b\"\n");
        let vars = [("HOME", both.path().to_str().unwrap())];
        let error = resolve_with(&ConnectionArgs::default(), &vars).unwrap_err();
        assert!(error.to_string().contains("keep one"), "{error}");

        // A config file named explicitly must exist.
        let args = ConnectionArgs {
            config: Some(PathBuf::from("/nonexistent/fulcrumctl.toml")),
            ..ConnectionArgs::default()
        };
        let error = resolve_with(&args, &[]).unwrap_err();
        assert!(format!("{error:#}").contains("cannot read config file"), "{error:#}");
    }

    #[test]
    fn an_https_endpoint_needs_a_ca_file_from_a_flag_the_environment_or_the_config_file() {
        let args = ConnectionArgs {
            endpoints: vec!["https://198.18.0.11:7100".into()],
            token: Some("t".into()),
            ..ConnectionArgs::default()
        };
        let error = resolve_with(&args, &[]).unwrap_err().to_string();
        assert!(error.contains("--ca-file"), "{error}");
        let from_env = resolve_with(&args, &[("FULCRUM_CA_FILE", "/etc/fulcrum/ca.pem")]).unwrap();
        assert_eq!(from_env.ca_file, Some(PathBuf::from("/etc/fulcrum/ca.pem")));

        let home = home_with_config("ca_file = \"tls/ca.pem\"\n");
        let home_var = home.path().to_str().unwrap();
        let from_file = resolve_with(&args, &[("HOME", home_var)]).unwrap();
        assert_eq!(from_file.ca_file, Some(home.path().join(".config/fulcrum/tls/ca.pem")));
    }
}
