//! Signal names on the command line.

/// Parses `TERM`, `SIGTERM`, `15` and so on.
pub fn parse(text: &str) -> Result<i32, String> {
    if let Ok(n) = text.parse::<i32>() {
        return if (1..=64).contains(&n) { Ok(n) } else { Err(format!("signal {n} is not between 1 and 64")) };
    }
    let name = text.trim_start_matches("SIG").to_ascii_uppercase();
    Ok(match name.as_str() {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        _ => return Err(format!("unknown signal {text:?} (try TERM, KILL, INT, HUP, USR1, USR2, QUIT, CONT, STOP or a number)")),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_and_numbers() {
        assert_eq!(super::parse("TERM"), Ok(15));
        assert_eq!(super::parse("SIGKILL"), Ok(9));
        assert_eq!(super::parse("int"), Ok(2));
        assert_eq!(super::parse("10"), Ok(10));
        assert!(super::parse("0").unwrap_err().contains("between 1 and 64"));
        assert!(super::parse("BOGUS").unwrap_err().contains("BOGUS"));
    }
}
