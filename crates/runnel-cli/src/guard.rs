//! `runnel task-guard -- PROGRAM ARGS…`: the leader of an exec attempt's process group,
//! there so the task's processes never outlive the worker that started them.
//!
//! A worker SIGKILLed (or crashed) cannot kill its attempts' groups, and the commands it
//! started would be re-parented to init and keep running while the server rescues their
//! runs and runs them again elsewhere: two copies of one run at once. Setting the
//! parent-death signal on the command itself needs code between fork and exec
//! (`pre_exec`, which is unsafe), so the worker starts its own binary as this guard
//! instead, and the guard sets it on itself:
//!
//! ```text
//!   runnel worker ──spawn (own group)──► runnel task-guard ──spawn (same group)──► sh -c CMD
//!        │  dies                                │ SIGTERM (parent-death signal)        │
//!        └──────────────────────────────────────► killpg(group, SIGKILL) ──────────────┘
//! ```
//!
//! 1. It installs its SIGTERM handler, then asks the kernel for SIGTERM when its parent
//!    dies (`PR_SET_PDEATHSIG`), then checks that its parent is still the worker named in
//!    [`PARENT_ENV`]: a worker that died before the request was made is seen there.
//! 2. It spawns the command in its own group, with its stdin, stdout and stderr (the
//!    worker's pipes), and waits for it.
//! 3. On SIGTERM with the worker gone, it SIGKILLs the whole group, itself included. A
//!    SIGTERM while the worker lives (the task signalling its own group) is left to the
//!    command.
//! 4. When the command ends, the guard ends the same way: the same exit code, or killed
//!    by the same signal (re-raised with its default action, without a core dump), so the
//!    worker's outcome mapping (exec.rs) sees what it would have seen without the guard.
//!
//! The kernel sends the parent-death signal each time the guard is re-parented: when the
//! *thread* that spawned it exits while the worker lives (re-parented to another of the
//! worker's threads: `getppid()` unchanged, so the signal is ignored) and when the worker
//! is gone (re-parented to init or a subreaper: acted on). The worker spawns from its
//! runtime's worker threads, which live as long as it does, so the first case is rare.
//! Linux only: elsewhere the worker starts commands directly, and a SIGKILLed worker
//! leaves them running.

use std::ffi::OsString;

/// The hidden subcommand that runs the guard.
pub const SUBCOMMAND: &str = "task-guard";
/// The worker's process id, as the guard must find it as its parent.
pub const PARENT_ENV: &str = "RUNNEL_TASK_GUARD_PARENT";
/// The guard's exit code when it cannot start the command (as `sh` for a missing one).
const CANNOT_RUN: i32 = 127;

/// Runs `command` under the guard and ends this process as the command ended.
pub fn run(command: &[OsString]) -> ! {
    match imp::guard(command) {
        Ok(never) => match never {},
        Err(error) => {
            eprintln!("runnel task-guard: {error}");
            std::process::exit(CANNOT_RUN)
        }
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::convert::Infallible;
    use std::ffi::OsString;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    use nix::sys::prctl;
    use nix::sys::resource::{setrlimit, Resource};
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::{getpgrp, getpid, getppid, Pid};
    use signal_hook::consts::SIGTERM;
    use signal_hook::iterator::Signals;

    use super::PARENT_ENV;

    pub(super) fn guard(command: &[OsString]) -> Result<Infallible, String> {
        let Some((program, args)) = command.split_first() else {
            return Err("no command to run".to_owned());
        };
        let parent = std::env::var(PARENT_ENV)
            .ok()
            .and_then(|pid| pid.parse::<i32>().ok())
            .map(Pid::from_raw)
            .ok_or_else(|| format!("{PARENT_ENV} does not hold the worker's process id"))?;
        // The handler first: the parent-death signal must never meet the default action,
        // which would end the guard and leave the command running.
        let mut signals =
            Signals::new([SIGTERM]).map_err(|e| format!("installing the SIGTERM handler: {e}"))?;
        prctl::set_pdeathsig(Signal::SIGTERM)
            .map_err(|e| format!("asking for the parent-death signal: {e}"))?;
        if getppid() != parent {
            // The worker died before the request was made: nobody waits for this attempt.
            std::process::exit(super::CANNOT_RUN);
        }
        let mut child = Command::new(program)
            .args(args)
            .env_remove(PARENT_ENV)
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", program.to_string_lossy()))?;
        let child_pid = i32::try_from(child.id()).ok().map(Pid::from_raw);
        std::thread::spawn(move || {
            for _ in signals.forever() {
                if getppid() != parent {
                    kill_everything(child_pid);
                }
            }
        });
        let status = child
            .wait()
            .map_err(|e| format!("could not wait for the command: {e}"))?;
        if let Some(code) = status.code() {
            std::process::exit(code);
        }
        let signal = status.signal().unwrap_or(Signal::SIGKILL as i32);
        // The re-raised signal may be one that dumps core: the guard's core is nobody's.
        let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
        let _ = signal_hook::low_level::emulate_default_handler(signal);
        std::process::exit(128 + signal)
    }

    /// The worker is gone: SIGKILLs the guard's group when it leads one (the worker made
    /// it so), itself included; else the command alone, never a group it does not own.
    fn kill_everything(child: Option<Pid>) -> ! {
        if getpgrp() == getpid() {
            let _ = killpg(getpgrp(), Signal::SIGKILL);
        } else if let Some(child) = child {
            let _ = kill(child, Signal::SIGKILL);
        }
        std::process::exit(super::CANNOT_RUN)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::convert::Infallible;
    use std::ffi::OsString;

    pub(super) fn guard(_command: &[OsString]) -> Result<Infallible, String> {
        Err("the task guard needs Linux (PR_SET_PDEATHSIG)".to_owned())
    }
}
