//! The console's layout and the small pieces every page uses: statuses in
//! words and colour, times (UTC, shown in the viewer's zone by the
//! script), human durations.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use sluice_domain::api_source::status_label;
use sluice_domain::time::{self, Timestamp};
use sluice_domain::RunStatus;

/// A whole page: `title`, the session's organization (None: signed out)
/// and its CSRF token for the sign-out form, and the content. `refresh`:
/// seconds after which the page loads itself again (a run under way): the
/// script does it (unless the page follows a log), or, without the
/// script, the page's own refresh.
pub fn page(
    title: &str,
    signed_in: Option<(&str, &str)>,
    refresh: Option<u32>,
    content: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(secs) = refresh {
                    noscript { meta http-equiv="refresh" content=(secs); }
                }
                title { (title) " · sluice" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body data-reload=[refresh] {
                a.skip href="#main" { "Skip to the content" }
                header.top {
                    a.brand href="/sources" { "sluice" }
                    @if let Some((org, csrf)) = signed_in {
                        nav aria-label="Sections" {
                            a href="/sources" { "Data sources" }
                            a href="/jobs" { "Import jobs" }
                            a href="/deployments" { "Deployments" }
                            a href="/datalake" { "Datalake" }
                            a href="/configurations" { "Configurations" }
                        }
                        span.org title="Your organization" { "organization " (org) }
                        form.inline method="post" action="/signout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { (content) }
            }
        }
    }
}

/// The sign-in page (also what a page answers without a session).
pub fn signin(status: StatusCode, message: Option<&str>) -> Response {
    let body = page(
        "Sign in",
        None,
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(m) = message {
                p.error role="alert" { (m) }
            }
            form.card method="post" action="/signin" {
                label for="user" { "User id" }
                input #user name="user" required autocomplete="username" inputmode="numeric";
                label for="token" { "Personal access token" }
                input #token name="token" type="password" required autocomplete="current-password";
                button type="submit" { "Sign in" }
            }
            p.hint {
                "An administrator makes your user with "
                code { "sluice user create --org ORG EMAIL" }
                ", which prints your user id and personal access token."
            }
        },
    );
    (status, body).into_response()
}

pub fn error_page(status: StatusCode, message: &str) -> Response {
    let body = page(
        status.canonical_reason().unwrap_or("Error"),
        None,
        None,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error role="alert" { (message) }
            p { a href="/sources" { "Back to the data sources" } }
        },
    );
    (status, body).into_response()
}

/// A status in words and colour.
pub fn status(s: RunStatus) -> Markup {
    let class = match s {
        RunStatus::Succeeded => "st st-completed",
        RunStatus::Failed => "st st-failed",
        RunStatus::Running => "st st-running",
        RunStatus::Canceling => "st st-canceling",
        RunStatus::Cancelled => "st st-cancelled",
        RunStatus::Rejected => "st st-rejected",
        _ => "st st-waiting",
    };
    html! { span class=(class) { (status_label(s)) } }
}

/// A word in a status's colour (`class`: one of the `st-…` classes).
pub fn word(text: &str, class: &str) -> Markup {
    html! { span class={ "st " (class) } { (text) } }
}

/// A time: UTC in the page, the viewer's zone once the script ran, UTC on
/// hover.
pub fn when(t: Option<Timestamp>) -> Markup {
    match t {
        None => html! { span.none { "—" } },
        Some(t) => {
            let iso = time::format(&t);
            let utc = t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
            html! { time datetime=(iso) title=(utc) { (utc) } }
        }
    }
}

/// A duration as a person reads it: `12 s`, `5 min 3 s`, `1 h 24 min`,
/// `2 d 3 h`.
pub fn human(secs: Option<f64>) -> String {
    let Some(secs) = secs else {
        return "—".into();
    };
    let s = secs.max(0.0);
    if s < 10.0 {
        return format!("{s:.1} s");
    }
    let s = s.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        3600..=86399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(human(None), "—");
        assert_eq!(human(Some(4.25)), "4.2 s");
        assert_eq!(human(Some(42.0)), "42 s");
        assert_eq!(human(Some(303.0)), "5 min 3 s");
        assert_eq!(human(Some(5040.0)), "1 h 24 min");
        assert_eq!(human(Some(183_600.0)), "2 d 3 h");
    }

    #[test]
    fn text_is_escaped() {
        let m = page(
            "<x>",
            None,
            None,
            html! { p { ("<script>alert(1)</script>") } },
        );
        let s = m.into_string();
        assert!(!s.contains("<script>alert(1)"), "{s}");
        assert!(s.contains("&lt;script&gt;"), "{s}");
    }
}
