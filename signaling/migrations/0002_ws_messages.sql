-- Signaling messages for a party connected to another signaling instance (PostgreSQL
-- deployments): the sender stores the message and notifies every instance; the instance holding
-- the party's socket claims it by deleting the row. Rows older than the pending TTL are swept.
CREATE TABLE ws_messages (
    id          TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    party       TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
CREATE INDEX ws_messages_party ON ws_messages (role, party, created_ms);
