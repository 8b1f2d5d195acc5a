//! The agent on the host, for the fast protocol tests: run as root in fresh mount, pid and
//! network namespaces (with a cgroup v2 mount of its own) and served on a Unix socket.

use runtime_core::agent::{AgentClient, Dialer};
use std::path::{Path, PathBuf};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The agent binary of this build (`cargo xtask test` builds it).
pub fn agent_binary() -> PathBuf {
    crate::profile_dir().join("guest-agent")
}

/// What the host tier needs, or why it cannot run.
pub fn unavailable() -> Option<String> {
    if !crate::is_root() {
        return Some("the host agent tests need root (namespaces, mounts, cgroups)".into());
    }
    if !agent_binary().exists() {
        return Some(format!("{} is missing: build it with `cargo build -p guest-agent`", agent_binary().display()));
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("the host agent tests need /bin/busybox (Debian's busybox-static)".into());
    }
    None
}

/// Skips (with the reason) when the host tier cannot run here; see [`crate::skip_unless`].
pub fn skip() -> bool {
    let why = unavailable();
    crate::skip_unless(why.is_none(), why.as_deref().unwrap_or(""))
}

/// A container id unique to this test process (the host's cgroup tree is shared).
pub fn cid(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// A running host agent; killed (with its namespaces) when dropped.
pub struct HostAgent {
    child: Child,
    dir: tempfile::TempDir,
}

impl HostAgent {
    /// Starts the agent.
    pub fn start() -> HostAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
        let script = "mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$0\" serve --listen \"unix:$1\" --state-dir \"$2\"";
        let mut command = Command::new("unshare");
        // SAFETY: prctl is async-signal-safe; the closure touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                // If the test process dies without dropping us, unshare gets SIGKILL, and its
                // --kill-child takes the agent (and its namespace) with it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .args(["--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc", "--net"])
            .args(["sh", "-c", script])
            .arg(agent_binary())
            .arg(dir.path().join("agent.sock"))
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning unshare");
        HostAgent { child, dir }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Connects, waiting up to 10 s for the socket to accept (the file appears at bind(2),
    /// a moment before listen(2): a connection refused then is retried).
    pub async fn connect(&self) -> AgentClient {
        let socket = self.dir.path().join("agent.sock");
        let mut last = None;
        for _ in 0..500 {
            if socket.exists() {
                match AgentClient::connect(Dialer::Unix(socket.clone())).await {
                    Ok(client) => return client,
                    Err(e) => last = Some(e),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match last {
            Some(e) => panic!("connecting: {e:?}\nagent log:\n{}", self.log()),
            None => panic!("agent socket never appeared\nagent log:\n{}", self.log()),
        }
    }

    /// A busybox tree to use as a bind rootfs.
    pub fn busybox_rootfs(&self) -> PathBuf {
        busybox_tree(&self.dir.path().join("busybox"))
    }

    /// The busybox tree as a read-only bind rootfs.
    pub fn rootfs(&self) -> agent_protocol::pb::Storage {
        agent_protocol::pb::Storage {
            driver: "bind".into(),
            source: self.busybox_rootfs().display().to_string(),
            read_only: true,
            ..Default::default()
        }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pid (as this process sees it) of a process below the agent whose command line has
    /// the argument `arg`.
    pub fn descendant_with_arg(&self, arg: &str) -> Option<i32> {
        let root = self.child.id() as i32;
        let parent_of = |pid: i32| -> Option<i32> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
        };
        let below_root = |mut pid: i32| {
            for _ in 0..64 {
                match parent_of(pid) {
                    Some(p) if p == root => return true,
                    Some(p) if p > 1 => pid = p,
                    _ => return false,
                }
            }
            false
        };
        std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).find(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes()) && below_root(pid)
        })
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_leftover_cgroups();
    }
}

/// The host's cgroup v2 mount, if any (the agent's own mount is gone with its namespace).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        right.starts_with("cgroup2 ").then(|| PathBuf::from(mount_point))
    })
}

/// Containers left by a test that ended early keep empty cgroups in the host's shared v2
/// tree; the test ids end with this process's pid, so remove those (once their processes,
/// killed with the agent's pid namespace, are gone).
fn remove_leftover_cgroups() {
    let Some(root) = cgroup2_mount().map(|m| m.join("agent")) else { return };
    let suffix = format!("-{}", std::process::id());
    for _ in 0..50 {
        let left: Vec<PathBuf> = std::fs::read_dir(&root)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(&suffix)).collect())
            .unwrap_or_default();
        if left.iter().all(|p| std::fs::remove_dir(p).is_ok()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    let _ = std::fs::remove_dir(&root);
}

/// A busybox tree (the host's static busybox and its common applets) at `root`, made once.
pub fn busybox_tree(root: &Path) -> PathBuf {
    if root.exists() {
        return root.to_owned();
    }
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "echo", "cat", "sleep", "ls", "head", "yes", "id", "hostname", "true", "wc", "dd", "grep", "stty"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    root.to_owned()
}
