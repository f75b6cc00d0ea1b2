//! Build fetch: turns a [`LaunchSpec`]'s `source` into a directory the game server runs in.
//!
//! - `file:///abs/dir` runs in place (a `sha256` cannot be checked on a directory: error).
//! - `file:///abs/pkg.tar.gz` (or `.tgz`) is checked against `sha256` when given and extracted
//!   to `<work-dir>/builds/<build_id>/`.
//! - `http://` and `https://` are downloaded to `<work-dir>/downloads/` and then treated like a
//!   local archive.
//! - `s3://` needs the aws location driver, which this agent does not have.
//!
//! Invariant: `<work-dir>/builds/<build_id>/` only ever holds a complete build. Archives are
//! extracted into a temporary sibling and renamed into place, so a crash mid-extraction
//! leaves garbage beside it, never a half build under the final name; an existing directory
//! is reused as is.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use fleetform_api::agent::LaunchSpec;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Fetches the build of `spec` below `work_dir` and returns its root directory.
pub async fn fetch(spec: &LaunchSpec, work_dir: &Path) -> Result<PathBuf> {
    check_build_id(&spec.build_id)?;
    let source = spec.source.as_str();
    let target = work_dir.join("builds").join(&spec.build_id);
    if let Some(path) = source.strip_prefix("file://") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(bad_source(
                source,
                "a file:// source needs an absolute path",
            ));
        }
        if is_archive_name(source) && target.is_dir() {
            return Ok(target); // Extracted before; the archive itself may be gone.
        }
        let metadata = tokio::fs::metadata(&path).await.map_err(|err| Error::Io {
            context: format!("reading build source {}", path.display()),
            source: err,
        })?;
        if metadata.is_dir() {
            if spec.sha256.is_some() {
                return Err(bad_source(
                    source,
                    "sha256 can only be checked on an archive, not on a directory",
                ));
            }
            return Ok(path);
        }
        if !is_archive_name(source) {
            return Err(bad_source(
                source,
                "a file source must be a directory or a .tar.gz/.tgz archive",
            ));
        }
        let sha256 = spec.sha256.clone();
        return blocking(move || install_archive(&path, sha256.as_deref(), &target)).await;
    }
    if source.starts_with("https://") || source.starts_with("http://") {
        if target.is_dir() {
            return Ok(target);
        }
        let downloads = work_dir.join("downloads");
        let archive = downloads.join(format!("{}.tar.gz", spec.build_id));
        download(source, &archive).await?;
        let sha256 = spec.sha256.clone();
        return blocking(move || install_archive(&archive, sha256.as_deref(), &target)).await;
    }
    if source.starts_with("s3://") {
        return Err(Error::S3Unsupported);
    }
    Err(bad_source(
        source,
        "supported sources are file://, http:// and https://",
    ))
}

/// The build id becomes a directory name: keep it to one plain path component.
fn check_build_id(build_id: &str) -> Result<()> {
    let plain = !build_id.is_empty()
        && !build_id.starts_with('.')
        && build_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        Ok(())
    } else {
        Err(Error::Launch(format!(
            "build id {build_id:?} is not a plain name ([A-Za-z0-9._-], not starting with '.')"
        )))
    }
}

fn is_archive_name(source: &str) -> bool {
    source.ends_with(".tar.gz") || source.ends_with(".tgz")
}

fn bad_source(source: &str, reason: &str) -> Error {
    Error::BadSource {
        source_uri: source.to_string(),
        reason: reason.to_string(),
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Launch(format!("build fetch task failed: {err}")))?
}

/// Verifies `archive` against `sha256` (when given) and extracts it to `target`, unless
/// `target` already exists.
pub fn install_archive(archive: &Path, sha256: Option<&str>, target: &Path) -> Result<PathBuf> {
    if target.is_dir() {
        return Ok(target.to_path_buf());
    }
    if let Some(expected) = sha256 {
        verify_sha256(archive, expected)?;
    }
    let parent = target
        .parent()
        .ok_or_else(|| Error::Launch(format!("{} has no parent", target.display())))?;
    std::fs::create_dir_all(parent).map_err(|source| Error::Io {
        context: format!("creating {}", parent.display()),
        source,
    })?;
    let name = target
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = parent.join(format!(".tmp-{name}-{}", uuid::Uuid::now_v7().simple()));
    let result = extract_tar_gz(archive, &temp).and_then(|()| {
        std::fs::rename(&temp, target).or_else(|source| {
            // Someone else finished the same build first: theirs is complete, use it.
            if target.is_dir() {
                Ok(())
            } else {
                Err(Error::Io {
                    context: format!("moving the extracted build to {}", target.display()),
                    source,
                })
            }
        })
    });
    if temp.exists() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result.map(|()| target.to_path_buf())
}

/// The lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io_err = |source| Error::Io {
        context: format!("reading {}", path.display()),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io_err)?);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = reader.read(&mut buffer).map_err(io_err)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// Fails unless the file's SHA-256 is `expected` (hex, any case).
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual.eq_ignore_ascii_case(expected.trim()) {
        Ok(())
    } else {
        Err(Error::ChecksumMismatch {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        })
    }
}

