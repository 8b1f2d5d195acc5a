//! The state rule of every function of the Sandbox API that has one: the sandbox states in
//! which it is accepted and, for the container functions, the container states. Kata 1.x's
//! rules, and why ours differ where they do, are in `docs/SANDBOX-API.md`, whose table a test
//! checks against this one.

use super::state::{require_container, require_sandbox, ContainerState as C, SandboxState as S, StateError};

/// One function's rule.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The seed's name of the function (`sandbox.StartContainer`).
    pub function: &'static str,
    /// What the sandbox error says is being done (`start a container in`).
    sandbox_action: &'static str,
    /// The sandbox states that allow it.
    pub sandbox: &'static [S],
    /// What the container error says is being done (`start`).
    container_action: &'static str,
    /// The container states that allow it (none: it names no existing container, or any
    /// state will do).
    pub container: Option<&'static [C]>,
}

impl Rule {
    /// Checks the sandbox's state.
    pub fn check_sandbox(&self, id: &str, state: S) -> Result<(), StateError> {
        require_sandbox(id, state, self.sandbox, self.sandbox_action)
    }

    /// Checks the container's state (any state passes a rule without container states).
    pub fn check_container(&self, id: &str, state: C) -> Result<(), StateError> {
        match self.container {
            Some(allowed) => require_container(id, state, allowed, self.container_action),
            None => Ok(()),
        }
    }
}

const fn sandbox(function: &'static str, action: &'static str, states: &'static [S]) -> Rule {
    Rule { function, sandbox_action: action, sandbox: states, container_action: "", container: None }
}

const fn container(function: &'static str, sandbox_action: &'static str, sandbox: &'static [S], action: &'static str, states: &'static [C]) -> Rule {
    Rule { function, sandbox_action, sandbox, container_action: action, container: Some(states) }
}

/// StartSandbox, sandbox.Start.
pub const START: Rule = sandbox("sandbox.Start", "start", &[S::Ready, S::Stopped]);
/// StopSandbox, sandbox.Stop: a stopped sandbox is left as it is (no error).
pub const STOP: Rule = sandbox("sandbox.Stop", "stop", &[S::Ready, S::Running, S::Paused, S::Stopped]);
/// sandbox.Delete (DeleteSandbox stops the sandbox first).
pub const DELETE: Rule = sandbox("sandbox.Delete", "delete", &[S::Ready, S::Paused, S::Stopped]);
/// Kata's PauseSandbox: running containers become paused.
pub const PAUSE: Rule = sandbox("PauseSandbox", "pause", &[S::Ready, S::Running]);
/// Kata's ResumeSandbox: the containers the pause froze run again.
pub const RESUME: Rule = sandbox("ResumeSandbox", "resume", &[S::Paused]);
/// sandbox.Monitor.
pub const MONITOR: Rule = sandbox("sandbox.Monitor", "monitor", &[S::Ready, S::Running, S::Paused]);
/// sandbox.Stats.
pub const STATS: Rule = sandbox("sandbox.Stats", "get statistics of", &[S::Ready, S::Running]);
/// sandbox.ListInterfaces, ListRoutes, UpdateRoutes: the agent must answer.
pub const NETWORK: Rule = sandbox("sandbox.ListInterfaces", "use the network of", &[S::Ready, S::Running]);

/// sandbox.CreateContainer: a new container needs the guest.
pub const CREATE_CONTAINER: Rule = sandbox("sandbox.CreateContainer", "create a container in", &[S::Ready, S::Running]);
/// sandbox.DeleteContainer: in a stopped sandbox only its config goes.
pub const DELETE_CONTAINER: Rule =
    container("sandbox.DeleteContainer", "delete a container of", &[S::Ready, S::Running, S::Stopped], "delete", &[C::Ready, C::Stopped]);
/// sandbox.EnterContainer.
pub const ENTER_CONTAINER: Rule = container("sandbox.EnterContainer", "enter a container of", &[S::Running], "enter", &[C::Running]);
/// sandbox.KillContainer.
pub const KILL_CONTAINER: Rule =
    container("sandbox.KillContainer", "signal a container of", &[S::Ready, S::Running], "signal", &[C::Ready, C::Running, C::Paused]);
