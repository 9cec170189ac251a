//! Wire to domain for `Admin/UpdateMembers` and `Admin/ForgetUsers`: checks
//! every field (messages name the field and index) and converts; the
//! handlers in `admin` call these, then `crate::realtime`.

use tonic::Status;

use super::limits::{RequestLimits, invalid};
use crate::proto::{MemberUpdate, member_update};
use crate::realtime::NewUpdate;
use crate::store::MemberOp;

/// The request's updates as the domain takes them, or the first bad field.
pub fn updates_from_wire(
    limits: &RequestLimits,
    max_updates: usize,
    updates: &[MemberUpdate],
) -> Result<Vec<NewUpdate>, Status> {
    limits.check_count("updates", updates.len(), max_updates)?;
    updates
        .iter()
        .enumerate()
        .map(|(index, update)| {
            limits.check_user_id(&format!("updates[{index}].user_id"), &update.user_id)?;
            let op = match member_update::Op::try_from(update.op) {
                Ok(member_update::Op::Add) => MemberOp::Add,
                Ok(member_update::Op::Remove) => MemberOp::Remove,
                Err(_) => {
                    return Err(invalid(
                        &format!("updates[{index}].op"),
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
                        &format!("updates[{index}].{field}"),
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
    user_ids: &[String],
) -> Result<Vec<u64>, Status> {
    limits.check_count("user_ids", user_ids.len(), max_users)?;
    user_ids
        .iter()
        .enumerate()
        .map(|(index, user_id)| {
            limits.check_user_id(&format!("user_ids[{index}]"), user_id)?;
            Ok(crate::user_fingerprint(user_id))
        })
        .collect()
}
