//! The HTML of every page, as maud templates: maud escapes every value it
//! interpolates unless told otherwise (this module never does), so names,
//! tags, labels, commands and search strings are always shown as text.
//!
//! Pure rendering: the handlers in `mod.rs` fetch, this module only formats.

use maud::{DOCTYPE, Markup, html};
use wharf_fleet_proto::{DeploymentInfo, NodeInfo, NodeStatus, ReplicaState};

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
                            @if ctx.viewer.is_admin() {
                                a href="/nodes" { "Nodes" }
                                a href="/deployments" { "Deployments" }
                            }
                            @if ctx.auth_on {
                                @if let Some(user) = &ctx.user {
                                    span.who { "Signed in as " b { (user) } }
                                    form method="post" action="/logout" {
                                        input type="hidden" name="csrf" value=(ctx.csrf);
                                        button.linklike type="submit" { "Sign out" }
                                    }
                                } @else {
                                    a href=(login_url(&ctx.here)) { "Sign in" }
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

/// `/login?next=<here>` (back to this page after signing in; not from the
/// sign-in page itself).
pub fn login_url(here: &str) -> String {
    if here.is_empty() || here == "/" || here.starts_with("/login") || here.len() > 1024 {
        return "/login".to_owned();
    }
    format!(
        "/login?{}",
        serde_urlencoded::to_string([("next", here)]).unwrap_or_default()
    )
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

// ---- the catalog pages ---------------------------------------------------------

use crate::browse::{
    ImageConfigView, ManifestView, Page, ReferrerView, RepoQuery, RepoSummary, Sort, Stats,
    TagSummary,
};

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

fn sort_name(sort: Sort) -> &'static str {
    match sort {
        Sort::Name => "name",
        Sort::Pushed => "pushed",
    }
}

/// `path?q=..&sort=..&offset=..` (URL-encoded; empty values left out).
fn listing_url(path: &str, q: &RepoQuery, sort: Sort, offset: u64) -> String {
    let mut params: Vec<(&str, String)> = Vec::new();
    if let Some(s) = q.q.as_deref().filter(|s| !s.is_empty()) {
        params.push(("q", s.to_owned()));
    }
    if sort != Sort::Name {
        params.push(("sort", sort_name(sort).to_owned()));
    }
    if offset > 0 {
        params.push(("offset", offset.to_string()));
    }
    let qs = serde_urlencoded::to_string(&params).unwrap_or_default();
    if qs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{qs}")
    }
}

/// The search form and sort choice of a listing.
fn search_form(action: &str, q: &RepoQuery, placeholder: &str) -> Markup {
    html! {
        form.search method="get" action=(action) role="search" {
            input type="search" name="q" value=(q.q.as_deref().unwrap_or(""))
                placeholder=(placeholder) aria-label=(placeholder) maxlength="256";
            select name="sort" aria-label="Sort by" {
                option value="name" selected[q.sort == Sort::Name] { "Name" }
                option value="pushed" selected[q.sort == Sort::Pushed] { "Last push" }
            }
            button type="submit" { "Search" }
        }
    }
}

/// Previous / next links and "1–25 of 300".
fn pager<T>(path: &str, q: &RepoQuery, page: &Page<T>) -> Markup {
    let first = page.offset + 1;
    let last = page.offset + page.items.len() as u64;
    html! {
        div.pager {
            span.muted {
                @if page.items.is_empty() { "0 of " (page.total) } @else { (first) "–" (last) " of " (page.total) }
            }
            span {
                @if page.offset > 0 {
                    a.button.secondary rel="prev"
                        href=(listing_url(path, q, q.sort, page.offset.saturating_sub(page.limit as u64))) { "← Previous" }
                    " "
                }
                @if let Some(next) = page.next_offset {
                    a.button.secondary rel="next" href=(listing_url(path, q, q.sort, next)) { "Next →" }
                }
            }
        }
    }
}

fn repo_url(repo: &str) -> String {
    format!("/r/{repo}")
}

fn manifest_url(repo: &str, reference: &str) -> String {
    format!("/r/{repo}/-/manifest/{reference}")
}

fn size_or_dash(size: Option<u64>) -> String {
    size.map_or_else(|| "—".to_owned(), format::size)
}

/// `GET /`: search, the list, paging, and the stats line.
pub fn repositories(ctx: &Ctx, q: &RepoQuery, page: &Page<RepoSummary>, stats: &Stats) -> Markup {
    let searching = q.q.as_deref().is_some_and(|s| !s.trim().is_empty());
    layout(
        ctx,
        "Repositories",
        html! {
            h1 { "Repositories" }
            p.stats #stats {
                b { (stats.repositories) } (plural(stats.repositories, " repository", " repositories")) " · "
                b { (stats.tags) } (plural(stats.tags, " tag", " tags")) " · "
                b { (stats.manifests) } (plural(stats.manifests, " manifest", " manifests")) " · "
                b { (stats.blobs) } (plural(stats.blobs, " blob", " blobs")) " · "
                b { (format::size(stats.bytes_stored)) } " stored"
            }
            (search_form("/", q, "Search repositories"))
            @if searching {
                p.muted { "Results for " q { (q.q.as_deref().unwrap_or("")) } " · " a href=(listing_url("/", &RepoQuery::default(), q.sort, 0)) { "clear" } }
            }
            @if page.items.is_empty() {
                div.card.empty {
                    @if searching { "No repository matches this search." }
                    @else if ctx.auth_on && ctx.user.is_none() { "No public repositories. Sign in to see yours." }
                    @else { "No repositories yet. Push one with docker push." }
                }
            } @else {
                div.table-wrap.card.flush {
                    table #repositories {
                        thead { tr {
                            th { a href=(listing_url("/", q, Sort::Name, 0)) { "Name" } }
                            th.num { "Tags" }
                            th.num { a href=(listing_url("/", q, Sort::Pushed, 0)) { "Last push" } }
                        } }
                        tbody {
                            @for r in &page.items {
                                tr {
                                    td { a.repo href=(repo_url(&r.name)) { (r.name) } }
                                    td.num { (r.tag_count) }
                                    td.num { (time_ago(r.pushed_at)) }
                                }
                            }
                        }
                    }
                }
                (pager("/", q, page))
            }
        },
    )
}

