//! Tens of thousands of short TCP connections through the NAT, through a published port and to
//! the gateway, in both close orders (issue 20): the finished ones must cost the next ones
//! nothing. Through a kernel NAT, the side that closes first keeps a TIME_WAIT and nothing else
//! stays; a client that reuses a port gets a fresh connection at once. Here each scenario runs
//! 30,000 sequential connections to one server, then 2,000 to another (so that the container
//! reuses its ports towards a second destination, as a client of two services does), and checks
//! that no connection failed, that the last 2,000 finished within a deadline the first 2,000
//! also met (a connection that meets a leftover of an earlier one waits a second for its SYN to
//! be sent again: 2,000 of them would take half an hour), and that the host keeps no socket of a
//! finished connection: its TIME_WAITs belong to the ends that closed first.
//!
//! The client and server are a small C program (`CHURN_C`), compiled with `cc` for the test:
//! Python would take minutes for 64,000 connections on a loaded machine.

mod common;

use common::wan::{nat_sandbox, HOST_WAN_IP, WAN_IP};
use common::{
    command, poll, require_program, run, unique_name, Container, Proc, Sandbox, TempDir, GATEWAY,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// `churn server PORT client|server`: prints `ready`, then serves forever: reads one byte,
/// answers it, then closes at once (`server`: the server closes first) or after the client's
/// close (`client`).
/// `churn client HOST PORT N client|server LIMIT_MS`: N connections one after another, each
/// connect, one byte each way, then the client closes first (`client`) or after the server's
/// close (`server`). Prints `batch MS` for every 2,000 connections (the milliseconds they
/// took), then `done OK FAILED`. A connection that takes over 10 s fails; a batch that takes
/// over LIMIT_MS is cut short (`batch MS` with the time so far, then `done`).
const CHURN_C: &str = r#"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void tmo(int fd) { struct timeval tv = {10, 0}; setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv); setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); }
int main(int argc, char **argv) {
  if (argc == 4 && !strcmp(argv[1], "server")) {
    int server_first = !strcmp(argv[3], "server"), one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (void *)&a, sizeof a) || listen(s, 4096)) { perror("bind/listen"); return 1; }
    printf("ready\n"); fflush(stdout);
    for (;;) {
      int c = accept(s, 0, 0); char b;
      if (c < 0) continue;
      tmo(c);
      if (recv(c, &b, 1, 0) == 1) send(c, &b, 1, MSG_NOSIGNAL);
      if (!server_first) while (recv(c, &b, 1, 0) > 0) {}
      close(c);
    }
  }
  if (argc == 7 && !strcmp(argv[1], "client")) {
    int server_first = !strcmp(argv[5], "server"); long n = atol(argv[4]), ok = 0, fail = 0;
    double limit = atof(argv[6]) / 1000;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    if (inet_pton(AF_INET, argv[2], &a.sin_addr) != 1) { fprintf(stderr, "bad host\n"); return 2; }
    double t0 = now();
    for (long i = 0; i < n; i++) {
      int s = socket(AF_INET, SOCK_STREAM, 0), good = 0; char b = 'x';
      tmo(s);
      if (connect(s, (void *)&a, sizeof a) == 0 && send(s, &b, 1, MSG_NOSIGNAL) == 1 &&
          recv(s, &b, 1, 0) == 1 && b == 'x')
        good = server_first ? recv(s, &b, 1, 0) == 0 : 1;
      if (!good) { fail++; if (fail < 5) perror("connection"); }
      else ok++;
      close(s);
      double t = now();
      int slow = t - t0 > limit;
      if ((i + 1) % 2000 == 0 || slow) { printf("batch %.0f\n", (t - t0) * 1000); fflush(stdout); t0 = t; }
      if (slow) break;
    }
    printf("done %ld %ld\n", ok, fail);
    return 0;
  }
  fprintf(stderr, "usage: churn server PORT client|server | client HOST PORT N client|server\n");
  return 2;
}
"#;

/// Connections before the ones that are timed.
const FIRST: usize = 30_000;
const NEXT: usize = 2_000;
/// For 2,000 connections, on a loaded 2-core machine (they take one or two seconds on an idle
/// one; a leftover in their way costs a second each).
const BATCH_DEADLINE: Duration = Duration::from_secs(60);

/// The compiled churn program, in a directory of its own.
struct Churn {
    _dir: TempDir,
    bin: PathBuf,
}

impl Churn {
    fn build() -> Churn {
        require_program("cc", "build-essential");
        let dir = TempDir::new(&unique_name());
        let src = dir.path.join("churn.c");
        std::fs::write(&src, CHURN_C).unwrap();
        let bin = dir.path.join("churn");
        let (s, b) = (src.to_str().unwrap(), bin.to_str().unwrap());
        run(command("cc", &["-O2", "-o", b, s])).ok();
        Churn { _dir: dir, bin }
    }

