//! Scripted tests of a booted image, in the spirit of the NixOS test
//! driver: boot, wait for console text, run shell commands on the serial
//! console and check their status and output, reboot, copy files out.
//!
//! Commands run in the guest's shell between markers the console's own
//! echo of the typed line cannot produce (`PAK''B1` types as that, prints
//! as `PAKB1`), so prompts and echo never confuse the parser.
//!
//! Script format (`pak test IMAGE SCRIPT`), one step per line, `#` starts
//! a comment:
//!
//! ```text
//! wait [--timeout S] TEXT     wait for TEXT on the console
//! shell [--timeout S]         wait until the shell answers
//! succeed CMD                 run CMD; it must exit 0
//! fail CMD                    run CMD; it must exit non-zero
//! expect TEXT :: CMD          run CMD; it must exit 0 and print TEXT
//! reboot                      reboot the guest (cleanly) and wait for its shell
//! wait-shutdown [S]           wait for the machine to power off
//! copy-out GUEST HOST         copy a file out of the guest (sha256 checked)
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;

use crate::vm::qemu::{self, VmConfig};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);

struct Console {
    buf: Vec<u8>,
    closed: bool,
}

/// Machines running in this process. Emulated CPUs are slow; more guests
/// than host cores make each boot take several times as long, and a boot
/// on trial must be marked good before its watchdog fires. So a process
/// runs at most one machine per core at once; later ones wait to start.
static RUNNING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

struct Slot;

impl Slot {
    fn take() -> Slot {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (lock, cv) = &RUNNING;
        let mut n = lock.lock().expect("machine count");
        while *n >= cores {
            n = cv.wait(n).expect("machine count");
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (lock, cv) = &RUNNING;
        *lock.lock().expect("machine count") -= 1;
        cv.notify_one();
    }
}

pub struct Machine {
    _slot: Slot,
    child: Child,
    stdin: ChildStdin,
    console: Arc<(Mutex<Console>, Condvar)>,
    /// Bytes of the console already consumed by waits.
    cursor: usize,
    counter: u64,
    pub log: PathBuf,
}

impl Machine {
    /// Boots `cfg.image`; the full console goes to `log`.
    pub fn start(cfg: &VmConfig, log: &Path) -> Result<Machine> {
        Machine::start_with(cfg, &qemu::FirmwareMode::Standard, log)
    }

