//! From the model's Markdown to what a platform shows, in parts it accepts.
//!
//! The reply is parsed with a real Markdown parser (pulldown-cmark). Splitting
//! happens on the Markdown, block by block (paragraphs, lists, code blocks), before
//! rendering, so every part is valid markup of its own: a part never ends inside
//! a tag, an escape or a code block. A block too long for one part is cut at line
//! breaks, then spaces, then characters (never inside a UTF-8 character); a code
//! block cut this way is closed and reopened in every part. Lengths are measured
//! on the rendered text with the platform's own measure (Telegram counts UTF-16
//! code units).

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};

fn parser(markdown: &str) -> Parser<'_> {
    Parser::new_ext(markdown, Options::ENABLE_STRIKETHROUGH)
}

fn escape_html(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// Telegram's HTML parse mode: `b i s code pre a blockquote`, everything else as
/// text with `<`, `>`, `&` escaped. Headings become bold lines, list items
/// bulleted or numbered lines, images their link.
pub fn telegram_html(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len() + 16);
    let mut lists: Vec<Option<u64>> = Vec::new();
    for event in parser(markdown) {
        match event {
            Event::Start(tag) => match tag {
                Tag::Paragraph => {}
                Tag::Heading { .. } | Tag::Strong => out.push_str("<b>"),
                Tag::Emphasis => out.push_str("<i>"),
                Tag::Strikethrough => out.push_str("<s>"),
                Tag::BlockQuote(_) => out.push_str("<blockquote>"),
                Tag::CodeBlock(kind) => match kind {
                    CodeBlockKind::Fenced(lang) if !lang.is_empty() => {
                        out.push_str("<pre><code class=\"language-");
                        escape_html(lang.split_whitespace().next().unwrap_or(""), &mut out);
                        out.push_str("\">");
                    }
                    _ => out.push_str("<pre><code>"),
                },
                Tag::List(start) => lists.push(start),
                Tag::Item => {
                    let depth = lists.len().saturating_sub(1);
                    out.push_str(&"  ".repeat(depth));
                    match lists.last_mut() {
                        Some(Some(n)) => {
                            out.push_str(&format!("{n}. "));
                            *n += 1;
                        }
                        _ => out.push_str("• "),
                    }
                }
                Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                    out.push_str("<a href=\"");
                    escape_html(&dest_url, &mut out);
                    out.push_str("\">");
                }
                _ => {}
            },
            Event::End(tag) => match tag {
                TagEnd::Paragraph => out.push_str("\n\n"),
                TagEnd::Heading(level) => {
                    out.push_str("</b>");
                    out.push_str(if level == HeadingLevel::H1 {
                        "\n\n"
                    } else {
                        "\n"
                    });
                }
                TagEnd::Strong => out.push_str("</b>"),
                TagEnd::Emphasis => out.push_str("</i>"),
                TagEnd::Strikethrough => out.push_str("</s>"),
                TagEnd::BlockQuote(_) => out.push_str("</blockquote>\n"),
                TagEnd::CodeBlock => out.push_str("</code></pre>\n\n"),
                TagEnd::List(_) => {
                    lists.pop();
                    if lists.is_empty() {
                        out.push('\n');
                    }
                }
                TagEnd::Item if !out.ends_with('\n') => out.push('\n'),
                TagEnd::Link | TagEnd::Image => out.push_str("</a>"),
                _ => {}
            },
            Event::Text(text) => escape_html(&text, &mut out),
            Event::Code(code) => {
                out.push_str("<code>");
                escape_html(&code, &mut out);
                out.push_str("</code>");
            }
            Event::SoftBreak | Event::HardBreak => out.push('\n'),
            Event::Rule => out.push_str("——————\n\n"),
            Event::Html(html) | Event::InlineHtml(html) => escape_html(&html, &mut out),
            Event::TaskListMarker(done) => out.push_str(if done { "☑ " } else { "☐ " }),
            _ => {}
        }
    }
    out.trim_end().to_owned()
}