    fn path(&self) -> &str {
        self.bin.to_str().unwrap()
    }
}

/// Which side closes each connection first.
#[derive(Clone, Copy, Debug)]
enum First {
    Client,
    Server,
}

impl First {
    fn arg(self) -> &'static str {
        match self {
            First::Client => "client",
            First::Server => "server",
        }
    }
}

/// Runs `n` connections with the client `cmd` (which ends in `HOST PORT`); returns each batch's
/// time. Panics if any connection failed.
#[track_caller]
fn connections(mut cmd: Command, n: usize, first: First) -> Vec<Duration> {
    let limit = BATCH_DEADLINE.as_millis().to_string();
    cmd.args([&n.to_string(), first.arg(), &limit]);
    let client = Proc::spawn(cmd);
    let mut batches = Vec::new();
    loop {
        // A batch over BATCH_DEADLINE ends the run early: the caller sees it.
        let line = client.line(BATCH_DEADLINE + Duration::from_secs(120));
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["batch", ms] => batches.push(Duration::from_millis(ms.parse().unwrap())),
            ["done", ok, failed] => {
                assert_eq!(
                    *failed,
                    "0",
                    "connections failed ({ok} succeeded); client stderr: {}",
                    client.stderr()
                );
                let slow = batches.last().copied().unwrap_or_default();
                assert!(
                    ok.parse::<usize>() == Ok(n),
                    "the client gave up after {ok} connections: 2000 took over {slow:?}"
                );
                return batches;
            }
            _ => panic!("unexpected line from the client: {line}"),
        }
    }
}

/// The TCP sockets of a namespace by state (`ss -tan`), listeners left out.
fn tcp_states(cmd: Command) -> HashMap<String, usize> {
    let out = run(cmd).ok();
    let mut states = HashMap::new();
    for line in out.stdout.lines() {
        if let Some(state) = line.split_whitespace().next() {
            if state != "LISTEN" {
                *states.entry(state.to_string()).or_default() += 1;
            }
        }
    }
    states
}

/// What the host keeps of finished connections: nothing but a few TIME_WAITs whose ending was
/// still on its way, once the last connection is over.
#[track_caller]
fn assert_host_keeps_nothing(sb: &Sandbox) {
    let mut last = HashMap::new();
    let clean = poll(Duration::from_secs(30), || {
        last = tcp_states(sb.host_cmd("ss", &["-Htan"]));
        let tw = last.get("TIME-WAIT").copied().unwrap_or(0);
        (tw <= 20 && last.len() <= usize::from(tw > 0)).then_some(())
    });
    assert!(
        clean.is_some(),
        "the host keeps sockets of finished connections: {last:?}"
    );
}

/// The side that closed first keeps the TIME_WAITs, as through a kernel NAT.
#[track_caller]
fn assert_time_waits_in(states: HashMap<String, usize>, whose: &str) {
    let tw = states.get("TIME-WAIT").copied().unwrap_or(0);
    assert!(
        tw >= 1000,
        "{whose} closed first but keeps {tw} TIME_WAITs: {states:?}"
    );
}

/// Checks the timed batches: the first and the last 2,000 within the deadline.
#[track_caller]
fn assert_batches(first: &[Duration], next: &[Duration], what: &str) {
    eprintln!(
        "{what}: first 2000 in {:?}, next 2000 in {:?}",
        first[0], next[0]
    );
    assert!(
        first[0] <= BATCH_DEADLINE,
        "{what}: the first 2000 connections took {:?}",
        first[0]
    );
    assert!(
        next[0] <= BATCH_DEADLINE,
        "{what}: after {FIRST} connections, the next 2000 took {:?} (the first 2000: {:?}): \
         finished connections are in the way of new ones",
        next[0],
        first[0]
    );
}

/// Lets the namespace reuse its ports as netbench's clients do: a wide port range, and
/// TIME_WAIT reuse for a client that closes first.
fn client_sysctls(cmd: Command) {
    let mut cmd = cmd;
    cmd.args([
        "-q",
        "-w",
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=10000 65000",
    ]);
    run(cmd).ok();
}

