//! The configuration file: every flag of every command can be set in TOML, so that a service
//! (systemd, a container) runs `spotter serve` with a file instead of a long command line.
//!
//! ```toml
//! [defaults]                         # for every command that has the flag
//! index = "/var/lib/spotter/index"
//! model = "wedetect-uni-base"
//!
//! [serve]                            # a section per command, keys are its long flag names
//! addr = "0.0.0.0:7878"
//! token-file = "/etc/spotter/token"
//! archive = ["/srv/photos", "/mnt/nas/photos"]
//!
//! [index]
//! archives = ["/srv/photos"]         # positional arguments by their name in --help
//! exclude = ["**/thumbs/**"]
//! ```
//!
//! The file is `--config FILE`, else `$SPOTTER_CONFIG`, else `$XDG_CONFIG_HOME/spotter/config.toml`
//! (`~/.config/spotter/config.toml`) when it exists. A flag given on the command line or by its
//! environment variable wins over the file. An unknown section, or a key that is no flag of its
//! command, is an error that names it. Paths are used as written (relative ones from the working
//! directory).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory};

use super::Cli;

/// The section whose settings apply to every command that has the flag.
const DEFAULTS: &str = "defaults";

/// Where the configuration comes from when `--config` is not given.
pub fn default_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SPOTTER_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("spotter").join("config.toml"))
}

/// The command line `argv` with the settings of the configuration file added where the command
/// line (or an environment variable) does not give them; `--config FILE` is taken out.
pub fn apply(argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let (argv, explicit) = take_config_flag(argv)?;
    let (path, required) = match explicit {
        Some(path) => (path, true),
        None => match default_path() {
            Some(path) => (path, std::env::var_os("SPOTTER_CONFIG").is_some()),
            None => return Ok(argv),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(argv),
        Err(e) => {
            return Err(format!(
                "cannot read the configuration file {}: {e}",
                path.display()
            ))
        }
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
    with_settings(argv, &table, &path)
}

/// Splits `--config FILE` / `--config=FILE` out of `argv`.
fn take_config_flag(argv: Vec<OsString>) -> Result<(Vec<OsString>, Option<PathBuf>), String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut config = None;
    let mut args = argv.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            out.push(arg);
            out.extend(args.by_ref());
            break;
        }
        if arg == "--config" {
            let value = args
                .next()
                .ok_or("--config needs a file: --config /etc/spotter/config.toml")?;
            config = Some(PathBuf::from(value));
        } else if let Some(value) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            config = Some(PathBuf::from(value));
        } else {
            out.push(arg);
        }
    }
    Ok((out, config))
}

/// A command's arguments by the names a configuration file uses for them.
struct Setting {
    id: String,
    long: Option<String>,
    short: Option<char>,
    positional: bool,
    flag: bool,
}

impl Setting {
    /// How the command line spells it: `--long`, else `-s`.
    fn spelling(&self) -> String {
        match (&self.long, self.short) {
            (Some(long), _) => format!("--{long}"),
            (None, Some(short)) => format!("-{short}"),
            (None, None) => format!("--{}", self.id),
        }
    }
}

fn settings_of(command: &clap::Command) -> Vec<Setting> {
    command
        .get_arguments()
        .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::Version))
        .map(|a| Setting {
            id: a.get_id().to_string(),
            long: a.get_long().map(str::to_string),
            short: a.get_short(),
            positional: a.is_positional(),
            flag: matches!(a.get_action(), ArgAction::SetTrue),
        })
        .collect()
}

/// The setting a key names: a long flag name, a short-only flag's name (`k`), or a positional
/// argument's name.
fn setting<'a>(settings: &'a [Setting], key: &str) -> Option<&'a Setting> {
    settings
        .iter()
        .find(|s| s.long.as_deref() == Some(key))
        .or_else(|| {
            settings
                .iter()
                .find(|s| (s.positional || s.long.is_none()) && s.id == key)
        })
}

