//! `fake-vmm`: a test double of the `vmm` for the kvm plugin's tests (tests/fake_vmm.rs). It
//! runs no VM. It takes the flags the plugin passes, daemonizes as the vmm does (the parent
//! exits 0 once the API socket is bound and the pid file written, or 1 with the error), and
//! answers the control API through [`vmm_api::protocol`]'s types, so it cannot drift from the
//! protocol the real vmm serves.
//!
//! Words in `--cmdline` steer it: `fake.fail` (exit 1 with an error before daemonizing),
//! `fake.noapi` (daemonize without an API socket), `fake.deaf` (answer `shutdown` but do not
//! exit).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use vmm_api::protocol::{Request, Response, RunState, VmInfo};

/// Set in the daemonized child's environment.
const CHILD: &str = "FAKE_VMM_DAEMONIZED";

struct Args {
    values: HashMap<String, String>,
    paused: bool,
    daemonize: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args { values: HashMap::new(), paused: false, daemonize: false };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "--paused" => args.paused = true,
            "--daemonize" => args.daemonize = true,
            flag if flag.starts_with("--") => {
                let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
                args.values.insert(flag[2..].to_owned(), value);
            }
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    for required in ["kernel", "console-log", "api-socket", "pid-file"] {
        if !args.values.contains_key(required) {
            return Err(format!("--{required} is required"));
        }
    }
    if !args.daemonize {
        return Err("only --daemonize is faked".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("fake-vmm: {e}");
            return ExitCode::from(2);
        }
    };
    let cmdline = args.values.get("cmdline").cloned().unwrap_or_default();
    let steer = |word: &str| cmdline.split_whitespace().any(|w| w == word);
    if std::env::var_os(CHILD).is_some() {
        return daemon(&args, steer("fake.noapi"), steer("fake.deaf"));
    }
    if steer("fake.fail") {
        eprintln!("vmm: loading the guest: the kernel has no PVH entry note");
        return ExitCode::FAILURE;
    }
    daemonize()
}

/// Runs this program again as the daemon (in a process group of its own) and waits for its
/// first line: `ready`, or its error.
fn daemonize() -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("fake-vmm: finding itself: {e}");
            return ExitCode::FAILURE;
        }
    };
    let child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(CHILD, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("fake-vmm: spawning the daemon: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut said = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut said);
    }
    if said == "ready\n" {
        return ExitCode::SUCCESS;
    }
    let _ = child.wait();
    eprintln!("{}", if said.is_empty() { "vmm: the daemonized vmm exited before it was ready" } else { said.trim_end() });
    ExitCode::FAILURE
}

/// The daemon: binds the API socket (unless `noapi`), writes the pid file, says `ready` on
/// stdout, then serves the API.
fn daemon(args: &Args, noapi: bool, deaf: bool) -> ExitCode {
    let api = &args.values["api-socket"];
    let pid_file = &args.values["pid-file"];
    let listener = if noapi {
        None
    } else {
        let _ = std::fs::remove_file(api);
        match UnixListener::bind(api) {
            Ok(l) => Some(l),
            Err(e) => {
                println!("vmm: binding the API socket {api}: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
        println!("vmm: writing the pid file: {e}");
        return ExitCode::FAILURE;
    }
    println!("ready");
    let Some(listener) = listener else {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    };
    let number = |key: &str, default: u64| args.values.get(key).and_then(|v| v.parse().ok()).unwrap_or(default);
    let mut vm = FakeVm {
        state: if args.paused { RunState::Created } else { RunState::Running },
        vcpus: u8::try_from(number("vcpus", 1)).unwrap_or(1),
        memory_mib: number("memory-mib", 256),
    };
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let mut lines = BufReader::new(&conn);
        let mut line = String::new();
        while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
            let request = Request::parse(line.trim());
            line.clear();
            let answer = match request {
                Ok(request) => vm.answer(request),
                Err(e) => Response::Error(e),
            };
            let _ = (&conn).write_all(answer.to_line().as_bytes());
            if answer == Response::State(RunState::Stopping) && !deaf {
                let _ = std::fs::remove_file(api);
                let _ = std::fs::remove_file(pid_file);
                return ExitCode::SUCCESS;
            }
        }
    }
    ExitCode::SUCCESS
}

/// The run state the fake keeps, with the vmm's transitions.
struct FakeVm {
    state: RunState,
    vcpus: u8,
    memory_mib: u64,
}

impl FakeVm {
    fn answer(&mut self, request: Request) -> Response {
        use RunState::*;
        let (allowed, to): (&[RunState], RunState) = match request {
            Request::State => {
                let info = VmInfo { state: self.state, vcpus: self.vcpus, memory_mib: self.memory_mib, pid: std::process::id() };
                return Response::Info(info);
            }
            Request::Devices => return Response::Devices(Vec::new()),
            Request::Shutdown => return Response::State(Stopping),
            Request::Start => (&[Created], Running),
            Request::Pause => (&[Running], Paused),
            Request::Resume => (&[Paused], Running),
            Request::Stop => (&[Created, Running, Paused], Stopped),
            // The fake has no VM state to save.
            Request::Save => return Response::Error("the fake vmm cannot save a VM".into()),
        };
        if !allowed.contains(&self.state) {
            return Response::Error(format!("cannot {request}: the VM is {}", self.state));
        }
        self.state = to;
        Response::State(to)
    }
}
