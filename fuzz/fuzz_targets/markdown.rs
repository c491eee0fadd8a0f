//! The Markdown-to-dialect converters and the splitter on arbitrary text: no
//! panic, and with a limit a real platform has (at least 64), every part fits.
//! Inputs are capped at 8 KiB (twice a long model reply): splitting renders each
//! candidate part, so its cost grows with the square of the text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use microclaw::channels::format;

type Render = fn(&str) -> String;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, text)) = data.split_first() else {
        return;
    };
    if text.len() > 8 * 1024 {
        return;
    }
    let Ok(markdown) = std::str::from_utf8(text) else {
        return;
    };
    let dialects: [Render; 4] = [
        format::telegram_html,
        format::slack_mrkdwn,
        format::whatsapp_text,
        format::plain_text,
    ];
    for render in dialects {
        render(markdown);
    }
    let limit = 64 + usize::from(limit) * 8;
    for (render, measure) in [
        (
            format::telegram_html as Render,
            format::char_len as fn(&str) -> usize,
        ),
        (format::plain_text, format::utf16_len),
    ] {
        for part in format::render_parts(markdown, limit, render, measure) {
            assert!(
                measure(&part) <= limit,
                "a part of {} exceeds the limit {limit}",
                measure(&part)
            );
        }
    }
});
