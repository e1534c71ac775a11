//! The page's HTML (maud escapes every value it prints). No JavaScript: every action is a form,
//! every list a table with headers, every field a label; the layout is one column on a phone.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::mailbox::{Listing, Row, View};
use super::render;
use super::sessions::Viewer;

/// `2024-05-01 14:03 UTC` from Unix seconds.
pub fn date(unix: u64) -> String {
    let days = unix / 86_400;
    let rem = unix % 86_400;
    // Civil from days (Howard Hinnant).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

pub fn size(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.0} KB", n as f64 / 1024.0),
        n => format!("{:.1} MB", n as f64 / 1_048_576.0),
    }
}

/// Who a row is from, as people read it.
fn sender(r: &Row) -> &str {
    if !r.header_from.is_empty() {
        &r.header_from
    } else if !r.from.is_empty() {
        &r.from
    } else {
        "(mail system)"
    }
}

/// The frame of every page.
pub fn layout(title: &str, signed_in: Option<(&Viewer, &str)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " — held mail" }
                link rel="stylesheet" href="/static/webmail.css";
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    p class="brand" { "Held mail" }
                    @if let Some((v, csrf)) = signed_in {
                        nav aria-label="Account" {
                            span { (v.address) @if v.admin { " (administrator of " (v.tenant) ")" } }
                            a href="/inbox" { "Inbox" }
                            a href="/allowed" { "Allowed senders" }
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(csrf);
                                button class="secondary" type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" { (body) }
            }
        }
    }
}

