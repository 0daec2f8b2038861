//! Sessions and their events: create (one live session per machine, enforced by the database),
//! progress, end, history, and the queries upkeep and relays need.

use sqlx::Row;

use super::*;

impl Store {
    /// Creates a session and its first events in one transaction; `Busy` if the machine already
    /// has a live one.
    pub async fn create_session(
        &self,
        s: &SessionRow,
        events: &[(&str, serde_json::Value)],
    ) -> Result<(), CreateError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "INSERT INTO sessions (id, machine_id, player, mode, region, relay_id, source, scores_json, client_ip, requested_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&s.id)
        .bind(&s.machine_id)
        .bind(&s.player)
        .bind(&s.mode)
        .bind(&s.region)
        .bind(&s.relay_id)
        .bind(&s.source)
        .bind(s.scores.to_string())
        .bind(s.client_ip.as_deref())
        .bind(s.requested_ms)
        .execute(&mut *tx)
        .await;
        match r {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(CreateError::Busy),
            Err(e) => return Err(e.into()),
        }
        for (i, (kind, detail)) in events.iter().enumerate() {
            sqlx::query(
                "INSERT INTO session_events (session_id, seq, at_ms, kind, detail_json) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&s.id)
            .bind(i as i64 + 1)
            .bind(s.requested_ms)
            .bind(*kind)
            .bind(detail.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Appends an event to a session's timeline.
    pub async fn add_event(&self, id: &str, kind: &str, detail: &serde_json::Value, now_ms: i64) -> anyhow::Result<()> {
        // The sequence number comes from the table; a concurrent writer on the same session makes
        // the primary key refuse one of the two, which then tries again.
        for _ in 0..5 {
            let r = sqlx::query(
                "INSERT INTO session_events (session_id, seq, at_ms, kind, detail_json) \
                 SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4 FROM session_events WHERE session_id = $1",
            )
            .bind(id)
            .bind(now_ms)
            .bind(kind)
            .bind(detail.to_string())
            .execute(&self.pool)
            .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("could not append event to session {id}: too much contention")
    }

    const SESSION_COLUMNS: &str = "id, machine_id, player, mode, region, relay_id, source, scores_json, client_ip, \
                                   requested_ms, connected_ms, ended_ms, end_reason, ended_by";

    fn session_row(row: &AnyRow) -> anyhow::Result<SessionRow> {
        Ok(SessionRow {
            id: row.try_get("id")?,
            machine_id: row.try_get("machine_id")?,
            player: row.try_get("player")?,
            mode: row.try_get("mode")?,
            region: row.try_get("region")?,
            relay_id: row.try_get("relay_id")?,
            source: row.try_get("source")?,
            scores: serde_json::from_str(&row.try_get::<String, _>("scores_json")?)?,
            client_ip: row.try_get("client_ip")?,
            requested_ms: row.try_get("requested_ms")?,
            connected_ms: row.try_get("connected_ms")?,
            ended_ms: row.try_get("ended_ms")?,
            end_reason: row.try_get("end_reason")?,
            ended_by: row.try_get("ended_by")?,
        })
    }

    pub async fn session(&self, id: &str) -> anyhow::Result<Option<SessionRow>> {
        let row = sqlx::query(&format!("SELECT {} FROM sessions WHERE id = $1", Self::SESSION_COLUMNS))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::session_row).transpose()
    }

    pub async fn sessions(&self, f: &SessionFilter) -> anyhow::Result<Vec<SessionRow>> {
        // Optional filters as "$n IS NULL OR column = $n" keep one static statement.
        let live = match f.live {
            None => "",
            Some(true) => " AND ended_ms IS NULL",
            Some(false) => " AND ended_ms IS NOT NULL",
        };
        let sql = format!(
            "SELECT {} FROM sessions WHERE ($1 IS NULL OR machine_id = $1) AND ($2 IS NULL OR player = $2) \
             AND ($3 IS NULL OR region = $3){live} ORDER BY requested_ms DESC, id LIMIT $4",
            Self::SESSION_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(f.machine.as_deref())
            .bind(f.player.as_deref())
            .bind(f.region.as_deref())
            .bind(f.limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::session_row).collect()
    }

    pub async fn events(&self, id: &str) -> anyhow::Result<Vec<EventRow>> {
        let rows =
            sqlx::query("SELECT seq, at_ms, kind, detail_json FROM session_events WHERE session_id = $1 ORDER BY seq")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(EventRow {
                    seq: r.try_get("seq")?,
                    at_ms: r.try_get("at_ms")?,
                    kind: r.try_get("kind")?,
                    detail: serde_json::from_str(&r.try_get::<String, _>("detail_json")?)?,
                })
            })
            .collect()
    }

    /// Up to `limit` sessions that ended at or after `since_ms` and before `until_ms`, in end
    /// order, after the (end time, id) `after` (the export's pages).
    pub async fn ended_between(
        &self,
        since_ms: i64,
        until_ms: i64,
        after: Option<(i64, &str)>,
        limit: i64,
    ) -> anyhow::Result<Vec<SessionRow>> {
        let (after_ms, after_id) = after.unwrap_or((i64::MIN, ""));
        let sql = format!(
            "SELECT {} FROM sessions WHERE ended_ms IS NOT NULL AND ended_ms >= $1 AND ended_ms < $2 \
             AND (ended_ms > $3 OR (ended_ms = $3 AND id > $4)) ORDER BY ended_ms, id LIMIT $5",
            Self::SESSION_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(since_ms)
            .bind(until_ms)
            .bind(after_ms)
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::session_row).collect()
    }

    /// Forgets the sessions that ended before `before_ms` and their timelines (the retention
    /// period); returns how many.
    pub async fn forget_sessions(&self, before_ms: i64) -> anyhow::Result<u64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM session_events WHERE session_id IN \
             (SELECT id FROM sessions WHERE ended_ms IS NOT NULL AND ended_ms < $1)",
        )
        .bind(before_ms)
        .execute(&mut *tx)
        .await?;
        let gone = sqlx::query("DELETE FROM sessions WHERE ended_ms IS NOT NULL AND ended_ms < $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }

    /// Marks a live session connected (the first report counts); false if it is not live.
    pub async fn mark_connected(&self, id: &str, now_ms: i64) -> anyhow::Result<bool> {
        let r = sqlx::query(
            "UPDATE sessions SET connected_ms = COALESCE(connected_ms, $2) WHERE id = $1 AND ended_ms IS NULL",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Ends a live session; false if it was not live (already ended or unknown). Exactly one
    /// caller wins when several end it at once, so the "ended" event is written once.
    pub async fn end_session(&self, id: &str, reason: &str, by: &str, now_ms: i64) -> anyhow::Result<bool> {
        let r = sqlx::query(
            "UPDATE sessions SET ended_ms = $2, end_reason = $3, ended_by = $4 WHERE id = $1 AND ended_ms IS NULL",
        )
        .bind(id)
        .bind(now_ms)
        .bind(reason)
        .bind(by)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        let duration_ms: i64 = sqlx::query("SELECT ended_ms - requested_ms AS d FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?
            .try_get("d")?;
        self.add_event(
            id,
            "ended",
            &serde_json::json!({"reason": reason, "by": by, "duration_ms": duration_ms}),
            now_ms,
        )
        .await?;
        Ok(true)
    }

    /// Ids of the `sfu` sessions ended after `since_ms`, newest first, at most `limit`: their
    /// media tokens may still be valid, so relays are told to refuse them.
    pub async fn ended_sfu_sessions(&self, since_ms: i64, limit: i64) -> anyhow::Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id FROM sessions WHERE mode = 'sfu' AND ended_ms IS NOT NULL AND ended_ms > $1 \
             ORDER BY ended_ms DESC, id LIMIT $2",
        )
        .bind(since_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.try_get("id").map_err(Into::into)).collect()
    }

    /// Live sessions that must end now, with the reason: not connected within
    /// `connect_timeout_ms`, older than `max_ms`, or their machine silent since `offline_ms`.
    pub async fn overdue_sessions(
        &self,
        now_ms: i64,
        connect_timeout_ms: i64,
        max_ms: i64,
        offline_before_ms: i64,
    ) -> anyhow::Result<Vec<(String, &'static str)>> {
        let rows = sqlx::query(
            "SELECT s.id, s.requested_ms, s.connected_ms, m.last_seen_ms FROM sessions s \
             JOIN machines m ON m.id = s.machine_id WHERE s.ended_ms IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let id: String = r.try_get("id")?;
            let requested: i64 = r.try_get("requested_ms")?;
            let connected: Option<i64> = r.try_get("connected_ms")?;
            let seen: i64 = r.try_get("last_seen_ms")?;
            if seen < offline_before_ms {
                out.push((id, "machine_offline"));
            } else if connected.is_none() && now_ms - requested > connect_timeout_ms {
                out.push((id, "timeout"));
            } else if now_ms - requested > max_ms {
                out.push((id, "max_duration"));
            }
        }
        Ok(out)
    }

    /// Counts for the status page.
    pub async fn counts(&self) -> anyhow::Result<(i64, i64, i64)> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM machines) AS machines, \
             (SELECT COUNT(*) FROM sessions WHERE ended_ms IS NULL) AS live, \
             (SELECT COUNT(*) FROM sessions) AS total",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("machines")?, row.try_get("live")?, row.try_get("total")?))
    }
}
