"""DTMF: RFC 4733 receiver, in-band detector, SIP INFO, merging of sources."""
