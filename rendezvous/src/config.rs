//! Config files: TOML whose keys are the command's own long flags (`room-idle-secs = 30` or
//! `room_idle_secs = 30`). The file only sets defaults, so a flag on the command line wins, and
//! every value goes through the flag's own parser: a bad value or an unknown key is an error that
//! names the key and its line.
//!
//! Used by `inclubit-rendezvous`, `inclubit rendezvous` and `inclubit send`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::builder::ArgAction;
use clap::{ArgMatches, Command};

/// The flags every command with a config file has.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// Settings from this TOML file (keys are the long flags: `max-viewers = 32`); flags given
    /// here override it.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print the settings in effect (the file, then the flags) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{path}: {msg}")]
    Syntax { path: PathBuf, msg: String },
    #[error("{path}:{line}: unknown key `{key}` (keys are the long flags; --help lists them)")]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
    },
    #[error("{path}:{line}: bad value for `{key}`: {msg}")]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        msg: String,
    },
}

/// Keys that make no sense in a file.
const NOT_IN_FILE: &[&str] = &["help", "version", "config", "print-config"];

/// One parsed file: each key with its line and its values as the flag would get them.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    key: String,
    line: usize,
    value: toml::Value,
}

impl ConfigFile {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        type Table = std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>;
        let table: Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.into(),
            msg: match e.span() {
                Some(s) => format!("line {}: {}", line_of(text, s.start), e.message()),
                None => e.message().to_string(),
            },
        })?;
        let mut entries: Vec<Entry> = table
            .into_iter()
            .map(|(k, v)| Entry {
                line: line_of(text, k.span().start),
                key: k.into_inner(),
                value: v.into_inner(),
            })
            .collect();
        entries.sort_by_key(|e| e.line);
        Ok(Self {
            path: path.into(),
            entries,
        })
    }

    /// `cmd` with the file's values as the defaults of its flags.
    pub fn apply(&self, mut cmd: Command) -> Result<Command, ConfigError> {
        for e in &self.entries {
            let long = e.key.replace('_', "-");
            let unknown = || ConfigError::UnknownKey {
                path: self.path.clone(),
                line: e.line,
                key: e.key.clone(),
            };
            if NOT_IN_FILE.contains(&long.as_str()) {
                return Err(unknown());
            }
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()))
                .ok_or_else(unknown)?;
            let bad = |msg: String| ConfigError::BadValue {
                path: self.path.clone(),
                line: e.line,
                key: e.key.clone(),
                msg,
            };
            let flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
            let values = match (&e.value, flag) {
                (toml::Value::Boolean(b), true) => vec![b.to_string()],
                (_, true) => return Err(bad("expected true or false".into())),
                (toml::Value::Array(items), false)
                    if arg.get_num_args().is_some_and(|n| n.max_values() > 1)
                        || matches!(arg.get_action(), ArgAction::Append) =>
                {
                    items
                        .iter()
                        .map(scalar)
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| bad("expected a list of strings or numbers".into()))?
                }
                (v, false) => {
                    vec![scalar(v).ok_or_else(|| bad("expected a string or a number".into()))?]
                }
            };
            // The flag's own parser, on a command of its own (no relations to other flags).
            let check = Command::new("config").arg(
                clap::Arg::new("v")
                    .long("v")
                    .allow_hyphen_values(true)
                    .value_parser(arg.get_value_parser().clone()),
            );
            for v in values.iter().filter(|_| !flag) {
                check
                    .clone()
                    .try_get_matches_from(["config", "--v", v.as_str()])
                    .map_err(|err| bad(clap_message(&err)))?;
            }
            let id = arg.get_id().clone();
            cmd = cmd.mut_arg(id, |a| a.default_values(values));
        }
        Ok(cmd)
    }
}

/// A TOML scalar as the flag's text.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// clap's one-line reason, without its "error:" prefix and usage.
fn clap_message(err: &clap::Error) -> String {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_string()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The value of `--config` in `args` (either spelling), without parsing anything else.
pub fn config_flag(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// The file to read: `--config`, else `default` when it exists.
pub fn choose(args: &[OsString], default: Option<PathBuf>) -> Option<PathBuf> {
    config_flag(args).or_else(|| default.filter(|p| p.is_file()))
}

/// Parses `args` for `cmd` with the config file applied to `sub` (a subcommand's name, or `None`
/// for the top level). Returns the command as defined (for [`render`]: applying a file reorders
/// flags) and the matches; clap's own errors (and `--help`) exit as clap does.
pub fn get_matches(
    cmd: Command,
    args: Vec<OsString>,
    sub: Option<&str>,
    default: Option<PathBuf>,
) -> Result<(Command, ArgMatches), ConfigError> {
    let applied = applied(cmd.clone(), &args, sub, default)?;
    let m = applied.get_matches_from(args);
    Ok((cmd, m))
}

/// The same without exiting: for a reload (SIGHUP), where a bad file must not stop the server.
pub fn try_get_matches(
    cmd: Command,
    args: Vec<OsString>,
    sub: Option<&str>,
    default: Option<PathBuf>,
) -> Result<ArgMatches, String> {
    let applied = applied(cmd, &args, sub, default).map_err(|e| e.to_string())?;
    applied
        .try_get_matches_from(args)
        .map_err(|e| clap_message(&e))
}

fn applied(
    cmd: Command,
    args: &[OsString],
    sub: Option<&str>,
    default: Option<PathBuf>,
) -> Result<Command, ConfigError> {
    let Some(path) = choose(args, default) else {
        return Ok(cmd);
    };
    let file = ConfigFile::read(&path)?;
    Ok(match sub {
        None => file.apply(cmd)?,
        Some(name) => match cmd.find_subcommand(name).cloned() {
            Some(sc) => {
                let sc = file.apply(sc)?;
                cmd.mut_subcommand(name, move |_| sc)
            }
            None => cmd,
        },
    })
}

/// The settings in effect, as a config file: every flag of `cmd` with its value (flags with
/// none commented out), so the output can be saved and read back.
pub fn render(cmd: &Command, m: &ArgMatches) -> String {
    let mut out = String::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if NOT_IN_FILE.contains(&long) || arg.is_hide_set() {
            continue;
        }
        let id = arg.get_id().as_str();
        if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            let on = m
                .try_get_one::<bool>(id)
                .ok()
                .flatten()
                .copied()
                .unwrap_or(false);
            out.push_str(&format!("{long} = {on}\n"));
            continue;
        }
        let raw: Vec<String> = m
            .try_get_raw(id)
            .ok()
            .flatten()
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let many = arg.get_num_args().is_some_and(|n| n.max_values() > 1)
            || matches!(arg.get_action(), ArgAction::Append);
        match (raw.as_slice(), many) {
            ([], _) => out.push_str(&format!("# {long} =\n")),
            ([one], false) => out.push_str(&format!("{long} = {}\n", toml_scalar(one))),
            (all, _) => {
                let items: Vec<String> = all.iter().map(|v| toml_scalar(v)).collect();
                out.push_str(&format!("{long} = [{}]\n", items.join(", ")));
            }
        }
    }
    out
}

