//! Applying commands: all-or-nothing, revision bumps, and the property that no sequence of
//! commands can lead to an invalid configuration.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::cell::Cell;
use std::net::SocketAddr;

use fulcrum_model::command::ObjectKind;
use fulcrum_model::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

fn name(text: &str) -> Name {
    text.parse().unwrap()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn pool(pool_name: &str, backends: &[&str]) -> Pool {
    let mut pool = Pool::new(name(pool_name));
    pool.backends = backends.iter().map(|a| Backend::new(addr(a))).collect();
    pool
}

fn tcp_listener(listener_name: &str, bind: &str, pool_name: &str) -> Listener {
    Listener::new(name(listener_name), addr(bind), Protocol::Tcp, name(pool_name))
}

#[test]
fn accepted_commands_bump_the_revision() {
    let mut config = Config::default();
    assert_eq!(config.apply(&Command::PutPool(pool("web", &["198.18.0.21:80"]))), Ok(1));
    let add =
        Command::AddBackend { pool: name("web"), backend: Backend::new(addr("198.18.0.22:80")) };
    assert_eq!(config.apply(&add), Ok(2));
    let drain = Command::SetBackendState {
        pool: name("web"),
        address: addr("198.18.0.22:80"),
        state: AdminState::Draining,
    };
    assert_eq!(config.apply(&drain), Ok(3));
    assert_eq!(config.spec.pools[0].backends[1].state, AdminState::Draining);
}

#[test]
fn a_rejected_command_changes_nothing() {
    let mut config = Config::default();
    config.apply(&Command::PutPool(pool("web", &["198.18.0.21:80"]))).unwrap();
    config.apply(&Command::PutListener(tcp_listener("l", "198.18.0.100:80", "web"))).unwrap();
    let before = config.clone();

    // Deleting a pool that a listener uses would leave a dangling reference.
    let err = config.apply(&Command::DeletePool(name("web"))).unwrap_err();
    assert!(matches!(&err, ApplyError::Invalid(v) if v.0[0].object == "listener 'l'"), "{err}");
    assert_eq!(config, before);

    // The last non-zero weight may not go to zero.
    let zero =
        Command::SetBackendWeight { pool: name("web"), address: addr("198.18.0.21:80"), weight: 0 };
    assert!(config.apply(&zero).is_err());
    assert_eq!(config, before);

    // A whole file that is partly wrong is refused whole.
    let mut spec = config.spec.clone();
    spec.pools.push(pool("extra", &["198.18.0.30:80"]));
    spec.listeners.push(tcp_listener("clash", "198.18.0.100:80", "extra"));
    assert!(config.apply(&Command::Apply(spec)).is_err());
    assert_eq!(config, before);
}

#[test]
fn missing_and_duplicate_objects_are_named() {
    let mut config = Config::default();
    config.apply(&Command::PutPool(pool("web", &["198.18.0.21:80"]))).unwrap();
    let dup =
        Command::AddBackend { pool: name("web"), backend: Backend::new(addr("198.18.0.21:80")) };
    assert_eq!(
        config.apply(&dup).unwrap_err(),
        ApplyError::AlreadyExists { kind: ObjectKind::Backend, name: "web/198.18.0.21:80".into() }
    );
    let missing = Command::RemoveBackend { pool: name("api"), address: addr("198.18.0.21:80") };
    assert_eq!(config.apply(&missing).unwrap_err().to_string(), "pool 'api' does not exist");
    assert_eq!(config.revision, 1);
}

#[test]
fn put_replaces_in_place() {
    let mut config = Config::default();
    config.apply(&Command::PutPool(pool("a", &[]))).unwrap();
    config.apply(&Command::PutPool(pool("b", &[]))).unwrap();
    config.apply(&Command::PutPool(pool("a", &["198.18.0.21:80"]))).unwrap();
    let names: Vec<_> = config.spec.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(config.spec.pools[0].backends.len(), 1);
}

/// Commands over a small universe of names and addresses, so that they often refer to
/// objects that exist and often collide: both accepted and rejected commands are common.
fn command() -> impl Strategy<Value = Command> {
    let names = prop::sample::select(vec!["a", "b", "c"]).prop_map(name);
    let addrs = prop::sample::select(vec!["198.18.0.21:80", "198.18.0.22:80", "198.18.0.23:80"])
        .prop_map(addr);
    let binds = prop::sample::select(vec!["198.18.0.100:80", "198.18.0.100:81", "0.0.0.0:81"])
        .prop_map(addr);
    let backend =
        (addrs.clone(), 0u32..3).prop_map(|(a, weight)| Backend { weight, ..Backend::new(a) });
    let pool = (names.clone(), prop::collection::vec(backend.clone(), 0..3)).prop_map(|(n, bs)| {
        let mut pool = Pool::new(n);
        pool.backends = bs;
        pool
    });
    let state =
        prop::sample::select(vec![AdminState::Active, AdminState::Draining, AdminState::Disabled]);
    let route = (names.clone(), names.clone(), prop::option::of(names.clone())).prop_map(
        |(r, p, limit)| Route {
            name: r,
            matcher: RouteMatch::default(),
            action: RouteAction::Pool(p),
            rewrite_prefix: None,
            rate_limit: limit,
            sticky: None,
        },
    );
    let listener = (
        names.clone(),
        binds,
        names.clone(),
        any::<bool>(),
        prop::collection::vec(route.clone(), 0..2),
    )
        .prop_map(|(n, bind, p, http, routes)| Listener {
            protocol: if http { Protocol::Http } else { Protocol::Tcp },
            routes: if http { routes } else { vec![] },
            ..tcp_listener(n.as_str(), &bind.to_string(), p.as_str())
        });
    let policy = (names.clone(), 0u32..3, prop::sample::select(vec![0.0, 0.5, 10.0])).prop_map(
        |(n, capacity, refill_per_second)| RateLimitPolicy {
            name: n,
            key: RateLimitKey::ClientIp,
            limit: RateLimit::TokenBucket { capacity, refill_per_second },
        },
    );
    prop_oneof![
        pool.prop_map(Command::PutPool),
        names.clone().prop_map(Command::DeletePool),
        listener.prop_map(Command::PutListener),
        names.clone().prop_map(Command::DeleteListener),
        (names.clone(), route).prop_map(|(listener, route)| Command::PutRoute { listener, route }),
        (names.clone(), names.clone())
            .prop_map(|(listener, route)| Command::DeleteRoute { listener, route }),
        (names.clone(), backend).prop_map(|(pool, backend)| Command::AddBackend { pool, backend }),
        (names.clone(), addrs.clone())
            .prop_map(|(pool, address)| Command::RemoveBackend { pool, address }),
        (names.clone(), addrs.clone(), state).prop_map(|(pool, address, state)| {
            Command::SetBackendState { pool, address, state }
        }),
        (names.clone(), addrs, 0u32..3).prop_map(|(pool, address, weight)| {
            Command::SetBackendWeight { pool, address, weight }
        }),
        policy.prop_map(Command::PutRateLimit),
        names.prop_map(Command::DeleteRateLimit),
        Just(Command::Apply(ClusterSpec::default())),
    ]
}

#[test]
fn no_command_sequence_leaves_an_invalid_configuration() {
    let accepted = Cell::new(0u32);
    let rejected = Cell::new(0u32);
    let mut runner = TestRunner::new(RunnerConfig { cases: 256, ..RunnerConfig::default() });
    runner
        .run(&prop::collection::vec(command(), 1..40), |commands| {
            let mut config = Config::default();
            for command in &commands {
                let before = config.clone();
                match config.apply(command) {
                    Ok(revision) => {
                        accepted.set(accepted.get() + 1);
                        prop_assert_eq!(revision, before.revision + 1);
                        prop_assert!(
                            config.spec.validate().is_ok(),
                            "{:?}",
                            config.spec.validate()
                        );
                        let bytes = codec::encode(command).unwrap();
                        prop_assert_eq!(&codec::decode::<Command>(&bytes).unwrap(), command);
                    }
                    Err(_) => {
                        rejected.set(rejected.get() + 1);
                        prop_assert_eq!(&config, &before);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    // The property says little unless both outcomes were exercised often.
    let (accepted, rejected) = (accepted.get(), rejected.get());
    assert!(accepted > 500 && rejected > 500, "accepted {accepted}, rejected {rejected}");
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = codec::decode::<Command>(&bytes);
        let mut versioned = vec![codec::FORMAT_VERSION];
        versioned.extend_from_slice(&bytes);
        let _ = codec::decode::<Config>(&versioned);
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = file::parse(&text);
    }
}
