//! What the agent captures when a game server crashes: the last lines of its output and
//! the core file it left, both reported in its [`ProcessExit`](fleetform_api::agent::ProcessExit).
//!
//! The rules are pure functions with table tests ([`output_tail`], [`core_path`]); the
//! two I/O functions ([`read_output_tail`], [`find_core`]) apply them to the process's log
//! file and to the file system.
//!
//! Core files: game servers start with `RLIMIT_CORE` raised to its hard limit (see
//! [`crate::launch::command`]); where the kernel writes a core is the host's
//! `/proc/sys/kernel/core_pattern`, which the agent reads but never changes:
//! - a pattern starting with `|` pipes the core to a program (systemd-coredump, apport,
//!   …): no file is written where the agent can see it, and `core_dump` is `None` (ask
//!   that program, e.g. `coredumpctl list`);
//! - otherwise the pattern is a path, relative to the process's working directory (the
//!   build's root), e.g. the kernel default `core`, with `.PID` appended when
//!   `core_uses_pid` is 1. The agent expands it for the dead process and reports the file
//!   if it exists and is newer than the process's start. A core in the working directory
//!   is moved next to the process's log (`logs/<process_id>.core`) so the next crash does
//!   not overwrite it (the kernel replaces an existing `core`) and the build directory
//!   does not fill up; if that rename fails (another file system), it stays where it is.
//!   A pattern with a specifier the agent cannot know after the fact (`%t`, `%i`, …)
//!   gives `None`.
//!
//! Limits, on purpose: with the plain `core` pattern, two processes sharing a working
//! directory (several processes of a machine, or machines running a `file://` build in
//! place) that dump core at the same moment cannot be told apart, and whichever exit the
//! agent handles first claims the file. Only the newest [`KEPT_CORES`] moved cores are
//! kept, so a crash-looping build cannot fill the disk; older crash records may name a
//! core that is gone.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fleetform_api::agent::{OUTPUT_LINE_MAX_BYTES, OUTPUT_TAIL_LINES};

/// How much of the end of a log file is read for its tail: 20 lines of 500 bytes fit
/// many times over, and a process that wrote megabytes costs no more to look at.
pub const TAIL_READ_BYTES: u64 = 64 * 1024;

/// How many core files the agent keeps next to its logs; older ones are deleted.
pub const KEPT_CORES: usize = 5;

/// A core file may look a little older than the process's start (file-system timestamps
/// are coarse, clocks step); one older than this is a previous crash's.
const CORE_MTIME_SLACK: Duration = Duration::from_secs(2);

