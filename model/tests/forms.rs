//! The three forms of the model agree: TOML for people, JSON for the admin API, binary for
//! the Raft log; and a cluster file's shape errors name the object and the field.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use fulcrum_model::file::{self, FileError};
use fulcrum_model::{ClusterSpec, Command, Config, codec};

const EXAMPLE: &str = include_str!("../../examples/cluster.toml");

fn example() -> ClusterSpec {
    file::parse(EXAMPLE).expect("the example cluster file is valid")
}

#[test]
fn toml_round_trip_is_identity() {
    let spec = example();
    let text = file::render(&spec).unwrap();
    assert_eq!(file::parse(&text).unwrap(), spec, "rendered:\n{text}");
}

#[test]
fn json_round_trip_is_identity() {
    let spec = example();
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<ClusterSpec>(&json).unwrap(), spec);
    let command = Command::Apply(spec);
    let json = serde_json::to_string(&command).unwrap();
    assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), command);
}

#[test]
fn binary_round_trip_is_identity_and_compact() {
    let config = Config { revision: 42, spec: example(), acme: Default::default() };
    let bytes = codec::encode(&config).unwrap();
    assert_eq!(codec::decode::<Config>(&bytes).unwrap(), config);
    let json = serde_json::to_vec(&config).unwrap();
    assert!(bytes.len() * 2 < json.len(), "binary {} bytes vs JSON {}", bytes.len(), json.len());
}

#[test]
fn binary_rejects_wrong_version_trailing_bytes_and_truncation() {
    let bytes = codec::encode(&Config::default()).unwrap();
    let mut wrong_version = bytes.clone();
    wrong_version[0] = 9;
    assert!(matches!(codec::decode::<Config>(&wrong_version), Err(codec::CodecError::Version(9))));
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(codec::decode::<Config>(&trailing), Err(codec::CodecError::Trailing(1))));
    assert!(matches!(codec::decode::<Config>(&[]), Err(codec::CodecError::Empty)));
    let full =
        codec::encode(&Config { revision: 1, spec: example(), acme: Default::default() }).unwrap();
    for cut in 1..full.len() {
        assert!(codec::decode::<Config>(&full[..cut]).is_err(), "cut at {cut} decoded");
    }
}

#[test]
fn binary_refuses_a_huge_claimed_length_without_allocating_it() {
    // Version 1, revision 0, then a listener count of u64::MAX in bincode's varint form.
    let bytes = [1u8, 0, 253, 255, 255, 255, 255, 255, 255, 255, 255];
    assert!(codec::decode::<Config>(&bytes).is_err());
}

fn field_error(text: &str) -> (String, String, usize, String) {
    match file::parse(text) {
        Err(FileError::Field { object, field, line, problem }) => (object, field, line, problem),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn unknown_algorithm_parameter_names_pool_and_field() {
    let (object, field, line, problem) = field_error(
        r#"
[[pools]]
name = "web"

[[pools]]
name = "api"
algorithm = { kind = "round_robin", table_size = 7 }
"#,
    );
    assert_eq!(object, "pool 'api'");
    assert_eq!(field, "algorithm");
    assert_eq!(line, 7);
    assert!(problem.contains("unknown parameter `table_size`"), "{problem}");
}

#[test]
fn misspelt_field_names_the_backend() {
    let (object, field, _, problem) = field_error(
        r#"
[[pools]]
name = "web"
backends = [{ address = "198.18.0.21:80", wieght = 2 }]
"#,
    );
    assert_eq!(object, "pool 'web' backend '198.18.0.21:80'");
    assert_eq!(field, "wieght");
    assert!(problem.contains("unknown field `wieght`"), "{problem}");
}

#[test]
fn unparsable_address_names_listener_and_field() {
    let (object, field, line, problem) = field_error(
        r#"
[[listeners]]
name = "public"
bind = "198.18.0.300:80"
protocol = "http"
"#,
    );
    assert_eq!((object.as_str(), field.as_str(), line), ("listener 'public'", "bind", 4));
    assert!(problem.contains("invalid socket address"), "{problem}");
}

#[test]
fn a_trusted_proxy_that_is_no_network_names_listener_and_field() {
    let (object, field, line, problem) = field_error(
        r#"
[[listeners]]
name = "public"
bind = "198.18.0.100:80"
protocol = "http"
http = { trusted_proxies = ["198.18.0.0/40"] }
"#,
    );
    assert_eq!(
        (object.as_str(), field.as_str(), line),
        ("listener 'public'", "http.trusted_proxies[0]", 6)
    );
    assert!(problem.contains("invalid IP address"), "{problem}");
}

#[test]
fn route_with_pool_and_split_names_the_route() {
    let (object, _, _, problem) = field_error(
        r#"
[[listeners]]
name = "public"
bind = "198.18.0.100:80"
protocol = "http"
[[listeners.routes]]
name = "both"
pool = "web"
split = [{ pool = "web", weight = 1 }]
"#,
    );
    assert_eq!(object, "listener 'public' route 'both'");
    assert!(problem.contains("exactly one of `pool` or `split`"), "{problem}");
}

#[test]
fn bad_name_and_bad_key_are_shape_errors() {
    let (object, field, _, problem) = field_error("[[pools]]\nname = \"Web Pool\"\n");
    assert_eq!((object.as_str(), field.as_str()), ("pool 'Web Pool'", "name"));
    assert!(problem.contains("lowercase"), "{problem}");

    let (object, field, _, problem) = field_error(
        "[[rate_limits]]\nname = \"r\"\nkind = \"sliding_window\"\nkey = \"cookie:x\"\nlimit = 1\nwindow = \"1s\"\n",
    );
    assert_eq!((object.as_str(), field.as_str()), ("rate limit 'r'", "key"));
    assert!(problem.contains("header:<name>"), "{problem}");
}

#[test]
fn syntax_errors_carry_the_line() {
    match file::parse("[[pools]\nname = 1") {
        Err(FileError::Syntax(message)) => assert!(message.contains("line 1"), "{message}"),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}
