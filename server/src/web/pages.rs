//! The HTML of every page, as maud templates: maud escapes every value it
//! interpolates unless told otherwise (this module never does), so names,
//! tags, labels, commands and search strings are always shown as text.
//!
//! Pure rendering: the handlers in `mod.rs` fetch, this module only formats.

use maud::{DOCTYPE, Markup, html};

use super::assets;
use super::format;
use super::session::Ctx;

/// The frame of every page: head (viewport, icon, stylesheet, script),
/// the top bar with sign-in state, the content, the footer.
pub fn layout(ctx: &Ctx, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light";
                title { (title) " · wharf" }
                link rel="icon" type="image/svg+xml" href=(assets::url("logo.svg"));
                link rel="stylesheet" href=(assets::url("app.css"));
                script src=(assets::url("app.js")) defer {}
            }
            body {
                header.top {
                    div.inner {
                        a.brand href="/" {
                            img src=(assets::url("logo.svg")) alt="" width="30" height="30";
                            "wharf"
                        }
                        nav {
                            a href="/" { "Repositories" }
                            @if ctx.auth_on {
                                @if let Some(user) = &ctx.user {
                                    span.who { "Signed in as " b { (user) } }
                                    form method="post" action="/logout" {
                                        input type="hidden" name="csrf" value=(ctx.csrf);
                                        button.linklike type="submit" { "Sign out" }
                                    }
                                } @else {
                                    a href="/login" { "Sign in" }
                                }
                            }
                        }
                    }
                }
                main { (content) }
                footer {
                    "wharf registry · "
                    a href="/api/v1/openapi.json" { "API" }
                }
            }
        }
    }
}

/// A time as "3 hours ago" with the exact UTC time on hover; the script
/// keeps the relative text current.
pub fn time_ago(unix_ms: i64) -> Markup {
    html! {
        time datetime=(format::rfc3339(unix_ms)) title=(format::exact_utc(unix_ms)) data-relative {
            (format::relative(unix_ms, format::now_ms()))
        }
    }
}

/// A command with a copy button (the button is hidden until the script
/// shows it, so without JavaScript the command is simply selectable).
pub fn command(id: &str, text: &str) -> Markup {
    html! {
        div.cmd {
            pre id=(id) { (text) }
            button.secondary type="button" data-copy=(id) hidden { "Copy" }
        }
    }
}

/// The sign-in form; `error` is shown above it.
pub fn login(ctx: &Ctx, username: &str, next: &str, error: Option<&str>) -> Markup {
    layout(
        ctx,
        "Sign in",
        html! {
            div.login {
                h1 { "Sign in" }
                @if let Some(e) = error {
                    div.error-box role="alert" { (e) }
                }
                form.card method="post" action="/login" {
                    input type="hidden" name="csrf" value=(ctx.csrf);
                    input type="hidden" name="next" value=(next);
                    label for="username" { "Username" }
                    input #username type="text" name="username" value=(username)
                        autocomplete="username" autocapitalize="none" required autofocus[username.is_empty()];
                    label for="password" { "Password" }
                    input #password type="password" name="password"
                        autocomplete="current-password" required autofocus[!username.is_empty()];
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// The page of an error: a friendly 404, a 403, a 400, a 429 or a 500.
pub fn error(ctx: Option<&Ctx>, status: u16, title: &str, message: &str) -> Markup {
    let content = html! {
        div.card {
            p.big404 { (status) }
            h1 { (title) }
            p { (message) }
            p { a href="/" { "Back to the repositories" } }
        }
    };
    match ctx {
        Some(ctx) => layout(ctx, title, content),
        None => html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · wharf" }
                    link rel="stylesheet" href=(assets::url("app.css"));
                }
                body { main { (content) } }
            }
        },
    }
}
