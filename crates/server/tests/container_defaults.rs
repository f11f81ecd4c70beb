//! Defaults that make the server safe to run in a container: a replica id
//! taken from the host name (the pod's name), and a refusal to advertise an
//! address other replicas cannot reach.

use qscheduler_server::config::Config;
use qscheduler_server::{Server, ServerError, ServerOptions};

#[tokio::test]
async fn an_unspecified_advertise_address_is_refused_on_a_shared_store() {
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let options = ServerOptions {
            listen: listen.parse().expect("address"),
            // Refused before the store is opened: nothing listens here.
            store: "postgres://nobody@127.0.0.1:1/none".into(),
            // All interfaces without [auth] (tested in auth.rs).
            insecure: true,
            ..ServerOptions::default()
        };
        match Server::start(options).await {
            Err(e @ ServerError::Advertise { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("--advertise"), "{msg}");
                assert!(msg.contains("QSCHEDULER_ADVERTISE"), "{msg}");
            }
            Err(e) => panic!("{listen}: unexpected error {e}"),
            Ok(_) => panic!("{listen}: started"),
        }
    }
    // An explicit unspecified address is no better.
    let mut options = ServerOptions {
        listen: "127.0.0.1:0".parse().expect("address"),
        store: "postgres://nobody@127.0.0.1:1/none".into(),
        ..ServerOptions::default()
    };
    options.store_options.advertise_address = "0.0.0.0:8082".into();
    assert!(matches!(
        Server::start(options).await,
        Err(ServerError::Advertise { .. })
    ));
}

#[tokio::test]
async fn all_interfaces_are_fine_for_the_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = ServerOptions {
        listen: "0.0.0.0:0".parse().expect("address"),
        store: dir.path().to_str().expect("utf-8").into(),
        insecure: true,
        ..ServerOptions::default()
    };
    let server = Server::start(options).await.expect("start");
    assert!(server.local_addr().expect("bound").ip().is_unspecified());
}

#[test]
fn the_replica_id_defaults_to_the_host_name() {
    let options = Config::default().server_options().expect("options");
    let host = gethostname::gethostname()
        .into_string()
        .expect("host name is UTF-8");
    assert_eq!(options.store_options.replica_id, host.trim());

    let explicit = Config::parse(
        "[store]\nreplica_id = \"r-7\"\n",
        std::path::Path::new("t.toml"),
    )
    .expect("config");
    let options = explicit.server_options().expect("options");
    assert_eq!(options.store_options.replica_id, "r-7");
}
