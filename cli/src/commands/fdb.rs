//! `vswitch fdb`: the learned MAC addresses, or forgetting them (`--flush`).

use anyhow::Result;

use crate::control::Client;

use super::{print_json, table};

/// Lists the forwarding table; with `flush`, forgets every learned MAC (`Some(None)`) or one
/// port's (`Some(Some(port))`).
pub fn run(client: &Client, json: bool, flush: Option<Option<String>>) -> Result<()> {
    let Some(port) = flush else {
        let entries = client.fdb()?;
        if json {
            return print_json(&entries);
        }
        table::fdb(&entries);
        return Ok(());
    };
    let flushed = client.fdb_flush(port.clone())?;
    if json {
        return print_json(&flushed);
    }
    let from = port.map_or_else(String::new, |p| format!(" of {p}"));
    println!("flushed {} learned MAC addresses{from}", flushed.len());
    Ok(())
}
