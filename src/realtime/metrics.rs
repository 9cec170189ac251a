//! The real-time figures in the Prometheus text format, appended to
//! `GET /metrics` by `crate::metrics`.

use std::fmt::Write;

use super::Realtime;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Pack names are restricted to `A-Za-z0-9._-`: no label escaping needed.
pub fn render(out: &mut String, realtime: &Realtime) {
    let figures = realtime.figures();
    let gauges = [
        (
            "segd_overlay_entries",
            "Real-time (user, segment) updates held on top of the packs.",
            figures.overlay_entries,
        ),
        (
            "segd_overlay_max_entries",
            "The --max-overlay-entries bound.",
            figures.max_overlay_entries,
        ),
        (
            "segd_forgotten_users",
            "Forgotten users retained (as fingerprints), applied to every pack.",
            figures.forgotten_users,
        ),
        (
            "segd_realtime_journal_bytes",
            "Bytes of the real-time journal on disk.",
            figures.journal_bytes,
        ),
    ];
    for (name, help, value) in gauges {
        family(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    let counters = [
        (
            "segd_member_updates_total",
            "Member updates applied through UpdateMembers.",
            figures.updates_applied_total,
        ),
        (
            "segd_member_updates_refused_total",
            "UpdateMembers requests refused (unknown segment, overlay full, storage).",
            figures.update_requests_refused_total,
        ),
        (
            "segd_users_forgotten_total",
            "Users forgotten through ForgetUsers.",
            figures.users_forgotten_total,
        ),
        (
            "segd_overlay_folded_entries_total",
            "Overlay entries dropped because every kept pack version carries them.",
            figures.folded_entries_total,
        ),
        (
            "segd_forgets_expired_total",
            "Forgets dropped after --forget-retention-days.",
            figures.expired_forgets_total,
        ),
    ];
    for (name, help, value) in counters {
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        out,
        "segd_forgotten_users_in_packs",
        "gauge",
        "Forgotten users a served pack still contains (served without them): the batch job missed the deletion.",
    );
    for pack in realtime.forgotten_in_packs() {
        let _ = writeln!(
            out,
            "segd_forgotten_users_in_packs{{pack=\"{}\",version=\"{}\"}} {}",
            pack.pack,
            pack.version.replace(['\\', '"', '\n'], "_"),
            pack.users
        );
    }
}
