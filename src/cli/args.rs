//! Parsing the original tool's syntax: single-dash option names, case-insensitive, in any
//! order, each value in the argument after its option. Hand-written because the syntax
//! (`-usagedatadest D:\x.cab`, `-PREPARE`) is not what argument-parser crates produce,
//! and because every mistake must become exactly one clear line.

use std::collections::BTreeMap;

/// The operation a command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Prepare,
    Export,
    NewSite,
    Connect,
    Import,
    Trust,
    ListUpdates,
    SiteInfo,
    ConsoleContent,
}

impl Mode {
    pub fn option(self) -> &'static str {
        match self {
            Mode::Prepare => "prepare",
            Mode::Export => "export",
            Mode::NewSite => "newsite",
            Mode::Connect => "connect",
            Mode::Import => "import",
            Mode::Trust => "trust",
            Mode::ListUpdates => "listupdates",
            Mode::SiteInfo => "siteinfo",
            Mode::ConsoleContent => "consolecontent",
        }
    }
    const ALL: [Mode; 9] = [
        Mode::Prepare,
        Mode::Export,
        Mode::NewSite,
        Mode::Connect,
        Mode::Import,
        Mode::Trust,
        Mode::ListUpdates,
        Mode::SiteInfo,
        Mode::ConsoleContent,
    ];
}

use Mode::*;

/// An option: its lower-case name, whether a value follows it, and the modes it applies
/// to (empty: every mode).
struct Spec {
    name: &'static str,
    value: Option<&'static str>,
    modes: &'static [Mode],
}

const SITE_MODES: &[Mode] = &[
    Prepare,
    Export,
    NewSite,
    Import,
    Trust,
    ListUpdates,
    SiteInfo,
    ConsoleContent,
];

const SPECS: &[Spec] = &[
    Spec {
        name: "json",
        value: None,
        modes: &[],
    },
    Spec {
        name: "sitedb",
        value: Some("FILE"),
        modes: SITE_MODES,
    },
    Spec {
        name: "usagedatadest",
        value: Some("FILE.cab"),
        modes: &[Prepare],
    },
    Spec {
        name: "dest",
        value: Some("FILE.csv"),
        modes: &[Export],
    },
    Spec {
        name: "force",
        value: None,
        modes: &[Prepare, Export],
    },
    Spec {
        name: "sitecode",
        value: Some("CODE"),
        modes: &[NewSite],
    },
    Spec {
        name: "siteversion",
        value: Some("VERSION"),
        modes: &[NewSite],
    },
    Spec {
        name: "diagnosticslevel",
        value: Some("LEVEL"),
        modes: &[NewSite],
    },
    Spec {
        name: "hierarchyid",
        value: Some("GUID"),
        modes: &[NewSite],
    },
    Spec {
        name: "sampledata",
        value: Some("ROWS"),
        modes: &[NewSite],
    },
    Spec {
        name: "sampleseed",
        value: Some("SEED"),
        modes: &[NewSite],
    },
    Spec {
        name: "sitename",
        value: Some("NAME"),
        modes: &[NewSite],
    },
    Spec {
        name: "scpmode",
        value: Some("MODE"),
        modes: &[NewSite],
    },
    Spec {
        name: "usagedatasrc",
        value: Some("PATH"),
        modes: &[Connect],
    },
    Spec {
        name: "updatepackdest",
        value: Some("FOLDER"),
        modes: &[Connect],
    },
    Spec {
        name: "proxyserveruri",
        value: Some("HOST[:PORT]"),
        modes: &[Connect],
    },
    Spec {
        name: "proxyusername",
        value: Some("USER"),
        modes: &[Connect],
    },
    Spec {
        name: "downloadall",
        value: None,
        modes: &[Connect],
    },
    Spec {
        name: "downloadhotfix",
        value: None,
        modes: &[Connect],
    },
    Spec {
        name: "downloadsiteversion",
        value: None,
        modes: &[Connect],
    },
    Spec {
        name: "serviceuri",
        value: Some("URL"),
        modes: &[Connect],
    },
    Spec {
        name: "cacert",
        value: Some("FILE.pem"),
        modes: &[Connect],
    },
    Spec {
        name: "parallel",
        value: Some("N"),
        modes: &[Connect],
    },
    Spec {
        name: "updatepacksrc",
        value: Some("FOLDER"),
        modes: &[Import],
    },
    Spec {
        name: "includeexpired",
        value: None,
        modes: &[ConsoleContent],
    },
    Spec {
        name: "insecureskipsignaturecheck",
        value: None,
        modes: &[Import],
    },
    Spec {
        name: "publickey",
        value: Some("FILE"),
        modes: &[Trust],
    },
];

