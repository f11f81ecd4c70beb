//! `qscheduler auth`: make credentials for the `[auth]` section.

use anyhow::{Context, anyhow};
use clap::Subcommand;
use qscheduler_server::auth::{Role, Sha256Hash, new_token};

/// Subcommands of `qscheduler auth`.
#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Make a random bearer token: print it once (give it to the caller;
    /// it is not stored anywhere), then the [[auth.tokens]] entry to paste
    /// into the server's configuration, which holds only its SHA-256.
    NewToken {
        /// The principal's name (in messages, logs and the audit log).
        name: String,
        /// A role to grant: swarming, admin (implies view) or view.
        /// Repeat for several.
        #[arg(long = "role", value_name = "ROLE", required = true, value_parser = parse_role)]
        roles: Vec<Role>,
        /// Limit the roles to this pool. Repeat for several [default: all
        /// pools].
        #[arg(long = "pool", value_name = "POOL")]
        pools: Vec<String>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| {
        format!("unknown role {s:?}: expected swarming, admin (implies view) or view")
    })
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// The `[[auth.tokens]]` entry for a token with hash `hash`.
pub fn token_entry(name: &str, hash: &Sha256Hash, roles: &[Role], pools: &[String]) -> String {
    let list = |items: Vec<String>| items.join(", ");
    let mut s = format!(
        "[[auth.tokens]]\nname = {}\nsha256 = \"{}\"\nroles = [{}]\n",
        quote(name),
        hash.to_hex(),
        list(roles.iter().map(|r| quote(r.name())).collect())
    );
    if !pools.is_empty() {
        s.push_str(&format!(
            "pools = [{}]\n",
            list(pools.iter().map(|p| quote(p)).collect())
        ));
    }
    s
}

/// Runs an `auth` subcommand.
pub fn run(cmd: AuthCommand) -> anyhow::Result<()> {
    match cmd {
        AuthCommand::NewToken { name, roles, pools } => {
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                return Err(anyhow!("NAME must not be empty"));
            }
            if pools.iter().any(|p| p.trim().is_empty() || p.contains(' ')) {
                return Err(anyhow!("--pool must name a pool (or \"*\" for all)"));
            }
            let mut roles = roles;
            roles.sort();
            roles.dedup();
            let token = new_token().context("reading random bytes from the system")?;
            let hash = Sha256Hash::of(token.as_bytes());
            println!("{token}");
            println!();
            println!(
                "# The token above is shown only now. Give it to {name} (e.g. as a secret in \
                 QSCHEDULER_TOKEN);\n# add this entry to the server's configuration:"
            );
            print!("{}", token_entry(&name, &hash, &roles, &pools));
            Ok(())
        }
    }
}