/// `GET /r/<repo>`: the pull commands and the tags.
pub fn repository(
    ctx: &Ctx,
    repo: &RepoSummary,
    q: &RepoQuery,
    tags: &Page<TagSummary>,
    can_delete: bool,
    deleted: Option<&str>,
) -> Markup {
    let path = repo_url(&repo.name);
    let shown = tags
        .items
        .iter()
        .find(|t| t.name == "latest")
        .or_else(|| tags.items.first());
    layout(
        ctx,
        &repo.name,
        html! {
            div.crumbs { a href="/" { "Repositories" } " / " }
            h1 { (repo.name) }
            @if let Some(t) = deleted {
                div.notice role="status" { "Tag " b { (t) } " was deleted." }
            }
            p.muted { (repo.tag_count) (plural(repo.tag_count, " tag", " tags")) " · last push " (time_ago(repo.pushed_at)) }
            @if let Some(t) = shown {
                div.card {
                    (commands(ctx, &repo.name, &format!(":{}", t.name)))
                }
            }
            h2 { "Tags" }
            (search_form(&path, q, "Search tags"))
            @if tags.items.is_empty() {
                div.card.empty { "No tags." }
            } @else {
                div.table-wrap.card.flush {
                    table #tags {
                        thead { tr {
                            th { "Tag" }
                            th { "Digest" }
                            th.num { "Size" }
                            th.hide-narrow { "Platforms" }
                            th.num { "Pushed" }
                            @if can_delete { th { span.hide-narrow { "Actions" } } }
                        } }
                        tbody {
                            @for t in &tags.items {
                                tr data-tag=(t.name) {
                                    td { a.tagname href=(manifest_url(&repo.name, &t.name)) { (t.name) } }
                                    td.nowrap { a.mono href=(manifest_url(&repo.name, &t.digest)) title=(t.digest) { (format::short_digest(&t.digest)) } }
                                    td.num { (size_or_dash(t.size)) }
                                    td.hide-narrow {
                                        @for p in &t.platforms { span.tag { (p) } }
                                    }
                                    td.num { (time_ago(t.pushed_at)) }
                                    @if can_delete {
                                        td { a.button.danger.small href=(format!("/r/{}/-/delete/{}", repo.name, t.name)) { "Delete" } }
                                    }
                                }
                            }
                        }
                    }
                }
                (pager(&path, q, tags))
            }
        },
    )
}

