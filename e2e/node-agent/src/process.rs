//! Container processes: from image to executable, spawning, signals, pid files.
//!
//! * **Images.** There is no container engine: an image is mapped to local
//!   executables with `--image-map IMAGE_PREFIX=PATH_OR_DIR` ([`ImageMap`]).
//!   A key matches an image whose repository (the reference without tag or
//!   digest) equals it or starts with it followed by `/`; the longest key
//!   wins. The container's `command[0]` (or, with no command, the last path
//!   component of the repository, e.g. `siphon-worker` for
//!   `example.com/siphon-worker:dev`) is then looked up in the mapped
//!   directory; a mapped file is used as the image's entrypoint. An absolute
//!   `command[0]` is used as is, and a bare name not found in the mapped
//!   directory, or of an unmapped image (`busybox`), is looked up on the
//!   agent's `PATH`: `image: busybox, command: [sleep, "3600"]` runs the
//!   host's `sleep`.
//! * **Processes.** Every container process starts in its own process group
//!   (`process_group(0)`), so signals reach the whole tree a shell starts;
//!   when the group leader exits the rest of the group is killed, as a
//!   container's PID namespace would be. stdout and stderr are appended to
//!   one log file, after a marker line per start.
//! * **Pid files.** `<sandbox>/containers/<name>.pid` records the pid and its
//!   start time (field 22 of `/proc/<pid>/stat`), so that after an agent
//!   restart [`kill_stale`] stops only processes that really are ours and not
//!   a process that reused the pid.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// One `--image-map IMAGE_PREFIX=PATH_OR_DIR` flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMapping {
    pub prefix: String,
    pub path: PathBuf,
}

impl FromStr for ImageMapping {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (prefix, path) = s
            .split_once('=')
            .ok_or_else(|| format!("expected IMAGE_PREFIX=PATH_OR_DIR, got {s:?}"))?;
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() || path.is_empty() {
            return Err(format!("expected IMAGE_PREFIX=PATH_OR_DIR, got {s:?}"));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            path: PathBuf::from(path),
        })
    }
}

/// The repository part of an image reference: without `@digest` and without
/// `:tag` (a colon before the last `/` is a registry port).
pub fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(repo, _)| repo);
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].find(':') {
        Some(colon) => &image[..last_slash + colon],
        None => image,
    }
}

/// What runs for a container: the executable and the rest of `command`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub path: PathBuf,
    /// `command[1..]`; the caller appends `args`.
    pub command_rest: Vec<String>,
}

/// All `--image-map` flags.
#[derive(Clone, Debug, Default)]
pub struct ImageMap {
    mappings: Vec<ImageMapping>,
}

impl ImageMap {
    pub fn new(mut mappings: Vec<ImageMapping>) -> Self {
        // Longest prefix first.
        mappings.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        Self { mappings }
    }