/// The last [`OUTPUT_TAIL_LINES`] lines of `bytes`, oldest first, each cut to at most
/// [`OUTPUT_LINE_MAX_BYTES`] bytes (at a character boundary; invalid UTF-8 becomes U+FFFD).
/// `starts_mid_line`: `bytes` is the end of a longer file and its first line is a fragment,
/// dropped unless it is all there is. A final newline ends the last line; `\r\n` counts as
/// one line end.
pub fn output_tail(bytes: &[u8], starts_mid_line: bool) -> Vec<String> {
    let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if text.is_empty() {
        return Vec::new();
    }
    let mut lines: Vec<&[u8]> = text.split(|byte| *byte == b'\n').collect();
    if starts_mid_line && lines.len() > 1 {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(OUTPUT_TAIL_LINES);
    lines[skip..].iter().map(|line| cap_line(line)).collect()
}

/// One line as text of at most [`OUTPUT_LINE_MAX_BYTES`] bytes.
fn cap_line(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Decode a little more than the cap, so a multi-byte character cut by it is not
    // turned into a replacement character before it is cut at a boundary below.
    let window = &line[..line.len().min(OUTPUT_LINE_MAX_BYTES + 4)];
    let mut text = String::from_utf8_lossy(window).into_owned();
    let mut end = text.len().min(OUTPUT_LINE_MAX_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// The tail of the log file at `path` (see [`output_tail`]); empty when it cannot be read.
pub fn read_output_tail(path: &Path) -> Vec<String> {
    let read = || -> std::io::Result<Vec<String>> {
        let mut file = File::open(path)?;
        let length = file.metadata()?.len();
        // One byte before the window tells whether it starts at a line's start.
        let start = length.saturating_sub(TAIL_READ_BYTES + 1);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::with_capacity((length - start) as usize);
        file.take(TAIL_READ_BYTES + 1).read_to_end(&mut bytes)?;
        if start == 0 && length <= TAIL_READ_BYTES {
            return Ok(output_tail(&bytes, false));
        }
        let (before, window) = bytes.split_first().unwrap_or((&b'\n', &[]));
        Ok(output_tail(window, *before != b'\n'))
    };
    read().unwrap_or_default()
}

/// What the kernel knows about a dying process that a core pattern may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadProcess<'a> {
    pub pid: u32,
    /// The signal that killed it.
    pub signal: i32,
    /// Its executable's file name (the kernel's `comm`: at most 15 bytes are used).
    pub executable: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub hostname: &'a str,
    /// Its working directory: where a relative pattern points.
    pub cwd: &'a Path,
}

/// Where a core file of `process` is, by the host's core pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreLocation {
    /// The kernel pipes cores to a program: no file for the agent.
    Piped,
    /// The file the kernel writes, if it writes one.
    File(PathBuf),
    /// The pattern names something the agent cannot know (e.g. `%t`, the dump's time).
    Unknown,
}

/// Where the kernel writes the core of `process` given `/proc/sys/kernel/core_pattern`
/// (`pattern`) and `/proc/sys/kernel/core_uses_pid` (`uses_pid`), per core(5):
/// `%%`, `%p`/`%P` (pid), `%s` (signal), `%e` (executable name), `%u`, `%g`, `%h` are
/// expanded; any other specifier makes the name unknowable. With `uses_pid` and no `%p`,
/// `.PID` is appended. A relative result is relative to the process's working directory;
/// an empty pattern is `core`.
pub fn core_path(pattern: &str, uses_pid: bool, process: &DeadProcess<'_>) -> CoreLocation {
    let pattern = pattern.trim_end_matches('\n');
    if pattern.starts_with('|') {
        return CoreLocation::Piped;
    }
    let pattern = if pattern.is_empty() { "core" } else { pattern };
    let mut name = String::new();
    let mut has_pid = false;
    let mut chars = pattern.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            name.push(ch);
            continue;
        }
        match chars.next() {
            Some('%') => name.push('%'),
            Some('p' | 'P') => {
                has_pid = true;
                name.push_str(&process.pid.to_string());
            }
            Some('s') => name.push_str(&process.signal.to_string()),
            Some('e') => name.push_str(comm(process.executable)),
            Some('u') => name.push_str(&process.uid.to_string()),
            Some('g') => name.push_str(&process.gid.to_string()),
            Some('h') => name.push_str(process.hostname),
            // A lone `%` at the end is dropped, as the kernel does.
            None => {}
            Some(_) => return CoreLocation::Unknown,
        }
    }
    if uses_pid && !has_pid {
        name.push_str(&format!(".{}", process.pid));
    }
    CoreLocation::File(process.cwd.join(name))
}

/// The first 15 bytes of an executable's name, cut at a character boundary, as the
/// kernel keeps it (`TASK_COMM_LEN` is 16 with the terminating NUL).
fn comm(executable: &str) -> &str {
    let mut end = executable.len().min(15);
    while !executable.is_char_boundary(end) {
        end -= 1;
    }
    &executable[..end]
}

/// The core file a crashed process wrote, if the agent can find it: expands the host's
/// core pattern for it ([`core_path`]), checks that the file is a regular file no older
/// than the process's start, and moves a core left in the working directory to `keep_as`.
/// Only call it for an exit whose status says a core was dumped.
pub fn find_core(
    process: &DeadProcess<'_>,
    started_at: SystemTime,
    keep_as: &Path,
) -> Option<PathBuf> {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").ok()?;
    let uses_pid = std::fs::read_to_string("/proc/sys/kernel/core_uses_pid")
        .is_ok_and(|text| text.trim() != "0");
    find_core_by(&pattern, uses_pid, process, started_at, keep_as)
}

