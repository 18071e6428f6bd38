//! ACME certificates: validation of `tls.acme` and its cluster-file form, the names a
//! listener's certificate covers, `Command::Acme` applied to a configuration, state forgotten
//! when a spec change drops ACME from a listener, renewal time, certificate status reports
//! and the binary form of a configuration holding ACME state.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use fulcrum_model::acme::*;
use fulcrum_model::api::{IssuedStatus, OrderStatus, certificate_statuses};
use fulcrum_model::command::ObjectKind;
use fulcrum_model::file;
use fulcrum_model::*;

const DIRECTORY: &str = "https://acme.example.test/directory";
const DAY: u64 = 24 * 3600;

/// Two https listeners getting certificates by ACME (one with listed hostnames, one from its
/// routes' hosts), a plain http listener, and an https listener with a certificate file.
fn base() -> ClusterSpec {
    file::parse(
        r#"
[[listeners]]
name = "public"
bind = "198.18.0.100:443"
protocol = "https"
default_pool = "web"
[listeners.tls.acme]
directory = "https://acme.example.test/directory"
hostnames = ["www.example.test"]

[[listeners]]
name = "shop"
bind = "198.18.0.101:443"
protocol = "https"
[listeners.tls.acme]
directory = "https://acme.example.test/directory"
[[listeners.routes]]
name = "shop"
host = "shop.example.test"
pool = "web"

[[listeners]]
name = "plain"
bind = "198.18.0.102:80"
protocol = "http"
default_pool = "web"

[[listeners]]
name = "files"
bind = "198.18.0.102:443"
protocol = "https"
default_pool = "web"
tls = { certificates = [{ cert = "/etc/fulcrum/tls/web.pem", key = "/etc/fulcrum/tls/web.key" }] }

[[pools]]
name = "web"
backends = [{ address = "198.18.0.21:8080" }]
"#,
    )
    .expect("base configuration is valid")
}

fn name(text: &str) -> Name {
    text.parse().unwrap()
}

/// The ACME settings of `spec`'s listener `listener`.
fn acme_of<'a>(spec: &'a mut ClusterSpec, listener: &str) -> &'a mut AcmeSettings {
    let listener = spec.listeners.iter_mut().find(|l| l.name.as_str() == listener).unwrap();
    listener.tls.as_mut().unwrap().acme.as_mut().unwrap()
}

fn http_listener(listener_name: &str, bind: &str) -> Listener {
    Listener::new(name(listener_name), bind.parse().unwrap(), Protocol::Http, name("web"))
}

/// Asserts that `spec` has exactly one violation, on `object` and `field`.
fn only_violation(spec: &ClusterSpec, object: &str, field: &str) -> String {
    let violations = spec.validate().expect_err("the configuration must be rejected").0;
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!((violations[0].object.as_str(), violations[0].field.as_str()), (object, field));
    violations[0].to_string()
}

/// A configuration at revision 1 holding `base()`.
fn config() -> Config {
    let mut config = Config::default();
    assert_eq!(config.apply(&Command::Apply(base())), Ok(1));
    config
}

fn account(directory: &str) -> AcmeAccount {
    AcmeAccount { directory: directory.into(), key: Sealed(vec![1, 2, 3]), contact: vec![] }
}

fn order(listener: &str) -> AcmeOrder {
    AcmeOrder {
        listener: name(listener),
        hostnames: vec![format!("{listener}.example.test")],
        url: Some(format!("https://acme.example.test/order/{listener}")),
        failures: 2,
        retry_at: 5_000,
        last_error: Some("rate limited".into()),
        renew_requested: false,
        pending_key: Some(Sealed(vec![4, 5, 6])),
    }
}

fn answer(listener: &str, token: &str) -> ChallengeAnswer {
    ChallengeAnswer {
        listener: name(listener),
        kind: ChallengeKind::TlsAlpn01,
        hostname: format!("{listener}.example.test"),
        token: token.into(),
        key_authorization: format!("{token}.thumbprint"),
    }
}

