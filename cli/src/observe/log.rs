//! The daemon's log: `tracing` events, one line each on stderr, filtered by level.
//!
//! Every event is one line: its message, then its fields as `key=value` (the port, the
//! container, the address...), so that `journalctl -u vswitch | grep port=vsw-4242` finds a
//! container's whole story. How a line starts depends on where stderr goes:
//! - a terminal: a timestamp (UTC) and the level, coloured;
//! - journald (`JOURNAL_STREAM` names our stderr): a `<N>` syslog priority prefix, which
//!   journald turns into the entry's priority (`journalctl -p warning`), and no timestamp, since
//!   journald stamps each line itself;
//! - anything else (a file, a pipe): the level word, no timestamp, no colour.
//!
//! Which events are written: `--log-level` if given, else `RUST_LOG`, else `info`; either takes
//! `tracing`'s filter syntax (`debug`, `warn,vswitch::natd=debug`).

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Where stderr goes, which decides how a line starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Terminal,
    Journal,
    Plain,
}

impl Sink {
    /// Where this process's stderr goes now.
    pub fn detect() -> Sink {
        let stderr = std::io::stderr();
        if journal_stream(std::env::var("JOURNAL_STREAM").ok().as_deref(), &stderr) {
            Sink::Journal
        } else if stderr.is_terminal() {
            Sink::Terminal
        } else {
            Sink::Plain
        }
    }
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, set by systemd) names `fd`: only then is the
/// stream journald's (a child whose stderr was redirected inherits the variable).
fn journal_stream(var: Option<&str>, fd: &impl AsFd) -> bool {
    let Some((dev, ino)) = var.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    nix::sys::stat::fstat(fd.as_fd()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// Installs the daemon's subscriber: `level` (`--log-level`) or `RUST_LOG` or `info`. Errors on
/// a malformed filter.
pub fn init(level: Option<&str>) -> anyhow::Result<()> {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level)
            .map_err(|e| anyhow::anyhow!("invalid --log-level {level:?}: {e}"))?,
        None => match std::env::var("RUST_LOG") {
            Ok(env) if !env.trim().is_empty() => EnvFilter::try_new(&env)
                .map_err(|e| anyhow::anyhow!("invalid RUST_LOG {env:?}: {e}"))?,
            _ => EnvFilter::new("info"),
        },
    };
    let sink = Sink::detect();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(sink == Sink::Terminal)
        .event_format(Line { sink })
        .try_init()
        .map_err(|e| anyhow::anyhow!("setting up the log: {e}"))
}

/// The format of a line (see the module's doc).
pub struct Line {
    pub sink: Sink,
}

/// The syslog priority journald gives a line that starts with `<N>`.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

fn colour(level: Level) -> &'static str {
    match level {
        Level::ERROR => "\x1b[31m",
        Level::WARN => "\x1b[33m",
        Level::INFO => "\x1b[32m",
        Level::DEBUG => "\x1b[34m",
        Level::TRACE => "\x1b[35m",
    }
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let level = *event.metadata().level();
        match self.sink {
            Sink::Journal => write!(writer, "<{}>", priority(level))?,
            Sink::Terminal => {
                SystemTime.format_time(&mut writer)?;
                write!(writer, " {}{level:>5}\x1b[0m ", colour(level))?;
            }
            Sink::Plain => write!(writer, "{level:>5} ")?,
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Captures what a subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(sink: Sink, f: impl FnOnce()) -> String {
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("debug"))
            .with_writer(move || writer.clone())
            .with_ansi(sink == Sink::Terminal)
            .event_format(Line { sink })
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = out.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn one_line_per_event_with_its_fields() {
        let text = lines(Sink::Plain, || {
            tracing::info!(port = "vsw-42", pid = 42, "plugged");
            tracing::debug!(reason = ?"a b", "details");
            tracing::trace!("filtered out");
        });
        assert_eq!(
            text,
            " INFO plugged port=\"vsw-42\" pid=42\nDEBUG details reason=\"a b\"\n"
        );
    }

    #[test]
    fn journald_gets_priorities_and_no_timestamp() {
        let text = lines(Sink::Journal, || {
            tracing::error!("e");
            tracing::warn!("w");
            tracing::info!(ip = %std::net::Ipv4Addr::new(10, 1, 1, 2), "i");
        });
        assert_eq!(text, "<3>e\n<4>w\n<6>i ip=10.1.1.2\n");
    }

    #[test]
    fn a_terminal_gets_a_timestamp_and_colour() {
        let text = lines(Sink::Terminal, || tracing::warn!("careful"));
        assert!(text.contains("\x1b[33m WARN\x1b[0m careful"), "{text:?}");
        assert!(text.starts_with("20"), "starts with the year: {text:?}");
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn journal_stream_must_name_our_descriptor() {
        let file = tempfile_in_tmp();
        let st = nix::sys::stat::fstat(file.as_fd()).unwrap();
        let mine = format!("{}:{}", st.st_dev, st.st_ino);
        assert!(journal_stream(Some(&mine), &file));
        let other = format!("{}:{}", st.st_dev, st.st_ino + 1);
        assert!(!journal_stream(Some(&other), &file));
        for bad in [None, Some(""), Some("x:y"), Some("12")] {
            assert!(!journal_stream(bad, &file), "{bad:?}");
        }
    }

    fn tempfile_in_tmp() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("vswitch-log-test-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        file
    }
}