/// The sign-in form. `error` is shown above it and announced.
pub fn login(pre: &str, error: Option<&str>, info: Option<&str>, address: &str) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            div class="login" {
                h1 { "Sign in to read your held mail" }
                @if let Some(i) = info { p class="notice ok" role="status" { (i) } }
                @if let Some(e) = error { p class="notice error" id="login-error" role="alert" { (e) } }
                form method="post" action="/login" {
                    input type="hidden" name="pre" value=(pre);
                    p {
                        label for="address" { "Email address" }
                        input type="email" id="address" name="address" autocomplete="username"
                            required value=(address) aria-describedby=[error.map(|_| "login-error")];
                    }
                    p {
                        label for="password" { "Password" }
                        input type="password" id="password" name="password"
                            autocomplete="current-password" required;
                    }
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// A page that only says something (errors, confirmations).
pub fn message_page(title: &str, signed_in: Option<(&Viewer, &str)>, text: &str) -> Markup {
    layout(
        title,
        signed_in,
        html! {
            h1 { (title) }
            p class="notice" role="alert" { (text) }
            p { a href="/inbox" { "Back to the inbox" } }
        },
    )
}

pub struct Inbox<'a> {
    pub viewer: &'a Viewer,
    pub csrf: &'a str,
    pub view: View,
    pub search: &'a str,
    pub page: usize,
    pub pages: usize,
    pub first: usize,
    pub listing: &'a Listing,
    /// The rows of this page with their message tokens.
    pub rows: Vec<(&'a Row, String)>,
    pub flash: Option<&'a str>,
    pub unreachable: usize,
    pub outage_help: &'a str,
}

fn inbox_link(view: View, search: &str, page: usize) -> String {
    let mut q = format!("/inbox?view={}", view.as_str());
    if !search.is_empty() {
        q.push_str("&q=");
        q.push_str(&super::peer::enc(search));
    }
    if page > 1 {
        q.push_str(&format!("&page={page}"));
    }
    q
}

pub fn inbox(p: &Inbox<'_>) -> Markup {
    let l = p.listing;
    let title = if p.viewer.admin {
        format!("Held and quarantined mail of {}", p.viewer.tenant)
    } else {
        "Your held and quarantined mail".to_owned()
    };
    let tab = |view: View, label: &str, n: usize| {
        html! {
            li { a href=(inbox_link(view, p.search, 1)) aria-current=[(p.view == view).then_some("page")] {
                (label) " (" (n) ")"
            } }
        }
    };
    layout(
        &title,
        Some((p.viewer, p.csrf)),
        html! {
            h1 { (title) }
            @if let Some(f) = p.flash { p class="notice ok" role="status" { (f) } }
            @if p.unreachable > 0 {
                p class="notice error" role="alert" {
                    "Mail held on " (p.unreachable) " other server(s) of this service could not be "
                    "listed right now; reload the page in a minute."
                }
            }
            p class="outage" { (p.outage_help) }
            nav aria-label="Lists" {
                ul class="tabs" {
                    (tab(View::All, "All", l.held + l.quarantined))
                    (tab(View::Held, "Held", l.held))
                    (tab(View::Quarantine, "Quarantined", l.quarantined))
                }
            }
            form class="search" method="get" action="/inbox" role="search" {
                input type="hidden" name="view" value=(p.view.as_str());
                div {
                    label for="q" { "Search sender or subject" }
                    input type="search" id="q" name="q" value=(p.search);
                }
                button type="submit" { "Search" }
            }
            @if p.rows.is_empty() {
                p role="status" { @if p.search.is_empty() { "No messages here." } @else { "No messages match your search." } }
            } @else {
                table {
                    caption { "Messages " (p.first) "–" (p.first + p.rows.len() - 1) " of " (l.matching) ", newest first" }
                    thead { tr {
                        th scope="col" { "From" }
                        th scope="col" { "Subject" }
                        @if p.viewer.admin { th scope="col" { "To" } }
                        th scope="col" { "Received" }
                        th scope="col" { "Size" }
                        th scope="col" { "State" }
                    } }
                    tbody {
                        @for (r, tok) in &p.rows {
                            tr {
                                td data-label="From" { (sender(r)) }
                                td data-label="Subject" {
                                    a href=(format!("/m/{tok}")) { @if r.subject.is_empty() { "(no subject)" } @else { (r.subject) } }
                                }
                                @if p.viewer.admin { td data-label="To" { (r.rcpts.join(", ")) } }
                                td class="num" data-label="Received" { (date(r.received)) }
                                td class="num" data-label="Size" { (size(r.size)) }
                                td data-label="State" class=(format!("state-{}", r.state())) {
                                    (r.state())
                                    @if let Some(reason) = &r.quarantine { span class="reason" { (reason) } }
                                }
                            }
                        }
                    }
                }
                nav class="pager" aria-label="Pages" {
                    @if p.page > 1 { a href=(inbox_link(p.view, p.search, p.page - 1)) rel="prev" { "← Newer" } } @else { span {} }
                    span { "Page " (p.page) " of " (p.pages) }
                    @if p.page < p.pages { a href=(inbox_link(p.view, p.search, p.page + 1)) rel="next" { "Older →" } } @else { span {} }
                }
            }
        },
    )
}

pub struct Message<'a> {
    pub viewer: &'a Viewer,
    pub csrf: &'a str,
    pub token: &'a str,
    pub row: &'a Row,
    pub view: Option<&'a render::View>,
    pub may_release: bool,
    pub remote: bool,
    pub text_only: bool,
    pub sender: &'a str,
}

pub fn message(p: &Message<'_>) -> Markup {
    let r = p.row;
    let t = p.token;
    let subject = match p.view {
        Some(v) if !v.subject.is_empty() => v.subject.as_str(),
        _ if !r.subject.is_empty() => r.subject.as_str(),
        _ => "(no subject)",
    };
    let hidden = html! { input type="hidden" name="csrf" value=(p.csrf); };
    layout(
        subject,
        Some((p.viewer, p.csrf)),
        html! {
            p { a href="/inbox" { "← Back to the inbox" } }
            h1 { (subject) }
            dl class="headers" {
                @if let Some(v) = p.view {
                    dt { "From" } dd { (v.from) }
                    dt { "To" } dd { (v.to) }
                    @if !v.cc.is_empty() { dt { "Cc" } dd { (v.cc) } }
                    @if !v.reply_to.is_empty() { dt { "Reply-To" } dd { (v.reply_to) } }
                    @if !v.date.is_empty() { dt { "Date" } dd { (v.date) } }
                } @else {
                    dt { "From" } dd { (sender(r)) }
                }
                dt { "Envelope sender" } dd { @if r.from.is_empty() { "(none)" } @else { (r.from) } }
                dt { "Received here" } dd { (date(r.received)) }
                dt { "Size" } dd { (size(r.size)) }
                dt { "State" } dd {
                    @if let Some(reason) = &r.quarantine { "Quarantined: " (reason) }
                    @else { "Held: your mail server is not accepting mail; this message is delivered when it is back." }
                }
            }
            div class="actions" {
                @if r.quarantine.is_some() && p.may_release {
                    form method="post" action=(format!("/m/{t}/release")) {
                        (hidden)
                        button type="submit" { "Release to my mailbox" }
                    }
                }
                @if !p.sender.is_empty() {
                    form method="post" action=(format!("/m/{t}/allow")) {
                        (hidden)
                        button class="secondary" type="submit" { "Always allow " (p.sender) }
                    }
                }
                a href=(format!("/m/{t}/raw")) download { "Download original (.eml)" }
                details {
                    summary { "Delete…" }
                    form method="post" action=(format!("/m/{t}/delete")) {
                        (hidden)
                        button class="danger" type="submit" { "Delete this message permanently" }
                    }
                }
            }
            @if r.quarantine.is_some() && !p.may_release {
                p class="notice" { "Only an administrator of your organisation can release this message." }
            }
            @match p.view {
                None => p class="notice" { "This message is too large to show here; download the original to read it." },
                Some(v) => {
                    @if v.has_html && !p.text_only {
                        p {
                            a href=(format!("/m/{t}?text=1")) { "Show the plain-text version" }
                            @if !p.remote { " · " a href=(format!("/m/{t}?remote=1")) { "Show remote images" } " (lets the sender see that you opened it)" }
                        }
                        iframe class="body" title="Message content" sandbox="allow-popups allow-popups-to-escape-sandbox"
                            referrerpolicy="no-referrer"
                            src=(format!("/m/{t}/body{}", if p.remote { "?remote=1" } else { "" })) {}
                    } @else {
                        @if v.has_html { p { a href=(format!("/m/{t}")) { "Show the formatted version" } } }
                        pre class="text" { (v.text.as_deref().unwrap_or("(this message has no text)")) }
                    }
                    @if !v.attachments.is_empty() {
                        h2 { "Attachments" }
                        ul {
                            @for a in &v.attachments {
                                li {
                                    a href=(format!("/m/{t}/part/{}", a.index)) download { (a.name) }
                                    " (" (a.content_type) ", " (size(a.size as u64)) ")"
                                }
                            }
                        }
                        p class="outage" { "Attachments are downloaded as they were sent; open only what you expect." }
                    }
                }
            }
        },
    )
}

/// The sanitised HTML body as its own document (served into the sandboxed frame).
pub fn body_document(clean_html: &str) -> Markup {
    html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                style { (PreEscaped("body{font:16px/1.5 system-ui,sans-serif;margin:8px;color:#111;background:#fff;overflow-wrap:anywhere}img{max-width:100%;height:auto}.link-target{color:#555;font-size:.85em}")) }
            }
            body { (PreEscaped(clean_html)) }
        }
    }
}

