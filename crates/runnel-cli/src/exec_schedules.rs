//! Scheduled exec tasks: the `--scheduled NAME`, `--cron NAME=EXPR`,
//! `--cron-timezone NAME=TZ` and `--cron-window NAME=WINDOW` flags of `runnel worker`
//! (and `runnel dev`), checked against the `--task`s given and turned into the
//! registration's `scheduled` / `schedule` of each task.
//!
//! - `--scheduled NAME`: the task is a scheduled task, so schedules created through the
//!   API (`runnel schedules create`, the SDK's `schedules.create`) may trigger it.
//! - `--cron NAME=EXPR`: the task declares a cron schedule (implies `--scheduled`); the
//!   server keeps one DECLARATIVE schedule of the task in sync with each registration, so
//!   a worker started without the flag removes it.
//!
//! Every setting is checked here, before the worker registers, with the server's own
//! rules (`runnel_core::schedule`), so a typo stops the command with the flag's name
//! instead of a refused registration.

use std::collections::{BTreeMap, BTreeSet};

use runnel_core::schedule::{Cron, Timezone, Window};
use runnel_core::worker::{DeclaredSchedule, TaskDefinition};

/// Splits a `NAME=VALUE` flag value at its first `=`; `what` names the value in the
/// error (`EXPR`, `TZ`, `WINDOW`).
pub fn parse_named(spec: &str, what: &str) -> Result<(String, String), String> {
    match spec.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.trim().is_empty() => {
            Ok((name.to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected NAME={what}, got {spec:?}")),
    }
}

/// The scheduling of the tasks one worker serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskSchedules {
    scheduled: BTreeSet<String>,
    declared: BTreeMap<String, DeclaredSchedule>,
}

impl TaskSchedules {
    /// Checks the flags against `tasks` (the served task names): every NAME must be a
    /// served task, at most one `--cron` per task, a timezone or window only for a task
    /// with a `--cron`, and each value valid.
    pub fn from_flags<'a>(
        tasks: impl IntoIterator<Item = &'a str>,
        scheduled: &[String],
        crons: &[(String, String)],
        timezones: &[(String, String)],
        windows: &[(String, String)],
    ) -> Result<TaskSchedules, String> {
        let served: BTreeSet<&str> = tasks.into_iter().collect();
        let known = |flag: &str, name: &str| {
            if served.contains(name) {
                Ok(())
            } else {
                Err(format!(
                    "{flag} {name}: no --task {name}=COMMAND serves a task of that name"
                ))
            }
        };
        let mut out = TaskSchedules::default();
        for name in scheduled {
            known("--scheduled", name)?;
            out.scheduled.insert(name.clone());
        }
        for (name, expression) in crons {
            known("--cron", name)?;
            let cron = Cron::parse(expression).map_err(|e| format!("--cron {name}: {e}"))?;
            let declared = DeclaredSchedule {
                cron: cron.expression().to_owned(),
                timezone: None,
                window: None,
                environments: None,
            };
            if out.declared.insert(name.clone(), declared).is_some() {
                return Err(format!(
                    "--cron {name}: given more than once (a task declares one schedule)"
                ));
            }
        }
        for (name, timezone) in timezones {
            known("--cron-timezone", name)?;
            Timezone::parse(timezone).map_err(|e| format!("--cron-timezone {name}: {e}"))?;
            let declared = out.declared.get_mut(name).ok_or_else(|| {
                format!("--cron-timezone {name}: the task has no --cron {name}=EXPR")
            })?;
            if declared.timezone.replace(timezone.clone()).is_some() {
                return Err(format!("--cron-timezone {name}: given more than once"));
            }
        }
        for (name, window) in windows {
            known("--cron-window", name)?;
            Window::parse(window).map_err(|e| format!("--cron-window {name}: {e}"))?;
            let declared = out.declared.get_mut(name).ok_or_else(|| {
                format!("--cron-window {name}: the task has no --cron {name}=EXPR")
            })?;
            if declared.window.replace(window.clone()).is_some() {
                return Err(format!("--cron-window {name}: given more than once"));
            }
        }
        Ok(out)
    }

    /// Marks `task` scheduled and gives it its declared schedule, as the flags say.
    pub fn apply(&self, task: &mut TaskDefinition) {
        task.scheduled = self.scheduled.contains(&task.id) || self.declared.contains_key(&task.id);
        task.schedule = self.declared.get(&task.id).cloned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    fn definitions(schedules: &TaskSchedules, names: &[&str]) -> Vec<TaskDefinition> {
        names
            .iter()
            .map(|name| {
                let mut task = TaskDefinition::new(*name);
                schedules.apply(&mut task);
                task
            })
            .collect()
    }

    #[test]
    fn flags_become_each_tasks_scheduling() {
        let schedules = TaskSchedules::from_flags(
            ["report", "cleanup", "plain"],
            &["report".to_owned()],
            &named(&[("cleanup", "0   3 * * *")]),
            &named(&[("cleanup", "Europe/Paris")]),
            &named(&[("cleanup", "30m")]),
        )
        .unwrap();
        let tasks = definitions(&schedules, &["report", "cleanup", "plain"]);
        assert_eq!(
            (tasks[0].scheduled, &tasks[0].schedule),
            (true, &None),
            "--scheduled only"
        );
        assert!(tasks[1].scheduled, "--cron implies --scheduled");
        assert_eq!(
            tasks[1].schedule,
            Some(DeclaredSchedule {
                cron: "0 3 * * *".to_owned(),
                timezone: Some("Europe/Paris".to_owned()),
                window: Some("30m".to_owned()),
                environments: None,
            })
        );
        assert_eq!((tasks[2].scheduled, &tasks[2].schedule), (false, &None));
    }

    /// `--scheduled`s, `--cron`s, `--cron-timezone`s and the error's start.
    type Case = (
        Vec<String>,
        Vec<(String, String)>,
        Vec<(String, String)>,
        &'static str,
    );

    #[test]
    fn a_flag_naming_no_task_or_a_bad_value_is_refused() {
        let none: &[(String, String)] = &[];
        let cases: Vec<Case> = vec![
            (
                vec!["typo".into()],
                vec![],
                vec![],
                "--scheduled typo: no --task typo=COMMAND serves a task of that name",
            ),
            (
                vec![],
                named(&[("typo", "* * * * *")]),
                vec![],
                "--cron typo: no --task typo=COMMAND",
            ),
            (
                vec![],
                named(&[("a", "* * * *")]),
                vec![],
                "--cron a: Invalid cron expression: ",
            ),
            (
                vec![],
                named(&[("a", "* * * * *"), ("a", "0 * * * *")]),
                vec![],
                "--cron a: given more than once",
            ),
            (
                vec![],
                vec![],
                named(&[("a", "UTC")]),
                "--cron-timezone a: the task has no --cron a=EXPR",
            ),
            (
                vec![],
                named(&[("a", "* * * * *")]),
                named(&[("a", "Mars/Olympus")]),
                "--cron-timezone a: Invalid IANA timezone: 'Mars/Olympus'",
            ),
        ];
        for (scheduled, crons, timezones, message) in cases {
            let error =
                TaskSchedules::from_flags(["a"], &scheduled, &crons, &timezones, none).unwrap_err();
            assert!(
                error.starts_with(message),
                "{error:?} starts with {message:?}"
            );
        }
        let error = TaskSchedules::from_flags(
            ["a"],
            &[],
            &named(&[("a", "* * * * *")]),
            none,
            &named(&[("a", "2d")]),
        )
        .unwrap_err();
        assert!(error.starts_with("--cron-window a: window: "), "{error}");
    }

    #[test]
    fn named_values_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_named("a=*/5 * * * *", "EXPR"),
            Ok(("a".to_owned(), "*/5 * * * *".to_owned()))
        );
        for bad in ["a", "=x", "a=", "a=  "] {
            assert_eq!(
                parse_named(bad, "TZ"),
                Err(format!("expected NAME=TZ, got {bad:?}"))
            );
        }
    }
}
