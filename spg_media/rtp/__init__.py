"""RTP: packets, G.711 tables, per-call media sessions and the media tick."""
