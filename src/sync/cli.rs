//! The command line of `archeio sync`: its flags, parsed by clap, and the rules between them.

use std::fmt;
use std::path::PathBuf;

use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::Parser;

use super::shard::Shard;

/// The usage line: in clap's help and errors, and in those of the rules checked after clap.
const USAGE: &str = "archeio sync -c FILE [--dry-run | --verify [--repair]] [--shard I/N] \
[--metrics-file FILE] [--push-gateway URL]";

/// Command-line options of `archeio sync`.
// A value is the next argument even when it starts with `-`, and a repeated flag overrides
// the earlier one, as the hand-written parser did.
#[derive(Debug, Parser)]
#[command(
    name = "archeio sync",
    about = "Copies every blob the source registry's manifests refer to into each destination that lacks it",
    override_usage = USAGE,
    version,
    args_override_self = true
)]
pub struct Options {
    /// The configuration file
    #[arg(
        short = 'c',
        long = "conf",
        value_name = "FILE",
        allow_hyphen_values = true,
        value_parser = path()
    )]
    pub config: PathBuf,
    /// List what would be copied; copy nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Check what the destinations hold instead of copying
    #[arg(long)]
    pub verify: bool,
    /// With --verify: copy corrupt objects again from the source
    #[arg(long)]
    pub repair: bool,
    /// Copy only shard I of N (0-based) of the repositories, split by a hash of their names:
    /// N runs with I = 0 .. N-1 (a Kubernetes Indexed Job) share the work
    #[arg(long, value_name = "I/N", allow_hyphen_values = true, value_parser = Shard::parse)]
    pub shard: Option<Shard>,
    /// Write the sync metrics as Prometheus text to FILE at the end
    #[arg(long, value_name = "FILE", allow_hyphen_values = true, value_parser = path())]
    pub metrics_file: Option<PathBuf>,
    /// Push the sync metrics to the Prometheus Pushgateway at URL at the end
    #[arg(long, value_name = "URL", allow_hyphen_values = true)]
    pub push_gateway: Option<String>,
}

/// A path as given, also an empty one: clap's own `PathBuf` parser refuses those up front,
/// where the hand-written parser left them to fail where the file is used.
fn path() -> impl TypedValueParser<Value = PathBuf> {
    OsStringValueParser::new().map(PathBuf::from)
}

/// Why [`Options::parse`] gave no options: `--help` or `--version` asked for a text (print
/// it on stdout, exit 0: see [`ParseError::is_help`]), or the arguments are wrong (print it on
/// stderr, exit 2). Its `Display` is the text, help or error with the usage.
#[derive(Debug)]
pub struct ParseError {
    message: String,
    help: bool,
}

impl ParseError {
    fn usage(message: String) -> ParseError {
        ParseError {
            message,
            help: false,
        }
    }

    /// True for `--help` and `--version`: not a mistake, the text asked for.
    pub fn is_help(&self) -> bool {
        self.help
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

impl Options {
    /// Parses the arguments after `sync`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, ParseError> {
        let args = std::iter::once("archeio sync".to_string()).chain(args);
        let opts = Options::try_parse_from(args).map_err(|e| ParseError {
            message: e.to_string().trim_end().to_owned(),
            help: matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion),
        })?;
        if opts.repair && !opts.verify {
            return Err(ParseError::usage(format!(
                "--repair needs --verify\nusage: {USAGE}"
            )));
        }
        if opts.dry_run && opts.verify {
            return Err(ParseError::usage(format!(
                "--dry-run and --verify exclude each other\nusage: {USAGE}"
            )));
        }
        // --verify reads back every object in the destinations, whichever repositories
        // refer to them: there is nothing to shard.
        if opts.shard.is_some() && opts.verify {
            return Err(ParseError::usage(format!(
                "--shard and --verify exclude each other\nusage: {USAGE}"
            )));
        }
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|a| a.to_string())).map_err(|e| {
            assert!(!e.is_help(), "{e}");
            e.to_string()
        })
    }

    fn help(args: &[&str]) -> String {
        let e = Options::parse(args.iter().map(|a| a.to_string())).unwrap_err();
        assert!(e.is_help(), "{e}");
        e.to_string()
    }

    #[test]
    fn verify_and_repair_flags() {
        let opts = parse(&["-c", "f", "--verify", "--repair"]).unwrap();
        assert!(opts.verify && opts.repair && !opts.dry_run);
        let err = parse(&["-c", "f", "--repair"]).unwrap_err();
        assert!(err.starts_with("--repair needs --verify\nusage:"), "{err}");
        let err = parse(&["-c", "f", "--verify", "--dry-run"]).unwrap_err();
        assert!(
            err.starts_with("--dry-run and --verify exclude each other"),
            "{err}"
        );
        let err = parse(&["-c", "f", "--verify", "--shard", "0/2"]).unwrap_err();
        assert!(
            err.starts_with("--shard and --verify exclude each other"),
            "{err}"
        );
    }

    #[test]
    fn help_and_version_are_told_apart_from_errors() {
        for args in [&["--help"][..], &["-h"], &["-c", "f", "--help"]] {
            let text = help(args);
            assert!(text.contains("--verify [--repair]"), "{text}");
            assert!(text.contains("--shard <I/N>"), "{text}");
        }
        assert_eq!(
            help(&["--version"]),
            concat!("archeio sync ", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn shards() {
        let opts = parse(&["-c", "f", "--shard", "1/4"]).unwrap();
        assert_eq!(opts.shard.map(|s| s.to_string()).as_deref(), Some("1/4"));
        assert_eq!(parse(&["-c", "f"]).unwrap().shard, None);
        let err = parse(&["-c", "f", "--shard", "4/4"]).unwrap_err();
        assert!(
            err.contains("invalid value '4/4' for '--shard <I/N>': expected I/N with 0 <= I < N"),
            "{err}"
        );
    }

    #[test]
    fn values_are_taken_verbatim_and_the_last_repeat_wins() {
        let opts = parse(&["-c", "--verify", "--conf", "-f", "--push-gateway", "-u"]).unwrap();
        assert_eq!(opts.config, PathBuf::from("-f"));
        assert!(!opts.verify);
        assert_eq!(opts.push_gateway.as_deref(), Some("-u"));
        assert!(
            parse(&["-c", "f", "--dry-run", "--dry-run"])
                .unwrap()
                .dry_run
        );
        assert!(parse(&["--verify"]).is_err());
        assert!(parse(&["-c", "f", "--bogus"])
            .unwrap_err()
            .contains("--bogus"));
        assert!(parse(&["-c"]).is_err());
        assert_eq!(parse(&["-c", ""]).unwrap().config, PathBuf::new());
    }
}
