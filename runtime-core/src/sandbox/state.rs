//! The sandbox and container state machines. Every operation says which states it accepts;
//! any other state is a [`StateError`] that names the state, the object and the operation.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A sandbox's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// The VM runs and the agent answers; containers are created but not started.
    Ready,
    /// Started: its containers were started.
    Running,
    /// The VM is paused.
    Paused,
    /// The VM is stopped and the containers destroyed; it can be started again or deleted.
    Stopped,
}

/// A container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Created in the guest, its process not started.
    Ready,
    /// Its process runs.
    Running,
    /// Frozen.
    Paused,
    /// Its process exited or was stopped.
    Stopped,
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ready => "ready",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        })
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ready => "ready",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        })
    }
}

impl ContainerState {
    /// The state the agent reports ("created", "running", "paused", "stopped").
    pub fn from_agent(state: &str) -> Option<Self> {
        Some(match state {
            "created" => Self::Ready,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "stopped" => Self::Stopped,
            _ => return None,
        })
    }
}

/// An operation refused because of the state it found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The sandbox's state does not allow the operation.
    #[error("cannot {action} sandbox {id}: it is {state} (allowed when {allowed})")]
    Sandbox {
        /// The sandbox.
        id: String,
        /// Its state.
        state: SandboxState,
        /// What was asked.
        action: &'static str,
        /// The states that allow it.
        allowed: String,
    },
    /// The container's state does not allow the operation.
    #[error("cannot {action} container {id}: it is {state} (allowed when {allowed})")]
    Container {
        /// The container.
        id: String,
        /// Its state.
        state: ContainerState,
        /// What was asked.
        action: &'static str,
        /// The states that allow it.
        allowed: String,
    },
}

fn list<T: fmt::Display>(states: &[T]) -> String {
    states.iter().map(ToString::to_string).collect::<Vec<_>>().join(" or ")
}

/// Checks that `state` is one of `allowed` for `action` on sandbox `id`.
pub fn require_sandbox(id: &str, state: SandboxState, allowed: &[SandboxState], action: &'static str) -> Result<(), StateError> {
    if allowed.contains(&state) {
        return Ok(());
    }
    Err(StateError::Sandbox { id: id.to_owned(), state, action, allowed: list(allowed) })
}

/// Checks that `state` is one of `allowed` for `action` on container `id`.
pub fn require_container(id: &str, state: ContainerState, allowed: &[ContainerState], action: &'static str) -> Result<(), StateError> {
    if allowed.contains(&state) {
        return Ok(());
    }
    Err(StateError::Container { id: id.to_owned(), state, action, allowed: list(allowed) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_state_and_what_is_allowed() {
        use SandboxState::*;
        assert!(require_sandbox("s1", Running, &[Running, Ready], "stop").is_ok());
        let e = require_sandbox("s1", Stopped, &[Running], "pause").unwrap_err();
        assert_eq!(e.to_string(), "cannot pause sandbox s1: it is stopped (allowed when running)");
        let e = require_container("c1", ContainerState::Running, &[ContainerState::Ready], "start").unwrap_err();
        assert_eq!(e.to_string(), "cannot start container c1: it is running (allowed when ready)");
        assert!(matches!(e, StateError::Container { state: ContainerState::Running, .. }));
    }

    #[test]
    fn agent_states_map() {
        assert_eq!(ContainerState::from_agent("created"), Some(ContainerState::Ready));
        assert_eq!(ContainerState::from_agent("stopped"), Some(ContainerState::Stopped));
        assert_eq!(ContainerState::from_agent("zombie"), None);
    }
}
