//! `loadtest update`: drives `Admin/UpdateMembers` (and then `ForgetUsers`)
//! closed-loop over several connections and reports updates/s and users/s,
//! and the latency of each request. Also how the overlay is filled before a
//! `loadtest run` that measures lookups on top of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use segd::proto::admin_client::AdminClient;
use segd::proto::{ForgetUsersRequest, MemberUpdate, UpdateMembersRequest, member_update};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::cli::UpdateArgs;

/// Adds the bearer token, when one is given, to every admin call.
type AuthInterceptor =
    dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send;

type Admin = AdminClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>,
    >,
>;

async fn connect(args: &UpdateArgs) -> Result<Admin> {
    let channel = Endpoint::from_shared(args.admin_addr.clone())
        .with_context(|| format!("--admin-addr {} is not a valid URL", args.admin_addr))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to --admin-addr {}", args.admin_addr))?;
    let header: Option<MetadataValue<_>> = match &args.token {
        Some(token) => Some(format!("Bearer {token}").parse()?),
        None => None,
    };
    let interceptor: Box<AuthInterceptor> = Box::new(move |mut request: tonic::Request<()>| {
        if let Some(header) = &header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    });
    Ok(AdminClient::with_interceptor(channel, interceptor).max_encoding_message_size(64 << 20))
}

/// One batch of random adds (90 %) and removes over `u:0..users`.
fn batch(rng: &mut StdRng, args: &UpdateArgs) -> Vec<MemberUpdate> {
    (0..args.batch)
        .map(|_| {
            let remove = rng.random_bool(0.1);
            MemberUpdate {
                user_id: format!("u:{}", rng.random_range(0..args.users)),
                segment_id: rng.random_range(args.first_segment_id..=args.last_segment_id),
                op: if remove {
                    member_update::Op::Remove as i32
                } else {
                    member_update::Op::Add as i32
                },
                last_seen_unix_seconds: 0,
                expires_at_unix_seconds: 0,
            }
        })
        .collect()
}

/// Sends `total` items in batches over `--connections` closed loops; returns
/// (seconds, sorted request latencies in microseconds).
async fn drive<F, Fut>(args: &UpdateArgs, total: u64, send: F) -> Result<(f64, Vec<u64>)>
where
    F: Fn(Admin, u64, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(Admin, Vec<u64>)>> + Send,
{
    let batches = total.div_ceil(args.batch as u64);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for connection in 0..args.connections {
        let client = connect(args).await?;
        let next = next.clone();
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= batches {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let (returned, mut micros) = send(client, index, connection).await?;
                client = returned;
                latencies.append(&mut micros);
            }
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    latencies.sort_unstable();
    Ok((started.elapsed().as_secs_f64(), latencies))
}

fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * fraction) as usize)
        .copied()
        .unwrap_or(0)
}

fn report(what: &str, items: u64, seconds: f64, latencies: &[u64]) {
    println!(
        "{what}: {items} in {seconds:.2} s = {:.0}/s; per request p50 {} us, p99 {} us, max {} us ({} requests)",
        items as f64 / seconds,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
        latencies.len()
    );
}

pub async fn run(args: UpdateArgs) -> Result<()> {
    if args.batch == 0 || args.connections == 0 {
        bail!("--batch and --connections must be at least 1");
    }
    if args.updates > 0 {
        // Batches are generated up front so the generator does not share the
        // measured time with the server on a small box.
        let mut rng = StdRng::seed_from_u64(args.seed);
        let batches = args.updates.div_ceil(args.batch as u64);
        let prepared: Arc<Vec<Vec<MemberUpdate>>> =
            Arc::new((0..batches).map(|_| batch(&mut rng, &args)).collect());
        let (seconds, latencies) = drive(&args, args.updates, move |mut client, index, _| {
            let prepared = prepared.clone();
            async move {
                let updates = prepared[index as usize].clone();
                let started = Instant::now();
                client
                    .update_members(UpdateMembersRequest { updates })
                    .await
                    .context("UpdateMembers")?;
                Ok((client, vec![started.elapsed().as_micros() as u64]))
            }
        })
        .await?;
        report("updates", args.updates, seconds, &latencies);
    }
    if args.forgets > 0 {
        let batch_size = args.batch;
        let (seconds, latencies) = drive(
            &args,
            args.forgets,
            move |mut client, index, _| async move {
                let first = index * batch_size as u64;
                let user_ids = (first..first + batch_size as u64)
                    .map(|user| format!("forget:{user}"))
                    .collect();
                let started = Instant::now();
                client
                    .forget_users(ForgetUsersRequest { user_ids })
                    .await
                    .context("ForgetUsers")?;
                Ok((client, vec![started.elapsed().as_micros() as u64]))
            },
        )
        .await?;
        report("forgets", args.forgets, seconds, &latencies);
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(())
}
