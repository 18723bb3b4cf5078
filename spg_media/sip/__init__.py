"""SIP: messages, URIs, SDP, transactions, dialogs and transports."""
