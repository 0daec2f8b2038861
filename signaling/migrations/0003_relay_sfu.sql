-- A relay's SFU: the public base URL of its WHIP/WHEP endpoints, reported in heartbeats (NULL:
-- the relay runs no SFU).
ALTER TABLE relays ADD COLUMN sfu_url TEXT;