fn certificate(listener: &str, not_before: u64) -> IssuedCertificate {
    IssuedCertificate {
        listener: name(listener),
        hostnames: vec![format!("{listener}.example.test")],
        chain_pem: format!("-----BEGIN CERTIFICATE-----\n{listener}\n-----END CERTIFICATE-----\n"),
        key: Sealed(vec![9; 32]),
        not_before,
        not_after: not_before + 90 * DAY,
    }
}

fn acme(command: AcmeCommand) -> Command {
    Command::Acme(command)
}

fn put_challenges(listener: &str, tokens: &[&str]) -> Command {
    acme(AcmeCommand::PutChallenges {
        listener: name(listener),
        answers: tokens.iter().map(|t| answer(listener, t)).collect(),
    })
}

/// `config()` with an account, and an order, challenges and a certificate for both ACME
/// listeners.
fn config_with_state() -> Config {
    let mut config = config();
    let commands = [
        acme(AcmeCommand::PutAccount(account(DIRECTORY))),
        acme(AcmeCommand::Issued(certificate("public", 1_000))),
        acme(AcmeCommand::Issued(certificate("shop", 2_000))),
        acme(AcmeCommand::PutOrder(order("public"))),
        acme(AcmeCommand::PutOrder(order("shop"))),
        put_challenges("public", &["p1", "p2"]),
        put_challenges("shop", &["s1"]),
    ];
    for command in &commands {
        config.apply(command).unwrap();
    }
    assert_eq!(config.revision, 1 + commands.len() as u64);
    config
}

/// The listeners that have an order, challenges and a certificate, respectively.
fn state_listeners(config: &Config) -> [Vec<&str>; 3] {
    let state = &config.acme;
    [
        state.orders.iter().map(|o| o.listener.as_str()).collect(),
        state.challenges.iter().map(|c| c.listener.as_str()).collect(),
        state.certificates.iter().map(|c| c.listener.as_str()).collect(),
    ]
}

// Validation.

#[test]
fn https_listener_with_acme_and_no_certificates_is_valid() {
    let spec = base();
    spec.validate().unwrap();
    for listener in ["public", "shop"] {
        let tls = spec.listener(listener).unwrap().tls.as_ref().unwrap();
        assert!(tls.certificates.is_empty());
        assert!(tls.acme.is_some());
    }
    // Defaults of everything not written.
    let mut spec = spec;
    let settings = acme_of(&mut spec, "public");
    assert_eq!(settings.contact, Vec::<String>::new());
    assert_eq!(settings.key_type, KeyType::EcdsaP256);
    assert_eq!(settings.challenge, ChallengeKind::TlsAlpn01);
    assert_eq!(settings.ca_file, None);
}

#[test]
fn no_names_to_certify() {
    let mut spec = base();
    acme_of(&mut spec, "public").hostnames.clear();
    let message = only_violation(&spec, "listener 'public'", "tls.acme.hostnames");
    assert!(message.contains("no names to certify"), "{message}");

    // Wildcard route hosts give no names either.
    let mut spec = base();
    spec.listeners[1].routes[0].matcher.host = Some("*.example.test".into());
    only_violation(&spec, "listener 'shop'", "tls.acme.hostnames");
    spec.listeners[1].routes[0].matcher.host = None;
    only_violation(&spec, "listener 'shop'", "tls.acme.hostnames");
}

#[test]
fn wildcard_and_single_label_hostnames_are_refused() {
    for bad in ["*.example.test", "localhost", "example.test.", "-www.example.test", "a b.test"] {
        let mut spec = base();
        acme_of(&mut spec, "public").hostnames = vec!["www.example.test".into(), bad.into()];
        let message = only_violation(&spec, "listener 'public'", "tls.acme.hostnames");
        assert!(message.contains(&format!("'{bad}'")), "{message}");
    }
    // Names are compared lowercased, so capitals are no fault.
    let mut spec = base();
    acme_of(&mut spec, "public").hostnames = vec!["WWW.Example.Test".into()];
    spec.validate().unwrap();
}

