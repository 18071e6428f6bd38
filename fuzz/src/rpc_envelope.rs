//! Any head and body sent to the Raft RPC port are refused or accepted, never a panic, and
//! only a head signed with the cluster's secret for this very body is accepted: what the
//! port accepts is what a peer signed.

use fulcrum_raft_store::rpc::{
    ClusterAuth, HEADER_BODY_DIGEST, HEADER_CLUSTER, HEADER_NONCE, HEADER_SENT, HEADER_SIGNATURE,
    HEADER_TARGET, NonceMemory, PATH_APPEND, PATH_MEMBERS, PATH_PEER, PATH_READ, PATH_SNAPSHOT,
    PATH_VOTE, PATH_WRITE, RpcRequest,
};

const PATHS: [&str; 7] =
    [PATH_APPEND, PATH_VOTE, PATH_SNAPSHOT, PATH_WRITE, PATH_READ, PATH_MEMBERS, PATH_PEER];
const NOW_MS: u64 = 1_800_000_000_000;
const LOCAL: u64 = 2;

/// Checks the property for one input.
pub fn check(data: &[u8]) {
    let auth = ClusterAuth::new("lab", b"sixteen byte secret").expect("a strong secret");
    let Some((&selector, rest)) = data.split_first() else { return };
    let path = PATHS[usize::from(selector) % PATHS.len()];
    // The first six lines are the headers an attacker controls; the rest is the body.
    let mut lines = rest.splitn(7, |&b| b == b'\n');
    let mut fields: Vec<&str> = Vec::new();
    for _ in 0..6 {
        fields.push(lines.next().and_then(|l| std::str::from_utf8(l).ok()).unwrap_or_default());
    }
    let body = lines.next().unwrap_or_default();
    let names = [
        HEADER_CLUSTER,
        HEADER_TARGET,
        HEADER_SENT,
        HEADER_NONCE,
        HEADER_BODY_DIGEST,
        HEADER_SIGNATURE,
    ];
    let header = |name: &'static str| {
        names.iter().position(|n| *n == name).map(|i| fields[i]).filter(|v| !v.is_empty())
    };
    let mut nonces = NonceMemory::default();
    let forged = auth.verify_head(header, LOCAL, path, body.len() as u64, NOW_MS, &mut nonces);
    assert!(
        forged.and_then(|head| head.check_body(body)).is_err(),
        "a request nobody signed was accepted"
    );
    let _ = RpcRequest::decode(path, body);

    // The same body signed by a peer is accepted once, and only with this body.
    let signed = auth.sign(LOCAL, path, body, NOW_MS - 1_000, u64::from(selector));
    let header =
        |name: &'static str| signed.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
    let head = auth
        .verify_head(header, LOCAL, path, body.len() as u64, NOW_MS, &mut nonces)
        .expect("a signed head is accepted");
    head.check_body(body).expect("with the body it was signed for");
    if let Some((_, shorter)) = body.split_last() {
        assert!(head.check_body(shorter).is_err(), "a different body passed the digest");
    }
    assert!(
        auth.verify_head(header, LOCAL, path, body.len() as u64, NOW_MS, &mut nonces).is_err(),
        "a replayed head was accepted"
    );
}
