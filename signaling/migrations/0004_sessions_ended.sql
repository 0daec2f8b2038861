-- Every relay heartbeat lists the sfu sessions ended within a media token's lifetime (their
-- tokens are refused): find them by end time without reading every session ever held.
CREATE INDEX sessions_ended ON sessions (ended_ms);