fn with_settings(
    mut argv: Vec<OsString>,
    table: &toml::Table,
    path: &Path,
) -> Result<Vec<OsString>, String> {
    let cli = Cli::command();
    let commands: Vec<&clap::Command> = cli.get_subcommands().collect();
    // Check the whole file first, whatever the command: a typo must not wait for its command.
    for (key, value) in table {
        match value {
            toml::Value::Table(defaults) if key == DEFAULTS => {
                for name in defaults.keys() {
                    if !commands
                        .iter()
                        .any(|c| setting(&settings_of(c), name).is_some())
                    {
                        return Err(format!(
                            "{}: [{DEFAULTS}] '{name}' is no flag of any Spotter command (keys are long flag names without the dashes, e.g. index, model, device)",
                            path.display()
                        ));
                    }
                }
            }
            toml::Value::Table(section) => {
                let command = commands
                    .iter()
                    .find(|c| c.get_name() == key)
                    .ok_or_else(|| {
                        format!(
                            "{}: [{key}] is no Spotter command (sections: {DEFAULTS}, {})",
                            path.display(),
                            commands
                                .iter()
                                .map(|c| c.get_name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?;
                let settings = settings_of(command);
                for name in section.keys() {
                    if setting(&settings, name).is_none() {
                        return Err(format!(
                            "{}: [{key}] has no setting '{name}' (`spotter {key} --help` lists its flags; keys are the long flag names without the dashes)",
                            path.display()
                        ));
                    }
                }
            }
            _ => {
                return Err(format!(
                    "{}: '{key}' is outside a section: put settings under [{DEFAULTS}] (for every command) or [COMMAND] (e.g. [serve])",
                    path.display()
                ))
            }
        }
    }
    // Which command runs, and what its command line (and environment) already gives.
    let lenient = lenient(Cli::command());
    let Ok(matches) = lenient.try_get_matches_from(&argv) else {
        return Ok(argv); // clap reports the command-line error itself
    };
    let Some((name, sub)) = matches.subcommand() else {
        return Ok(argv);
    };
    let Some(command) = commands.iter().find(|c| c.get_name() == name) else {
        return Ok(argv);
    };
    let settings = settings_of(command);
    let given = |id: &str| {
        matches!(
            sub.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let mut flags: Vec<OsString> = Vec::new();
    let mut positionals: Vec<OsString> = Vec::new();
    let section = table.get(name).and_then(|v| v.as_table());
    let defaults = table.get(DEFAULTS).and_then(|v| v.as_table());
    // The command's own section wins over the defaults.
    let entries = section.into_iter().flat_map(|s| s.iter()).chain(
        defaults
            .into_iter()
            .flat_map(|d| d.iter())
            .filter(|(k, _)| section.is_none_or(|s| !s.contains_key(*k))),
    );
    for (key, value) in entries {
        let Some(setting) = setting(&settings, key) else {
            continue; // a default for other commands
        };
        if given(&setting.id) {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<Vec<_>, _>>(),
            other => scalar(other).map(|v| vec![v]),
        }
        .map_err(|what| format!("{}: '{key}' {what}", path.display()))?;
        if setting.positional {
            positionals.extend(values.into_iter().map(OsString::from));
            continue;
        }
        let long = setting.spelling();
        if setting.flag {
            match value.as_bool() {
                Some(true) => flags.push(long.into()),
                Some(false) => {}
                None => {
                    return Err(format!(
                        "{}: '{key}' is an on/off flag: write {key} = true or false",
                        path.display()
                    ))
                }
            }
            continue;
        }
        for v in values {
            flags.push(long.clone().into());
            flags.push(v.into());
        }
    }
    let end = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    let mut tail = argv.split_off(end);
    argv.extend(flags);
    if !positionals.is_empty() {
        if tail.is_empty() {
            tail.push("--".into());
        }
        tail.extend(positionals);
    }
    argv.extend(tail);
    Ok(argv)
}

/// `command` with nothing required, so that a command line that leaves a required flag to the
/// file still parses far enough to tell which flags it gives.
fn lenient(command: clap::Command) -> clap::Command {
    let command = command
        .subcommand_required(false)
        .arg_required_else_help(false)
        .ignore_errors(true);
    let ids: Vec<String> = command
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    let mut command = ids
        .into_iter()
        .fold(command, |c, id| c.mut_arg(id, |a| a.required(false)));
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        command = command.mut_subcommand(name, lenient);
    }
    command
}

/// A TOML value as one command-line value.
fn scalar(value: &toml::Value) -> Result<String, &'static str> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err("must be a string, a number, true/false or a list of those"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Vec<OsString> {
        line.iter().map(OsString::from).collect()
    }

    fn applied(line: &[&str], toml: &str) -> Result<Vec<String>, String> {
        let table: toml::Table = toml.parse().unwrap();
        with_settings(args(line), &table, Path::new("test.toml")).map(|v| {
            v.into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        })
    }

    /// The `flag value` pairs and lone flags of an expanded command line, in a set.
    fn pairs(line: &[String]) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let mut i = 0;
        while i < line.len() {
            let arg = &line[i];
            match line.get(i + 1) {
                Some(next) if arg.starts_with('-') && !next.starts_with('-') => {
                    out.insert(format!("{arg} {next}"));
                    i += 2;
                }
                _ => {
                    out.insert(arg.clone());
                    i += 1;
                }
            }
        }
        out
    }

    #[test]
    fn the_file_fills_what_the_command_line_leaves_out() {
        let toml = r#"
            [defaults]
            index = "/top"
            model = "top-model"
            [search]
            k = 3
            json = true
            index = "/section"
            [index]
            archives = ["/a", "/b"]
            exclude = ["x/**", "y/**"]
        "#;
        let search = applied(&["spotter", "search", "cat"], toml).unwrap();
        assert_eq!(&search[..3], ["spotter", "search", "cat"]);
        let want: std::collections::BTreeSet<String> = [
            "spotter",
            "search",
            "cat",
            "-k 3",
            "--json",
            "--index /section",
            "--model top-model",
        ]
        .map(String::from)
        .into();
        assert_eq!(pairs(&search), want);
        let flags_win = applied(
            &["spotter", "search", "cat", "-k", "9", "--index", "/cli"],
            toml,
        )
        .unwrap();
        assert!(
            !flags_win.contains(&"/section".to_string()),
            "{flags_win:?}"
        );
        assert!(!flags_win.contains(&"3".to_string()), "{flags_win:?}");
        let index = applied(&["spotter", "index"], toml).unwrap();
        assert_eq!(&index[index.len() - 3..], ["--", "/a", "/b"], "{index:?}");
        let excludes = index.iter().filter(|a| *a == "--exclude").count();
        assert_eq!(excludes, 2, "{index:?}");
        let given = applied(&["spotter", "index", "/c", "--index", "/i"], toml).unwrap();
        assert!(!given.contains(&"/a".to_string()), "{given:?}");
        assert!(!given.contains(&"/top".to_string()), "{given:?}");
    }

    #[test]
    fn unknown_sections_and_keys_are_errors_that_name_them() {
        let err = applied(&["spotter", "stats"], "[serve]\nadress = \"x\"").unwrap_err();
        assert!(err.contains("'adress'") && err.contains("[serve]"), "{err}");
        let err = applied(&["spotter", "stats"], "[sevre]\naddr = \"x\"").unwrap_err();
        assert!(err.contains("[sevre]"), "{err}");
        let err = applied(&["spotter", "stats"], "[defaults]\ncolour = \"red\"").unwrap_err();
        assert!(err.contains("'colour'"), "{err}");
        let err = applied(&["spotter", "stats"], "index = \"/top\"").unwrap_err();
        assert!(err.contains("[defaults]"), "{err}");
        let err = applied(&["spotter", "stats"], "[stats]\njson = \"yes\"").unwrap_err();
        assert!(err.contains("true or false"), "{err}");
    }

    #[test]
    fn config_flag_is_taken_out() {
        let (rest, path) =
            take_config_flag(args(&["spotter", "--config", "/etc/s.toml", "stats"])).unwrap();
        assert_eq!(path, Some(PathBuf::from("/etc/s.toml")));
        assert_eq!(rest, args(&["spotter", "stats"]));
        let (_, path) = take_config_flag(args(&["spotter", "stats", "--config=/x.toml"])).unwrap();
        assert_eq!(path, Some(PathBuf::from("/x.toml")));
        assert!(take_config_flag(args(&["spotter", "--config"])).is_err());
    }
}