/// [`find_core`] with the host's core settings given.
pub fn find_core_by(
    pattern: &str,
    uses_pid: bool,
    process: &DeadProcess<'_>,
    started_at: SystemTime,
    keep_as: &Path,
) -> Option<PathBuf> {
    let CoreLocation::File(path) = core_path(pattern, uses_pid, process) else {
        return None;
    };
    let metadata = std::fs::symlink_metadata(&path).ok()?;
    let fresh = metadata
        .modified()
        .is_ok_and(|modified| modified + CORE_MTIME_SLACK >= started_at);
    if !metadata.is_file() || !fresh {
        return None;
    }
    if path.parent() == Some(process.cwd) && std::fs::rename(&path, keep_as).is_ok() {
        if let Some(dir) = keep_as.parent() {
            prune_cores(dir);
        }
        return Some(keep_as.to_path_buf());
    }
    Some(path)
}

/// The core files to delete so that at most `keep` remain: all but the `keep` newest.
pub fn cores_beyond(cores: &[(PathBuf, SystemTime)], keep: usize) -> Vec<PathBuf> {
    let mut newest_first: Vec<&(PathBuf, SystemTime)> = cores.iter().collect();
    newest_first.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    newest_first
        .into_iter()
        .skip(keep)
        .map(|(path, _)| path.clone())
        .collect()
}

