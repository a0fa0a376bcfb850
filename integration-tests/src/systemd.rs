//! systemd units read from their files and run the way systemd runs them,
//! so a test exercises the units we ship rather than a command line of
//! its own.
//!
//! Where systemd is PID 1, a [`Service`] is started with `systemctl`.
//! Elsewhere (containers, CI) its `ExecStartPre=` and `ExecStart=` lines
//! are run directly: as its `User=`/`Group=`, under its `UMask=`, in a
//! clean environment holding what its `Environment=` and
//! `EnvironmentFile=` say, after creating its `StateDirectory=`. The
//! sandboxing settings (`ProtectSystem=`, …) are not emulated.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Whether systemd manages this machine (what `sd_booted()` checks).
pub fn systemd_is_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// A unit file: its settings, in order, by section.
#[derive(Debug, Clone)]
pub struct Unit {
    /// The unit's name, e.g. `atticd.service`.
    pub name: String,
    settings: Vec<(String, String, String)>,
}

impl Unit {
    /// Reads and parses a unit file.
    pub fn load(path: &Path) -> Self {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read the unit {}: {e}", path.display()));
        let name = path
            .file_name()
            .expect("a unit file has a name")
            .to_string_lossy()
            .into_owned();
        Self::parse(&name, &text)
    }

    /// Parses a unit's text: `[Section]` headers, `Key=Value` lines,
    /// `#`/`;` comments. A continuation line (ending in `\`) fails the
    /// test: our units have none, and a reader that ignored one would
    /// run half a command.
    pub fn parse(name: &str, text: &str) -> Self {
        let mut section = String::new();
        let mut settings = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "{name}: continuation lines are not read: {line}"
            );
            if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = header.to_owned();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}: not a setting: {line}"));
            settings.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
        Self {
            name: name.to_owned(),
            settings,
        }
    }

    /// Every value of `key` in `[section]`, in order.
    pub fn values(&self, section: &str, key: &str) -> Vec<&str> {
        self.settings
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The last value of `key` in `[section]` (the one systemd uses).
    pub fn value(&self, section: &str, key: &str) -> Option<&str> {
        self.values(section, key).last().copied()
    }

    /// Whether the service is `Type=oneshot`, run to completion.
    pub fn is_oneshot(&self) -> bool {
        self.value("Service", "Type") == Some("oneshot")
    }
}

/// One `ExecStart=`-style line: its words, and whether a failure is
/// ignored (the `-` prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecLine {
    /// The program, then its arguments.
    pub argv: Vec<String>,
    /// `-`: a failure does not fail the unit.
    pub ignore_failure: bool,
}

