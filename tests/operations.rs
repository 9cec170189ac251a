//! What an operator relies on: TLS on both ports (with client certificates on
//! the admin port), a token file, request size and count limits, and load
//! shedding that answers RESOURCE_EXHAUSTED fast and recovers.

mod common;

use common::model::ModelPack;
use common::{TestServer, TokenInterceptor, config, push};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use segd::proto::admin_client::AdminClient;
use segd::proto::{BatchLookupRequest, LookupRequest, StatusRequest};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

const BUILT_AT: i64 = 1_790_000_000;

struct TestPki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

fn pki() -> TestPki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["batch-job".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    TestPki {
        ca_pem: ca.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_ports_with_client_certificates_on_admin() {
    let data_dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let write = |name: &str, text: &str| {
        let path = data_dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let mut settings = config(&data_dir.path().join("data"));
    settings.network.tls_cert = Some(write("server.pem", &pki.server_cert_pem));
    settings.network.tls_key = Some(write("server.key", &pki.server_key_pem));
    settings.network.admin_client_ca = Some(write("ca.pem", &pki.ca_pem));
    let trust = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    let server = TestServer::start_tls(settings, trust.clone()).await;

    // Query port: TLS, no client certificate needed.
    let mut client = server.segments().await;
    client
        .lookup(LookupRequest {
            user_id: "u1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Plaintext to a TLS port fails.
    let plaintext = common::connect(server.query_addr, None).await;
    if let Ok(channel) = plaintext {
        let mut plain_client = segd::proto::segments_client::SegmentsClient::new(channel);
        assert!(
            plain_client
                .lookup(LookupRequest {
                    user_id: "u1".into(),
                    ..Default::default()
                })
                .await
                .is_err()
        );
    }

    // Admin port: a client certificate signed by the CA is required.
    let with_identity = trust.clone().identity(Identity::from_pem(
        &pki.client_cert_pem,
        &pki.client_key_pem,
    ));
    let channel = common::connect(server.admin_addr, Some(&with_identity))
        .await
        .unwrap();
    let mut admin = AdminClient::with_interceptor(channel, TokenInterceptor(None));
    let pack = ModelPack::random(1, "crm", "v1", BUILT_AT, 50, 1..=3);
    push(&mut admin, &pack.bytes(), false).await.unwrap();
    assert_eq!(
        admin
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .packs
            .len(),
        1
    );

    let anonymous = match common::connect(server.admin_addr, Some(&trust)).await {
        Ok(channel) => {
            let mut admin = AdminClient::new(channel);
            admin.status(StatusRequest {}).await.is_err()
        }
        Err(_) => true,
    };
    assert!(
        anonymous,
        "an admin client without a certificate is refused"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_from_a_file() {
    let data_dir = tempfile::tempdir().unwrap();
    let token_path = data_dir.path().join("token");
    std::fs::write(&token_path, "file-token-123\n").unwrap();
    let mut settings = config(&data_dir.path().join("data"));
    settings.network.admin_token_file = Some(token_path);
    let server = TestServer::start(settings).await;
    let mut right = server.admin().await;
    right.status(StatusRequest {}).await.unwrap();
    let mut wrong = server.admin_with_token(Some("file-token-124")).await;
    assert_eq!(
        wrong.status(StatusRequest {}).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut none = server.admin_with_token(None).await;
    assert_eq!(
        none.status(StatusRequest {}).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_over_limit_requests_are_refused_while_others_are_served() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path());
    settings.limits.max_request_bytes = 2048;
    settings.limits.max_segment_ids = 10;
    let server = TestServer::start(settings).await;
    let pack = ModelPack::random(1, "crm", "v1", BUILT_AT, 50, 1..=3);
    push(&mut server.admin().await, &pack.bytes(), false)
        .await
        .unwrap();
    let user_id = pack.members.keys().next().unwrap().clone();

    let mut bystander = server.segments().await;
    let mut offender = server.segments().await;
    let oversize = offender
        .lookup(LookupRequest {
            user_id: "x".repeat(4000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        oversize.code(),
        Code::ResourceExhausted,
        "{}",
        oversize.message()
    );
    let over_limit = offender
        .lookup(LookupRequest {
            user_id: user_id.clone(),
            segment_ids: (0..11).collect(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(over_limit.code(), Code::InvalidArgument);
    assert!(over_limit.message().contains("segment_ids"));
    for _ in 0..3 {
        bystander
            .lookup(LookupRequest {
                user_id: user_id.clone(),
                at_unix_seconds: BUILT_AT,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // The offender's connection is still usable too.
    offender
        .lookup(LookupRequest {
            user_id,
            ..Default::default()
        })
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_in_flight_limit_is_shed_and_the_server_recovers() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = config(data_dir.path());
    settings.limits.max_in_flight = 2;
    let server = TestServer::start(settings).await;
    let pack = ModelPack::random(1, "crm", "v1", BUILT_AT, 1000, 1..=30);
    push(&mut server.admin().await, &pack.bytes(), false)
        .await
        .unwrap();
    let users: Vec<String> = pack.members.keys().cloned().collect();
    let batch = BatchLookupRequest {
        requests: users
            .iter()
            .map(|user_id| LookupRequest {
                user_id: user_id.clone(),
                ..Default::default()
            })
            .collect(),
    };

    let mut shed = 0;
    let mut served = 0;
    for _attempt in 0..20 {
        let mut burst = Vec::new();
        for _ in 0..4 {
            let client = server.segments().await;
            for _ in 0..16 {
                let mut client = client.clone();
                let batch = batch.clone();
                burst.push(tokio::spawn(
                    async move { client.batch_lookup(batch).await },
                ));
            }
        }
        for request in burst {
            match request.await.unwrap() {
                Ok(_) => served += 1,
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        Code::ResourceExhausted,
                        "{}",
                        status.message()
                    );
                    shed += 1;
                }
            }
        }
        if shed > 0 {
            break;
        }
    }
    assert!(
        shed > 0,
        "a burst of 64 concurrent batches over a limit of 2 sheds some"
    );
    assert!(served > 0, "the requests within the limit are served");
    // After the burst the server answers normally.
    let mut client = server.segments().await;
    for _ in 0..10 {
        client
            .lookup(LookupRequest {
                user_id: users[0].clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    server.stop().await;
}