#[test]
fn directory_must_be_an_https_url() {
    for bad in ["http://acme.example.test/directory", "acme.example.test", "https://", ""] {
        let mut spec = base();
        acme_of(&mut spec, "public").directory = bad.into();
        let message = only_violation(&spec, "listener 'public'", "tls.acme.directory");
        assert!(message.contains("https://"), "{message}");
    }
}

#[test]
fn http01_needs_an_http_listener_on_the_same_address() {
    let mut spec = base();
    acme_of(&mut spec, "public").challenge = ChallengeKind::Http01;
    let message = only_violation(&spec, "listener 'public'", "tls.acme.challenge");
    assert!(message.contains("198.18.0.100:80"), "{message}");

    // An http listener on another address, or a tcp one on the same, does not answer.
    let mut other = spec.clone();
    other.listeners.push(http_listener("elsewhere", "198.18.0.103:80"));
    only_violation(&other, "listener 'public'", "tls.acme.challenge");
    let mut tcp = spec.clone();
    let mut listener = http_listener("raw", "198.18.0.100:80");
    listener.protocol = Protocol::Tcp;
    tcp.listeners.push(listener);
    only_violation(&tcp, "listener 'public'", "tls.acme.challenge");

    // One on the same address (any port: 80 may be forwarded) or on the unspecified one does.
    for bind in ["198.18.0.100:80", "198.18.0.100:8080", "0.0.0.0:8080"] {
        let mut with_http = spec.clone();
        with_http.listeners.push(http_listener("challenges", bind));
        with_http.validate().unwrap_or_else(|v| panic!("http listener on {bind}: {v}"));
    }
}

#[test]
fn cluster_file_form() {
    let spec = file::parse(
        r#"
[[listeners]]
name = "challenges"
bind = "198.18.0.100:80"
protocol = "http"
default_pool = "web"

[[listeners]]
name = "public"
bind = "198.18.0.100:443"
protocol = "https"
default_pool = "web"

[listeners.tls.acme]
directory = "https://acme.example.test/directory"
contact = ["mailto:ops@example.test", "mailto:oncall@example.test"]
hostnames = ["www.example.test", "example.test"]
key_type = "ecdsa-p384"
challenge = "http-01"
ca_file = "/etc/fulcrum/acme-ca.pem"

[[pools]]
name = "web"
backends = [{ address = "198.18.0.21:8080" }]
"#,
    )
    .unwrap();
    let tls = spec.listener("public").unwrap().tls.as_ref().unwrap();
    assert!(tls.certificates.is_empty());
    assert_eq!(
        tls.acme,
        Some(AcmeSettings {
            directory: DIRECTORY.into(),
            contact: vec!["mailto:ops@example.test".into(), "mailto:oncall@example.test".into()],
            hostnames: vec!["www.example.test".into(), "example.test".into()],
            key_type: KeyType::EcdsaP384,
            challenge: ChallengeKind::Http01,
            ca_file: Some("/etc/fulcrum/acme-ca.pem".into()),
        })
    );
    // What is rendered reads back the same, with and without the optional fields.
    for spec in [spec, base()] {
        let text = file::render(&spec).unwrap();
        assert_eq!(file::parse(&text).unwrap(), spec, "rendered:\n{text}");
    }
}

#[test]
fn challenge_kinds_are_written_as_they_are_reported() {
    for kind in [ChallengeKind::TlsAlpn01, ChallengeKind::Http01] {
        let shown = kind.to_string();
        assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{shown}\""));
        let parsed: ChallengeKind = serde_json::from_str(&format!("\"{shown}\"")).unwrap();
        assert_eq!(parsed, kind);
    }
}