impl ExecLine {
    /// Splits a command line as systemd does for our units: words
    /// separated by spaces, double-quoted words kept whole. Specifiers
    /// (`%i`) and variables (`$VAR`) fail the test, since they are not
    /// expanded here.
    pub fn parse(line: &str) -> Self {
        let mut rest = line.trim();
        let mut ignore_failure = false;
        while let Some(prefix) = rest.chars().next().filter(|c| "-@:+!".contains(*c)) {
            assert!(
                prefix == '-',
                "the prefix {prefix} is not supported: {line}"
            );
            ignore_failure = true;
            rest = &rest[1..];
        }
        assert!(
            !rest.contains('%') && !rest.contains('$'),
            "specifiers and variables are not expanded here: {line}"
        );
        let mut argv = Vec::new();
        let mut word = String::new();
        let mut quoted = false;
        let mut in_word = false;
        for c in rest.chars() {
            match c {
                '"' => {
                    quoted = !quoted;
                    in_word = true;
                }
                ' ' | '\t' if !quoted => {
                    if in_word {
                        argv.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                c => {
                    word.push(c);
                    in_word = true;
                }
            }
        }
        assert!(!quoted, "unbalanced quotes: {line}");
        if in_word {
            argv.push(word);
        }
        assert!(!argv.is_empty(), "an empty command line");
        Self {
            argv,
            ignore_failure,
        }
    }
}

/// A system user, as `getent passwd` gives it.
#[derive(Debug, Clone)]
pub struct SystemUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

impl SystemUser {
    /// The user called `name`, if there is one.
    pub fn find(name: &str) -> Option<Self> {
        let output = Command::new("getent")
            .args(["passwd", name])
            .output()
            .expect("run getent");
        if !output.status.success() {
            return None;
        }
        let line = String::from_utf8(output.stdout).expect("UTF-8 passwd entry");
        let fields: Vec<&str> = line.trim().split(':').collect();
        assert_eq!(fields.len(), 7, "a passwd entry: {line}");
        Some(Self {
            name: fields[0].to_owned(),
            uid: fields[2].parse().expect("numeric uid"),
            gid: fields[3].parse().expect("numeric gid"),
            home: fields[5].to_owned(),
            shell: fields[6].to_owned(),
        })
    }

    /// The user running this test.
    pub fn current() -> Self {
        let name = String::from_utf8(
            Command::new("id")
                .arg("-un")
                .output()
                .expect("run id")
                .stdout,
        )
        .expect("UTF-8 user name");
        Self::find(name.trim()).expect("the current user has a passwd entry")
    }
}

/// A unit made ready to run on this machine: where its paths lead (a
/// test may move `/usr/local/bin/`, `/etc/atticd/` and the like into its
/// own directories), and as whom it runs.
pub struct Service {
    unit: Unit,
    rewrites: Vec<(String, String)>,
    user: Option<SystemUser>,
}

impl Service {
    /// The unit as it is: run as its `User=`, its paths unchanged.
    pub fn new(unit: Unit) -> Self {
        Self {
            unit,
            rewrites: Vec::new(),
            user: None,
        }
    }

    /// The unit with every occurrence of the path prefix `from` (in its
    /// command lines, environment files and state directory) read as `to`.
    pub fn rewrite(mut self, from: &str, to: &Path) -> Self {
        self.rewrites
            .push((from.to_owned(), to.display().to_string()));
        self
    }

    /// The unit run as `user` instead of its `User=`.
    pub fn run_as(mut self, user: SystemUser) -> Self {
        self.user = Some(user);
        self
    }

    /// The unit.
    pub fn unit(&self) -> &Unit {
        &self.unit
    }

    fn rewritten(&self, text: &str) -> String {
        self.rewrites
            .iter()
            .fold(text.to_owned(), |text, (from, to)| text.replace(from, to))
    }

    /// The user the unit's commands run as.
    pub fn user(&self) -> SystemUser {
        if let Some(user) = &self.user {
            return user.clone();
        }
        let name = self
            .unit
            .value("Service", "User")
            .unwrap_or_else(|| panic!("{} sets no User=", self.unit.name));
        SystemUser::find(name)
            .unwrap_or_else(|| panic!("{}: the user {name} does not exist", self.unit.name))
    }

    /// The environment systemd gives the unit's commands: the basics for
    /// its user, then `Environment=` and `EnvironmentFile=` in order.
    pub fn environment(&self) -> BTreeMap<String, String> {
        let user = self.user();
        let mut env = BTreeMap::from([
            (
                "PATH".to_owned(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ),
            ("HOME".to_owned(), user.home.clone()),
            ("USER".to_owned(), user.name.clone()),
            ("LOGNAME".to_owned(), user.name.clone()),
            ("SHELL".to_owned(), user.shell.clone()),
        ]);
        for assignment in self.unit.values("Service", "Environment") {
            for word in ExecLine::parse(assignment).argv {
                let (name, value) = word
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not an assignment: {word}"));
                env.insert(name.to_owned(), value.to_owned());
            }
        }
        for file in self.unit.values("Service", "EnvironmentFile") {
            let (optional, file) = match file.strip_prefix('-') {
                Some(file) => (true, file),
                None => (false, file),
            };
            let path = self.rewritten(file);
            match std::fs::read_to_string(&path) {
                Ok(text) => env.extend(parse_environment_file(&text)),
                Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("{}: EnvironmentFile={path}: {e}", self.unit.name),
            }
        }
        env
    }

    /// Creates `StateDirectory=` (under `/var/lib`, as rewritten) with its
    /// mode, owned by the unit's user, as systemd does before each start.
    pub fn prepare_state_directory(&self) {
        use std::os::unix::fs::PermissionsExt;
        let Some(name) = self.unit.value("Service", "StateDirectory") else {
            return;
        };
        let dir = PathBuf::from(self.rewritten(&format!("/var/lib/{name}")));
        let mode = self
            .unit
            .value("Service", "StateDirectoryMode")
            .map_or(0o755, |m| {
                u32::from_str_radix(m, 8).expect("an octal StateDirectoryMode")
            });
        std::fs::create_dir_all(&dir).expect("create the state directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .expect("chmod the state directory");
        let user = self.user();
        std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
            .expect("chown the state directory");
    }

    /// A command for one of the unit's lines, ready to spawn as systemd
    /// would: its user, umask and environment.
    pub fn command(&self, line: &ExecLine) -> Command {
        use std::os::unix::process::CommandExt;
        let user = self.user();
        let umask = self.unit.value("Service", "UMask").unwrap_or("0022");
        let argv: Vec<String> = line.argv.iter().map(|a| self.rewritten(a)).collect();
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .args(&argv)
            .env_clear()
            .envs(self.environment())
            .current_dir("/")
            .uid(user.uid)
            .gid(user.gid);
        command
    }

    /// The `ExecStartPre=` lines.
    pub fn exec_start_pre(&self) -> Vec<ExecLine> {
        self.exec_lines("ExecStartPre")
    }

    /// The `ExecStart=` lines (one, unless `Type=oneshot`).
    pub fn exec_start(&self) -> Vec<ExecLine> {
        let lines = self.exec_lines("ExecStart");
        assert!(
            !lines.is_empty() && (lines.len() == 1 || self.unit.is_oneshot()),
            "{}: one ExecStart= (several only for Type=oneshot)",
            self.unit.name
        );
        lines
    }

    fn exec_lines(&self, key: &str) -> Vec<ExecLine> {
        self.unit
            .values("Service", key)
            .into_iter()
            .map(ExecLine::parse)
            .collect()
    }

    /// Runs a line to completion, failing the test (with what it printed)
    /// unless it succeeds or its failure is ignored.
    pub fn run_line(&self, line: &ExecLine) -> Output {
        let output = self
            .command(line)
            .output()
            .unwrap_or_else(|e| panic!("{}: cannot run {:?}: {e}", self.unit.name, line.argv));
        assert!(
            output.status.success() || line.ignore_failure,
            "{}: {:?} failed ({}):\n{}\n{}",
            self.unit.name,
            line.argv,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Runs a `Type=oneshot` unit to completion: its state directory, its
    /// `ExecStartPre=` then `ExecStart=` lines. With systemd as PID 1,
    /// `systemctl start` does it.
    pub fn run_oneshot(&self) {
        assert!(
            self.unit.is_oneshot(),
            "{} is not a oneshot",
            self.unit.name
        );
        if self.managed_by_systemd() {
            systemctl(&["start", &self.unit.name]);
            return;
        }
        self.prepare_state_directory();
        for line in self.exec_start_pre().iter().chain(&self.exec_start()) {
            self.run_line(line);
        }
    }

    /// Starts a long-running unit: its state directory, its
    /// `ExecStartPre=` lines to completion (each must succeed), then its
    /// `ExecStart=` in the background, stdout read line by line. With
    /// systemd as PID 1, `systemctl restart` does it.
    pub fn start(self) -> RunningService {
        if self.managed_by_systemd() {
            // Restart: a package's postinst may have started it already,
            // before the test wrote its environment.
            systemctl(&["restart", &self.unit.name]);
            return RunningService {
                service: self,
                child: None,
                stdout: None,
            };
        }
        self.prepare_state_directory();
        for line in self.exec_start_pre() {
            self.run_line(&line);
        }
        let main = self.exec_start().remove(0);
        let mut child = self
            .command(&main)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: cannot start {:?}: {e}", self.unit.name, main.argv));
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Keep draining after the test stops listening.
                let _ = lines_tx.send(line);
            }
        });
        RunningService {
            service: self,
            child: Some(child),
            stdout: Some(lines_rx),
        }
    }

    /// Whether `systemctl` runs this unit: systemd is PID 1 and nothing
    /// was rewritten (a rewritten unit exists only in this test).
    fn managed_by_systemd(&self) -> bool {
        systemd_is_running() && self.rewrites.is_empty() && self.user.is_none()
    }
}

/// A service started by [`Service::start`], stopped when dropped.
pub struct RunningService {
    service: Service,
    child: Option<Child>,
    stdout: Option<mpsc::Receiver<String>>,
}

impl RunningService {
    /// Waits (up to a minute) for `address` to accept connections, and
    /// fails the test if the service exits first.
    pub fn wait_for_listener(&mut self, address: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(address).is_ok() {
                return;
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait().expect("wait")
            {
                panic!(
                    "{} exited ({status}) before listening",
                    self.service.unit.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {address} within a minute",
                self.service.unit.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The lines the service printed on stdout so far (empty under
    /// systemd, where they go to the journal).
    pub fn printed(&self) -> Vec<String> {
        self.stdout
            .as_ref()
            .map(|lines| lines.try_iter().collect())
            .unwrap_or_default()
    }

    /// Stops the service (SIGTERM, as `systemctl stop` sends) and waits
    /// for it; whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        match &mut self.child {
            None => {
                systemctl(&["stop", &self.service.unit.name]);
                true
            }
            Some(child) => {
                if child.try_wait().expect("wait").is_none() {
                    let _ = Command::new("kill")
                        .args(["-TERM", &child.id().to_string()])
                        .status();
                }
                child.wait().expect("wait for the service").success()
            }
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        match &mut self.child {
            Some(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            None => {
                let _ = Command::new("systemctl")
                    .args(["stop", &self.service.unit.name])
                    .status();
            }
        }
    }
}

/// Runs `systemctl ARGS`, which must succeed.
fn systemctl(args: &[&str]) {
    let output = Command::new("systemctl")
        .args(args)
        .output()
        .expect("run systemctl");
    assert!(
        output.status.success(),
        "systemctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `KEY=VALUE` lines of an `EnvironmentFile=`: comments and blank lines
/// skipped, one pair of surrounding quotes removed.
pub fn parse_environment_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(|l| {
            let (name, value) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not an assignment in an environment file: {l}"));
            let value = value.trim();
            let value = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(value);
            (name.trim().to_owned(), value.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prefixes_and_quoted_words_of_a_command_line() {
        let line = ExecLine::parse(r#"-/usr/bin/atticd -f "/etc/a b/server.toml" --x"#);
        assert!(line.ignore_failure);
        assert_eq!(
            line.argv,
            ["/usr/bin/atticd", "-f", "/etc/a b/server.toml", "--x"]
        );
    }

    #[test]
    fn keeps_every_value_of_a_repeated_key_in_order() {
        let unit = Unit::parse(
            "x.service",
            "[Service]\n# a comment\nExecStartPre=/bin/a\nExecStartPre=/bin/b\nUser=atticd\n",
        );
        assert_eq!(unit.values("Service", "ExecStartPre"), ["/bin/a", "/bin/b"]);
        assert_eq!(unit.value("Service", "User"), Some("atticd"));
        assert_eq!(unit.value("Unit", "User"), None);
    }

    #[test]
    fn reads_an_environment_file_with_quotes_and_comments() {
        let env = parse_environment_file("# c\nA=1\n\nB=\"two words\"\n C = '3'\n");
        assert_eq!(
            env,
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "two words".to_owned()),
                ("C".to_owned(), "3".to_owned())
            ]
        );
    }
}