/// Numbers stay numbers; everything else is a TOML string.
fn toml_scalar(v: &str) -> String {
    if v.parse::<i64>().is_ok() || (v.parse::<f64>().is_ok_and(f64::is_finite) && v.contains('.')) {
        v.to_string()
    } else {
        toml::Value::String(v.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cmd() -> Command {
        Command::new("t")
            .arg(
                Arg::new("max_viewers")
                    .long("max-viewers")
                    .value_parser(clap::value_parser!(u32))
                    .default_value("16"),
            )
            .arg(
                Arg::new("no_http")
                    .long("no-http")
                    .action(ArgAction::SetTrue),
            )
            .arg(Arg::new("acme").long("acme").action(ArgAction::Append))
            .arg(Arg::new("listen").long("listen"))
    }

    fn file(text: &str) -> ConfigFile {
        ConfigFile::parse(Path::new("rv.toml"), text).unwrap()
    }

    #[test]
    fn file_sets_defaults_and_flags_win() {
        let f = file("max_viewers = 32\nno-http = true\nacme = [\"a.example\", \"b.example\"]\n");
        let c = f.apply(cmd()).unwrap();
        let m = c.clone().try_get_matches_from(["t"]).unwrap();
        assert_eq!(m.get_one::<u32>("max_viewers"), Some(&32));
        assert!(m.get_flag("no_http"));
        let acme: Vec<&String> = m.get_many("acme").unwrap().collect();
        assert_eq!(acme, ["a.example", "b.example"]);
        let m = c.try_get_matches_from(["t", "--max-viewers", "4"]).unwrap();
        assert_eq!(m.get_one::<u32>("max_viewers"), Some(&4));
    }

    #[test]
    fn unknown_key_and_bad_value_name_key_and_line() {
        let err = file("listen = \"x\"\n\nmax-viewrs = 3\n")
            .apply(cmd())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "rv.toml:3: unknown key `max-viewrs` (keys are the long flags; --help lists them)"
        );
        let err = file("max-viewers = \"many\"\n").apply(cmd()).unwrap_err();
        let s = err.to_string();
        assert!(
            s.starts_with("rv.toml:1: bad value for `max-viewers`: "),
            "{s}"
        );
        assert!(s.contains("many"), "{s}");
        let err = file("no-http = 1\n").apply(cmd()).unwrap_err();
        assert!(err.to_string().contains("expected true or false"), "{err}");
        let err = file("config = \"other.toml\"\n").apply(cmd()).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = ConfigFile::parse(Path::new("rv.toml"), "a = 1\nb = = 2\n").unwrap_err();
        assert!(err.to_string().starts_with("rv.toml: line 2: "), "{err}");
    }

    #[test]
    fn rendered_config_reads_back_the_same() {
        let c = file("max-viewers = 7\nacme = [\"a.example\"]\n")
            .apply(cmd())
            .unwrap();
        let m = c.clone().try_get_matches_from(["t", "--no-http"]).unwrap();
        let text = render(&cmd(), &m);
        assert!(text.contains("max-viewers = 7\n"), "{text}");
        assert!(text.contains("no-http = true\n"), "{text}");
        assert!(text.contains("# listen =\n"), "{text}");
        let again = file(&text).apply(cmd()).unwrap();
        let m2 = again.clone().try_get_matches_from(["t"]).unwrap();
        assert_eq!(render(&cmd(), &m2), text);
    }

    #[test]
    fn config_flag_is_found_in_either_spelling() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_flag(&a(&["x", "--config", "c.toml"])),
            Some("c.toml".into())
        );
        assert_eq!(
            config_flag(&a(&["x", "--config=c.toml"])),
            Some("c.toml".into())
        );
        assert_eq!(config_flag(&a(&["x", "--", "--config=c.toml"])), None);
    }
}
