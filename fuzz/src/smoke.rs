//! Running targets without libFuzzer: replaying kept inputs, and a short pseudo-random run for
//! the stable test suite.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::{target, Target};

/// `fuzz/`, where `regressions/` lives.
pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The inputs kept for `name`: `regressions/NAME/*`, sorted.
pub fn regressions(name: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("regressions").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"));
    files.sort();
    files
}

/// Runs `t` on one input; on a panic, saves the input under `save` and says how to replay it.
fn run_one(name: &str, t: Target, data: &[u8], save: &Path, label: &str) {
    if catch_unwind(AssertUnwindSafe(|| t(data))).is_ok() {
        return;
    }
    let _ = std::fs::create_dir_all(save);
    let file = save.join(format!("{name}-{label}"));
    let saved = std::fs::write(&file, data).is_ok();
    panic!(
        "{name} failed on input {label} ({} bytes{}): keep it in fuzz/regressions/{name}/ \
         and replay it with `cargo run -p vswitch-fuzz --bin {name} -- FILE`",
        data.len(),
        if saved {
            format!(", saved to {}", file.display())
        } else {
            String::new()
        }
    );
}

/// xorshift64*: the smoke run's inputs, the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// What a smoke run did.
#[derive(Debug, Clone, Copy)]
pub struct Smoke {
    pub regressions: usize,
    pub random: usize,
}

/// Replays every kept input of `name`, then runs it on pseudo-random inputs (a fixed
/// sequence, up to `max_inputs` or until `budget` has passed). Panics, naming and saving the
/// input, if the target does.
pub fn smoke(name: &str, budget: Duration, max_inputs: usize, save: &Path) -> Smoke {
    let t = target(name).unwrap_or_else(|| panic!("no target {name}"));
    let kept = regressions(name);
    for file in &kept {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let label = file
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        run_one(name, t, &data, save, &label);
    }
    let seed = name.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng(seed | 1);
    let start = Instant::now();
    let mut data = Vec::new();
    let mut n = 0;
    while n < max_inputs && start.elapsed() < budget {
        // Lengths of every size up to 2 KiB, with short ones more frequent.
        let len = (rng.next() % 2048) as usize >> (rng.next() % 4);
        data.clear();
        while data.len() < len {
            data.extend(rng.next().to_le_bytes());
        }
        data.truncate(len);
        run_one(name, t, &data, save, &format!("random-{n}"));
        n += 1;
    }
    Smoke {
        regressions: kept.len(),
        random: n,
    }
}

/// `main` of a target's binary when it is not built for libFuzzer: runs the target on each
/// file (or every file of each directory) given, or on the kept regression inputs.
pub fn replay_main(name: &str) -> ExitCode {
    let Some(t) = target(name) else {
        eprintln!("no target {name}");
        return ExitCode::FAILURE;
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for arg in std::env::args_os().skip(1).map(PathBuf::from) {
        match std::fs::read_dir(&arg) {
            Ok(rd) => {
                let mut v: Vec<PathBuf> = rd.filter_map(|e| Some(e.ok()?.path())).collect();
                v.sort();
                files.extend(v);
            }
            Err(_) => files.push(arg),
        }
    }
    if files.is_empty() {
        files = regressions(name);
    }
    for f in &files {
        let data = match std::fs::read(f) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{}: {e}", f.display());
                return ExitCode::FAILURE;
            }
        };
        eprintln!("{name}: {} ({} bytes)", f.display(), data.len());
        t(&data);
    }
    eprintln!("{name}: {} inputs, all passed", files.len());
    ExitCode::SUCCESS
}