fn escape_slack(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            c => out.push(c),
        }
    }
}

fn no_escape(text: &str, out: &mut String) {
    out.push_str(text);
}

fn slack_link(url: &str, label: &str, out: &mut String) {
    out.push('<');
    escape_slack(url, out);
    if !label.is_empty() && label != url {
        out.push('|');
        out.push_str(label);
    }
    out.push('>');
}

fn plain_link(url: &str, label: &str, out: &mut String) {
    if label.is_empty() || label == url {
        out.push_str(url);
    } else {
        out.push_str(&format!("{label} ({url})"));
    }
}

/// A chat dialect with `*bold*`, `_italic_`, `~strike~` and fenced code: Slack's
/// mrkdwn and WhatsApp's formatting differ in escaping and links.
struct Marked {
    escape: fn(&str, &mut String),
    link: fn(&str, &str, &mut String),
}

/// Slack mrkdwn: `*bold*`, `_italic_`, `~strike~`, code, fenced blocks, `>` quotes,
/// `<url|label>` links; `&`, `<`, `>` escaped in text (and nothing else).
pub fn slack_mrkdwn(markdown: &str) -> String {
    render_marked(
        markdown,
        &Marked {
            escape: escape_slack,
            link: slack_link,
        },
    )
}

/// WhatsApp formatting: `*bold*`, `_italic_`, `~strike~`, fenced and inline code,
/// `>` quotes; it has no escapes, so text goes as is and links as `label (url)`.
pub fn whatsapp_text(markdown: &str) -> String {
    render_marked(
        markdown,
        &Marked {
            escape: no_escape,
            link: plain_link,
        },
    )
}

fn render_marked(markdown: &str, dialect: &Marked) -> String {
    let escape = dialect.escape;
    let mut out = String::with_capacity(markdown.len() + 16);
    let mut lists: Vec<Option<u64>> = Vec::new();
    let mut link: Option<(String, String)> = None;
    let mut quote = 0usize;
    for event in parser(markdown) {
        if let Some((_, label)) = link.as_mut() {
            match &event {
                Event::Text(text) | Event::Code(text) => {
                    escape(text, label);
                    continue;
                }
                Event::End(TagEnd::Link) | Event::End(TagEnd::Image) => {}
                _ => continue,
            }
        }
        match event {
            Event::Start(tag) => match tag {
                Tag::Heading { .. } | Tag::Strong => out.push('*'),
                Tag::Emphasis => out.push('_'),
                Tag::Strikethrough => out.push('~'),
                Tag::BlockQuote(_) => {
                    quote += 1;
                    out.push_str("> ");
                }
                Tag::CodeBlock(_) => out.push_str("```\n"),
                Tag::List(start) => lists.push(start),
                Tag::Item => {
                    out.push_str(&"  ".repeat(lists.len().saturating_sub(1)));
                    match lists.last_mut() {
                        Some(Some(n)) => {
                            out.push_str(&format!("{n}. "));
                            *n += 1;
                        }
                        _ => out.push_str("• "),
                    }
                }
                Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                    link = Some((dest_url.to_string(), String::new()));
                }
                _ => {}
            },
            Event::End(tag) => match tag {
                TagEnd::Paragraph => out.push_str(if quote > 0 { "\n" } else { "\n\n" }),
                TagEnd::Heading(_) => out.push_str("*\n"),
                TagEnd::Strong => out.push('*'),
                TagEnd::Emphasis => out.push('_'),
                TagEnd::Strikethrough => out.push('~'),
                TagEnd::BlockQuote(_) => {
                    quote = quote.saturating_sub(1);
                    out.push('\n');
                }
                TagEnd::CodeBlock => out.push_str("```\n\n"),
                TagEnd::List(_) => {
                    lists.pop();
                    if lists.is_empty() {
                        out.push('\n');
                    }
                }
                TagEnd::Item if !out.ends_with('\n') => out.push('\n'),
                TagEnd::Link | TagEnd::Image => {
                    if let Some((url, label)) = link.take() {
                        (dialect.link)(&url, &label, &mut out);
                    }
                }
                _ => {}
            },
            Event::Text(text) => escape(&text, &mut out),
            Event::Code(code) => {
                out.push('`');
                escape(&code, &mut out);
                out.push('`');
            }
            Event::SoftBreak | Event::HardBreak => {
                out.push('\n');
                if quote > 0 {
                    out.push_str("> ");
                }
            }
            Event::Rule => out.push_str("———\n\n"),
            Event::Html(html) | Event::InlineHtml(html) => escape(&html, &mut out),
            Event::TaskListMarker(done) => out.push_str(if done { "☑ " } else { "☐ " }),
            _ => {}
        }
    }
    out.trim_end().to_owned()
}

