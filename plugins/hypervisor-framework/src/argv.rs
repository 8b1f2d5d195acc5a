//! A VMM's command line, built up flag by flag.

use std::path::Path;

/// A command line: the program, then its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(Vec<String>);

impl Argv {
    /// A command line that runs `program`.
    pub fn new(program: &Path) -> Argv {
        Argv(vec![program.display().to_string()])
    }

    /// Appends `args`.
    pub fn push(&mut self, args: &[&str]) {
        self.0.extend(args.iter().map(|s| (*s).to_owned()));
    }

    /// Appends `flag` and `path`.
    pub fn path(&mut self, flag: &str, path: &Path) {
        self.push(&[flag, &path.display().to_string()]);
    }

    /// Appends `flag` and `path` when there is a path.
    pub fn opt_path(&mut self, flag: &str, path: Option<&Path>) {
        if let Some(path) = path {
            self.path(flag, path);
        }
    }

    /// The arguments, the program first.
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_paths() {
        let mut argv = Argv::new(Path::new("/bin/vmm"));
        argv.push(&["-a", "1"]);
        argv.path("--kernel", Path::new("/img/k"));
        argv.opt_path("--initrd", None);
        argv.opt_path("--log", Some(Path::new("/l")));
        assert_eq!(argv.into_vec(), ["/bin/vmm", "-a", "1", "--kernel", "/img/k", "--log", "/l"]);
    }
}