/// Extracts a gzip-compressed tar into `dir` (created). `tar` refuses entries that would land
/// outside `dir`.
pub fn extract_tar_gz(archive: &Path, dir: &Path) -> Result<()> {
    let file = File::open(archive).map_err(|source| Error::Io {
        context: format!("opening {}", archive.display()),
        source,
    })?;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    tar.set_preserve_permissions(true);
    tar.unpack(dir).map_err(|source| Error::Io {
        context: format!("extracting {}", archive.display()),
        source,
    })
}

/// Downloads `url` to `path` (through a `.part` file, so `path` is complete or absent).
async fn download(url: &str, path: &Path) -> Result<()> {
    use tokio::io::AsyncWriteExt;

    let download_err = |reason: String| Error::Download {
        url: url.to_string(),
        reason,
    };
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| Error::Io {
                context: format!("creating {}", parent.display()),
                source,
            })?;
    }
    let mut response = reqwest::Client::new()
        .get(url)
        .send()
        .await
        .and_then(|response| response.error_for_status())
        .map_err(|err| download_err(err.to_string()))?;
    let part = path.with_extension("part");
    let io_err = |source| Error::Io {
        context: format!("writing {}", part.display()),
        source,
    };
    let mut file = tokio::fs::File::create(&part).await.map_err(io_err)?;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| download_err(err.to_string()))?
    {
        file.write_all(&chunk).await.map_err(io_err)?;
    }
    file.flush().await.map_err(io_err)?;
    drop(file);
    tokio::fs::rename(&part, path)
        .await
        .map_err(|source| Error::Io {
            context: format!("moving {} into place", part.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetform_api::SessionMode;

    /// Writes a small .tar.gz holding `bin/server` (executable) and `data.txt`.
    fn make_archive(dir: &Path) -> PathBuf {
        let path = dir.join("build.tar.gz");
        let file = File::create(&path).unwrap();
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for (name, body, mode) in [
            ("bin/server", &b"#!/bin/sh\necho hi\n"[..], 0o755),
            ("data.txt", &b"hello"[..], 0o644),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(mode);
            header.set_cksum();
            builder.append_data(&mut header, name, body).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
        path
    }

    fn spec(source: String, sha256: Option<String>) -> LaunchSpec {
        LaunchSpec {
            build_id: "bld-1".into(),
            source,
            sha256,
            launch_path: "bin/server".into(),
            launch_parameters: None,
            session_mode: SessionMode::Simple,
            sessions_per_process: 1,
        }
    }

    #[test]
    fn sha256_of_a_known_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&path).unwrap(), abc);
        verify_sha256(&path, &abc.to_uppercase()).unwrap();
        let err = verify_sha256(&path, &"0".repeat(64)).unwrap_err();
        assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    }

    #[tokio::test]
    async fn archive_is_checked_extracted_and_reused() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let archive = make_archive(dir.path());
        let sha = sha256_file(&archive).unwrap();
        let work = dir.path().join("work");
        let source = format!("file://{}", archive.display());

        let err = fetch(&spec(source.clone(), Some("00".repeat(32))), &work)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
        assert!(!work.join("builds/bld-1").exists());

        let root = fetch(&spec(source.clone(), Some(sha)), &work)
            .await
            .unwrap();
        assert_eq!(root, work.join("builds/bld-1"));
        assert_eq!(std::fs::read(root.join("data.txt")).unwrap(), b"hello");
        let mode = std::fs::metadata(root.join("bin/server"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "executable bit kept");
        // No temporary directory is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(work.join("builds"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["bld-1"]);

        // Reused as is once there, even when the archive is gone.
        std::fs::remove_file(&archive).unwrap();
        assert_eq!(fetch(&spec(source, None), &work).await.unwrap(), root);
    }

    #[tokio::test]
    async fn directory_sources_run_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let source = format!("file://{}", dir.path().display());
        let work = dir.path().join("work");
        assert_eq!(
            fetch(&spec(source.clone(), None), &work).await.unwrap(),
            dir.path()
        );
        let err = fetch(&spec(source, Some("ab".repeat(32))), &work)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
    }

    #[tokio::test]
    async fn unsupported_sources_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("server.zip");
        std::fs::write(&plain, b"x").unwrap();
        let cases = [
            (
                "s3",
                "s3://bucket/key.tar.gz".to_string(),
                "aws location driver",
            ),
            (
                "relative file",
                "file://relative/dir".to_string(),
                "absolute",
            ),
            (
                "missing file",
                "file:///nonexistent/fleetform".to_string(),
                "reading build source",
            ),
            (
                "not an archive",
                format!("file://{}", plain.display()),
                ".tar.gz",
            ),
            (
                "unknown scheme",
                "ftp://host/x.tar.gz".to_string(),
                "supported sources",
            ),
        ];
        for (name, source, needle) in cases {
            let err = fetch(&spec(source, None), dir.path()).await.unwrap_err();
            assert!(err.to_string().contains(needle), "case {name}: {err}");
        }
    }

    #[test]
    fn build_ids_must_be_plain_names() {
        for good in ["bld-1", "b_2.0"] {
            check_build_id(good).unwrap();
        }
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_build_id(bad).is_err(), "{bad:?} should fail");
        }
    }
}
