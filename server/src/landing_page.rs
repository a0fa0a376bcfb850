//! The HTML a browser gets at `/` and `/{cache}`: how to use a cache
//! (substituter URL, public keys, `nix.conf` lines, `attic use`) and the
//! list of public caches. Plain HTML with inline CSS and no script; every
//! interpolated value goes through [`escape`], so a cache name or key can
//! never become markup.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

/// What a cache's page shows. Built only for a caller allowed to pull
/// from the cache: nothing here is meant for anyone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePage {
    /// The cache's name, as in `attic use <name>`.
    pub name: String,
    /// The URL Nix substitutes from.
    pub substituter: String,
    /// The current public key, then the previous one during a key
    /// rotation's overlap.
    pub public_keys: Vec<String>,
    /// Whether anyone may pull without a token.
    pub is_public: bool,
    /// Stored bytes of its NARs.
    pub stored_bytes: u64,
    /// How many paths it holds.
    pub paths: u64,
    /// When a path was last pushed (Unix seconds).
    pub last_push: Option<i64>,
}

/// One line of the index: a public cache and where its page is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLink {
    /// The cache's name, also its page's path.
    pub name: String,
}

/// `text` with `&`, `<`, `>`, `"` and `'` written as entities: safe
/// between tags and inside a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;\
padding:0 1rem;color:#1d1d1f;line-height:1.5}h1{font-size:1.6rem}h2{font-size:1.15rem;\
margin-top:1.6rem}pre,code{font-family:ui-monospace,monospace;background:#f2f2f4;\
border-radius:4px}pre{padding:.7rem;white-space:pre-wrap;word-break:break-all}code{padding:0 .2rem}\
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{color:#666}\
dd{margin:0;min-width:0}dd code{word-break:break-all}.tag{font-size:.8rem;padding:.1rem .4rem;border-radius:4px;background:#e6eefc}";

/// A whole document around `body`, which must already be escaped.
fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{}</title><style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n",
        escape(title)
    )
}

/// The page of one cache.
pub fn render_cache_page(page: &CachePage) -> String {
    let name = escape(&page.name);
    let substituter = escape(&page.substituter);
    let keys: Vec<String> = page.public_keys.iter().map(|k| escape(k)).collect();
    let mut body = String::new();
    let visibility = if page.is_public { "public" } else { "private" };
    let _ = write!(
        body,
        "<h1>{name} <span class=\"tag\">{visibility}</span></h1>\n\
<p>A Nix binary cache. Add it to Nix with the <code>attic</code> client, or by hand in \
<code>nix.conf</code>.</p>\n<h2>With attic</h2>\n<pre>attic use {name}</pre>\n"
    );
    if !page.is_public {
        body.push_str(
            "<p>It is private: log in first with <code>attic login</code> and a token \
that may pull from it.</p>\n",
        );
    }
    let _ = write!(
        body,
        "<h2>In nix.conf</h2>\n<pre>extra-substituters = {substituter}\n\
extra-trusted-public-keys = {}</pre>\n",
        keys.join(" ")
    );
    body.push_str("<h2>Details</h2>\n<dl>\n");
    let _ = writeln!(
        body,
        "<dt>Substituter URL</dt><dd><code>{substituter}</code></dd>"
    );
    for (i, key) in keys.iter().enumerate() {
        let label = if i == 0 {
            "Public key"
        } else {
            "Previous public key"
        };
        let _ = writeln!(body, "<dt>{label}</dt><dd><code>{key}</code></dd>");
    }
    let _ = writeln!(
        body,
        "<dt>Size</dt><dd>{}</dd>\n<dt>Paths</dt><dd>{}</dd>\n<dt>Last push</dt><dd>{}</dd>",
        escape(&human_bytes(page.stored_bytes)),
        page.paths,
        escape(&last_push(page.last_push)),
    );
    body.push_str("</dl>\n");
    if keys.len() > 1 {
        body.push_str(
            "<p>The cache is rotating its key: until the rotation's overlap ends, it signs \
with the previous key too, so Nix trusting either one substitutes from it.</p>\n",
        );
    }
    body.push_str("<p><a href=\"./\">All public caches</a></p>\n");
    document(&format!("{} — Nix binary cache", page.name), &body)
}

