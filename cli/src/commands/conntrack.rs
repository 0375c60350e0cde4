//! `vswitch conntrack`: the NAT's flows, listed (`-L` style) or deleted (`-D` with filters,
//! `-F` for all).

use anyhow::{bail, Result};

use crate::control::{Client, FlowFilter};
use crate::ConntrackArgs;

use super::{print_json, table};

pub fn run(client: &Client, args: ConntrackArgs) -> Result<()> {
    let ConntrackArgs {
        json,
        delete,
        flush,
        proto,
        src,
        sport,
        dst,
        dport,
    } = args;
    let filter = FlowFilter {
        proto,
        inside: src,
        inside_port: sport,
        outside: dst,
        outside_port: dport,
    };
    if delete && filter.is_empty() {
        bail!("conntrack -D needs a filter (-p, -s, --sport, -d, --dport); -F deletes every flow");
    }
    let flows = match delete || flush {
        true => client.conntrack_delete(filter)?,
        false => (client.conntrack()?.into_iter())
            .filter(|f| table::flow_selected(&filter, f))
            .collect(),
    };
    if json {
        return print_json(&flows);
    }
    table::conntrack(&flows);
    if delete || flush {
        println!("{} flows deleted", flows.len());
    }
    Ok(())
}
