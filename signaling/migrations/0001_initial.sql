-- Signaling's store. Written in the SQL that SQLite and PostgreSQL share: text ids, BIGINT unix
-- milliseconds, DOUBLE PRECISION, JSON kept as TEXT. No engine-specific types or functions.

CREATE TABLE relays (
    id              TEXT PRIMARY KEY,
    region          TEXT NOT NULL,
    version         TEXT NOT NULL,
    public_host     TEXT NOT NULL,
    turn_udp_port   BIGINT NOT NULL,
    turn_tls_port   BIGINT,
    state           TEXT NOT NULL,              -- as reported: serving | draining
    admin_state     TEXT NOT NULL,              -- as wanted by an admin: serving | draining
    load_json       TEXT NOT NULL,
    utilisation     DOUBLE PRECISION NOT NULL,
    started_at      BIGINT NOT NULL,            -- unix seconds, from the relay
    first_seen_ms   BIGINT NOT NULL,
    last_seen_ms    BIGINT NOT NULL
);

CREATE TABLE turn_secrets (
    version         BIGINT PRIMARY KEY,
    secret          TEXT NOT NULL,
    created_ms      BIGINT NOT NULL,
    retire_after_ms BIGINT                      -- NULL while it is the newest
);

CREATE TABLE machines (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    lat             DOUBLE PRECISION,
    lon             DOUBLE PRECISION,
    rtts_json       TEXT NOT NULL,              -- {"region": ms}
    registered_ms   BIGINT NOT NULL,
    last_seen_ms    BIGINT NOT NULL
);

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    machine_id      TEXT NOT NULL REFERENCES machines (id),
    player          TEXT NOT NULL,
    mode            TEXT NOT NULL,
    region          TEXT NOT NULL,
    relay_id        TEXT NOT NULL,
    source          TEXT NOT NULL,              -- what decided the region
    scores_json     TEXT NOT NULL,
    client_ip       TEXT,
    requested_ms    BIGINT NOT NULL,
    connected_ms    BIGINT,
    ended_ms        BIGINT,
    end_reason      TEXT,
    ended_by        TEXT
);

-- At most one live session per machine, enforced by the store so that several signaling
-- instances cannot both hand out the same machine.
CREATE UNIQUE INDEX sessions_live_machine ON sessions (machine_id) WHERE ended_ms IS NULL;
CREATE INDEX sessions_requested ON sessions (requested_ms);
CREATE INDEX sessions_player ON sessions (player);

CREATE TABLE session_events (
    session_id      TEXT NOT NULL REFERENCES sessions (id),
    seq             BIGINT NOT NULL,
    at_ms           BIGINT NOT NULL,
    kind            TEXT NOT NULL,
    detail_json     TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);