/// Container -> server in the wan, through the NAT's relay (or translated in the kernel, with
/// `args` `--tcp-nat kernel`: then the host holds no socket at all once they are over).
fn through_the_nat(first: First, args: &[&str]) {
    let churn = Churn::build();
    let (sb, wan) = nat_sandbox(args, &[]);
    let c = Container::plain();
    sb.plug(&c, &[]);
    client_sysctls(c.cmd("sysctl", &[]));
    let _a = Proc::spawn_ready(wan.cmd(churn.path(), &["server", "9101", first.arg()]));
    let _b = Proc::spawn_ready(wan.cmd(churn.path(), &["server", "9102", first.arg()]));

    let a = c.cmd(churn.path(), &["client", WAN_IP, "9101"]);
    let early = connections(a, FIRST, first);
    let b = c.cmd(churn.path(), &["client", WAN_IP, "9102"]);
    let late = connections(b, NEXT, first);
    assert_batches(
        &early,
        &late,
        &format!("through the NAT, {first:?} closes first"),
    );
    assert_host_keeps_nothing(&sb);
    match first {
        First::Server => assert_time_waits_in(tcp_states(wan.cmd("ss", &["-Htan"])), "the server"),
        First::Client => assert_time_waits_in(tcp_states(c.cmd("ss", &["-Htan"])), "the container"),
    }
    // The flow table holds no connection that is not over.
    let flows = sb.vswitch(&["conntrack", "--json"]).ok().stdout;
    let open = flows.matches("\"ESTABLISHED\"").count();
    assert_eq!(open, 0, "flows still open after every connection ended");
}

#[test]
fn short_connections_through_the_nat_server_closes_first() {
    through_the_nat(First::Server, &[]);
}

#[test]
fn short_connections_through_the_nat_client_closes_first() {
    through_the_nat(First::Client, &[]);
}

#[test]
fn short_connections_translated_in_the_kernel_server_closes_first() {
    through_the_nat(First::Server, &["--tcp-nat", "kernel"]);
}

#[test]
fn short_connections_translated_in_the_kernel_client_closes_first() {
    through_the_nat(First::Client, &["--tcp-nat", "kernel"]);
}

/// A client in the wan -> a container's published port.
fn through_a_published_port(first: First) {
    let churn = Churn::build();
    let (sb, wan) = nat_sandbox(&[], &[]);
    let c = Container::plain();
    sb.vswitch(&[
        "plug",
        &c.pid.to_string(),
        "--publish",
        "9201:9101",
        "--publish",
        "9202:9102",
    ])
    .ok();
    client_sysctls(wan.cmd("sysctl", &[]));
    let _a = Proc::spawn_ready(c.cmd(churn.path(), &["server", "9101", first.arg()]));
    let _b = Proc::spawn_ready(c.cmd(churn.path(), &["server", "9102", first.arg()]));

    let a = wan.cmd(churn.path(), &["client", HOST_WAN_IP, "9201"]);
    let early = connections(a, FIRST, first);
    let b = wan.cmd(churn.path(), &["client", HOST_WAN_IP, "9202"]);
    let late = connections(b, NEXT, first);
    assert_batches(
        &early,
        &late,
        &format!("published port, {first:?} closes first"),
    );
    assert_host_keeps_nothing(&sb);
    match first {
        First::Server => assert_time_waits_in(tcp_states(c.cmd("ss", &["-Htan"])), "the container"),
        First::Client => assert_time_waits_in(tcp_states(wan.cmd("ss", &["-Htan"])), "the client"),
    }
}

#[test]
fn short_connections_to_a_published_port_server_closes_first() {
    through_a_published_port(First::Server);
}

#[test]
fn short_connections_to_a_published_port_client_closes_first() {
    through_a_published_port(First::Client);
}

/// Container -> a server of the host's on the gateway address (no NAT: the host's own TCP).
fn to_the_gateway(first: First) {
    let churn = Churn::build();
    let sb = Sandbox::start();
    let c = Container::plain();
    sb.plug(&c, &[]);
    client_sysctls(c.cmd("sysctl", &[]));
    let _a = Proc::spawn_ready(sb.host_cmd(churn.path(), &["server", "9101", first.arg()]));
    let _b = Proc::spawn_ready(sb.host_cmd(churn.path(), &["server", "9102", first.arg()]));

    let a = c.cmd(churn.path(), &["client", GATEWAY, "9101"]);
    let early = connections(a, FIRST, first);
    let b = c.cmd(churn.path(), &["client", GATEWAY, "9102"]);
    let late = connections(b, NEXT, first);
    assert_batches(
        &early,
        &late,
        &format!("to the gateway, {first:?} closes first"),
    );
    // The host is an end here: it keeps the TIME_WAITs when it closes first.
    if let First::Client = first {
        assert_host_keeps_nothing(&sb);
    }
}

#[test]
fn short_connections_to_the_gateway_server_closes_first() {
    to_the_gateway(First::Server);
}

#[test]
fn short_connections_to_the_gateway_client_closes_first() {
    to_the_gateway(First::Client);
}
