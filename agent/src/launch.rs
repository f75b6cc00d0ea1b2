//! Turning a [`LaunchSpec`] into a command line: placeholder substitution, shell-like
//! argument splitting, and the child's environment, working directory and log file.

use std::fs::OpenOptions;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use fleetform_api::agent::LaunchSpec;
use fleetform_api::sdk::{ENV_PORT, ENV_PROCESS_ID, ENV_SDK_ADDR};

use crate::{Error, Result};

/// Environment variables the agent never passes on to game servers: they carry credentials.
const SECRET_ENV: &[&str] = &["FLEETFORM_AGENT_TOKEN", "FLEETFORM_TOKEN"];

/// The values placeholders in `launch_parameters` stand for.
#[derive(Debug, Clone, Copy)]
pub struct LaunchVars<'a> {
    /// `{port}`: the game port.
    pub port: u16,
    /// `{process_id}`.
    pub process_id: &'a str,
    /// `{sdk_addr}`: the SDK's base URL, e.g. `http://127.0.0.1:7501`.
    pub sdk_addr: &'a str,
}

/// Splits `launch_parameters` into arguments like a POSIX shell would for plain words:
/// whitespace separates, `'…'` is literal, `"…"` allows `\"` and `\\`, and a backslash outside
/// quotes escapes the next character. No variables, globs or other expansions.
pub fn split_args(text: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut current = String::new();
    // Whether `current` is an argument even if empty (`''`).
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        match ch {
            c if c.is_whitespace() => {
                if in_word {
                    args.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => current.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => current.push(c),
                            Some(c) => {
                                current.push('\\');
                                current.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => current.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => current.push(c),
                    None => return Err("trailing backslash".into()),
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        args.push(current);
    }
    Ok(args)
}

/// Replaces `{port}`, `{process_id}` and `{sdk_addr}` in one argument.
pub fn substitute(arg: &str, vars: &LaunchVars<'_>) -> String {
    arg.replace("{port}", &vars.port.to_string())
        .replace("{process_id}", vars.process_id)
        .replace("{sdk_addr}", vars.sdk_addr)
}

/// The arguments of a process. Placeholders are substituted in each argument *after*
/// splitting, so a substituted value is never split or unquoted.
pub fn launch_args(parameters: Option<&str>, vars: &LaunchVars<'_>) -> Result<Vec<String>> {
    let args = split_args(parameters.unwrap_or(""))
        .map_err(|reason| Error::Launch(format!("launch_parameters: {reason}")))?;
    Ok(args.iter().map(|arg| substitute(arg, vars)).collect())
}

/// The executable: `launch_path` inside the build root. It must stay inside the root.
pub fn executable(root: &Path, launch_path: &str) -> Result<PathBuf> {
    let relative = Path::new(launch_path);
    let escapes = relative
        .components()
        .any(|part| !matches!(part, Component::Normal(_) | Component::CurDir));
    if launch_path.is_empty() || escapes {
        return Err(Error::Launch(format!(
            "launch_path {launch_path:?} must be a relative path inside the build"
        )));
    }
    Ok(root.join(relative))
}

/// The command that starts one game-server process: cwd = build root, `FLEETFORM_*`
/// environment, stdout and stderr appended to `log_path`, stdin closed, SIGKILL when the
/// agent's thread that spawned it dies (Linux `PR_SET_PDEATHSIG`), so no game server outlives
/// its agent, and core dumps allowed: `RLIMIT_CORE` raised to its hard limit (unlimited
/// unless the agent itself was started with a lower one), so a crash can leave a core file
/// (see [`crate::crash`] for where the host puts it).
pub fn command(
    root: &Path,
    spec: &LaunchSpec,
    vars: &LaunchVars<'_>,
    log_path: &Path,
) -> Result<tokio::process::Command> {
    let program = executable(root, &spec.launch_path)?;
    let args = launch_args(spec.launch_parameters.as_deref(), vars)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|source| Error::Io {
            context: format!("opening {}", log_path.display()),
            source,
        })?;
    let log_err = log.try_clone().map_err(|source| Error::Io {
        context: format!("opening {}", log_path.display()),
        source,
    })?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(root)
        .env(ENV_SDK_ADDR, vars.sdk_addr)
        .env(ENV_PROCESS_ID, vars.process_id)
        .env(ENV_PORT, vars.port.to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(false);
    for name in SECRET_ENV {
        command.env_remove(name);
    }
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs between fork and exec and only makes the async-signal-safe
    // system calls `prctl`, `getrlimit` and `setrlimit` on memory it owns.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Best effort: a game server that cannot dump core still runs.
            let mut core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_CORE, &mut core) == 0 {
                core.rlim_cur = core.rlim_max;
                libc::setrlimit(libc::RLIMIT_CORE, &core);
            }
            Ok(())
        });
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_args_table() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("empty", "", &[]),
            ("blank", "  \t ", &[]),
            ("words", "--port 7000  -v", &["--port", "7000", "-v"]),
            (
                "single quotes keep spaces",
                "--name 'my server'",
                &["--name", "my server"],
            ),
            (
                "double quotes",
                r#"--motd "hi \"you\" \\ \n""#,
                &["--motd", r#"hi "you" \ \n"#],
            ),
            ("quotes join a word", r#"--x=a'b c'"d""#, &["--x=ab cd"]),
            ("empty quoted argument", "a '' b", &["a", "", "b"]),
            ("escaped space", r"a\ b c", &["a b", "c"]),
            (
                "placeholders pass through",
                "--port {port}",
                &["--port", "{port}"],
            ),
        ];
        for (name, text, expected) in cases {
            let args = split_args(text).unwrap_or_else(|err| panic!("case {name}: {err}"));
            assert_eq!(args, *expected, "case {name}");
        }
    }

    #[test]
    fn split_args_rejects_unbalanced_quotes() {
        for text in ["'open", "\"open", "trailing\\", "\"esc\\"] {
            assert!(split_args(text).is_err(), "{text:?} should fail");
        }
    }

    #[test]
    fn launch_args_substitute_after_splitting() {
        let vars = LaunchVars {
            port: 7001,
            process_id: "proc-1",
            sdk_addr: "http://127.0.0.1:9000",
        };
        let args = launch_args(
            Some("--port {port} --id={process_id} '--sdk {sdk_addr}' {unknown}"),
            &vars,
        )
        .unwrap();
        assert_eq!(
            args,
            [
                "--port",
                "7001",
                "--id=proc-1",
                "--sdk http://127.0.0.1:9000",
                "{unknown}"
            ]
        );
        assert!(launch_args(None, &vars).unwrap().is_empty());
    }

    #[test]
    fn executable_stays_inside_the_build() {
        let root = Path::new("/builds/b1");
        assert_eq!(
            executable(root, "bin/server").unwrap(),
            Path::new("/builds/b1/bin/server")
        );
        assert_eq!(
            executable(root, "./server").unwrap(),
            Path::new("/builds/b1/./server")
        );
        for bad in ["", "/usr/bin/server", "../server", "bin/../../x"] {
            assert!(executable(root, bad).is_err(), "{bad:?} should fail");
        }
    }
}