/// Plain text for SMS: no markup at all; list items as lines with `- `, links as
/// `label (url)`, code as is.
pub fn plain_text(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    let mut lists: Vec<Option<u64>> = Vec::new();
    let mut link: Option<(String, String)> = None;
    for event in parser(markdown) {
        if let Some((_, label)) = link.as_mut() {
            match &event {
                Event::Text(text) | Event::Code(text) => {
                    label.push_str(text);
                    continue;
                }
                Event::End(TagEnd::Link) | Event::End(TagEnd::Image) => {}
                _ => continue,
            }
        }
        match event {
            Event::Start(Tag::List(start)) => lists.push(start),
            Event::Start(Tag::Item) => {
                out.push_str(&"  ".repeat(lists.len().saturating_sub(1)));
                match lists.last_mut() {
                    Some(Some(n)) => {
                        out.push_str(&format!("{n}. "));
                        *n += 1;
                    }
                    _ => out.push_str("- "),
                }
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                link = Some((dest_url.to_string(), String::new()));
            }
            Event::End(TagEnd::Link | TagEnd::Image) => {
                if let Some((url, label)) = link.take() {
                    plain_link(&url, &label, &mut out);
                }
            }
            Event::End(TagEnd::Paragraph | TagEnd::CodeBlock | TagEnd::Heading(_)) => {
                out.push_str("\n\n")
            }
            Event::End(TagEnd::Item) if !out.ends_with('\n') => out.push('\n'),
            Event::End(TagEnd::List(_)) => {
                lists.pop();
                if lists.is_empty() {
                    out.push('\n');
                }
            }
            Event::Text(text) | Event::Code(text) | Event::Html(text) | Event::InlineHtml(text) => {
                out.push_str(&text)
            }
            Event::SoftBreak | Event::HardBreak => out.push('\n'),
            _ => {}
        }
    }
    out.trim_end().to_owned()
}

/// Length in Unicode characters.
pub fn char_len(text: &str) -> usize {
    text.chars().count()
}

/// Length in UTF-16 code units (how Telegram counts).
pub fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// The top-level blocks of a Markdown document, as source slices in order.
fn blocks(markdown: &str) -> Vec<&str> {
    let mut depth = 0usize;
    let mut start = None;
    let mut blocks = Vec::new();
    for (event, range) in parser(markdown).into_offset_iter() {
        match event {
            Event::Start(_) => {
                if depth == 0 {
                    start = Some(range.start);
                }
                depth += 1;
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 0
                    && let Some(from) = start.take()
                {
                    blocks.push(markdown[from..range.end].trim_end());
                }
            }
            Event::Rule if depth == 0 => blocks.push(&markdown[range]),
            _ => {}
        }
    }
    blocks
}

/// A fenced code block's opening fence line and body, when `block` is one.
fn code_fence(block: &str) -> Option<(&str, &str)> {
    let fence = if block.starts_with("```") {
        "```"
    } else if block.starts_with("~~~") {
        "~~~"
    } else {
        return None;
    };
    let (open, rest) = block.split_once('\n')?;
    let body = rest.trim_end().strip_suffix(fence).unwrap_or(rest);
    Some((open, body.trim_end_matches('\n')))
}