#[test]
fn cluster_file_shape_errors_in_acme() {
    let listener = r#"
[[listeners]]
name = "public"
bind = "198.18.0.100:443"
protocol = "https"
default_pool = "web"
[listeners.tls.acme]
directory = "https://acme.example.test/directory"
"#;
    for (line, field) in [
        ("hostname = [\"www.example.test\"]", "hostname"),
        ("key_type = \"rsa-2048\"", "key_type"),
        ("challenge = \"dns-01\"", "challenge"),
    ] {
        match file::parse(&format!("{listener}{line}\n")) {
            Err(file::FileError::Field { object, field: at, line, problem }) => {
                assert_eq!(object, "listener 'public'", "{problem}");
                assert!(at.starts_with("tls.acme"), "field {at}: {problem}");
                assert!(problem.contains(field) || at.ends_with(field), "{at}: {problem}");
                assert_eq!(line, 9, "{problem}");
            }
            other => panic!("{line}: expected a field error, got {other:?}"),
        }
    }
}

// Names.

#[test]
fn names_for_takes_exact_route_hosts_when_no_hostnames_are_listed() {
    let mut spec = base();
    let routes = &mut spec.listeners[1].routes;
    let template = routes[0].clone();
    for (i, host) in
        [Some("API.example.test"), Some("*.example.test"), None, Some("shop.example.test")]
            .into_iter()
            .enumerate()
    {
        let mut route = template.clone();
        route.name = name(&format!("r{i}"));
        route.matcher.host = host.map(Into::into);
        routes.push(route);
    }
    spec.validate().unwrap();
    let listener = spec.listener("shop").unwrap();
    let settings = listener.tls.as_ref().unwrap().acme.as_ref().unwrap();
    assert_eq!(settings.names_for(listener), ["api.example.test", "shop.example.test"]);

    // Listed hostnames win over route hosts, lowercased, sorted and deduplicated.
    let hostnames = ["b.example.test", "A.example.test", "a.example.TEST", "b.example.test"];
    let listed = AcmeSettings {
        hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
        ..settings.clone()
    };
    assert_eq!(listed.names_for(listener), ["a.example.test", "b.example.test"]);
}

// Commands.

#[test]
fn a_second_account_for_a_directory_is_refused_and_changes_nothing() {
    let mut config = config();
    assert_eq!(config.apply(&acme(AcmeCommand::PutAccount(account(DIRECTORY)))), Ok(2));
    let before = config.clone();
    let racer =
        AcmeAccount { directory: DIRECTORY.into(), key: Sealed(vec![7, 7, 7]), contact: vec![] };
    let err = config.apply(&acme(AcmeCommand::PutAccount(racer))).unwrap_err();
    assert_eq!(
        err,
        ApplyError::AlreadyExists { kind: ObjectKind::AcmeAccount, name: DIRECTORY.into() }
    );
    assert_eq!(config, before);
    assert_eq!(config.revision, 2);
    assert_eq!(config.acme.account(DIRECTORY), Some(&account(DIRECTORY)));

    // Another directory gets its own account.
    let staging = "https://acme-staging.example.test/directory";
    assert_eq!(config.apply(&acme(AcmeCommand::PutAccount(account(staging)))), Ok(3));
    assert_eq!(config.acme.accounts.len(), 2);
}

#[test]
fn listener_commands_need_a_listener_that_asks_for_acme() {
    let mut config = config_with_state();
    let before = config.clone();
    // Missing, plain http, and https with certificate files.
    for listener in ["nope", "plain", "files"] {
        let commands = [
            acme(AcmeCommand::PutOrder(order(listener))),
            put_challenges(listener, &["t"]),
            acme(AcmeCommand::RequestRenewal(name(listener))),
            acme(AcmeCommand::Issued(certificate(listener, 0))),
        ];
        for command in &commands {
            let err = config.apply(command).unwrap_err();
            assert_eq!(
                err,
                ApplyError::NotFound { kind: ObjectKind::AcmeListener, name: listener.into() },
                "{command:?}"
            );
            assert_eq!(config, before, "{command:?}");
        }
    }
}