    /// The mapping whose prefix matches the image's repository.
    pub fn lookup(&self, image: &str) -> Option<&ImageMapping> {
        let repo = repository(image);
        self.mappings.iter().find(|m| {
            repo == m.prefix
                || repo
                    .strip_prefix(&m.prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// The directory of executables an image maps to (for a mapped file, its
    /// directory), put first on the container's PATH.
    pub fn directory(&self, image: &str, is_file: impl Fn(&Path) -> bool) -> Option<PathBuf> {
        let m = self.lookup(image)?;
        if is_file(&m.path) {
            m.path.parent().map(Path::to_path_buf)
        } else {
            Some(m.path.clone())
        }
    }

    /// Finds the executable for a container. `path_var` is the `PATH` to
    /// search bare names on; `is_file` tells whether a path is an executable
    /// file (injected for tests).
    pub fn resolve(
        &self,
        image: &str,
        command: &[String],
        path_var: &str,
        is_file: impl Fn(&Path) -> bool,
    ) -> Result<Program, String> {
        let mapping = self.lookup(image);
        // A mapped file is the image's entrypoint; a directory holds binaries.
        let (dir, entrypoint) = match mapping {
            Some(m) if is_file(&m.path) => {
                (m.path.parent().map(Path::to_path_buf), Some(m.path.clone()))
            }
            Some(m) => (Some(m.path.clone()), None),
            None => (None, None),
        };
        let Some((first, rest)) = command.split_first() else {
            let Some(m) = mapping else {
                return Err(format!(
                    "image {image:?} is not in --image-map and the container has no command"
                ));
            };
            let path = match entrypoint {
                Some(file) => file,
                None => {
                    let repo = repository(image);
                    let name = repo.rsplit('/').next().unwrap_or(repo);
                    m.path.join(name)
                }
            };
            if !is_file(&path) {
                return Err(format!(
                    "image {image:?}: no executable {} (from --image-map {}={})",
                    path.display(),
                    m.prefix,
                    m.path.display()
                ));
            }
            return Ok(Program {
                path,
                command_rest: Vec::new(),
            });
        };
        let program = |path: PathBuf| Program {
            path,
            command_rest: rest.to_vec(),
        };
        let first_path = Path::new(first);
        if first_path.is_absolute() {
            return if is_file(first_path) {
                Ok(program(first_path.to_path_buf()))
            } else {
                Err(format!(
                    "command {first:?}: no such executable on this host"
                ))
            };
        }
        if let Some(file) = &entrypoint
            && file.file_name() == Some(OsStr::new(first))
        {
            return Ok(program(file.clone()));
        }
        if !first.contains('/') {
            let in_dir = dir.iter().map(|d| d.join(first));
            let on_path = std::env::split_paths(path_var).map(|d| d.join(first));
            if let Some(found) = in_dir.chain(on_path).find(|p| is_file(p)) {
                return Ok(program(found));
            }
        }
        Err(match mapping {
            Some(m) => format!(
                "command {first:?} of image {image:?} not found in {} (--image-map {}) nor on PATH",
                m.path.display(),
                m.prefix
            ),
            None => format!("command {first:?} of image {image:?} not found on PATH"),
        })
    }
}

/// True if `path` is a file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Everything needed to start one container process.
pub struct SpawnSpec<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    pub log: &'a Path,
    /// Written to the log before the process starts.
    pub marker: &'a str,
}

/// Starts a process in its own process group with its output appended to the
/// log file.
pub fn spawn(spec: &SpawnSpec<'_>) -> std::io::Result<Child> {
    if let Some(dir) = spec.log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut log: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.log)?;
    writeln!(log, "{}", spec.marker)?;
    let stderr = log.try_clone()?;
    Command::new(spec.program)
        .args(spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
}

/// Sends `signal` to the process group `pgid`; false if the group is gone.
pub fn signal_group(pgid: i32, signal: Signal) -> bool {
    killpg(Pid::from_raw(pgid), signal).is_ok()
}

/// True while any process of the group `pgid` exists (zombies included).
pub fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok()
}

/// Start time (clock ticks after boot) from the text of `/proc/<pid>/stat`.
pub fn parse_stat_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces
    // and parentheses: fields after it start after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow; the start time is field 22, so the 20th here.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Start time of a live process.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_start_time(&stat)
}

/// Records a container process in its pid file.
pub fn write_pid_file(path: &Path, pid: i32) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let start = start_time(pid).unwrap_or_default();
    std::fs::write(path, format!("{pid} {start}\n"))
}

/// Parses a pid file: `<pid> <start time>`.
pub fn parse_pid_file(text: &str) -> Option<(i32, u64)> {
    let mut it = text.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let start = it.next()?.parse().ok()?;
    Some((pid, start))
}

