//! The daemon's `/metrics` page, scraped from inside the sandbox's host namespace (the
//! endpoint listens on that namespace's loopback only) and read sample by sample; and the
//! check of the whole page by a real exposition parser, `promtool check metrics` (Debian's
//! `prometheus` package).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;

use super::{require_program, run, Sandbox};

/// Where the tests' daemons serve metrics: the loopback of their own host namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9477";

/// One scrape: every sample, by metric name, with its labels.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// The sum of the samples of `name` that carry every label of `labels` (a subset match: a
    /// port's `path="daemon"` and `path="fast"` add up to its frames).
    #[track_caller]
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = (self.samples.iter())
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(
            !matching.is_empty(),
            "no sample {name} with {labels:?} in the scrape:\n{}",
            self.text
        );
        matching.iter().sum()
    }

    /// Like [`Scrape::sum`], as an integer.
    #[track_caller]
    pub fn int(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let v = self.sum(name, labels);
        assert!(v >= 0.0 && v.fract() == 0.0, "{name} {labels:?} = {v}");
        v as u64
    }
}

/// Parses the exposition text (the samples only; `promtool` checks the rest).
pub fn parse(text: &str) -> Scrape {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                (name.to_string(), parse_labels(body))
            }
        };
        samples.push((name, labels, value));
    }
    Scrape {
        text: text.to_string(),
        samples,
    }
}

/// `k="v",k2="v2"`, with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} in {body:?}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key, value);
        if chars.next_if_eq(&',').is_none() {
            break;
        }
    }
    out
}

impl Sandbox {
    /// `GET /metrics` from inside the host namespace (curl), asserting a 200.
    #[track_caller]
    pub fn metrics_text(&self) -> String {
        let url = format!("http://{METRICS_ADDR}/metrics");
        let out = run(self.host_cmd("curl", &["-sS", "--fail", "--max-time", "20", &url])).ok();
        out.stdout
    }

    /// Scrapes and parses `/metrics`.
    #[track_caller]
    pub fn scrape(&self) -> Scrape {
        parse(&self.metrics_text())
    }
}

/// Asserts that `promtool check metrics` accepts `text` (which must not be empty: promtool
/// accepts an empty page).
#[track_caller]
pub fn assert_promtool_accepts(text: &str) {
    require_program("promtool", "prometheus");
    assert!(
        text.contains("# TYPE vswitch_"),
        "not a metrics page: {text}"
    );
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics refused the page ({}):\n{}{}\n--- the page ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
