//! `qscheduler config`: check a configuration file, or print the example.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Subcommand;
use qscheduler_server::config::Config;

/// The documented example configuration: every key, with its default.
pub const EXAMPLE: &str = include_str!("../docs/qscheduler.example.toml");

/// Subcommands of `qscheduler config`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a configuration file: report the first error with its line
    /// and column (exit status 1), or print "OK".
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print an example configuration listing every setting and its default.
    Example,
}

/// Runs a `config` subcommand.
pub fn run(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check { file } => {
            let config = Config::load(&file).map_err(|e| anyhow!("{}", e.report()))?;
            // Settings that only conflict once combined are found here.
            let options = config.server_options()?;
            if let Some(tls) = options.tls {
                qscheduler_server::tls::TlsAcceptorCell::new(tls)
                    .map_err(|e| anyhow!("[tls]: {e}"))?;
            }
            println!("{}: OK", file.display());
            Ok(())
        }
        ConfigCommand::Example => {
            print!("{EXAMPLE}");
            Ok(())
        }
    }
}