/// Options each mode cannot do without (`-sitedb` is checked later: `SCT_SITE_DB` may stand in).
fn required(mode: Mode) -> &'static [&'static str] {
    match mode {
        Prepare => &["usagedatadest"],
        Export => &["dest"],
        NewSite => &["sitecode", "siteversion"],
        Connect => &["usagedatasrc", "updatepackdest"],
        Import => &["updatepacksrc"],
        Trust => &["publickey"],
        ListUpdates | SiteInfo | ConsoleContent => &[],
    }
}

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Run(Parsed),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub mode: Mode,
    /// Option name (lower case) → value (`None` for switches).
    pub opts: BTreeMap<&'static str, Option<String>>,
}

impl Parsed {
    pub fn has(&self, name: &str) -> bool {
        self.opts.contains_key(name)
    }
    pub fn value(&self, name: &str) -> Option<&str> {
        self.opts.get(name).and_then(|v| v.as_deref())
    }
}

/// The option name in `arg` (lower case, dashes removed), or `None` when `arg` is not an option.
fn option_name(arg: &str) -> Option<String> {
    let rest = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    if rest.is_empty() || !rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '?') {
        return None;
    }
    // Never echo anything after '=' or ':' — it may be a value, even a secret.
    let name = rest.split(['=', ':']).next().unwrap_or(rest);
    Some(name.to_ascii_lowercase())
}

fn is_known_option(arg: &str) -> bool {
    option_name(arg).is_some_and(|n| {
        SPECS.iter().any(|s| s.name == n) || Mode::ALL.iter().any(|m| m.option() == n)
    })
}

/// Parse the arguments after the program name. `Err` is one line for standard error.
pub fn parse(args: &[String]) -> Result<Command, String> {
    if args.is_empty() {
        return Ok(Command::Help);
    }
    // Secrets first, before anything could echo the value that follows them.
    for a in args {
        if let Some(n) = option_name(a) {
            if n.contains("password") || n.contains("passwd") || n == "pwd" {
                return Err(format!(
                    "-{n} is not accepted: a password on the command line is visible to other users and kept in shell history; set SCT_PROXY_PASSWORD or type it at the prompt"
                ));
            }
            if n.contains("token") {
                return Err(format!(
                    "-{n} is not accepted: a token on the command line is visible to other users and kept in shell history; set SCT_SERVICE_TOKEN"
                ));
            }
        }
    }
    if args.iter().any(|a| {
        matches!(
            a.to_ascii_lowercase().as_str(),
            "-?" | "/?" | "-h" | "-help" | "--help"
        )
    }) {
        return Ok(Command::Help);
    }
    let mut modes: Vec<Mode> = Vec::new();
    let mut opts: BTreeMap<&'static str, Option<String>> = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let Some(name) = option_name(arg) else {
            return Err(format!(
                "unexpected argument '{}': values follow their option, e.g. -sitedb FILE",
                arg.escape_debug()
            ));
        };
        if arg.contains(['=', ':']) {
            return Err(format!(
                "write -{name} VALUE with a space, not -{name}=VALUE"
            ));
        }
        i += 1;
        if let Some(m) = Mode::ALL.iter().find(|m| m.option() == name) {
            if modes.contains(m) {
                return Err(format!("option -{name} is given twice"));
            }
            modes.push(*m);
            continue;
        }
        let Some(spec) = SPECS.iter().find(|s| s.name == name) else {
            return Err(format!(
                "unknown option -{name} (run serviceconnectiontool without arguments for help)"
            ));
        };
        if opts.contains_key(spec.name) {
            return Err(format!("option -{name} is given twice"));
        }
        let value = match spec.value {
            None => None,
            Some(meta) => match args.get(i) {
                Some(v) if !is_known_option(v) && !v.is_empty() => {
                    i += 1;
                    Some(v.clone())
                }
                _ => return Err(format!("option -{name} needs a value ({meta})")),
            },
        };
        opts.insert(spec.name, value);
    }
    let mode = match modes.as_slice() {
        [] => {
            return Err(
                "no mode given: use one of -prepare, -export, -connect, -import, -newsite, -trust, -listupdates, -siteinfo, -consolecontent".into(),
            )
        }
        [m] => *m,
        [a, b, ..] => {
            return Err(format!(
                "only one mode at a time: -{} and -{} were both given",
                a.option(),
                b.option()
            ))
        }
    };
    for name in opts.keys() {
        let spec = SPECS.iter().find(|s| s.name == *name).expect("known");
        if !spec.modes.is_empty() && !spec.modes.contains(&mode) {
            return Err(format!(
                "option -{name} does not apply to -{}",
                mode.option()
            ));
        }
    }
    for r in required(mode) {
        if !opts.contains_key(r) {
            let meta = SPECS
                .iter()
                .find(|s| s.name == *r)
                .and_then(|s| s.value)
                .unwrap_or("");
            return Err(format!("-{} needs -{r} {meta}", mode.option()));
        }
    }
    let downloads: Vec<&str> = ["downloadall", "downloadhotfix", "downloadsiteversion"]
        .into_iter()
        .filter(|d| opts.contains_key(d))
        .collect();
    if downloads.len() > 1 {
        return Err(format!(
            "-{} and -{} cannot be combined: choose one download selection",
            downloads[0], downloads[1]
        ));
    }
    Ok(Command::Run(Parsed { mode, opts }))
}

