//! Wire to domain for `Admin/UpdateMembers` and `Admin/ForgetUsers`: checks
//! every field (messages name the field and index) and converts; the
//! handlers in `admin` call these, then `crate::realtime`.

use tonic::Status;

use super::limits::{RequestLimits, invalid};
use crate::proto::{MemberUpdate, member_update};
use crate::realtime::NewUpdate;
use crate::shard::Shard;
use crate::store::MemberOp;

/// The request's updates as the domain takes them, or the first bad field.
pub fn updates_from_wire(
    limits: &RequestLimits,
    max_updates: usize,
    shard: Shard,
    updates: &[MemberUpdate],
) -> Result<Vec<NewUpdate>, Status> {
    limits.check_count("updates", updates.len(), max_updates)?;
    updates
        .iter()
        .enumerate()
        .map(|(index, update)| {
            let field = format!("updates[{index}].user_id");
            limits.check_user_id(&field, &update.user_id)?;
            check_shard(shard, &field, &update.user_id)?;
            let op = match member_update::Op::try_from(update.op) {
                Ok(member_update::Op::Add) => MemberOp::Add,
                Ok(member_update::Op::Remove) => MemberOp::Remove,
                Err(_) => {
                    return Err(invalid(
                        format!("updates[{index}].op"),
                        &format!("unknown value {} (ADD = 0, REMOVE = 1)", update.op),
                    ));
                }
            };
            for (field, value) in [
                ("last_seen_unix_seconds", update.last_seen_unix_seconds),
                ("expires_at_unix_seconds", update.expires_at_unix_seconds),
            ] {
                if value < 0 {
                    return Err(invalid(
                        format!("updates[{index}].{field}"),
                        &format!("{value} is before 1970 (0 = unset)"),
                    ));
                }
            }
            Ok(NewUpdate {
                user_fingerprint: crate::user_fingerprint(&update.user_id),
                segment_id: update.segment_id,
                op,
                last_seen_unix_seconds: update.last_seen_unix_seconds,
                expires_at_unix_seconds: update.expires_at_unix_seconds,
            })
        })
        .collect()
}

/// The fingerprints of the users to forget, or the first bad id.
pub fn forgets_from_wire(
    limits: &RequestLimits,
    max_users: usize,
    shard: Shard,
    user_ids: &[String],
) -> Result<Vec<u64>, Status> {
    limits.check_count("user_ids", user_ids.len(), max_users)?;
    user_ids
        .iter()
        .enumerate()
        .map(|(index, user_id)| {
            let field = format!("user_ids[{index}]");
            limits.check_user_id(&field, user_id)?;
            check_shard(shard, &field, user_id)?;
            Ok(crate::user_fingerprint(user_id))
        })
        .collect()
}

/// `FAILED_PRECONDITION` for a user of another shard (`--shard I/N`): the
/// update belongs on that shard's replicas, and applying it here would be lost.
fn check_shard(shard: Shard, field: &str, user_id: &str) -> Result<(), Status> {
    if !shard.is_sharded() || shard.owns(crate::user_fingerprint(user_id)) {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "{field}: {}",
        crate::shard::misrouted_message(user_id, shard)
    )))
}
