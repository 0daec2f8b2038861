-- Round-trip times in ms to the relays a relay has links with, from its heartbeats: a JSON
-- object, relay id -> ms ('{}': none).
ALTER TABLE relays ADD COLUMN link_rtts_json TEXT NOT NULL DEFAULT '{}';