#[test]
fn put_order_and_challenges_replace_the_listeners_own() {
    let mut config = config_with_state();
    let revision = config.revision;
    let placed = AcmeOrder { failures: 0, last_error: None, ..order("public") };
    assert_eq!(config.apply(&acme(AcmeCommand::PutOrder(placed.clone()))), Ok(revision + 1));
    assert_eq!(config.acme.order(&name("public")), Some(&placed));
    assert_eq!(config.acme.order(&name("shop")), Some(&order("shop")));
    assert_eq!(config.acme.orders.len(), 2);

    // Answers replace the listener's, and are filed under the listener the command names.
    let stray = ChallengeAnswer { listener: name("shop"), ..answer("public", "p3") };
    let command =
        acme(AcmeCommand::PutChallenges { listener: name("public"), answers: vec![stray] });
    assert_eq!(config.apply(&command), Ok(revision + 2));
    assert_eq!(state_listeners(&config)[1], ["shop", "public"]);
    assert_eq!(config.acme.challenges[1], answer("public", "p3"));

    // Empty answers clear them.
    assert_eq!(config.apply(&put_challenges("public", &[])), Ok(revision + 3));
    assert_eq!(config.acme.challenges, [answer("shop", "s1")]);
}

#[test]
fn issued_replaces_the_certificate_and_ends_only_that_listeners_order() {
    let mut config = config_with_state();
    let revision = config.revision;
    let renewed = certificate("public", 60 * DAY);
    assert_eq!(config.apply(&acme(AcmeCommand::Issued(renewed.clone()))), Ok(revision + 1));
    assert_eq!(config.acme.certificate(&name("public")), Some(&renewed));
    assert_eq!(config.acme.certificates.len(), 2);
    assert_eq!(config.acme.order(&name("public")), None);
    assert_eq!(
        state_listeners(&config),
        [vec!["shop"], vec!["shop"], vec!["shop", "public"]],
        "shop keeps its order, challenges and certificate"
    );
    assert_eq!(config.acme.certificate(&name("shop")), Some(&certificate("shop", 2_000)));
    assert_eq!(config.acme.order(&name("shop")), Some(&order("shop")));
    assert_eq!(config.acme.accounts, [account(DIRECTORY)]);
}

#[test]
fn request_renewal_creates_or_flags_an_order() {
    let mut config = config();
    assert_eq!(config.apply(&acme(AcmeCommand::RequestRenewal(name("public")))), Ok(2));
    assert_eq!(
        config.acme.orders,
        [AcmeOrder {
            listener: name("public"),
            hostnames: vec![],
            url: None,
            failures: 0,
            retry_at: 0,
            last_error: None,
            renew_requested: true,
            pending_key: None,
        }]
    );

    // On an order waiting after failures: flagged and due now; the rest is kept.
    assert_eq!(config.apply(&acme(AcmeCommand::PutOrder(order("shop")))), Ok(3));
    assert_eq!(config.apply(&acme(AcmeCommand::RequestRenewal(name("shop")))), Ok(4));
    assert_eq!(
        config.acme.order(&name("shop")),
        Some(&AcmeOrder { renew_requested: true, retry_at: 0, ..order("shop") })
    );
    assert_eq!(config.acme.orders.len(), 2);
}

// Spec changes.

#[test]
fn dropping_acme_from_a_listener_forgets_its_state_but_keeps_accounts() {
    let mut config = config_with_state();
    let full = config.acme.clone();

    // A change that leaves ACME listeners alone keeps everything.
    let mut pool = config.spec.pools[0].clone();
    pool.backends[0].weight = 2;
    config.apply(&Command::PutPool(pool)).unwrap();
    assert_eq!(config.acme, full);

    // A rejected change keeps everything too.
    let before = config.clone();
    config.apply(&Command::DeletePool(name("web"))).unwrap_err();
    assert_eq!(config, before);

    // `public` switches to a certificate file.
    let mut public = config.spec.listener("public").unwrap().clone();
    public.tls = Some(Tls {
        certificates: vec![Certificate { cert: "a.pem".into(), key: "a.key".into() }],
        acme: None,
    });
    let revision = config.revision;
    assert_eq!(config.apply(&Command::PutListener(public)), Ok(revision + 1));
    assert_eq!(state_listeners(&config), [vec!["shop"], vec!["shop"], vec!["shop"]]);
    assert_eq!(config.acme.accounts, [account(DIRECTORY)]);

    // `shop` is deleted.
    config.apply(&Command::DeleteListener(name("shop"))).unwrap();
    assert_eq!(
        config.acme,
        AcmeState { accounts: vec![account(DIRECTORY)], ..AcmeState::default() }
    );
}

