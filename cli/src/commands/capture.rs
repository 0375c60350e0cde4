//! `vswitch capture`: asks the daemon for the frames that cross some ports and writes them as
//! pcapng (one interface per port, named after it, with each frame's direction), as pcap, or
//! as one line of text per frame on a terminal. Ctrl-C ends it cleanly: the daemon sends what
//! it has queued and the end, the file is complete, and what the capture saw is reported on
//! stderr.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use nix::sys::signal::{SigSet, Signal};
use vswitch_capture::{pcap, pcapng, summary, Filter, Record};

use crate::control::{
    Capture, CaptureEnd, CaptureItem, CaptureStream, CaptureView, Client, PortRef,
};
use crate::CaptureArgs;

use super::absolute;

/// The file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// pcapng: one interface per port, named after it; each frame's direction.
    Pcapng,
    /// Classic pcap (nanosecond timestamps): every port's frames in one list.
    Pcap,
}

/// Where frames go.
enum Out {
    Pcapng(pcapng::Writer<Box<dyn Write>>, HashMap<u16, u32>),
    Pcap(pcap::Writer<Box<dyn Write>>),
    Text(Box<dyn Write>, HashMap<u16, String>),
}

impl Out {
    fn open(args: &CaptureArgs, header: &CaptureView) -> Result<Out> {
        let (sink, name): (Box<dyn Write>, String) = match &args.write {
            None => (Box::new(io::stdout()), "stdout".into()),
            Some(p) if p.as_os_str() == "-" => (Box::new(io::stdout()), "stdout".into()),
            Some(p) => {
                let file = File::create(p).with_context(|| format!("creating {}", p.display()))?;
                (Box::new(file), p.display().to_string())
            }
        };
        let sink: Box<dyn Write> = Box::new(BufWriter::with_capacity(256 << 10, sink));
        let what = || format!("writing {name}");
        if args.write.is_none() {
            let names = (header.ports.iter()).map(|p| (p.port, p.name.clone()));
            return Ok(Out::Text(sink, names.collect()));
        }
        Ok(match args.format {
            Format::Pcap => Out::Pcap(pcap::Writer::new(sink, header.snaplen).with_context(what)?),
            Format::Pcapng => {
                let app = concat!("vswitch ", env!("CARGO_PKG_VERSION"));
                let mut w = pcapng::Writer::new(sink, app).with_context(what)?;
                let mut ids = HashMap::new();
                for p in &header.ports {
                    let description = format!("vswitch port {}: {}", p.port, p.description);
                    let id = w.interface(&p.name, &description, header.snaplen);
                    ids.insert(p.port, id.with_context(what)?);
                }
                Out::Pcapng(w, ids)
            }
        })
    }

    fn frame(&mut self, r: &Record) -> io::Result<()> {
        match self {
            Out::Pcapng(w, ids) => match ids.get(&r.port) {
                Some(&id) => w.packet(id, r),
                None => Ok(()),
            },
            Out::Pcap(w) => w.packet(r),
            Out::Text(w, names) => {
                let name = names.get(&r.port).map_or("?", |n| n.as_str());
                writeln!(
                    w,
                    "{} {name} {:<3} {} ({} bytes)",
                    clock(r.ts_ns),
                    r.dir.as_str(),
                    summary::summary(&r.data),
                    r.orig_len
                )
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::Pcapng(w, _) => w.flush(),
            Out::Pcap(w) => w.flush(),
            Out::Text(w, _) => w.flush(),
        }
    }
}

/// `HH:MM:SS.micros` in local time, as tcpdump prints it.
fn clock(ts_ns: u64) -> String {
    let secs = (ts_ns / 1_000_000_000) as libc::time_t;
    // SAFETY: all-zero is a valid tm, which localtime_r overwrites.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live values for the call's duration.
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        ts_ns % 1_000_000_000 / 1000
    )
}

/// The ports the command line names, by name, number or path, and by pid; a namespace path
/// is made absolute, since the daemon may run in another working directory.
fn ports_named(args: &CaptureArgs) -> Result<Vec<PortRef>> {
    let mut ports = args.ports.clone();
    ports.extend(args.pid.iter().map(|&pid| PortRef::Pid(pid)));
    for p in &mut ports {
        if let PortRef::Netns(path) = p {
            *path = absolute(path.clone())?;
        }
    }
    Ok(ports)
}

pub fn run(client: &Client, args: CaptureArgs) -> Result<()> {
    let ports = ports_named(&args)?;
    if ports.is_empty() && !args.all {
        bail!("capture: name the ports to capture (as `vswitch ls` shows them) or --all");
    }
    let request = Capture {
        ports: (!args.all).then_some(ports),
        filter: Filter {
            proto: args.proto,
            host: args.host,
            port: args.port,
        },
        count: args.count,
        snaplen: args.snaplen,
    };
    // Ctrl-C (and TERM, HUP) are taken by a thread of their own that ends the capture cleanly;
    // blocked here first, so that every thread inherits the mask.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals.thread_block().context("blocking signals")?;
    let mut stream = client.capture(request)?;
    let stop = stream.stopper().context("the capture's connection")?;
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            stop.stop();
            // A daemon that does not answer within a few seconds is not waited for.
            std::thread::sleep(Duration::from_secs(5));
            stop.abort();
        }
    });
    let header = &stream.header;
    let ports: Vec<String> = (header.ports.iter())
        .map(|p| {
            let paused = if p.fast_path_paused {
                ", fast path paused"
            } else {
                ""
            };
            format!("{} (port {}, {}{paused})", p.name, p.port, p.description)
        })
        .collect();
    let mut out = Out::open(&args, header)?;
    eprintln!(
        "capturing {} on {}; Ctrl-C to stop",
        header.filter,
        ports.join(", ")
    );
    let end = copy(&mut stream, &mut out)?;
    let Some(end) = end else {
        bail!("capture: the daemon ended the capture without a word (did it stop?)");
    };
    eprintln!(
        "{} frames captured, {} dropped (the reader was too slow)",
        end.frames, end.dropped
    );
    Ok(())
}

/// Writes the stream's frames to `out` until its end; `None` if the daemon closed it first.
fn copy(stream: &mut CaptureStream, out: &mut Out) -> Result<Option<CaptureEnd>> {
    let end = loop {
        match stream.next()? {
            Some(CaptureItem::Frame(record)) => {
                out.frame(&record).context("writing the capture")?;
                // Out whenever nothing more has arrived: `-w - | tcpdump -r -` shows frames
                // as they come.
                if !stream.pending() {
                    out.flush().context("writing the capture")?;
                }
            }
            Some(CaptureItem::End(end)) => break Some(end),
            None => break None,
        }
    };
    out.flush().context("writing the capture")?;
    Ok(end)
}
