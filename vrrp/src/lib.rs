//! Fulcrum's VRRPv3 for IPv4 (RFC 9568): it elects which node owns each virtual IP.
//!
//! It will own the advertisement wire format, the Initialize/Backup/Master state machine
//! (sans-IO: time and packets are values), and the thin driver around them (raw socket,
//! gratuitous ARP, VIP add/remove). It never depends on the rest of Fulcrum: the node feeds
//! it priorities and reads its state.
