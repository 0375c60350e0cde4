//! The subcommands: `run` starts the daemon, every other one is a request to it over the
//! control socket, printed as a table or as JSON. A module per subcommand or family: `run`,
//! `ports` (`plug`, `unplug`, `ls`), `fdb`, `conntrack`, `capture`; `table` prints them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::control::Client;
use crate::{cni, daemon, Cli, CniCommand, Command};

pub mod capture;
mod conntrack;
mod fdb;
mod ports;
mod run;
mod table;

pub fn run(cli: Cli) -> Result<()> {
    let control = cli.control.control;
    let client = Client::new(&control);
    match cli.command {
        Command::Run(args) => run::daemon(control, args),
        Command::Plug(args) => ports::plug(&client, args),
        Command::Unplug { target } => ports::unplug(&client, target),
        Command::Ls { json } => ports::ls(&client, json),
        Command::Fdb { json, flush } => fdb::run(&client, json, flush),
        Command::Stop { keep } => {
            client.stop(keep)?;
            Ok(())
        }
        Command::Cleanup => daemon::cleanup(&control),
        Command::Stats { json } => stats(&client, json),
        Command::Conntrack(args) => conntrack::run(&client, args),
        Command::Capture(args) => capture::run(&client, args),
        Command::Cni {
            command:
                CniCommand::Install {
                    name,
                    bin_dir,
                    conf_dir,
                },
        } => cni_install(&control, &name, &bin_dir, &conf_dir),
    }
}

/// `vswitch stats`.
fn stats(client: &Client, json: bool) -> Result<()> {
    let stats = client.stats()?;
    if json {
        return print_json(&stats);
    }
    table::stats(&stats);
    Ok(())
}

/// `vswitch cni install`.
fn cni_install(control: &Path, name: &str, bin_dir: &Path, conf_dir: &Path) -> Result<()> {
    let done = cni::install::install(control, name, bin_dir, conf_dir)?;
    println!(
        "installed the CNI plugin {} and the network {name} ({}) in {}",
        done.plugin.display(),
        done.subnet,
        done.conflist.display()
    );
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

fn absolute(path: PathBuf) -> Result<PathBuf> {
    std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()))
}
