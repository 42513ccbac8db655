//! Container probes: startup, readiness and liveness.
//!
//! All pods share the host's loopback, so `httpGet` and `tcpSocket` probes go
//! to `127.0.0.1:<port>` (the port is a number or the name of one of the
//! container's `ports`); `httpGet` is a plain HTTP/1.1 request whose status
//! must be 200–399 (an `HTTPS` scheme is checked with a TCP connect, as is a
//! `grpc` probe); `exec` probes run their command like the container's own
//! process (same image mapping, environment, working directory and mount
//! rewriting) and pass on exit code 0.
//!
//! [`run`] drives one container's probes with the kubelet's timing
//! (`initialDelaySeconds`, `periodSeconds` (10), `timeoutSeconds` (1),
//! `successThreshold` (1), `failureThreshold` (3)): the startup probe first,
//! then readiness and liveness side by side. It reports transitions through a
//! callback; the supervisor aborts the task when the container stops.
//!
//! Limitation: several pods listening on the same port collide, because
//! there is one loopback; a probe then checks whichever process owns the
//! port. Give each pod its own port (e.g. through an env var or argument).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::env::Env;
use crate::process::ImageMap;
use crate::volumes::Mount;

/// What a probe task reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The startup probe passed (sent at once when there is none).
    Started,
    /// The readiness probe changed its verdict.
    Ready(bool),
    /// A liveness or startup probe reached its failure threshold: the
    /// container must be killed.
    Failed(String),
}

/// How to run exec probes like the container's process.
#[derive(Clone, Debug)]
pub struct ExecContext {
    /// Address that httpGet and tcpSocket probes dial when they name no host.
    pub pod_ip: String,
    pub image_map: Arc<ImageMap>,
    pub image: String,
    pub env: Env,
    pub mounts: Vec<Mount>,
    pub cwd: PathBuf,
}

/// The probes of one container.
#[derive(Clone, Debug, Default)]
pub struct ProbeSet {
    pub startup: Option<Probe>,
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
    pub ports: Vec<ContainerPort>,
}

fn seconds(value: Option<i32>, default: i32) -> Duration {
    let s = value.filter(|v| *v > 0).unwrap_or(default);
    Duration::from_secs(u64::try_from(s).unwrap_or(1))
}

fn threshold(value: Option<i32>, default: u32) -> u32 {
    value
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

/// The port number a probe targets.
pub fn port_number(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("no container port named {s:?}"))?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid port {n}"))
}

fn host_of(host: Option<&String>, pod_ip: &str) -> String {
    host.filter(|h| !h.is_empty())
        .cloned()
        .unwrap_or_else(|| pod_ip.to_owned())
}

/// Parses the status code of an HTTP status line.
pub fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

async fn http_get(
    action: &HTTPGetAction,
    ports: &[ContainerPort],
    pod_ip: &str,
) -> Result<(), String> {
    let port = port_number(&action.port, ports)?;
    let host = host_of(action.host.as_ref(), pod_ip);
    let mut stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
    if action.scheme.as_deref() == Some("HTTPS") {
        return Ok(());
    }
    let path = action
        .path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.34\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for h in action.http_headers.iter().flatten() {
        request.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("Get \"http://{host}:{port}{path}\": {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(|e| format!("Get \"http://{host}:{port}{path}\": {e}"))?;
    match status_code(&line) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(format!("HTTP probe failed with statuscode: {code}")),
        None => Err(format!(
            "Get \"http://{host}:{port}{path}\": malformed response"
        )),
    }
}

/// Kills a probe's process group when dropped.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        crate::process::signal_group(self.0, nix::sys::signal::Signal::SIGKILL);
    }
}

async fn exec(command: &[String], ctx: &ExecContext) -> Result<(), String> {
    let command: Vec<String> = command
        .iter()
        .map(|c| crate::volumes::rewrite(&ctx.env.expand(c), &ctx.mounts))
        .collect();
    let path_var = ctx.env.get("PATH").unwrap_or_default();
    let program = ctx.image_map.resolve(
        &ctx.image,
        &command,
        path_var,
        crate::process::is_executable,
    )?;
    let mut child = tokio::process::Command::new(&program.path)
        .args(&program.command_rest)
        .env_clear()
        .envs(ctx.env.vars().iter().map(|(k, v)| (k, v)))
        .current_dir(&ctx.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("exec {}: {e}", program.path.display()))?;
    // Whatever happens (timeout included), nothing of the probe survives it.
    let _group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(GroupGuard);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    tokio::join!(
        async {
            if let Some(mut s) = stdout {
                let _ = s.read_to_end(&mut out).await;
            }
        },
        async {
            if let Some(mut s) = stderr {
                let _ = s.read_to_end(&mut err).await;
            }
        }
    );
    out.extend(err);
    let status = child.wait().await;
    let status = status.map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out);
        let text = text.trim();
        let text: String = text.chars().take(256).collect();
        Err(format!("command exited with {status}: {text}"))
    }
}