/// sandbox.PauseContainer.
pub const PAUSE_CONTAINER: Rule = container("sandbox.PauseContainer", "pause a container of", &[S::Running], "pause", &[C::Running]);
/// sandbox.ProcessListContainer.
pub const PS_CONTAINER: Rule = container(
    "sandbox.ProcessListContainer",
    "list the processes of a container of",
    &[S::Running],
    "list the processes of",
    &[C::Running, C::Paused],
);
/// sandbox.ResumeContainer.
pub const RESUME_CONTAINER: Rule = container("sandbox.ResumeContainer", "resume a container of", &[S::Running], "resume", &[C::Paused]);
/// sandbox.StartContainer.
pub const START_CONTAINER: Rule = container("sandbox.StartContainer", "start a container in", &[S::Running], "start", &[C::Ready]);
/// sandbox.StatsContainer.
pub const STATS_CONTAINER: Rule =
    container("sandbox.StatsContainer", "get statistics of a container of", &[S::Running], "get statistics of", &[C::Running, C::Paused]);
/// sandbox.StopContainer: a stopped container is left as it is (no error).
pub const STOP_CONTAINER: Rule = container(
    "sandbox.StopContainer",
    "stop a container in",
    &[S::Ready, S::Running],
    "stop",
    &[C::Ready, C::Running, C::Paused, C::Stopped],
);
/// sandbox.UpdateContainer.
pub const UPDATE_CONTAINER: Rule =
    container("sandbox.UpdateContainer", "update a container of", &[S::Running], "update", &[C::Ready, C::Running]);
/// sandbox.WaitProcess: a process that already exited gives its status.
pub const WAIT_PROCESS: Rule = sandbox("sandbox.WaitProcess", "wait for a process in", &[S::Running]);
/// sandbox.WinsizeProcess, SignalProcess and IOStream: the agent answers for the process; a
/// caller may attach to a container's output before starting it.
pub const RELAY: Rule = sandbox("sandbox.IOStream", "reach a process in", &[S::Ready, S::Running]);

/// Every rule, for the documentation check.
pub const ALL: &[Rule] = &[
    START,
    STOP,
    DELETE,
    PAUSE,
    RESUME,
    MONITOR,
    STATS,
    NETWORK,
    CREATE_CONTAINER,
    DELETE_CONTAINER,
    ENTER_CONTAINER,
    KILL_CONTAINER,
    PAUSE_CONTAINER,
    PS_CONTAINER,
    RESUME_CONTAINER,
    START_CONTAINER,
    STATS_CONTAINER,
    STOP_CONTAINER,
    UPDATE_CONTAINER,
    WAIT_PROCESS,
    RELAY,
];

/// `ready, running` or `any`.
fn states<T: std::fmt::Display>(states: &[T], all: usize) -> String {
    if states.len() == all {
        return "any".into();
    }
    states.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

impl Rule {
    /// The rule as the documentation's "ours" column writes it: `sandbox ready, running;
    /// container running`.
    pub fn describe(&self) -> String {
        let mut text = format!("sandbox {}", states(self.sandbox, 4));
        if let Some(c) = self.container {
            text.push_str(&format!("; container {}", states(c, 4)));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documentation's rule table: function → its "ours" cell.
    fn documented() -> Vec<(String, String)> {
        let doc = include_str!("../../../docs/SANDBOX-API.md");
        let start = doc.find("| function | Kata 1.x | ours | why ours differs |").expect("the rule table in docs/SANDBOX-API.md");
        doc[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let function = cells[1].split('`').nth(1).unwrap_or(cells[1]);
                (function.to_owned(), cells[3].to_owned())
            })
            .collect()
    }

    #[test]
    fn the_documented_rules_are_the_code_rules() {
        let doc = documented();
        for rule in ALL {
            let row = doc.iter().find(|(f, _)| f == rule.function).unwrap_or_else(|| panic!("{} is not in the doc's rule table", rule.function));
            assert_eq!(row.1, rule.describe(), "docs/SANDBOX-API.md row of {}", rule.function);
        }
    }

    #[test]
    fn errors_name_the_object_its_state_and_what_allows_it() {
        let e = START_CONTAINER.check_sandbox("web", S::Ready).unwrap_err();
        assert_eq!(e.to_string(), "cannot start a container in sandbox web: it is ready (allowed when running)");
        let e = KILL_CONTAINER.check_container("c1", C::Stopped).unwrap_err();
        assert_eq!(e.to_string(), "cannot signal container c1: it is stopped (allowed when ready or running or paused)");
        assert!(STOP.check_sandbox("web", S::Stopped).is_ok());
        assert!(CREATE_CONTAINER.check_container("c1", C::Stopped).is_ok(), "no container rule: any state");
    }
}