#[test]
fn applying_a_spec_without_acme_forgets_all_but_accounts() {
    let mut config = config_with_state();
    let mut spec = config.spec.clone();
    spec.listeners.retain(|l| l.tls.as_ref().is_none_or(|t| t.acme.is_none()));
    assert_eq!(spec.listeners.len(), 2);
    let revision = config.revision;
    assert_eq!(config.apply(&Command::Apply(spec)), Ok(revision + 1));
    assert_eq!(
        config.acme,
        AcmeState { accounts: vec![account(DIRECTORY)], ..AcmeState::default() }
    );

    // Applying a spec that keeps one ACME listener keeps that one's state only.
    let mut config = config_with_state();
    let mut spec = config.spec.clone();
    spec.listeners.retain(|l| l.name.as_str() != "public");
    config.apply(&Command::Apply(spec)).unwrap();
    assert_eq!(state_listeners(&config), [vec!["shop"], vec!["shop"], vec!["shop"]]);
}

// Renewal and status.

#[test]
fn renewal_is_due_two_thirds_into_the_lifetime() {
    let issued = certificate("public", 1_700_000_000);
    assert_eq!(issued.renew_at(), 1_700_000_000 + 60 * DAY);
    let short = IssuedCertificate { not_before: 100, not_after: 400, ..issued.clone() };
    assert_eq!(short.renew_at(), 300);
    // A certificate that ends before it starts is due at once, without overflow.
    let backwards = IssuedCertificate { not_before: 400, not_after: 100, ..issued.clone() };
    assert_eq!(backwards.renew_at(), 400);
    let late = IssuedCertificate { not_before: u64::MAX - 1, not_after: u64::MAX, ..issued };
    assert_eq!(late.renew_at(), u64::MAX - 1);
}

#[test]
fn certificate_statuses_report_issued_and_order() {
    let mut config = config();
    config.apply(&acme(AcmeCommand::PutAccount(account(DIRECTORY)))).unwrap();
    let issued = certificate("public", 1_000);
    config.apply(&acme(AcmeCommand::Issued(issued.clone()))).unwrap();
    config.apply(&acme(AcmeCommand::RequestRenewal(name("public")))).unwrap();
    config.apply(&acme(AcmeCommand::PutOrder(order("shop")))).unwrap();

    let statuses = certificate_statuses(&config);
    let listeners: Vec<_> = statuses.iter().map(|s| s.listener.as_str()).collect();
    assert_eq!(listeners, ["public", "shop"], "ACME listeners only, in listener order");

    let public = &statuses[0];
    assert_eq!(public.directory, DIRECTORY);
    assert_eq!(public.challenge, "tls-alpn-01");
    assert_eq!(public.hostnames, ["www.example.test"]);
    assert_eq!(
        public.issued,
        Some(IssuedStatus {
            hostnames: issued.hostnames.clone(),
            not_before: 1_000,
            not_after: 1_000 + 90 * DAY,
            renew_at: 1_000 + 60 * DAY,
            chain_pem: issued.chain_pem.clone(),
        })
    );
    assert_eq!(
        public.order,
        Some(OrderStatus {
            url: None,
            failures: 0,
            retry_at: 0,
            last_error: None,
            renew_requested: true
        })
    );

    let shop = &statuses[1];
    assert_eq!(shop.hostnames, ["shop.example.test"], "from the route's host");
    assert_eq!(shop.issued, None);
    let ordered = order("shop");
    assert_eq!(
        shop.order,
        Some(OrderStatus {
            url: ordered.url,
            failures: 2,
            retry_at: 5_000,
            last_error: Some("rate limited".into()),
            renew_requested: false,
        })
    );

    // http-01 is reported by name too.
    let mut spec = config.spec.clone();
    acme_of(&mut spec, "shop").challenge = ChallengeKind::Http01;
    spec.listeners.push(http_listener("challenges", "198.18.0.101:80"));
    config.apply(&Command::Apply(spec)).unwrap();
    assert_eq!(certificate_statuses(&config)[1].challenge, "http-01");
}

