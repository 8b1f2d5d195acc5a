//! What an L1 run of the test suites got through before L1 itself hung, read from its console
//! output, so the next L1 resumes where it stopped instead of running everything again (a
//! wedged L1 is QEMU/TCG's emulated SVM failing, not the test: MACHINE-FACTS.md).

/// One test binary's run in L1, with the tests earlier L1s already finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// `package/test`, as the script's start marker names it.
    pub name: String,
    /// The executable.
    pub exe: std::path::PathBuf,
    /// The libtest filter that picks its hypervisor-kvm tests.
    pub filter: String,
    /// Tests to pass over (`--skip`): finished in an earlier L1.
    pub skip: Vec<String>,
    /// Tests that failed in an earlier L1.
    pub failed: Vec<String>,
    /// The binary's `test result:` line, once one L1 printed it.
    pub result: Option<String>,
}

impl Run {
    /// A run of `exe` with nothing finished yet.
    pub fn new(name: String, exe: std::path::PathBuf, filter: String) -> Run {
        Run { name, exe, filter, skip: Vec::new(), failed: Vec::new(), result: None }
    }

    /// The marker line the L1 script prints as it starts this run.
    pub fn marker(&self) -> String {
        format!("nested-test: {}", self.name)
    }
}

/// Whether the text between `[` and `]` is a kernel timestamp (`   14.336376`: seconds, a dot,
/// six digits of microseconds).
pub fn is_printk_stamp(inner: &str) -> bool {
    inner.trim().split_once('.').is_some_and(|(s, us)| !s.is_empty() && us.len() == 6 && s.bytes().chain(us.bytes()).all(|b| b.is_ascii_digit()))
}

/// The part of a console line before any kernel message spliced into it: L1's kernel writes
/// its lines (`[   14.336376] kvm [142]: ...`) to the same console, also in the middle of a
/// test's `test NAME ... ` line, whose `ok` then comes on the next line.
fn without_kernel_text(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut i = 0;
    while let Some(at) = line[i..].find('[') {
        let start = i + at;
        let rest = &line[start + 1..];
        if let Some(end) = rest.find(']') {
            if is_printk_stamp(&rest[..end]) {
                return &line[..start];
            }
        }
        i = start + 1;
        if i >= bytes.len() {
            break;
        }
    }
    line
}

/// Records in `runs` what the console `output` of one L1 shows: for each run it started (in
/// order, by marker), the tests that finished, which failed, and its result line if it got
/// that far.
pub fn record(runs: &mut [Run], output: &[String]) {
    let pending: Vec<usize> = (0..runs.len()).filter(|i| runs[*i].result.is_none()).collect();
    let earlier: Vec<usize> = runs.iter().map(|r| r.skip.len()).collect();
    let mut next = 0;
    let mut current: Option<usize> = None;
    let mut running: Option<String> = None;
    for raw in output {
        let line = without_kernel_text(raw).trim_end();
        if next < pending.len() && line == runs[pending[next]].marker() {
            current = Some(pending[next]);
            next += 1;
            running = None;
            continue;
        }
        let Some(run) = current.map(|i| &mut runs[i]) else { continue };
        if line.starts_with("test result:") {
            let resumed = earlier[current.unwrap_or_default()];
            run.result = Some(match resumed {
                0 => line.to_owned(),
                n => format!("{line} (resumed: {n} of its tests had finished in an earlier L1 that hung)"),
            });
            current = None;
            continue;
        }
        let finished = |name: &str, verdict: &str, run: &mut Run| match verdict {
            "ok" | "ignored" => run.skip.push(name.to_owned()),
            "FAILED" => {
                run.skip.push(name.to_owned());
                run.failed.push(name.to_owned());
            }
            _ => {}
        };
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some((name, verdict)) = rest.split_once(" ...") {
                let verdict = verdict.trim();
                if matches!(verdict, "ok" | "ignored" | "FAILED") {
                    finished(name, verdict, run);
                    running = None;
                } else {
                    running = Some(name.to_owned());
                }
                continue;
            }
        }
        if let Some(name) = running.clone() {
            let verdict = line.trim();
            if matches!(verdict, "ok" | "ignored" | "FAILED") {
                finished(&name, verdict, run);
                running = None;
            }
        }
    }
}

/// The test that was running in the last run `output` started, if one was: what a hung L1
/// was doing, for the report.
pub fn running_at_end(output: &[String]) -> Option<String> {
    let mut running = None;
    for raw in output {
        let line = without_kernel_text(raw).trim();
        if let Some((name, verdict)) = line.strip_prefix("test ").and_then(|r| r.split_once(" ...")) {
            running = (!matches!(verdict.trim(), "ok" | "ignored" | "FAILED")).then(|| name.to_owned());
        } else if matches!(line, "ok" | "ignored" | "FAILED") || line.starts_with("test result:") {
            running = None;
        }
    }
    running
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn kernel_text_is_cut_from_a_line() {
        assert_eq!(without_kernel_text("test a::kvm ... [   14.336376] kvm [142]: vcpu0"), "test a::kvm ... ");
        assert_eq!(without_kernel_text("[  245.298826] watchdog: BUG"), "");
        assert_eq!(without_kernel_text("test [x] ... ok"), "test [x] ... ok");
        assert_eq!(without_kernel_text("see [1.5] and [ 2.000001]"), "see [1.5] and ");
    }

    #[test]
    fn finished_tests_are_skipped_and_a_hung_one_is_not() {
        let mut runs = vec![Run::new("p/a".into(), "/a".into(), "::kvm".into()), Run::new("p/b".into(), "/b".into(), "kvm".into())];
        let output = lines(
            "nested-test: p/a\n\nrunning 4 tests\n\
             test one::kvm ... [    6.147361] kvm [124]: vcpu0 Unhandled WRMSR\nok\n\
             test two::kvm ... 2026-12-07T18:00:00Z WARN runtime: something\nFAILED\n\
             test three::kvm ... ignored\n\
             test four::kvm ... [   14.336376] kvm [142]: vcpu0 Unhandled WRMSR",
        );
        record(&mut runs, &output);
        assert_eq!(runs[0].skip, ["one::kvm", "two::kvm", "three::kvm"]);
        assert_eq!(runs[0].failed, ["two::kvm"]);
        assert_eq!(runs[0].result, None);
        assert_eq!(runs[1], Run::new("p/b".into(), "/b".into(), "kvm".into()), "a run never started stays whole");
        assert_eq!(running_at_end(&output).as_deref(), Some("four::kvm"));

        // The next L1 finishes the first run and starts the second.
        let output = lines("nested-test: p/a\ntest four::kvm ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 6 filtered out; finished in 9.1s\nnested-test: p/b\ntest x ... ok\n");
        record(&mut runs, &output);
        assert_eq!(runs[0].skip.len(), 4);
        assert!(runs[0].result.as_deref().is_some_and(|r| r.starts_with("test result: ok. 1 passed") && r.ends_with("(resumed: 3 of its tests had finished in an earlier L1 that hung)")));
        assert_eq!(runs[1].skip, ["x"]);
        assert_eq!(running_at_end(&output), None);

        // A finished run is not looked for again: the next marker is the second run's.
        let output = lines("nested-test: p/b\ntest y ... ok\ntest result: ok. 1 passed; 0 failed\n");
        record(&mut runs, &output);
        assert_eq!(runs[1].skip, ["x", "y"]);
        assert!(runs[1].result.as_deref().is_some_and(|r| r.contains("resumed: 1 of")) && runs[0].skip.len() == 4);
    }
}
