//! The session history outside signaling. `signaling backup` while signaling serves, and the
//! runbook's restore (deploy/README.md): on the embedded SQLite store (a consistent copy, put in
//! place of the database) and on PostgreSQL (pg_dump, restored with pg_restore into a new
//! database), a new instance on the restored store has the machines, the sessions and their
//! timelines the old one had; old backups beyond `--keep` go. `signaling export`: every ended
//! session once, as the API shows it, in end order, over pages. `sessions.retention_days`:
//! sessions that ended longer ago are forgotten, the rest kept.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Signaling, fresh_postgres_database};
use serde_json::{Value, json};

/// A machine, an ended session and a live one, with their timelines; returns the sessions' ids.
async fn history(s: &Signaling) -> Vec<String> {
    let (st, body) = s.heartbeat("eu-1", "eu-central", 3478, "serving", 0.1).await;
    assert_eq!(st, 200, "{body}");
    let machine = s.token("cab-1", "machine");
    let player = s.token("alice", "player");
    let rtts = json!({ "name": "Cabinet 1", "rtts": { "eu-central": 20.0 } });
    assert_eq!(s.call("POST", "/v1/machines/register", Some(&machine), Some(rtts)).await.0, 200);
    assert_eq!(s.call("POST", "/v1/machines/heartbeat", Some(&machine), Some(json!({}))).await.0, 200);
    let mut ids = Vec::new();
    for end in [true, false] {
        let (st, session) = s.call("POST", "/v1/sessions", Some(&player), Some(json!({ "machine_id": "cab-1" }))).await;
        assert_eq!(st, 201, "{session}");
        let id = session["session_id"].as_str().unwrap().to_owned();
        assert!(s.call("POST", &format!("/v1/sessions/{id}/connected"), Some(&player), None).await.0 < 300);
        if end {
            assert_eq!(s.call("POST", &format!("/v1/sessions/{id}/end"), Some(&player), None).await.0, 200);
        }
        ids.push(id);
    }
    ids
}

async fn sessions(s: &Signaling, ids: &[String]) -> Vec<Value> {
    let admin = s.token("ops", "admin");
    let mut out = Vec::new();
    for id in ids {
        let (st, detail) = s.call("GET", &format!("/v1/sessions/{id}"), Some(&admin), None).await;
        assert_eq!(st, 200, "{id}: {detail}");
        out.push(detail);
    }
    out
}

