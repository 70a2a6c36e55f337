//! The command line of `archeio sync`: its flags, parsed by clap, and the rules between them.

use std::path::PathBuf;

use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::Parser;

/// The usage line: in clap's help and errors, and in those of the rules checked after clap.
const USAGE: &str = "archeio sync -c FILE [--dry-run | --verify [--repair]] \
[--metrics-file FILE] [--push-gateway URL]";

/// Command-line options of `archeio sync`.
// A value is the next argument even when it starts with `-`, and a repeated flag overrides
// the earlier one, as the hand-written parser did.
#[derive(Debug, Parser)]
#[command(
    name = "archeio sync",
    about = "Copies every blob the source registry's manifests refer to into each destination that lacks it",
    override_usage = USAGE,
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

impl Options {
    /// Parses the arguments after `sync`. `Err` holds what to print: the help for `--help`,
    /// else the error with the usage.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
        let args = std::iter::once("archeio sync".to_string()).chain(args);
        let opts =
            Options::try_parse_from(args).map_err(|e| e.to_string().trim_end().to_owned())?;
        if opts.repair && !opts.verify {
            return Err(format!("--repair needs --verify\nusage: {USAGE}"));
        }
        if opts.dry_run && opts.verify {
            return Err(format!(
                "--dry-run and --verify exclude each other\nusage: {USAGE}"
            ));
        }
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|a| a.to_string()))
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
        assert!(parse(&["--help"])
            .unwrap_err()
            .contains("--verify [--repair]"));
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