/// Cuts `text` into pieces whose rendering fits: at line breaks, then spaces,
/// then characters.
fn cut(text: &str, fits: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for unit in text.split_inclusive('\n') {
        let candidate = format!("{current}{unit}");
        if fits(candidate.trim_end()) {
            current = candidate;
            continue;
        }
        if !current.trim().is_empty() {
            pieces.push(current.trim_end().to_owned());
        }
        current = String::new();
        if fits(unit.trim_end()) {
            current = unit.to_owned();
            continue;
        }
        // A single line too long: words, then characters.
        for word in unit.split_inclusive(' ') {
            let candidate = format!("{current}{word}");
            if fits(candidate.trim_end()) {
                current = candidate;
                continue;
            }
            if !current.trim().is_empty() {
                pieces.push(current.trim_end().to_owned());
            }
            current = String::new();
            for c in word.chars() {
                let candidate = format!("{current}{c}");
                if fits(&candidate) {
                    current = candidate;
                } else {
                    if !current.is_empty() {
                        pieces.push(std::mem::take(&mut current));
                    }
                    current.push(c);
                }
            }
        }
    }
    if !current.trim().is_empty() {
        pieces.push(current.trim_end().to_owned());
    }
    pieces
}

/// Renders `markdown` with `render` in parts whose `measure` is at most `limit`,
/// keeping their order.
pub fn render_parts(
    markdown: &str,
    limit: usize,
    render: fn(&str) -> String,
    measure: fn(&str) -> usize,
) -> Vec<String> {
    let fits = |md: &str| measure(&render(md)) <= limit;
    let mut parts: Vec<String> = Vec::new();
    let mut current = String::new();
    let push = |piece: String, current: &mut String, parts: &mut Vec<String>| {
        let candidate = if current.is_empty() {
            piece.clone()
        } else {
            format!("{current}\n\n{piece}")
        };
        if fits(&candidate) {
            *current = candidate;
        } else {
            if !current.is_empty() {
                parts.push(render(current));
            }
            *current = piece;
        }
    };
    for block in blocks(markdown) {
        if fits(block) {
            push(block.to_owned(), &mut current, &mut parts);
            continue;
        }
        match code_fence(block) {
            Some((open, body)) => {
                let close = &open[..3];
                let wrapped_fits = |piece: &str| fits(&format!("{open}\n{piece}\n{close}"));
                for piece in cut(body, &wrapped_fits) {
                    push(
                        format!("{open}\n{piece}\n{close}"),
                        &mut current,
                        &mut parts,
                    );
                }
            }
            None => {
                for piece in cut(block, &fits) {
                    push(piece, &mut current, &mut parts);
                }
            }
        }
    }
    if !current.is_empty() {
        parts.push(render(&current));
    }
    parts.retain(|p| !p.trim().is_empty());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_telegram_html_with_escaping() {
        assert_eq!(
            telegram_html("**bold** and _it_ and `a<b>&c` and [link](https://x.y/?a=1&b=2)"),
            "<b>bold</b> and <i>it</i> and <code>a&lt;b&gt;&amp;c</code> and <a href=\"https://x.y/?a=1&amp;b=2\">link</a>"
        );
        assert_eq!(
            telegram_html("what's 2+2? (testing_underscores.and-dots!) <script>"),
            "what's 2+2? (testing_underscores.and-dots!) &lt;script&gt;"
        );
        assert_eq!(
            telegram_html("```rust\nlet x = a < b;\n```"),
            "<pre><code class=\"language-rust\">let x = a &lt; b;\n</code></pre>"
        );
        assert_eq!(
            telegram_html("# Title\n\n- one\n- two"),
            "<b>Title</b>\n\n• one\n• two"
        );
        assert_eq!(telegram_html("1. a\n2. b"), "1. a\n2. b");
        assert_eq!(telegram_html("~~gone~~"), "<s>gone</s>");
    }

    fn parts(md: &str, limit: usize) -> Vec<String> {
        render_parts(md, limit, telegram_html, utf16_len)
    }

    #[test]
    fn renders_slack_mrkdwn_escaping_only_what_slack_needs() {
        assert_eq!(
            slack_mrkdwn("**Deploy** _log_ ~~old~~ & <errors> `a<b`"),
            "*Deploy* _log_ ~old~ &amp; &lt;errors&gt; `a&lt;b`"
        );
        assert_eq!(
            slack_mrkdwn("see [the runbook](https://x.y/run?a=1&b=2) or https://plain.link"),
            "see <https://x.y/run?a=1&amp;b=2|the runbook> or https://plain.link"
        );
        assert_eq!(
            slack_mrkdwn("## Status\n\n- ok\n- *fine*"),
            "*Status*\n• ok\n• _fine_"
        );
        assert_eq!(slack_mrkdwn("```\nlet a = 1;\n```"), "```\nlet a = 1;\n```");
        assert_eq!(slack_mrkdwn("> quoted\n> twice"), "> quoted\n> twice");
    }

    #[test]
    fn renders_whatsapp_text_without_escapes() {
        assert_eq!(
            whatsapp_text(
                "**Order** _#4411_ & <shipped> ~~late~~ see [tracking](https://t.example/1)"
            ),
            "*Order* _#4411_ & <shipped> ~late~ see tracking (https://t.example/1)"
        );
    }

    #[test]
    fn renders_plain_text_for_sms() {
        assert_eq!(
            plain_text(
                "# Part\n\n**Shipped** on _Monday_: see [tracking](https://t.example/1)\n\n- box\n- `label`"
            ),
            "Part\n\nShipped on Monday: see tracking (https://t.example/1)\n\n- box\n- label"
        );
    }

    #[test]
    fn a_short_reply_is_one_part() {
        assert_eq!(parts("hello **there**", 4096), ["hello <b>there</b>"]);
    }

    #[test]
    fn long_replies_split_on_paragraphs_in_order() {
        let md = format!(
            "{}\n\n{}\n\n{}",
            "a".repeat(30),
            "b".repeat(30),
            "c".repeat(30)
        );
        assert_eq!(
            parts(&md, 64),
            [
                format!("{}\n\n{}", "a".repeat(30), "b".repeat(30)),
                "c".repeat(30)
            ]
        );
    }

    #[test]
    fn exact_limit_lengths_fit() {
        assert_eq!(parts(&"x".repeat(50), 50), ["x".repeat(50)]);
        assert_eq!(parts(&"x".repeat(51), 50), ["x".repeat(50), "x".to_owned()]);
    }

    #[test]
    fn a_long_paragraph_splits_on_words_and_every_part_fits() {
        let md = "word ".repeat(100);
        let split = parts(&md, 42);
        assert!(split.len() > 1);
        assert!(
            split
                .iter()
                .all(|p| utf16_len(p) <= 42 && !p.ends_with(' '))
        );
        assert_eq!(split.join(" ").split_whitespace().count(), 100);
    }

    #[test]
    fn emoji_and_cjk_are_never_cut_and_count_in_utf16() {
        let md = "😀".repeat(30) + &"漢".repeat(30);
        let split = parts(&md, 20);
        assert!(split.iter().all(|p| utf16_len(p) <= 20));
        assert_eq!(
            split.concat(),
            md,
            "nothing lost, nothing cut inside a character"
        );
    }

    #[test]
    fn code_blocks_are_closed_and_reopened_in_every_part() {
        let code: String = (0..40).map(|i| format!("line {i} < limit\n")).collect();
        let md = format!("Here:\n\n```python\n{code}```\n\nDone.");
        let split = parts(&md, 200);
        assert!(split.len() > 2);
        for part in &split {
            assert!(utf16_len(part) <= 200, "{part}");
            assert_eq!(
                part.matches("<pre>").count(),
                part.matches("</pre>").count(),
                "{part}"
            );
        }
        let all = split.concat();
        for i in 0..40 {
            assert!(
                all.contains(&format!("line {i} &lt; limit")),
                "line {i} kept"
            );
        }
    }
}