/// Runs one probe once, within its timeout.
pub async fn check(
    probe: &Probe,
    ports: &[ContainerPort],
    ctx: &ExecContext,
) -> Result<(), String> {
    let timeout = seconds(probe.timeout_seconds, 1);
    let run = async {
        if let Some(h) = &probe.http_get {
            http_get(h, ports, &ctx.pod_ip).await
        } else if let Some(t) = &probe.tcp_socket {
            let port = port_number(&t.port, ports)?;
            let host = host_of(t.host.as_ref(), &ctx.pod_ip);
            TcpStream::connect((host.as_str(), port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
        } else if let Some(e) = &probe.exec {
            exec(e.command.as_deref().unwrap_or_default(), ctx).await
        } else if let Some(g) = &probe.grpc {
            let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
            TcpStream::connect((ctx.pod_ip.as_str(), port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {}:{port}: {e}", ctx.pod_ip))
        } else {
            Ok(())
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs())),
    }
}

/// Consecutive-result counting with the kubelet's thresholds.
#[derive(Debug)]
pub struct Verdict {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    current: Option<bool>,
}

impl Verdict {
    pub fn new(probe: &Probe) -> Self {
        Self {
            success_threshold: threshold(probe.success_threshold, 1),
            failure_threshold: threshold(probe.failure_threshold, 3),
            successes: 0,
            failures: 0,
            current: None,
        }
    }

    /// Records one result; returns the new verdict when it changes.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= self.success_threshold && self.current != Some(true) {
                self.current = Some(true);
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.failure_threshold && self.current != Some(false) {
                self.current = Some(false);
                return Some(false);
            }
        }
        None
    }
}

async fn probe_loop(
    kind: &'static str,
    probe: &Probe,
    set: &ProbeSet,
    ctx: &ExecContext,
    mut on_change: impl FnMut(bool, String) -> bool,
) {
    tokio::time::sleep(seconds(probe.initial_delay_seconds, 0).min(Duration::from_secs(3600)))
        .await;
    let period = seconds(probe.period_seconds, 10);
    let mut verdict = Verdict::new(probe);
    loop {
        let result = check(probe, &set.ports, ctx).await;
        if let Err(e) = &result {
            tracing::debug!(probe = kind, error = %e, "probe failed");
        }
        let message = result.as_ref().err().cloned().unwrap_or_default();
        if let Some(ok) = verdict.record(result.is_ok())
            && !on_change(ok, message)
        {
            return;
        }
        tokio::time::sleep(period).await;
    }
}

/// Drives the probes of one running container until aborted.
pub async fn run(set: ProbeSet, ctx: ExecContext, notify: impl Fn(Update) + Send + Sync) {
    if let Some(startup) = &set.startup {
        let mut passed = false;
        probe_loop("startup", startup, &set, &ctx, |ok, message| {
            if ok {
                passed = true;
            } else {
                notify(Update::Failed(format!("Startup probe failed: {message}")));
            }
            false
        })
        .await;
        if !passed {
            return;
        }
    }
    notify(Update::Started);
    let readiness = async {
        if let Some(p) = &set.readiness {
            probe_loop("readiness", p, &set, &ctx, |ok, _| {
                notify(Update::Ready(ok));
                true
            })
            .await;
        }
    };
    let liveness = async {
        if let Some(p) = &set.liveness {
            probe_loop("liveness", p, &set, &ctx, |ok, message| {
                if ok {
                    true
                } else {
                    notify(Update::Failed(format!("Liveness probe failed: {message}")));
                    false
                }
            })
            .await;
        }
    };
    tokio::join!(readiness, liveness);
    // Both loops ended (no probes, or liveness failed): stay alive until
    // aborted so the caller's handle semantics do not depend on it.
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_by_number_or_name() {
        let ports = vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: 9187,
            ..ContainerPort::default()
        }];
        assert_eq!(port_number(&IntOrString::Int(80), &ports), Ok(80));
        assert_eq!(
            port_number(&IntOrString::String("metrics".into()), &ports),
            Ok(9187)
        );
        assert_eq!(
            port_number(&IntOrString::String("8080".into()), &ports),
            Ok(8080)
        );
        assert!(port_number(&IntOrString::String("http".into()), &ports).is_err());
        assert!(port_number(&IntOrString::Int(70000), &ports).is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status_code("SSH-2.0-OpenSSH"), None);
    }

    #[test]
    fn verdict_needs_consecutive_results() {
        let probe = Probe {
            success_threshold: Some(2),
            failure_threshold: Some(2),
            ..Probe::default()
        };
        let mut v = Verdict::new(&probe);
        assert_eq!(v.record(true), None);
        assert_eq!(v.record(true), Some(true));
        assert_eq!(v.record(true), None);
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(true), None);
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(false), Some(false));
        assert_eq!(v.record(false), None);
    }

    #[tokio::test]
    async fn http_and_exec_probes_run_for_real() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let n = sock.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let reply = if req.starts_with("GET /healthz ") {
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n"
                };
                let _ = sock.write_all(reply.as_bytes()).await;
            }
        });
        let ctx = ExecContext {
            pod_ip: "127.0.0.1".into(),
            image_map: Arc::new(ImageMap::default()),
            image: "busybox".into(),
            env: {
                let mut e = Env::default();
                e.set("PATH", std::env::var("PATH").unwrap_or_default());
                e.set("WANT", "7");
                e
            },
            mounts: vec![],
            cwd: std::env::temp_dir(),
        };
        let http = |path: &str| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(i32::from(port)),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        };
        assert!(check(&http("/healthz"), &[], &ctx).await.is_ok());
        let err = check(&http("/other"), &[], &ctx).await.unwrap_err();
        assert!(err.contains("500"), "{err}");
        let exec = |cmd: &[&str]| Probe {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
            }),
            ..Probe::default()
        };
        assert!(
            check(&exec(&["sh", "-c", "test $WANT = 7"]), &[], &ctx)
                .await
                .is_ok()
        );
        assert!(
            check(&exec(&["sh", "-c", "test $(WANT) = 7"]), &[], &ctx)
                .await
                .is_ok()
        );
        assert!(check(&exec(&["false"]), &[], &ctx).await.is_err());
    }
}
