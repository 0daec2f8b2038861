//! The session history outside signaling: `signaling backup`, a copy of the store taken while
//! signaling runs, for the operator's schedule (deploy/signaling-backup.timer) and the runbook's
//! restore (deploy/README.md); `signaling export`, ended sessions as JSON lines for the
//! operator's warehouse.

use std::path::{Path, PathBuf};

use std::io::Write;

use anyhow::Context;
use signaling_api::sessions::{SessionDetail, SessionEvent};

use crate::config::{Config, StoreLocation};
use crate::store::Store;

/// Backs the store up into `dir` and keeps the newest `keep` backups there (0: all); returns the
/// new backup's path.
pub async fn backup(config: &Config, dir: &Path, keep: usize) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("--dir: cannot create {}", dir.display()))?;
    // Sortable and unique to the second: signaling-20261207T180501Z.db
    let stamp = time_stamp(std::time::SystemTime::now());
    let path = match &config.store {
        StoreLocation::Sqlite(_) => {
            let path = dir.join(format!("signaling-{stamp}.db"));
            let store = Store::open(&config.store).await?;
            store.backup_sqlite(&path).await?;
            path
        }
        StoreLocation::Postgres(url) => {
            let path = dir.join(format!("signaling-{stamp}.dump"));
            let status = std::process::Command::new("pg_dump")
                .args(["--format=custom", "--no-owner", "--file"])
                .arg(&path)
                .arg(url)
                .status()
                .context("running pg_dump (Debian: postgresql-client)")?;
            anyhow::ensure!(status.success(), "pg_dump failed ({status})");
            path
        }
    };
    if keep > 0 {
        prune(dir, keep)?;
    }
    Ok(path)
}

/// Writes the sessions that ended in [`since_ms`, `until_ms`) (Unix milliseconds) to `out`, one
/// JSON object per line in end order, each as `GET /v1/sessions/{id}` shows it; returns how many.
pub async fn export(config: &Config, since_ms: i64, until_ms: i64, out: &mut impl Write) -> anyhow::Result<u64> {
    const PAGE: i64 = 500;
    let store = Store::open(&config.store).await?;
    let mut after: Option<(i64, String)> = None;
    let mut n = 0;
    loop {
        let page =
            store.ended_between(since_ms, until_ms, after.as_ref().map(|(t, id)| (*t, id.as_str())), PAGE).await?;
        for s in &page {
            let events = store
                .events(&s.id)
                .await?
                .into_iter()
                .map(|e| SessionEvent { seq: e.seq, at_ms: e.at_ms, kind: e.kind, detail: e.detail })
                .collect();
            let detail = SessionDetail { session: s.clone().into(), events };
            serde_json::to_writer(&mut *out, &detail)?;
            out.write_all(b"\n")?;
            n += 1;
        }
        match page.last() {
            Some(last) if page.len() as i64 == PAGE => {
                after = Some((last.ended_ms.unwrap_or_default(), last.id.clone()))
            }
            _ => break,
        }
    }
    out.flush()?;
    Ok(n)
}

/// Deletes all but the newest `keep` backups (signaling-*.db and signaling-*.dump) in `dir`.
fn prune(dir: &Path, keep: usize) -> anyhow::Result<()> {
    let mut backups: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with("signaling-") && (name.ends_with(".db") || name.ends_with(".dump"))
        })
        .collect();
    // The names sort by time.
    backups.sort();
    let old = backups.len().saturating_sub(keep);
    for path in &backups[..old] {
        std::fs::remove_file(path).with_context(|| format!("removing the old backup {}", path.display()))?;
    }
    Ok(())
}

/// UTC as `YYYYMMDDTHHMMSSZ`.
fn time_stamp(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let (y, mo, d, h, mi, s) = cluster::time::utc(secs);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_and_sort_by_time() {
        let at = |s: u64| time_stamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(951_782_400), "20000229T000000Z");
        assert_eq!(at(1_796_666_701), "20261207T180501Z");
        assert!(at(1_796_666_701) < at(1_796_666_702) && at(99_999_999) < at(1_000_000_000));
    }

    #[test]
    fn prune_keeps_the_newest_backups_and_nothing_else_is_touched() {
        let dir = std::env::temp_dir().join(format!("signaling-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names =
            ["signaling-20260101T000000Z.db", "signaling-20260102T000000Z.dump", "signaling-20260103T000000Z.db"];
        for n in names.iter().chain(&["notes.txt"]) {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
        prune(&dir, 2).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["notes.txt", "signaling-20260102T000000Z.dump", "signaling-20260103T000000Z.db"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