/// `signaling --config (s's) backup --dir DIR --keep KEEP`: the new backup's path.
fn backup(s: &Signaling, dir: &Path, keep: usize) -> std::path::PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_signaling"))
        .arg("--config")
        .arg(s.dir.join("signaling.toml"))
        .args(["backup", "--dir"])
        .arg(dir)
        .args(["--keep", &keep.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
    let path = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(path.starts_with(dir) && path.exists(), "{path:?}");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqlite_backup_taken_while_serving_restores_the_history() {
    let s = Signaling::start("sqlite", "");
    let ids = history(&s).await;
    let before = sessions(&s, &ids).await;
    // Outside the instance's directory, which goes with it.
    let dir = std::env::temp_dir().join(format!("signaling-backups-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = backup(&s, &dir, 2);
    assert!(first.extension().is_some_and(|e| e == "db"), "{first:?}");
    // --keep: three backups (a second apart: their names have the time), two left.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        backup(&s, &dir, 2);
    }
    let left = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(left, 2, "backups kept");
    assert!(!first.exists(), "the oldest backup was kept");
    let latest = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    drop(s);

    // The runbook's restore: the copy in place of the database, signaling started on it.
    let restored_dir = std::env::temp_dir().join(format!("signaling-restore-{}", std::process::id()));
    std::fs::create_dir_all(restored_dir.join("data")).unwrap();
    std::fs::copy(&latest, restored_dir.join("data/signaling.db")).unwrap();
    let r =
        Signaling::start_with_store(&format!("data_dir = {:?}", restored_dir.join("data").display().to_string()), "");
    assert_eq!(sessions(&r, &ids).await, before);
    let (_, machines) = r.call("GET", "/v1/machines", Some(&r.token("ops", "admin")), None).await;
    assert!(machines.to_string().contains("Cabinet 1"), "{machines}");
    let _ = std::fs::remove_dir_all(&restored_dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_backup_taken_while_serving_restores_the_history() {
    let url = fresh_postgres_database();
    let s = Signaling::start_on_postgres(&url);
    let ids = history(&s).await;
    let before = sessions(&s, &ids).await;
    let dump = backup(&s, &s.dir.join("backups"), 14);
    assert!(dump.extension().is_some_and(|e| e == "dump"), "{dump:?}");

    // Restored into a new database with pg_restore; signaling started on it.
    let restored = fresh_postgres_database();
    let out = Command::new("pg_restore").args(["--no-owner", "--dbname", &restored]).arg(&dump).output().unwrap();
    assert!(out.status.success(), "pg_restore: {}", String::from_utf8_lossy(&out.stderr));
    drop(s);
    let r = Signaling::start_on_postgres(&restored);
    assert_eq!(sessions(&r, &ids).await, before);
}

/// `signaling --config (s's) export ARGS`: its JSON lines.
fn export(s: &Signaling, args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_signaling"))
        .arg("--config")
        .arg(s.dir.join("signaling.toml"))
        .arg("export")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_every_ended_session_once_in_end_order_over_pages() {
    let s = Signaling::start("sqlite", "");
    let ids = history(&s).await;
    let before = sessions(&s, &ids).await;
    let started = common::unix_now();
    // The ended session exactly as the API shows it; the live one not at all.
    assert_eq!(export(&s, &[]), vec![before[0].clone()]);
    // More than a page (500) of ended sessions: each once, in end order.
    let player = s.token("alice", "player");
    let machine = s.token("cab-1", "machine");
    assert_eq!(s.call("POST", &format!("/v1/sessions/{}/end", ids[1]), Some(&player), None).await.0, 200);
    for _ in 0..520 {
        let (st, session) = s.call("POST", "/v1/sessions", Some(&player), Some(json!({ "machine_id": "cab-1" }))).await;
        assert_eq!(st, 201, "{session}");
        let id = session["session_id"].as_str().unwrap();
        assert_eq!(s.call("POST", &format!("/v1/sessions/{id}/end"), Some(&machine), None).await.0, 200);
    }
    let all = export(&s, &[]);
    assert_eq!(all.len(), 522);
    let ends: Vec<i64> = all.iter().map(|d| d["ended_ms"].as_i64().expect("ended_ms")).collect();
    assert!(ends.windows(2).all(|w| w[0] <= w[1]), "not in end order");
    let mut unique: Vec<&str> = all.iter().map(|d| d["id"].as_str().unwrap()).collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 522, "a session exported twice");
    assert!(
        all.iter().all(|d| d["events"].as_array().is_some_and(|e| !e.is_empty())),
        "a session without its timeline"
    );
    // A window: nothing ended before the test began, or after now.
    assert!(export(&s, &["--until", &(started - 5).to_string()]).is_empty());
    assert!(export(&s, &["--since", &(common::unix_now() + 5).to_string()]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_the_retention_period_are_forgotten_and_the_rest_kept() {
    use sqlx::Connection;
    let data = std::env::temp_dir().join(format!("signaling-retention-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let store = format!("data_dir = {:?}", data.display().to_string());
    let s = Signaling::start_with_store(&store, "");
    let ids = history(&s).await;
    let player = s.token("alice", "player");
    assert_eq!(s.call("POST", &format!("/v1/sessions/{}/end", ids[1]), Some(&player), None).await.0, 200);
    drop(s);
    // The first session ended ten days ago, the second now.
    let url = format!("sqlite://{}", data.join("signaling.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE sessions SET ended_ms = ended_ms - 864000000 WHERE id = $1")
        .bind(&ids[0])
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();

    // A week's retention: the old session and its timeline go at start, the recent one stays.
    let r = Signaling::start_with_store(&store, "[sessions]\nretention_days = 7");
    let admin = r.token("ops", "admin");
    let gone = common::eventually(Duration::from_secs(5), || async {
        let (st, _) = r.call("GET", &format!("/v1/sessions/{}", ids[0]), Some(&admin), None).await;
        (st == 404).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the session that ended ten days ago is still there");
    let (st, kept) = r.call("GET", &format!("/v1/sessions/{}", ids[1]), Some(&admin), None).await;
    assert_eq!(st, 200, "{kept}");
    assert!(kept["events"].as_array().is_some_and(|e| !e.is_empty()), "{kept}");
    drop(r);
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM session_events WHERE session_id = $1")
        .bind(&ids[0])
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(events, 0, "the forgotten session's timeline is still there");
    let _ = std::fs::remove_dir_all(&data);
}