pub const HELP: &str = "\
serviceconnectiontool - Configuration Manager Service Connection Tool (ServiceConnection)

On the offline site:
  serviceconnectiontool -prepare -usagedatadest FILE.cab [-force]
  serviceconnectiontool -export  -dest FILE.csv [-force]
  serviceconnectiontool -import  -updatepacksrc FOLDER [-insecureskipsignaturecheck]
On the internet-connected computer:
  serviceconnectiontool -connect -usagedatasrc FILE.cab|FOLDER -updatepackdest FOLDER
      [-proxyserveruri HOST[:PORT]] [-proxyusername USER]
      [-downloadall | -downloadhotfix | -downloadsiteversion]
      [-serviceuri URL] [-cacert FILE.pem] [-parallel N]
Site administration:
  serviceconnectiontool -newsite -sitedb FILE -sitecode CODE -siteversion VERSION
      [-diagnosticslevel Basic|Enhanced|Full] [-hierarchyid GUID] [-sitename NAME]
      [-scpmode Offline|Online] [-sampledata ROWS] [-sampleseed SEED]
  serviceconnectiontool -trust -publickey FILE       trust an update publisher's key
  serviceconnectiontool -listupdates                 the Updates and Servicing list
  serviceconnectiontool -siteinfo                    the site's identity and usage rows
  serviceconnectiontool -consolecontent [-includeexpired]
                                                     the imported console content

Options are case-insensitive and may come in any order. Every mode takes -json
(print one JSON document on standard output) and, where it uses a site,
-sitedb FILE.

Environment:
  SCT_SITE_DB          site database when -sitedb is not given
  SCT_SERVICE_URI      update service when -serviceuri is not given
  SCT_SERVICE_TOKEN    bearer token for the update service
  SCT_PROXY_PASSWORD   proxy password (otherwise prompted for on a terminal);
                       passwords are never accepted as arguments

Exit status: 0 success, 1 the operation failed (or some pack failed),
2 the command line is wrong.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn case_insensitive_any_order() {
        let Command::Run(r) = p(&["-USAGEDATADEST", "x.cab", "-Force", "-PrePare"]).unwrap() else {
            panic!("help")
        };
        assert_eq!(r.mode, Mode::Prepare);
        assert_eq!(r.value("usagedatadest"), Some("x.cab"));
        assert!(r.has("force"));
    }

    #[test]
    fn errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["-prepare"], "needs -usagedatadest"),
            (&["-prepare", "-usagedatadest"], "needs a value"),
            (&["-prepare", "-usagedatadest", "-force"], "needs a value"),
            (
                &["-prepare", "-export", "-usagedatadest", "a.cab"],
                "one mode",
            ),
            (&["-prepare", "-bogus"], "unknown option -bogus"),
            (&["-prepare", "-force", "-force"], "twice"),
            (&["-prepare", "-dest", "x.csv"], "does not apply"),
            (&["-connect", "-proxypassword", "hunter2"], "not accepted"),
            (&["-connect", "-ProxyPassword=hunter2"], "not accepted"),
            (&["-usagedatadest", "x.cab"], "no mode"),
            (&["x.cab"], "unexpected argument"),
            (&["-prepare", "-usagedatadest=x.cab"], "with a space"),
        ];
        for (args, want) in cases {
            let e = p(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
            assert!(!e.contains("hunter2"));
        }
        assert_eq!(p(&[]).unwrap(), Command::Help);
        assert_eq!(p(&["-prepare", "-?"]).unwrap(), Command::Help);
    }
}