/// Deletes the `*.core` files of `dir` beyond the newest [`KEPT_CORES`].
fn prune_cores(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let cores: Vec<(PathBuf, SystemTime)> = entries
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "core"))
        .filter_map(|entry| Some((entry.path(), entry.metadata().ok()?.modified().ok()?)))
        .collect();
    for path in cores_beyond(&cores, KEPT_CORES) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(count: usize) -> String {
        (1..=count).map(|n| format!("line {n}\n")).collect()
    }

    #[test]
    fn output_tail_table() {
        let long = "x".repeat(OUTPUT_LINE_MAX_BYTES + 100);
        // 'é' is two bytes: 499 ASCII bytes then 'é' puts its second byte past the cap.
        let straddling = format!("{}é{}", "a".repeat(OUTPUT_LINE_MAX_BYTES - 1), "tail");
        let cases: Vec<(&str, Vec<u8>, bool, Vec<String>)> = vec![
            ("empty", vec![], false, vec![]),
            ("one line", b"hello\n".to_vec(), false, vec!["hello".into()]),
            (
                "no final newline",
                b"a\nb".to_vec(),
                false,
                vec!["a".into(), "b".into()],
            ),
            (
                "blank lines are output too",
                b"a\n\nb\n".to_vec(),
                false,
                vec!["a".into(), "".into(), "b".into()],
            ),
            (
                "crlf",
                b"a\r\nb\r\n".to_vec(),
                false,
                vec!["a".into(), "b".into()],
            ),
            (
                "last 20 of 25",
                lines(25).into_bytes(),
                false,
                (6..=25).map(|n| format!("line {n}")).collect(),
            ),
            (
                "a fragment at the window's start is dropped",
                b"ment\nwhole\n".to_vec(),
                true,
                vec!["whole".into()],
            ),
            (
                "a fragment that is all there is is kept",
                b"ment".to_vec(),
                true,
                vec!["ment".into()],
            ),
            (
                "a long line is cut to the cap",
                format!("{long}\nshort\n").into_bytes(),
                false,
                vec!["x".repeat(OUTPUT_LINE_MAX_BYTES), "short".into()],
            ),
            (
                "a cut never splits a character",
                straddling.into_bytes(),
                false,
                vec!["a".repeat(OUTPUT_LINE_MAX_BYTES - 1)],
            ),
            (
                "invalid utf-8 is replaced",
                b"ok \xff\n".to_vec(),
                false,
                vec!["ok \u{fffd}".into()],
            ),
        ];
        for (name, bytes, starts_mid_line, expected) in cases {
            let tail = output_tail(&bytes, starts_mid_line);
            assert_eq!(tail, expected, "case {name}");
            assert!(tail.len() <= OUTPUT_TAIL_LINES, "case {name}");
            assert!(
                tail.iter().all(|line| line.len() <= OUTPUT_LINE_MAX_BYTES),
                "case {name}"
            );
        }
    }

    #[test]
    fn read_output_tail_reads_only_the_end_of_a_large_log() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.log");
        assert!(read_output_tail(&missing).is_empty());

        let small = dir.path().join("small.log");
        std::fs::write(&small, lines(3)).unwrap();
        assert_eq!(read_output_tail(&small), ["line 1", "line 2", "line 3"]);

        // Larger than the window, with the window starting mid-line.
        let large = dir.path().join("large.log");
        let mut text = "y".repeat(TAIL_READ_BYTES as usize * 2);
        text.push('\n');
        text.push_str(&lines(30));
        std::fs::write(&large, &text).unwrap();
        let tail = read_output_tail(&large);
        let expected: Vec<String> = (11..=30).map(|n| format!("line {n}")).collect();
        assert_eq!(tail, expected);

        // A window that starts exactly at a line's start keeps that line.
        let exact = dir.path().join("exact.log");
        let last = format!("{}\n", "z".repeat(TAIL_READ_BYTES as usize - 1));
        std::fs::write(&exact, format!("first\n{last}")).unwrap();
        assert_eq!(
            read_output_tail(&exact),
            ["z".repeat(OUTPUT_LINE_MAX_BYTES)]
        );
    }

    #[test]
    fn core_path_table() {
        let cwd = Path::new("/builds/b1");
        let process = DeadProcess {
            pid: 4242,
            signal: 11,
            executable: "example-game-server",
            uid: 1000,
            gid: 100,
            hostname: "vm1",
            cwd,
        };
        let file = |path: &str| CoreLocation::File(PathBuf::from(path));
        #[rustfmt::skip]
        let cases = [
            ("kernel default", "core\n", false, file("/builds/b1/core")),
            ("default with core_uses_pid", "core", true, file("/builds/b1/core.4242")),
            ("empty pattern", "", false, file("/builds/b1/core")),
            ("pid in the pattern", "core.%p", true, file("/builds/b1/core.4242")),
            (
                "absolute directory with specifiers",
                "/var/crash/%e.%P.%s.%u.%g.%h",
                false,
                file("/var/crash/example-game-se.4242.11.1000.100.vm1"),
            ),
            ("literal percent", "core%%x", false, file("/builds/b1/core%x")),
            ("trailing lone percent", "core%", false, file("/builds/b1/core")),
            ("relative subdirectory", "dumps/core", false, file("/builds/b1/dumps/core")),
            (
                "systemd-coredump",
                "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h",
                false,
                CoreLocation::Piped,
            ),
            ("apport", "|/usr/share/apport/apport -p%p -s%s -c%c", true, CoreLocation::Piped),
            ("time of dump", "core.%t", false, CoreLocation::Unknown),
            ("thread id", "/tmp/core.%i", false, CoreLocation::Unknown),
        ];
        for (name, pattern, uses_pid, expected) in cases {
            assert_eq!(
                core_path(pattern, uses_pid, &process),
                expected,
                "case {name}"
            );
        }
    }

    #[test]
    fn find_core_table() {
        let started_at = SystemTime::now();
        let an_hour_ago = started_at - Duration::from_secs(3600);
        struct Case {
            name: &'static str,
            pattern: &'static str,
            uses_pid: bool,
            /// Files in the working directory and how old they are relative to the start.
            files: &'static [(&'static str, bool)],
            /// A directory instead of a file named `core`.
            core_is_dir: bool,
            /// Expected: None, Some("kept") (moved to keep_as) or Some(file name in place).
            expected: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "fresh core is moved next to the log",
                pattern: "core",
                uses_pid: false,
                files: &[("core", true)],
                core_is_dir: false,
                expected: Some("kept"),
            },
            Case {
                name: "core.<pid> with core_uses_pid",
                pattern: "core",
                uses_pid: true,
                files: &[("core.4242", true), ("core", true)],
                core_is_dir: false,
                expected: Some("kept"),
            },
            Case {
                name: "another process's core.<pid> is not ours",
                pattern: "core",
                uses_pid: true,
                files: &[("core.777", true)],
                core_is_dir: false,
                expected: None,
            },
            Case {
                name: "a core older than the process is a previous crash's",
                pattern: "core",
                uses_pid: false,
                files: &[("core", false)],
                core_is_dir: false,
                expected: None,
            },
            Case {
                name: "no core written",
                pattern: "core",
                uses_pid: false,
                files: &[],
                core_is_dir: false,
                expected: None,
            },
            Case {
                name: "a directory named core is not a core",
                pattern: "core",
                uses_pid: false,
                files: &[],
                core_is_dir: true,
                expected: None,
            },
            Case {
                name: "piped to systemd-coredump",
                pattern: "|/usr/lib/systemd/systemd-coredump %P",
                uses_pid: false,
                files: &[("core", true)],
                core_is_dir: false,
                expected: None,
            },
            Case {
                name: "a core in a subdirectory stays where the host wants it",
                pattern: "dumps/core.%p",
                uses_pid: false,
                files: &[("dumps/core.4242", true)],
                core_is_dir: false,
                expected: Some("dumps/core.4242"),
            },
        ];
        for case in cases {
            let dir = tempfile::tempdir().unwrap();
            let cwd = dir.path().join("build");
            let logs = dir.path().join("logs");
            std::fs::create_dir_all(cwd.join("dumps")).unwrap();
            std::fs::create_dir_all(&logs).unwrap();
            for (name, fresh) in case.files {
                let path = cwd.join(name);
                let file = File::create(&path).unwrap();
                if !fresh {
                    file.set_modified(an_hour_ago).unwrap();
                }
            }
            if case.core_is_dir {
                std::fs::create_dir(cwd.join("core")).unwrap();
            }
            let process = DeadProcess {
                pid: 4242,
                signal: 11,
                executable: "server",
                uid: 0,
                gid: 0,
                hostname: "h",
                cwd: &cwd,
            };
            let keep_as = logs.join("proc-1.core");
            let found = find_core_by(case.pattern, case.uses_pid, &process, started_at, &keep_as);
            let expected = case.expected.map(|what| match what {
                "kept" => keep_as.clone(),
                in_place => cwd.join(in_place),
            });
            assert_eq!(found, expected, "case {}", case.name);
            if let Some(path) = &found {
                assert!(path.is_file(), "case {}: {path:?} exists", case.name);
            }
            if case.expected == Some("kept") {
                let name = if case.uses_pid { "core.4242" } else { "core" };
                assert!(!cwd.join(name).exists(), "case {}: moved", case.name);
            }
        }
    }

    #[test]
    fn cores_beyond_table() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let core = |name: &str, secs: u64| (PathBuf::from(name), t0 + Duration::from_secs(secs));
        let paths = |names: &[&str]| names.iter().map(PathBuf::from).collect::<Vec<_>>();
        let cases = [
            ("none", vec![], 2, paths(&[])),
            ("fewer than kept", vec![core("a", 1)], 2, paths(&[])),
            (
                "exactly kept",
                vec![core("a", 1), core("b", 2)],
                2,
                paths(&[]),
            ),
            (
                "the oldest go",
                vec![core("c", 3), core("a", 1), core("d", 4), core("b", 2)],
                2,
                paths(&["b", "a"]),
            ),
            (
                "same age: by name, deterministic",
                vec![core("x", 5), core("y", 5), core("z", 5)],
                2,
                paths(&["x"]),
            ),
        ];
        for (name, cores, keep, expected) in cases {
            assert_eq!(cores_beyond(&cores, keep), expected, "case {name}");
        }
    }

    #[test]
    fn moved_cores_are_pruned_to_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().join("build");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&cwd).unwrap();
        std::fs::create_dir_all(&logs).unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        for n in 0..KEPT_CORES {
            let old = File::create(logs.join(format!("proc-old-{n}.core"))).unwrap();
            old.set_modified(long_ago + Duration::from_secs(n as u64))
                .unwrap();
        }
        std::fs::write(logs.join("proc-old-0.log"), "not a core").unwrap();
        File::create(cwd.join("core")).unwrap();
        let process = DeadProcess {
            pid: 1,
            signal: 11,
            executable: "server",
            uid: 0,
            gid: 0,
            hostname: "h",
            cwd: &cwd,
        };
        let keep_as = logs.join("proc-new.core");
        let started_at = SystemTime::now() - Duration::from_secs(1);
        let found = find_core_by("core", false, &process, started_at, &keep_as);
        assert_eq!(found.as_deref(), Some(keep_as.as_path()));
        let mut left: Vec<String> = std::fs::read_dir(&logs)
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected: Vec<String> = (1..KEPT_CORES)
            .map(|n| format!("proc-old-{n}.core"))
            .chain(["proc-new.core".to_string(), "proc-old-0.log".to_string()])
            .collect();
        expected.sort();
        assert_eq!(left, expected, "the oldest core went, the log stayed");
    }

    #[test]
    fn comm_is_cut_at_15_bytes() {
        assert_eq!(comm("server"), "server");
        assert_eq!(comm("example-game-server"), "example-game-se");
        assert_eq!(comm("ééééééééé"), "ééééééé");
    }
}
