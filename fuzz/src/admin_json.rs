//! Any bytes sent as the JSON body of an admin API write decode to the object the path
//! takes or fail with an error, never a panic; a decoded object applied to a running
//! configuration is accepted or refused by validation, and an accepted change leaves a
//! configuration that validates and survives the Raft log's encoding.

use std::sync::LazyLock;

use fulcrum_model::api::{AddMember, BackendStateChange, BackendWeightChange, Failover};
use fulcrum_model::{
    Backend, Command, Config, Listener, Pool, RateLimitPolicy, Route, codec, file,
};
use serde::de::DeserializeOwned;

/// The configuration the changes are applied to: one of each object, cross-referenced.
const RUNNING: &str = r#"
[[listeners]]
name = "web"
bind = "198.18.0.100:80"
protocol = "http"
default_pool = "app"
rate_limit = "per-client"

[[listeners.routes]]
name = "api"
host = "*.example.test"
path_prefix = "/api"
pool = "app"

[[pools]]
name = "app"
backends = [{ address = "198.18.1.1:8080" }]

[[rate_limits]]
name = "per-client"
kind = "token_bucket"
key = "client_ip"
capacity = 200
refill_per_second = 100.0
"#;

/// [`RUNNING`] applied, once for every input (each input changes a copy).
static RUNNING_CONFIG: LazyLock<Config> = LazyLock::new(|| {
    let mut config = Config::default();
    let spec = file::parse(RUNNING).expect("the running configuration parses");
    config.apply(&Command::Apply(spec)).expect("the running configuration applies");
    config
});

fn parse<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    serde_json::from_slice(body).ok()
}

/// Checks the property for one input.
pub fn check(data: &[u8]) {
    let Some((&path, body)) = data.split_first() else { return };
    let name = || "app".parse().expect("a valid name");
    let address = || "198.18.1.1:8080".parse().expect("an address");
    let command = match path % 9 {
        0 => parse::<Listener>(body).map(Command::PutListener),
        1 => parse::<Route>(body)
            .map(|route| Command::PutRoute { listener: "web".parse().expect("name"), route }),
        2 => parse::<Pool>(body).map(Command::PutPool),
        3 => parse::<Backend>(body).map(|backend| Command::AddBackend { pool: name(), backend }),
        4 => parse::<BackendStateChange>(body).map(|change| Command::SetBackendState {
            pool: name(),
            address: address(),
            state: change.state,
        }),
        5 => parse::<BackendWeightChange>(body).map(|change| Command::SetBackendWeight {
            pool: name(),
            address: address(),
            weight: change.weight,
        }),
        6 => parse::<RateLimitPolicy>(body).map(Command::PutRateLimit),
        7 => {
            let _ = parse::<AddMember>(body);
            None
        }
        _ => {
            let _ = parse::<Failover>(body);
            None
        }
    };
    let Some(command) = command else { return };
    let mut config = RUNNING_CONFIG.clone();
    if config.apply(&command).is_ok() {
        config.spec.validate().expect("an accepted change leaves a valid configuration");
        let encoded = codec::encode(&command).expect("an accepted command encodes");
        assert_eq!(codec::decode::<Command>(&encoded).expect("and decodes"), command);
    }
}