pub fn allowed(viewer: &Viewer, csrf: &str, entries: &[String], flash: Option<&str>) -> Markup {
    layout(
        "Allowed senders",
        Some((viewer, csrf)),
        html! {
            h1 { "Allowed senders" }
            p { "Mail from these senders is not treated as spam for " (viewer.address) ". Viruses and dangerous attachments are still stopped." }
            @if let Some(f) = flash { p class="notice ok" role="status" { (f) } }
            @if entries.is_empty() { p { "Your list is empty." } } @else {
                ul {
                    @for e in entries {
                        li {
                            (e) " "
                            form class="inline" method="post" action="/allowed" {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="entry" value=(e);
                                input type="hidden" name="remove" value="1";
                                button class="secondary" type="submit" aria-label=(format!("Remove {e}")) { "Remove" }
                            }
                        }
                    }
                }
            }
            form method="post" action="/allowed" {
                input type="hidden" name="csrf" value=(csrf);
                label for="entry" { "Address or @domain to allow" }
                input type="text" id="entry" name="entry" required;
                " "
                button type="submit" { "Add" }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_and_sizes_read_well() {
        assert_eq!(super::date(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::date(1_709_210_096), "2024-02-29 12:34 UTC");
        assert_eq!(super::size(512), "512 B");
        assert_eq!(super::size(2048), "2 KB");
        assert_eq!(super::size(3 << 20), "3.0 MB");
    }
}
