//! The download page: what inclubit is, the two commands, and the admin's binaries with size
//! and SHA-256. Only plain files directly in the configured directory are ever served.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{escape, html, not_found, request_host, WebState, INDEX_HTML};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

pub struct Downloads {
    dir: PathBuf,
    /// SHA-256 by name, valid while size and modification time stay the same.
    hashes: Mutex<HashMap<String, (u64, SystemTime, String)>>,
}

impl Downloads {
    pub fn open(dir: &FsPath) -> std::io::Result<Self> {
        let dir = dir.canonicalize()?;
        std::fs::read_dir(&dir)?;
        Ok(Self {
            dir,
            hashes: Mutex::new(HashMap::new()),
        })
    }

    /// Plain, visible files directly in the directory (no links, no subdirectories), by name.
    pub fn list(&self) -> std::io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let meta = e.metadata()?;
            if name.starts_with('.') || !meta.file_type().is_file() {
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let cached = self.hashes.lock().ok().and_then(|h| {
                h.get(&name)
                    .filter(|(s, m, _)| *s == meta.len() && *m == mtime)
                    .map(|(_, _, d)| d.clone())
            });
            let sha256 = match cached {
                Some(d) => d,
                None => {
                    let d = sha256_file(&e.path())?;
                    if let Ok(mut h) = self.hashes.lock() {
                        h.insert(name.clone(), (meta.len(), mtime, d.clone()));
                    }
                    d
                }
            };
            out.push(Entry {
                name,
                size: meta.len(),
                sha256,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The listed file called exactly `name`, if any: nothing outside the list is reachable.
    fn find(&self, name: &str) -> Option<(PathBuf, Entry)> {
        let entry = self.list().ok()?.into_iter().find(|e| e.name == name)?;
        Some((self.dir.join(&entry.name), entry))
    }
}

fn sha256_file(path: &FsPath) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn human(size: u64) -> String {
    match size {
        s if s >= 1 << 20 => format!("{:.1} MiB", s as f64 / (1u64 << 20) as f64),
        s if s >= 1 << 10 => format!("{:.1} KiB", s as f64 / 1024.0),
        s => format!("{s} B"),
    }
}

fn content_type(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    let ext = |e: &str| lower.ends_with(e);
    if ext(".deb") {
        "application/vnd.debian.binary-package"
    } else if ext(".zip") {
        "application/zip"
    } else if ext(".tar.gz") || ext(".tgz") || ext(".gz") {
        "application/gzip"
    } else if ext(".txt") || ext(".sha256") || ext(".asc") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

pub async fn index(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    let host = request_host(&headers);
    let entries = match &state.downloads {
        None => Ok(Vec::new()),
        Some(_) => {
            let st = state.clone();
            tokio::task::spawn_blocking(move || st.downloads.as_ref().map(|d| d.list()))
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| Ok(Vec::new()))
        }
    };
    let rows = match entries {
        Ok(list) if list.is_empty() => "<p>No downloads are published on this server.</p>".into(),
        Ok(list) => {
            let mut s = String::from("<table><tr><th>File</th><th>Size</th><th>SHA-256</th></tr>");
            for e in list {
                let n = escape(&e.name);
                s.push_str(&format!(
                    "<tr><td><a href=\"/dl/{}\">{n}</a></td><td>{}</td><td><code>{}</code></td></tr>",
                    escape(&percent_encode(&e.name)),
                    human(e.size),
                    e.sha256
                ));
            }
            s.push_str("</table>");
            s
        }
        Err(e) => {
            tracing::warn!("download directory: {e}");
            "<p>The download directory cannot be read right now.</p>".into()
        }
    };
    let page = INDEX_HTML
        .replace("{{HOST}}", &escape(&host))
        .replace("{{PORT}}", &state.rendezvous_port.to_string())
        .replace("{{FILES}}", &rows);
    html(page, "no-cache")
}

pub async fn file(State(state): State<Arc<WebState>>, Path(name): Path<String>) -> Response {
    if state.downloads.is_none() {
        return not_found().await;
    }
    // `name` is already percent-decoded: "..%2F" arrives as "../" and matches no listed file.
    let found = {
        let st = state.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || st.downloads.as_ref().and_then(|d| d.find(&name)))
            .await
            .ok()
            .flatten()
    };
    let Some((path, entry)) = found else {
        return not_found().await;
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return not_found().await,
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type(&entry.name).to_string()),
            (header::CONTENT_LENGTH, entry.size.to_string()),
            (header::ETAG, format!("\"{}\"", entry.sha256)),
            (header::CACHE_CONTROL, "public, max-age=300".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", entry.name.replace('"', "")),
            ),
        ],
        body,
    )
        .into_response()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_plain_files_with_their_sha256() {
        let dir = std::env::temp_dir().join(format!("inclubit-dl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("inclubit-linux-x86_64"), b"abc").unwrap();
        std::fs::write(dir.join(".hidden"), b"x").unwrap();
        let d = Downloads::open(&dir).unwrap();
        let list = d.list().unwrap();
        assert_eq!(
            list,
            vec![Entry {
                name: "inclubit-linux-x86_64".into(),
                size: 3,
                // sha256("abc")
                sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
            }]
        );
        assert!(d.find("..").is_none());
        assert!(d.find("sub").is_none());
        assert!(d.find(".hidden").is_none());
        assert!(d.find("../inclubit-linux-x86_64").is_none());
        // A changed file is hashed again.
        std::fs::write(dir.join("inclubit-linux-x86_64"), b"abcd").unwrap();
        assert_ne!(d.list().unwrap()[0].sha256, list[0].sha256);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_and_types() {
        assert_eq!(percent_encode("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(
            content_type("x.DEB"),
            "application/vnd.debian.binary-package"
        );
        assert_eq!(content_type("inclubit"), "application/octet-stream");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
