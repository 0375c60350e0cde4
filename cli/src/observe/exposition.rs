//! Prometheus's text exposition format (version 0.0.4), written by hand: families with their
//! `# HELP` and `# TYPE` lines, each family's samples together, label values escaped, and
//! histograms as cumulative `_bucket` lines up to `+Inf`, then `_sum` and `_count`.

use std::fmt::Write as _;

use crate::control::HistogramView;

/// The content type of the format, for the HTTP response.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Labels of a sample: (name, value) pairs, names being valid label names.
pub type Labels<'a> = [(&'a str, &'a str)];

/// A page of metrics being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family: writes its HELP and TYPE lines. Its samples follow, through the
    /// returned [`Family`]; a family must be started once only.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &str) -> Family<'_> {
        debug_assert!(valid_name(name), "{name}");
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        Family {
            page: self,
            name,
            kind,
        }
    }

    /// The page: every family written, each line ending in a newline.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The samples of one family.
pub struct Family<'a> {
    page: &'a mut Exposition,
    name: &'static str,
    kind: Kind,
}

impl Family<'_> {
    /// A sample of a counter or a gauge.
    pub fn sample(&mut self, labels: &Labels<'_>, value: f64) -> &mut Self {
        debug_assert_ne!(self.kind, Kind::Histogram);
        line(&mut self.page.out, self.name, "", labels, None, value);
        self
    }

    /// A sample of an integer counter or gauge.
    pub fn int(&mut self, labels: &Labels<'_>, value: u64) -> &mut Self {
        self.sample(labels, value as f64)
    }

    /// One histogram: its buckets (cumulative) with `le`, the `+Inf` bucket, sum and count.
    pub fn histogram(&mut self, labels: &Labels<'_>, h: &HistogramView) -> &mut Self {
        debug_assert_eq!(self.kind, Kind::Histogram);
        let out = &mut self.page.out;
        for b in &h.buckets {
            line(
                out,
                self.name,
                "_bucket",
                labels,
                Some(&float(b.le)),
                b.count as f64,
            );
        }
        line(
            out,
            self.name,
            "_bucket",
            labels,
            Some("+Inf"),
            h.count as f64,
        );
        line(out, self.name, "_sum", labels, None, h.sum);
        line(out, self.name, "_count", labels, None, h.count as f64);
        self
    }
}

fn line(out: &mut String, name: &str, suffix: &str, labels: &Labels<'_>, le: Option<&str>, v: f64) {
    out.push_str(name);
    out.push_str(suffix);
    let le = le.map(|le| ("le", le));
    let mut all = labels.iter().copied().chain(le).peekable();
    if all.peek().is_some() {
        out.push('{');
        for (i, (k, v)) in all.enumerate() {
            debug_assert!(valid_label(k), "{k}");
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_value(v));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&float(v));
    out.push('\n');
}

/// A sample value or a bound as the format writes numbers: integers without a fraction, the
/// special values as Prometheus spells them.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A label value: backslash, double quote and newline escaped.
fn escape_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A HELP text: backslash and newline escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label(name: &str) -> bool {
    valid_name(name) && !name.contains(':') && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Bucket;

    #[test]
    fn a_family_has_help_type_and_its_samples() {
        let mut page = Exposition::new();
        page.family(
            "vswitch_frames_total",
            Kind::Counter,
            "Frames.\nAll of them \\ really.",
        )
        .int(&[], 42)
        .int(&[("port", "vsw-1"), ("path", "fast")], 7);
        page.family("vswitch_ratio", Kind::Gauge, "A ratio.")
            .sample(&[], 0.25)
            .sample(&[("x", "y")], f64::NAN);
        assert_eq!(
            page.finish(),
            "# HELP vswitch_frames_total Frames.\\nAll of them \\\\ really.\n\
             # TYPE vswitch_frames_total counter\n\
             vswitch_frames_total 42\n\
             vswitch_frames_total{port=\"vsw-1\",path=\"fast\"} 7\n\
             # HELP vswitch_ratio A ratio.\n\
             # TYPE vswitch_ratio gauge\n\
             vswitch_ratio 0.25\n\
             vswitch_ratio{x=\"y\"} NaN\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut page = Exposition::new();
        page.family("m", Kind::Gauge, "h")
            .int(&[("netns", "/run/netns/a\"b\\c\nd")], 1);
        assert_eq!(
            page.finish().lines().last().unwrap(),
            r#"m{netns="/run/netns/a\"b\\c\nd"} 1"#
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_up_to_inf() {
        let h = HistogramView {
            buckets: vec![
                Bucket {
                    le: 0.005,
                    count: 1,
                },
                Bucket { le: 0.1, count: 3 },
                Bucket { le: 2.0, count: 3 },
            ],
            count: 4,
            sum: 3.5,
        };
        let mut page = Exposition::new();
        page.family("d_seconds", Kind::Histogram, "Durations.")
            .histogram(&[("transport", "udp")], &h);
        let text = page.finish();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                r#"d_seconds_bucket{transport="udp",le="0.005"} 1"#,
                r#"d_seconds_bucket{transport="udp",le="0.1"} 3"#,
                r#"d_seconds_bucket{transport="udp",le="2"} 3"#,
                r#"d_seconds_bucket{transport="udp",le="+Inf"} 4"#,
                r#"d_seconds_sum{transport="udp"} 3.5"#,
                r#"d_seconds_count{transport="udp"} 4"#,
            ]
        );
        assert!(text.contains("# TYPE d_seconds histogram\n"));
    }

    #[test]
    fn numbers_are_written_as_prometheus_reads_them() {
        assert_eq!(float(0.0), "0");
        assert_eq!(float(12345678901234.0), "12345678901234");
        assert_eq!(float(0.0005), "0.0005");
        assert_eq!(float(1.5e20), "150000000000000000000");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert!(valid_name("vswitch_port_rx_frames_total") && !valid_name("1x") && !valid_name(""));
        assert!(valid_label("port") && !valid_label("__name__") && !valid_label("a:b"));
    }
}
