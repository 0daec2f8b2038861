-- The links a relay reports to other relays, from its heartbeats: a JSON array of link reports
-- (peer, state, RTT, datagrams and bytes each way, repairs; '[]': none).
ALTER TABLE relays ADD COLUMN links_json TEXT NOT NULL DEFAULT '[]';