/// The `docker pull` and `wharf-runner run` lines for `repo` + `suffix`
/// (`:tag` or `@digest`).
fn commands(ctx: &Ctx, repo: &str, suffix: &str) -> Markup {
    let image = format!("{}/{repo}{suffix}", ctx.host);
    html! {
        (command("cmd-pull", &format!("docker pull {image}")))
        (command("cmd-run", &format!("wharf-runner run {image}")))
    }
}

fn kv_list(items: &[String]) -> Markup {
    html! {
        ul.plain { @for i in items { li { code { (i) } } } }
    }
}

fn config_section(c: &ImageConfigView) -> Markup {
    let os_arch = [
        c.os.as_deref(),
        c.architecture.as_deref(),
        c.variant.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("/");
    html! {
        h2 { "Config" }
        div.card {
            dl.kv #config {
                @if let Some(created) = &c.created {
                    dt { "Created" }
                    dd {
                        @match format::parse_rfc3339(created) {
                            Some(ms) => (time_ago(ms)),
                            None => (created),
                        }
                    }
                }
                @if !os_arch.is_empty() { dt { "OS/Arch" } dd { (os_arch) } }
                @if !c.entrypoint.is_empty() { dt { "Entrypoint" } dd { code { (shell_words(&c.entrypoint)) } } }
                @if !c.cmd.is_empty() { dt { "Cmd" } dd { code { (shell_words(&c.cmd)) } } }
                @if let Some(w) = c.working_dir.as_deref().filter(|w| !w.is_empty()) { dt { "Working dir" } dd { code { (w) } } }
                @if let Some(u) = c.user.as_deref().filter(|u| !u.is_empty()) { dt { "User" } dd { code { (u) } } }
                @if !c.exposed_ports.is_empty() { dt { "Ports" } dd { (kv_list(&c.exposed_ports)) } }
                @if !c.env.is_empty() { dt { "Env" } dd { (kv_list(&c.env)) } }
                @if !c.labels.is_empty() {
                    dt { "Labels" }
                    dd { ul.plain { @for (k, v) in &c.labels { li { code { (k) "=" (v) } } } } }
                }
            }
        }
        @if !c.history.is_empty() {
            h2 { "History" }
            div.table-wrap.card.flush {
                table #history {
                    thead { tr { th.num { "Step" } th { "Command" } th.num.hide-narrow { "Created" } } }
                    tbody {
                        @for (i, h) in c.history.iter().enumerate() {
                            tr {
                                td.num { (i + 1) }
                                td {
                                    pre.history { (h.created_by.as_deref().unwrap_or("")) }
                                    @if h.empty_layer { span.muted { "no layer" } }
                                    @if let Some(cm) = h.comment.as_deref().filter(|c| !c.is_empty()) { div.muted { (cm) } }
                                }
                                td.num.hide-narrow {
                                    @if let Some(ms) = h.created.as_deref().and_then(format::parse_rfc3339) { (time_ago(ms)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A command line as docker shows it: words joined, quoted when needed.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b))
            {
                w.clone()
            } else {
                format!("\"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `GET /r/<repo>/-/manifest/<reference>`.
pub fn manifest(
    ctx: &Ctx,
    m: &ManifestView,
    referrers: &[ReferrerView],
    by_tag: Option<&str>,
) -> Markup {
    let repo = &m.repository;
    let suffix = match by_tag {
        Some(t) => format!(":{t}"),
        None => format!("@{}", m.digest),
    };
    let title = format!("{repo}{suffix}");
    layout(
        ctx,
        &title,
        html! {
            div.crumbs { a href="/" { "Repositories" } " / " a href=(repo_url(repo)) { (repo) } " / " }
            h1 { (repo) (suffix) }
            div.card {
                dl.kv #summary {
                    dt { "Digest" } dd { code #digest { (m.digest) } }
                    dt { "Media type" } dd { code { (m.media_type) } }
                    @if let Some(a) = &m.artifact_type { dt { "Artifact type" } dd { code { (a) } } }
                    dt { "Size" } dd { (size_or_dash(m.size)) " " span.muted { "(manifest " (format::size(m.manifest_size)) ")" } }
                    dt { "Pushed" } dd { (time_ago(m.pushed_at)) }
                    @if let Some(p) = &m.platform { dt { "Platform" } dd { (p) } }
                    @if !m.tags.is_empty() {
                        dt { "Tags" }
                        dd { @for t in &m.tags { a.tag href=(manifest_url(repo, t)) { (t) } } }
                    }
                    @if let Some(s) = &m.subject {
                        dt { "Subject" } dd { a.mono href=(manifest_url(repo, s)) { (s) } }
                    }
                }
            }
            div.card { (commands(ctx, repo, &suffix)) }
            @if !m.platforms.is_empty() {
                h2 { "Platforms" }
                div.table-wrap.card.flush {
                    table #platforms {
                        thead { tr { th { "Platform" } th { "Digest" } th.num { "Manifest size" } } }
                        tbody {
                            @for p in &m.platforms {
                                tr {
                                    td { (p.platform) }
                                    td { a.mono href=(manifest_url(repo, &p.digest)) { (p.digest) } }
                                    td.num { (format::size(p.size)) }
                                }
                            }
                        }
                    }
                }
            }
            @if !m.layers.is_empty() || m.config_blob.is_some() {
                h2 { "Layers" }
                div.table-wrap.card.flush {
                    table #layers {
                        thead { tr { th { "#" } th { "Digest" } th.hide-narrow { "Media type" } th.num { "Size" } } }
                        tbody {
                            @for (i, l) in m.layers.iter().enumerate() {
                                tr.layer data-digest=(l.digest) {
                                    td.num { (i + 1) }
                                    td { code.digest { (l.digest) } }
                                    td.hide-narrow { code { (l.media_type) } }
                                    td.num { (format::size(l.size)) }
                                }
                            }
                        }
                    }
                }
                @if let Some(c) = &m.config_blob {
                    p.muted { "Config blob " code title=(c.digest) { (format::short_digest(&c.digest)) } " · " (format::size(c.size)) " · " code { (c.media_type) } }
                }
            }
            @if let Some(c) = &m.config { (config_section(c)) }
            @if let Some(e) = &m.config_error { div.error-box { "Config: " (e) } }
            @if !m.annotations.is_empty() {
                h2 { "Annotations" }
                div.card { dl.kv { @for (k, v) in &m.annotations { dt { code { (k) } } dd { (v) } } } }
            }
            h2 { "Referrers" }
            @if referrers.is_empty() {
                div.card.empty #referrers { "No signatures, SBOMs or attestations refer to this manifest." }
            } @else {
                div.table-wrap.card.flush {
                    table #referrers {
                        thead { tr { th { "Artifact type" } th { "Digest" } th.num { "Size" } th.num { "Pushed" } } }
                        tbody {
                            @for r in referrers {
                                tr {
                                    td { code { (r.artifact_type.as_deref().unwrap_or(&r.media_type)) } }
                                    td { a.mono href=(manifest_url(repo, &r.digest)) title=(r.digest) { (format::short_digest(&r.digest)) } }
                                    td.num { (format::size(r.size)) }
                                    td.num { (time_ago(r.created_at)) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// `GET /r/<repo>/-/delete/<tag>`: are you sure?
pub fn confirm_delete(ctx: &Ctx, repo: &str, tag: &str, m: &ManifestView) -> Markup {
    let action = format!("/r/{repo}/-/delete/{tag}");
    layout(
        ctx,
        &format!("Delete {repo}:{tag}"),
        html! {
            div.crumbs { a href="/" { "Repositories" } " / " a href=(repo_url(repo)) { (repo) } " / " }
            h1 { "Delete tag " (tag) "?" }
            div.card.confirm {
                p {
                    "The tag " b { (repo) ":" (tag) } " will be removed. It points at "
                    code title=(m.digest) { (format::short_digest(&m.digest)) } "; "
                    "the manifest stays reachable by digest (and by any other tag) until garbage collection removes what nothing refers to."
                }
                form method="post" action=(action) {
                    input type="hidden" name="csrf" value=(ctx.csrf);
                    button.danger type="submit" #confirm-delete { "Delete " (tag) }
                }
                " "
                a.button.secondary href=(repo_url(repo)) { "Cancel" }
            }
        },
    )
}

// ---- the fleet (admins only) ------------------------------------------------

fn state_class(state: &str) -> &'static str {
    match state {
        "ready" | "running" => "state ok",
        "down" | "failed" | "degraded" => "state bad",
        _ => "state",
    }
}

fn labels(labels: &std::collections::BTreeMap<String, String>) -> Markup {
    html! {
        @for (k, v) in labels {
            span.tag { (k) "=" (v) } " "
        }
    }
}

/// The nodes a deployment's replicas are on, each once.
fn nodes_of(d: &DeploymentInfo) -> String {
    let mut on: Vec<&str> = d
        .replicas
        .iter()
        .filter_map(|r| r.node.as_deref())
        .collect();
    on.sort_unstable();
    on.dedup();
    on.join(", ")
}

fn deployment_url(name: &str) -> String {
    format!("/deployments/{name}")
}

/// `GET /nodes`: every runner node, its state and resources.
pub fn nodes(ctx: &Ctx, nodes: &[NodeInfo]) -> Markup {
    let ready = nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Ready)
        .count();
    layout(
        ctx,
        "Nodes",
        html! {
            h1 { "Nodes" }
            p.stats { b { (ready) } " ready of " b { (nodes.len()) } (plural(nodes.len() as u64, " node", " nodes")) }
            @if nodes.is_empty() {
                div.card.empty {
                    "No runner node has joined yet. Make a token with "
                    code { "wharf-server node token create" }
                    " and start " code { "wharf-runner daemon --join URL --token TOKEN" } " on a node."
                }
            } @else {
                div.table-wrap.card.flush {
                    table #nodes {
                        thead { tr {
                            th { "Name" } th { "Status" } th.hide-narrow { "Addresses" }
                            th.hide-narrow { "Platform" } th.num { "CPUs" } th.num { "Memory free / total" }
                            th.num.hide-narrow { "Disk free" } th.num { "Containers" }
                            th.hide-narrow { "Labels" } th.num { "Last heartbeat" }
                        } }
                        tbody {
                            @for n in nodes {
                                tr {
                                    td { b { (n.name) } }
                                    td { span class=(state_class(n.status.as_str())) { (n.status.as_str()) } }
                                    td.hide-narrow.mono { (n.facts.addresses.join(", ")) }
                                    td.hide-narrow { (n.facts.os) "/" (n.facts.arch) }
                                    td.num { (n.facts.cpus) }
                                    td.num { (format::size(n.free_memory_bytes)) " / " (format::size(n.facts.memory_bytes)) }
                                    td.num.hide-narrow { (format::size(n.facts.disk_bytes)) }
                                    td.num { (n.running_containers) }
                                    td.hide-narrow { (labels(&n.facts.labels)) }
                                    td.num { (time_ago(n.last_heartbeat.saturating_mul(1000))) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// `GET /deployments`: every deployment with its replicas' states.
pub fn deployments(ctx: &Ctx, deployments: &[DeploymentInfo]) -> Markup {
    layout(
        ctx,
        "Deployments",
        html! {
            h1 { "Deployments" }
            @if deployments.is_empty() {
                div.card.empty {
                    "Nothing is deployed. Deploy an image with "
                    code { "wharf-server deploy IMAGE --replicas N" } "."
                }
            } @else {
                div.table-wrap.card.flush {
                    table #deployments {
                        thead { tr {
                            th { "Name" } th { "Image" } th { "Status" } th.num { "Running" }
                            th.hide-narrow { "Nodes" } th.num { "Created" }
                        } }
                        tbody {
                            @for d in deployments {
                                @let running = d.replicas.iter().filter(|r| r.state == ReplicaState::Running).count();
                                tr {
                                    td { a href=(deployment_url(&d.name)) { (d.name) } }
                                    td.mono { (d.spec.image) }
                                    td { span class=(state_class(&d.status)) { (d.status) } }
                                    td.num { (running) " / " (d.replicas.len()) }
                                    td.hide-narrow { (nodes_of(d)) }
                                    td.num { (time_ago(d.created_at.saturating_mul(1000))) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// `GET /deployments/<name>`: the spec, each replica, and the history.
pub fn deployment(ctx: &Ctx, d: &DeploymentInfo) -> Markup {
    let s = &d.spec;
    layout(
        ctx,
        &d.name,
        html! {
            p.crumbs { a href="/deployments" { "Deployments" } " / " }
            h1 { (d.name) " " span class=(state_class(&d.status)) { (d.status) } }
            div.card {
                dl.kv {
                    dt { "Image" } dd.mono { (s.image) }
                    dt { "Replicas" } dd { (d.replicas.len()) }
                    @if let Some(n) = &s.node { dt { "Node" } dd { (n) } }
                    @if !s.selector.is_empty() { dt { "Selector" } dd { (labels(&s.selector)) } }
                    @if !s.container.cmd.is_empty() { dt { "Command" } dd.mono { (shell_words(&s.container.cmd)) } }
                    @if !s.container.env.is_empty() { dt { "Environment" } dd { (kv_list(&s.container.env)) } }
                    @if !s.container.ports.is_empty() { dt { "Ports" } dd.mono { (s.container.ports.join(", ")) } }
                    @if let Some(m) = s.container.memory_bytes { dt { "Memory" } dd { (format::size(u64::try_from(m).unwrap_or(0))) } }
                    @if let Some(c) = s.container.nano_cpus { dt { "CPUs" } dd { (format!("{:.2}", c as f64 / 1e9)) } }
                    @if let Some(r) = &s.container.restart { dt { "Restart" } dd { (r) } }
                    dt { "Created" } dd { (time_ago(d.created_at.saturating_mul(1000))) }
                }
            }
            h2 { "Replicas" }
            div.table-wrap.card.flush {
                table #replicas {
                    thead { tr {
                        th { "Replica" } th { "Node" } th { "State" } th.hide-narrow { "Detail" } th.num { "Changed" }
                    } }
                    tbody {
                        @for r in &d.replicas {
                            tr {
                                td.mono { (r.id) }
                                td { (r.node.as_deref().unwrap_or("—")) }
                                td { span class=(state_class(r.state.as_str())) { (r.state.as_str()) } }
                                td.hide-narrow {
                                    @if let Some(code) = r.exit_code { "exit code " (code) " " }
                                    @if let Some(reason) = &r.reason { (reason) }
                                }
                                td.num { (time_ago(r.updated_at.saturating_mul(1000))) }
                            }
                        }
                    }
                }
            }
            h2 { "History" }
            @if d.events.is_empty() {
                p.muted { "No events yet." }
            } @else {
                div.table-wrap.card.flush {
                    table #events {
                        tbody {
                            @for e in d.events.iter().rev() {
                                tr {
                                    td.nowrap { (time_ago(e.time.saturating_mul(1000))) }
                                    td.mono.hide-narrow { (e.replica.as_deref().unwrap_or("")) }
                                    td { (e.message) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}