/// Stops the processes a previous agent run left behind: every pid file
/// under `pods_dir/*/containers/` whose process is still alive with the
/// recorded start time gets SIGTERM for its group, then SIGKILL after
/// `grace`. Pid files are removed. Returns the number of groups stopped.
pub async fn kill_stale(pods_dir: &Path, grace: Duration) -> usize {
    let mut groups = Vec::new();
    let Ok(pods) = std::fs::read_dir(pods_dir) else {
        return 0;
    };
    for pod in pods.flatten() {
        let Ok(files) = std::fs::read_dir(pod.path().join("containers")) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            if path.extension() != Some(OsStr::new("pid")) {
                continue;
            }
            let recorded = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| parse_pid_file(&t));
            if let Some((pid, start)) = recorded
                && pid > 1
                && start_time(pid) == Some(start)
            {
                tracing::info!(pid, file = %path.display(), "stopping process left by a previous agent run");
                signal_group(pid, Signal::SIGTERM);
                groups.push(pid);
            }
            let _ = std::fs::remove_file(&path);
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    while groups.iter().any(|&g| group_alive(g)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for &g in &groups {
        if signal_group(g, Signal::SIGKILL) {
            tracing::warn!(pid = g, "process group survived SIGTERM; sent SIGKILL");
        }
    }
    groups.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ImageMap {
        ImageMap::new(vec![
            "siphon=/opt/siphon/bin".parse().unwrap(),
            "example.com/tools/runner=/opt/runner".parse().unwrap(),
            "example.com/tools=/opt/tools".parse().unwrap(),
        ])
    }

    fn files(path: &Path) -> bool {
        [
            "/opt/siphon/bin/siphon-worker",
            "/opt/siphon/bin/siphon",
            "/opt/siphon/bin/siphon-operator",
            "/opt/runner",
            "/usr/bin/sleep",
            "/bin/sh",
        ]
        .iter()
        .any(|f| Path::new(f) == path)
    }

    fn cmd(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn repository_strips_tag_and_digest() {
        assert_eq!(repository("busybox"), "busybox");
        assert_eq!(repository("busybox:1.36"), "busybox");
        assert_eq!(
            repository("siphon/siphon-worker:dev"),
            "siphon/siphon-worker"
        );
        assert_eq!(
            repository("localhost:5000/siphon:dev@sha256:abc"),
            "localhost:5000/siphon"
        );
        assert_eq!(repository("localhost:5000/siphon"), "localhost:5000/siphon");
    }

    #[test]
    fn image_mapping_parses() {
        assert_eq!(
            "siphon/=/x".parse::<ImageMapping>().unwrap(),
            ImageMapping {
                prefix: "siphon".into(),
                path: "/x".into()
            }
        );
        assert!("siphon".parse::<ImageMapping>().is_err());
        assert!("=/x".parse::<ImageMapping>().is_err());
    }

    #[test]
    fn mapped_images_use_their_directory() {
        let m = map();
        let p = m
            .resolve(
                "siphon:dev",
                &cmd(&["siphon-worker", "--port", "9"]),
                "/usr/bin",
                files,
            )
            .unwrap();
        assert_eq!(p.path, Path::new("/opt/siphon/bin/siphon-worker"));
        assert_eq!(p.command_rest, cmd(&["--port", "9"]));
        assert_eq!(
            m.directory("siphon:dev", files).as_deref(),
            Some(Path::new("/opt/siphon/bin"))
        );
        assert_eq!(
            m.directory("example.com/tools/runner", files).as_deref(),
            Some(Path::new("/opt"))
        );

        // No command: the repository's last component.
        let p = m
            .resolve("siphon/siphon-operator:1", &[], "/usr/bin", files)
            .unwrap();
        assert_eq!(p.path, Path::new("/opt/siphon/bin/siphon-operator"));
        let p = m.resolve("siphon", &[], "", files).unwrap();
        assert_eq!(p.path, Path::new("/opt/siphon/bin/siphon"));

        // Prefixes match whole components, longest first.
        assert!(m.lookup("siphonx/worker").is_none());
        assert_eq!(
            m.lookup("example.com/tools/runner:1").unwrap().prefix,
            "example.com/tools/runner"
        );
        // A mapped file is the entrypoint.
        let p = m
            .resolve("example.com/tools/runner:1", &[], "", files)
            .unwrap();
        assert_eq!(p.path, Path::new("/opt/runner"));
        // Not in the directory: PATH.
        let p = m
            .resolve(
                "siphon:dev",
                &cmd(&["sh", "-c", "true"]),
                "/usr/bin:/bin",
                files,
            )
            .unwrap();
        assert_eq!(p.path, Path::new("/bin/sh"));
        assert!(
            m.resolve("siphon:dev", &cmd(&["nope"]), "/bin", files)
                .is_err()
        );
        assert!(m.resolve("siphon/missing:1", &[], "", files).is_err());
    }

    #[test]
    fn unmapped_images_need_a_host_command() {
        let m = map();
        let p = m
            .resolve("busybox", &cmd(&["sleep", "3600"]), "/bin:/usr/bin", files)
            .unwrap();
        assert_eq!(p.path, Path::new("/usr/bin/sleep"));
        assert_eq!(m.directory("busybox", files), None);
        let p = m
            .resolve("busybox:1.36", &cmd(&["/bin/sh", "-c", "x"]), "", files)
            .unwrap();
        assert_eq!(p.path, Path::new("/bin/sh"));
        assert_eq!(p.command_rest, cmd(&["-c", "x"]));
        assert!(m.resolve("busybox", &[], "/bin", files).is_err());
        assert!(
            m.resolve("busybox", &cmd(&["/nope"]), "/bin", files)
                .is_err()
        );
        assert!(
            m.resolve("busybox", &cmd(&["./rel"]), "/bin", files)
                .is_err()
        );
    }

    #[test]
    fn stat_start_time_skips_odd_command_names() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        assert_eq!(parse_stat_start_time(stat), Some(98765));
        assert_eq!(parse_stat_start_time("garbage"), None);
        let own = start_time(i32::try_from(std::process::id()).unwrap());
        assert!(own.is_some());
    }

    #[test]
    fn pid_files_round_trip() {
        assert_eq!(parse_pid_file("42 9001\n"), Some((42, 9001)));
        assert_eq!(parse_pid_file("42"), None);
        assert_eq!(parse_pid_file(""), None);
    }
}
