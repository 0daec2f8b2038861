-- A relay's link endpoint for other relays (QUIC, mutual TLS with the cluster CA): its UDP port
-- on public_host, reported in heartbeats (NULL: the relay takes no links).
ALTER TABLE relays ADD COLUMN link_port INTEGER;
