//! Helpers for the real-time tests: building updates, sending them, reading
//! what Status says of the overlay.

use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use segd::proto::admin_client::AdminClient;
use segd::proto::{
    ForgetUsersRequest, MemberUpdate, RealtimeStatus, StatusRequest, UpdateMembersRequest,
    member_update,
};

use super::TokenInterceptor;

pub type Admin = AdminClient<InterceptedService<Channel, TokenInterceptor>>;

pub fn add(user_id: &str, segment_id: u32, last_seen: i64, expires_at: i64) -> MemberUpdate {
    MemberUpdate {
        user_id: user_id.to_owned(),
        segment_id,
        op: member_update::Op::Add as i32,
        last_seen_unix_seconds: last_seen,
        expires_at_unix_seconds: expires_at,
    }
}

pub fn remove(user_id: &str, segment_id: u32) -> MemberUpdate {
    MemberUpdate {
        user_id: user_id.to_owned(),
        segment_id,
        op: member_update::Op::Remove as i32,
        last_seen_unix_seconds: 0,
        expires_at_unix_seconds: 0,
    }
}

pub async fn update(admin: &mut Admin, updates: Vec<MemberUpdate>) -> Result<u32, Status> {
    admin
        .update_members(UpdateMembersRequest { updates })
        .await
        .map(|reply| reply.into_inner().applied)
}

pub async fn forget(admin: &mut Admin, user_ids: &[&str]) -> Result<u32, Status> {
    admin
        .forget_users(ForgetUsersRequest {
            user_ids: user_ids.iter().map(|user| (*user).to_owned()).collect(),
        })
        .await
        .map(|reply| reply.into_inner().forgotten)
}

pub async fn realtime_status(admin: &mut Admin) -> RealtimeStatus {
    admin
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .realtime
        .expect("status reports the real-time figures")
}

/// Polls Status (maintenance runs every second) until `done` holds, for at
/// most 10 s.
pub async fn wait_for_status(
    admin: &mut Admin,
    what: &str,
    done: impl Fn(&RealtimeStatus) -> bool,
) -> RealtimeStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = realtime_status(admin).await;
        if done(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits until the server clock (seconds) has passed `unix_seconds`, so that
/// updates sent next are stamped after it.
pub async fn wait_past(unix_seconds: i64) {
    while segd::unix_now_seconds() <= unix_seconds {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
