//! Turning panics into errors at the plugin boundary.

use crate::error::{ErrorKind, PluginError};
use abi_stable::std_types::RResult;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, turning a panic into a [`ErrorKind::PANICKED`] error that carries the panic
/// message. Every function a plugin exports goes through this.
///
/// The closure is asserted unwind-safe: after a caught panic the plugin object may hold
/// inconsistent state, which is the plugin's own; the host only ever sees the error.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.into(),
        Err(payload) => RResult::RErr(PluginError::new(
            ErrorKind::PANICKED,
            format!("{what} panicked: {}", panic_message(payload.as_ref())),
        )),
    }
}

/// Like [`guard`] for functions that cannot fail: a panic gives `fallback`.
pub fn guard_infallible<T>(f: impl FnOnce() -> T, fallback: T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let result: RResult<(), PluginError> = guard("save", || panic!("boom {}", 7));
        std::panic::set_hook(hook);
        let err = result.into_result().unwrap_err();
        assert_eq!(err.kind, ErrorKind::PANICKED);
        assert_eq!(err.message.as_str(), "save panicked: boom 7");
    }

    #[test]
    fn ok_and_err_pass_through() {
        assert_eq!(guard("x", || Ok(3)).into_result(), Ok(3));
        let e = PluginError::invalid_input("bad");
        assert_eq!(guard::<()>("x", || Err(e.clone())).into_result(), Err(e));
    }
}