// Binary form.

#[test]
fn binary_round_trip_of_a_config_with_acme_state() {
    let mut config = config_with_state();
    let settings = acme_of(&mut config.spec, "public");
    settings.contact = vec!["mailto:ops@example.test".into()];
    settings.key_type = KeyType::EcdsaP384;
    settings.ca_file = Some("/etc/fulcrum/acme-ca.pem".into());
    config.spec.validate().unwrap();
    assert!(!config.acme.accounts.is_empty() && !config.acme.challenges.is_empty());

    let bytes = codec::encode(&config).unwrap();
    assert_eq!(bytes[0], codec::FORMAT_VERSION);
    assert_eq!(codec::decode::<Config>(&bytes).unwrap(), config);
    for cut in 1..bytes.len() {
        assert!(codec::decode::<Config>(&bytes[..cut]).is_err(), "cut at {cut} decoded");
    }

    let commands = [
        AcmeCommand::PutAccount(account(DIRECTORY)),
        AcmeCommand::PutOrder(order("public")),
        AcmeCommand::PutChallenges {
            listener: name("public"),
            answers: vec![answer("public", "t")],
        },
        AcmeCommand::Issued(certificate("public", 1_000)),
        AcmeCommand::RequestRenewal(name("public")),
        AcmeCommand::UpdateAccount(account(DIRECTORY)),
        AcmeCommand::ResealCertificate { listener: name("public"), key: Sealed(vec![9]) },
    ];
    for command in commands.map(Command::Acme) {
        let bytes = codec::encode(&command).unwrap();
        assert_eq!(codec::decode::<Command>(&bytes).unwrap(), command);
        let json = serde_json::to_string(&command).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), command);
    }
}

#[test]
fn an_account_is_updated_whole_and_a_certificate_resealed_without_touching_its_order() {
    let mut config = config();
    let unknown = config.apply(&acme(AcmeCommand::UpdateAccount(account(DIRECTORY))));
    assert!(matches!(unknown, Err(ApplyError::NotFound { kind: ObjectKind::AcmeAccount, .. })));
    config.apply(&acme(AcmeCommand::PutAccount(account(DIRECTORY)))).unwrap();
    let updated = AcmeAccount {
        key: Sealed(vec![8]),
        contact: vec!["mailto:ops@example.test".into()],
        ..account(DIRECTORY)
    };
    config.apply(&acme(AcmeCommand::UpdateAccount(updated.clone()))).unwrap();
    assert_eq!(config.acme.accounts, [updated]);

    config.apply(&acme(AcmeCommand::Issued(certificate("public", 1_000)))).unwrap();
    config.apply(&acme(AcmeCommand::PutOrder(order("public")))).unwrap();
    let reseal = AcmeCommand::ResealCertificate { listener: name("public"), key: Sealed(vec![9]) };
    config.apply(&acme(reseal)).unwrap();
    assert_eq!(config.acme.certificate(&name("public")).unwrap().key, Sealed(vec![9]));
    assert_eq!(config.acme.order(&name("public")), Some(&order("public")), "the order stays");
    let missing = AcmeCommand::ResealCertificate { listener: name("shop"), key: Sealed(vec![9]) };
    assert!(config.apply(&acme(missing)).is_err(), "no certificate to reseal");
}