/// The index at `/`: the caches listed, each a link to its page.
pub fn render_index(caches: &[CacheLink]) -> String {
    let mut body = String::from("<h1>Nix binary caches</h1>\n");
    if caches.is_empty() {
        body.push_str("<p>This server has no public cache.</p>\n");
    } else {
        body.push_str("<ul>\n");
        for cache in caches {
            let name = escape(&cache.name);
            let _ = writeln!(body, "<li><a href=\"{name}\">{name}</a></li>");
        }
        body.push_str("</ul>\n");
    }
    document("Nix binary caches", &body)
}

/// What a browser gets for a cache it may not see, whether it exists or
/// not: the same bytes either way, naming nothing.
pub fn render_not_found() -> String {
    document(
        "Not found",
        "<h1>Not found</h1>\n<p>There is no cache here, or you may not see it.</p>\n\
<p><a href=\"./\">All public caches</a></p>\n",
    )
}

/// A byte count as a person reads it: `1.5 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn last_push(seconds: Option<i64>) -> String {
    match seconds.and_then(|s| u64::try_from(s).ok()) {
        Some(s) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string()
        }
        None => "never".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> CachePage {
        CachePage {
            name: "team-a".to_owned(),
            substituter: "https://cache.example.com/team-a".to_owned(),
            public_keys: vec!["team-a-2:bmV3".to_owned(), "team-a:b2xk".to_owned()],
            is_public: true,
            stored_bytes: 3 * 1024 * 1024 / 2,
            paths: 42,
            last_push: Some(1_700_000_000),
        }
    }

    #[test]
    fn escaping_turns_every_markup_character_into_an_entity() {
        assert_eq!(
            escape(r#"<a href="x" title='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(escape("team-a:abc+/="), "team-a:abc+/=");
    }

    #[test]
    fn a_cache_page_shows_how_to_use_the_cache() {
        let html = render_cache_page(&page());
        assert!(html.contains("<pre>attic use team-a</pre>"), "{html}");
        assert!(
            html.contains("extra-substituters = https://cache.example.com/team-a\n"),
            "{html}"
        );
        assert!(
            html.contains("extra-trusted-public-keys = team-a-2:bmV3 team-a:b2xk</pre>"),
            "{html}"
        );
        assert!(html.contains("Previous public key"), "{html}");
        assert!(html.contains("rotating its key"), "{html}");
        assert!(html.contains("<dd>1.5 MiB</dd>"), "{html}");
        assert!(html.contains("<dd>42</dd>"), "{html}");
        assert!(html.contains("2023-11-14T22:13:20Z"), "{html}");
        assert!(!html.contains("<script"), "{html}");
    }

    #[test]
    fn a_page_without_a_rotation_shows_one_key_and_a_cache_never_pushed_to_says_so() {
        let html = render_cache_page(&CachePage {
            public_keys: vec!["team-a:b2xk".to_owned()],
            last_push: None,
            is_public: false,
            ..page()
        });
        assert!(!html.contains("Previous public key"), "{html}");
        assert!(!html.contains("rotating its key"), "{html}");
        assert!(html.contains("<dd>never</dd>"), "{html}");
        assert!(html.contains("attic login"), "{html}");
    }

    #[test]
    fn interpolated_values_cannot_inject_markup() {
        let html = render_cache_page(&CachePage {
            substituter: "http://h/<script>alert(1)</script>".to_owned(),
            public_keys: vec!["k:\"><img src=x>".to_owned()],
            ..page()
        });
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        let index = render_index(&[CacheLink {
            name: "a\"onclick=\"x".to_owned(),
        }]);
        assert!(index.contains("href=\"a&quot;onclick=&quot;x\""), "{index}");
    }

    #[test]
    fn the_index_links_each_cache_and_says_when_there_is_none() {
        let html = render_index(&[
            CacheLink {
                name: "team-a".to_owned(),
            },
            CacheLink {
                name: "team-b".to_owned(),
            },
        ]);
        assert!(html.contains("<a href=\"team-a\">team-a</a>"), "{html}");
        assert!(html.contains("<a href=\"team-b\">team-b</a>"), "{html}");
        assert!(render_index(&[]).contains("no public cache"));
    }

    #[test]
    fn sizes_read_as_a_person_would() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