    /// Boots `cfg.image` on the firmware `fw`.
    pub fn start_with(cfg: &VmConfig, fw: &qemu::FirmwareMode, log: &Path) -> Result<Machine> {
        let slot = Slot::take();
        let (mut cmd, _) = qemu::command_with(cfg, fw)?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start QEMU")?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let console = Arc::new((
            Mutex::new(Console {
                buf: Vec::new(),
                closed: false,
            }),
            Condvar::new(),
        ));
        let mut logf = std::fs::File::create(log)
            .with_context(|| format!("cannot write {}", log.display()))?;
        let c2 = console.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            loop {
                let n = stdout.read(&mut b).unwrap_or(0);
                let (m, cv) = &*c2;
                let mut con = m.lock().expect("console lock");
                if n == 0 {
                    con.closed = true;
                    cv.notify_all();
                    return;
                }
                let _ = logf.write_all(&b[..n]);
                con.buf.extend_from_slice(&b[..n]);
                cv.notify_all();
            }
        });
        let c3 = console.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            if !s.is_empty() {
                let (m, cv) = &*c3;
                m.lock()
                    .expect("console lock")
                    .buf
                    .extend(format!("\n[qemu] {s}").as_bytes());
                cv.notify_all();
            }
        });
        Ok(Machine {
            _slot: slot,
            child,
            stdin,
            console,
            cursor: 0,
            counter: 0,
            log: log.to_path_buf(),
        })
    }

    /// The last lines of the console, for error messages.
    pub fn tail(&self, lines: usize) -> String {
        let con = self.console.0.lock().expect("console lock");
        let text = String::from_utf8_lossy(&con.buf).replace('\r', "");
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn failure(&self, what: &str) -> anyhow::Error {
        self.failed(Failure::Other, what)
    }

    fn failed(&self, kind: Failure, what: &str) -> anyhow::Error {
        ConsoleError {
            kind,
            what: what.to_string(),
            tail: self.tail(40),
            log: self.log.clone(),
        }
        .into()
    }

    /// Waits until the console shows `pred`'s match after the cursor;
    /// returns the match's (start, end) and moves the cursor past it.
    fn wait_match(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[u8]) -> Option<(usize, usize)>,
    ) -> Result<(usize, usize)> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.console;
        let mut con = m.lock().expect("console lock");
        loop {
            if let Some((s, e)) = pred(&con.buf[self.cursor..]) {
                let found = (self.cursor + s, self.cursor + e);
                self.cursor += e;
                return Ok(found);
            }
            if con.closed {
                drop(con);
                return Err(self.failed(
                    Failure::Stopped,
                    &format!("the machine stopped while waiting for {what}"),
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(con);
                return Err(self.failure(&format!(
                    "timed out after {}s waiting for {what}",
                    timeout.as_secs()
                )));
            }
            con = cv
                .wait_timeout(con, deadline - now)
                .expect("console lock")
                .0;
        }
    }

    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> Result<()> {
        let t = text.as_bytes().to_vec();
        self.wait_match(timeout, &format!("{text:?} on the console"), |b| {
            find(b, &t).map(|i| (i, i + t.len()))
        })?;
        Ok(())
    }

    pub fn send(&mut self, text: &str) -> Result<()> {
        self.stdin
            .write_all(text.as_bytes())
            .and_then(|_| self.stdin.flush())
            .context("the machine's console is closed")
    }

    /// Waits until the guest's shell runs commands.
    pub fn wait_for_shell(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.counter += 1;
            let n = self.counter;
            self.send(&format!("echo PAK''READY{n}\n"))?;
            let marker = format!("PAKREADY{n}").into_bytes();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.failure("timed out waiting for the guest's shell"));
            }
            match self.wait_match(left.min(Duration::from_secs(3)), "the shell", |b| {
                find(b, &marker).map(|i| (i, i + marker.len()))
            }) {
                Ok(_) => {
                    // Kernel messages share the serial console with the
                    // shell and would land inside commands' output (a link
                    // coming up, a module loading). Only emergencies (a
                    // panic) still print; a reboot restores the level.
                    self.execute("dmesg -n 1 2>/dev/null", left)?;
                    return Ok(());
                }
                Err(e) if ConsoleError::is(&e, Failure::Stopped) => return Err(e),
                Err(_) => continue,
            }
        }
    }

    /// Runs `cmd` in the guest shell; its exit status and output.
    pub fn execute(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
        self.counter += 1;
        let n = self.counter;
        self.send(&format!("echo PAK''B{n}; {cmd}; echo PAK''E{n}:$?\n"))?;
        let begin = format!("PAKB{n}\n").into_bytes();
        let begin_cr = format!("PAKB{n}\r\n").into_bytes();
        let (_, start) = self.wait_match(timeout, &format!("the start of `{cmd}`"), |b| {
            find(b, &begin_cr)
                .map(|i| (i, i + begin_cr.len()))
                .or_else(|| find(b, &begin).map(|i| (i, i + begin.len())))
        })?;
        let end = format!("PAKE{n}:").into_bytes();
        let (e_start, e_end) = self.wait_match(timeout, &format!("`{cmd}` to finish"), |b| {
            let i = find(b, &end)?;
            let digits = b[i + end.len()..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            let after = b.get(i + end.len() + digits)?;
            (digits > 0 && (*after == b'\r' || *after == b'\n'))
                .then_some((i, i + end.len() + digits))
        })?;
        let con = self.console.0.lock().expect("console lock");
        let output = String::from_utf8_lossy(&con.buf[start..e_start]).replace('\r', "");
        let status: i32 = String::from_utf8_lossy(&con.buf[e_start + end.len()..e_end])
            .parse()
            .unwrap_or(-1);
        Ok((status, output))
    }

    pub fn succeed(&mut self, cmd: &str) -> Result<String> {
        let (status, out) = self.execute(cmd, DEFAULT_TIMEOUT)?;
        if status != 0 {
            return Err(self.failure(&format!("`{cmd}` exited with {status}, output:\n{out}")));
        }
        Ok(out)
    }

    pub fn fail(&mut self, cmd: &str) -> Result<String> {
        let (status, out) = self.execute(cmd, DEFAULT_TIMEOUT)?;
        if status == 0 {
            return Err(self.failure(&format!(
                "`{cmd}` succeeded but should have failed, output:\n{out}"
            )));
        }
        Ok(out)
    }

    /// A clean reboot, then waits for the shell again.
    pub fn reboot(&mut self) -> Result<()> {
        self.send("sync; reboot\n")?;
        self.wait_for("pak-init: starting generation", DEFAULT_TIMEOUT)?;
        self.wait_for_shell(DEFAULT_TIMEOUT)
    }

    pub fn wait_for_shutdown(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.failure("the machine did not power off in time"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Copies a guest file to the host over the console, checking sha256.
    pub fn copy_from_vm(&mut self, guest: &str, host: &Path) -> Result<()> {
        let b64 = self.succeed(&format!("base64 {guest}"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.split_whitespace().collect::<String>())
            .with_context(|| format!("the guest's base64 of {guest} is garbled"))?;
        let want = self.succeed(&format!("sha256sum {guest}"))?;
        let got = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if !want.contains(&got) {
            return Err(self.failure(&format!(
                "{guest} arrived corrupted (sha256 {got}, guest says {want})"
            )));
        }
        std::fs::write(host, bytes).with_context(|| format!("cannot write {}", host.display()))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One step of a test script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Wait { text: String, timeout: Duration },
    Shell { timeout: Duration },
    Succeed(String),
    Fail(String),
    Expect { text: String, cmd: String },
    Reboot,
    WaitShutdown(Duration),
    CopyOut { guest: String, host: PathBuf },
}

fn timeout_arg(rest: &str) -> Result<(Duration, &str)> {
    match rest.strip_prefix("--timeout ") {
        Some(r) => {
            let (n, text) = r.trim_start().split_once(' ').unwrap_or((r.trim(), ""));
            Ok((
                Duration::from_secs(
                    n.parse()
                        .with_context(|| format!("--timeout {n} is not a number of seconds"))?,
                ),
                text.trim(),
            ))
        }
        None => Ok((DEFAULT_TIMEOUT, rest)),
    }
}

pub fn parse_script(text: &str) -> Result<Vec<(usize, Step)>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line
            .split_once(' ')
            .map(|(w, r)| (w, r.trim()))
            .unwrap_or((line, ""));
        let need = |r: &str| {
            if r.is_empty() {
                bail!("line {}: `{word}` needs an argument", i + 1)
            } else {
                Ok(r.to_string())
            }
        };
        let step = match word {
            "wait" => {
                let (timeout, text) = timeout_arg(rest)?;
                Step::Wait {
                    text: need(text)?,
                    timeout,
                }
            }
            "shell" => Step::Shell {
                timeout: timeout_arg(rest)?.0,
            },
            "succeed" => Step::Succeed(need(rest)?),
            "fail" => Step::Fail(need(rest)?),
            "expect" => {
                let (text, cmd) = rest
                    .split_once(" :: ")
                    .with_context(|| format!("line {}: expect TEXT :: CMD", i + 1))?;
                Step::Expect {
                    text: text.trim().to_string(),
                    cmd: cmd.trim().to_string(),
                }
            }
            "reboot" => Step::Reboot,
            "wait-shutdown" => Step::WaitShutdown(if rest.is_empty() {
                DEFAULT_TIMEOUT
            } else {
                Duration::from_secs(
                    rest.parse()
                        .with_context(|| format!("line {}: seconds expected", i + 1))?,
                )
            }),
            "copy-out" => {
                let (g, h) = rest
                    .split_once(' ')
                    .with_context(|| format!("line {}: copy-out GUEST HOST", i + 1))?;
                Step::CopyOut {
                    guest: g.to_string(),
                    host: PathBuf::from(h.trim()),
                }
            }
            other => bail!(
                "line {}: unknown step {other:?} (wait, shell, succeed, fail, expect, reboot, wait-shutdown, copy-out)",
                i + 1
            ),
        };
        out.push((i + 1, step));
    }
    Ok(out)
}

/// Runs a script against a fresh machine; prints a line per step.
pub fn run_script(cfg: &VmConfig, script: &[(usize, Step)], log: &Path) -> Result<()> {
    let mut m = Machine::start(cfg, log)?;
    for (line, step) in script {
        let t = Instant::now();
        let r = match step {
            Step::Wait { text, timeout } => m.wait_for(text, *timeout),
            Step::Shell { timeout } => m.wait_for_shell(*timeout),
            Step::Succeed(c) => m.succeed(c).map(|_| ()),
            Step::Fail(c) => m.fail(c).map(|_| ()),
            Step::Expect { text, cmd } => m.succeed(cmd).and_then(|out| {
                if out.contains(text.as_str()) {
                    Ok(())
                } else {
                    Err(m.failure(&format!("`{cmd}` printed no {text:?}; it printed:\n{out}")))
                }
            }),
            Step::Reboot => m.reboot(),
            Step::WaitShutdown(d) => m.wait_for_shutdown(*d),
            Step::CopyOut { guest, host } => m.copy_from_vm(guest, host),
        };
        match r {
            Ok(()) => println!(
                "ok   line {line}: {step:?} ({:.1}s)",
                t.elapsed().as_secs_f64()
            ),
            Err(e) => return Err(e.context(format!("line {line}: {step:?} failed"))),
        }
    }
    Ok(())
}

/// Why waiting on the console failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// QEMU exited: waiting longer cannot help.
    Stopped,
    Other,
}

/// A failure on the console, with its last lines and where the whole log is.
#[derive(Debug, thiserror::Error)]
#[error("{what}\n--- last console lines ---\n{tail}\n--- full console log: {} ---", log.display())]
pub struct ConsoleError {
    pub kind: Failure,
    what: String,
    tail: String,
    log: PathBuf,
}

impl ConsoleError {
    /// Whether `err` is a console failure of this kind.
    pub fn is(err: &anyhow::Error, kind: Failure) -> bool {
        err.downcast_ref::<ConsoleError>()
            .is_some_and(|e| e.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_parse() {
        let s = parse_script("# boot\nwait --timeout 60 pak-init: switching\nshell\nexpect pak.slot=a :: cat /proc/cmdline\nfail touch /usr/x\ncopy-out /etc/hostname out.txt\nwait-shutdown 30\n").unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(
            s[0].1,
            Step::Wait {
                text: "pak-init: switching".into(),
                timeout: Duration::from_secs(60)
            }
        );
        assert_eq!(
            s[2].1,
            Step::Expect {
                text: "pak.slot=a".into(),
                cmd: "cat /proc/cmdline".into()
            }
        );
        assert!(
            parse_script("explode now")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        assert!(parse_script("expect nothing").is_err());
    }
}
