//! The budget banner's Envoy side (`core::banner` decides): an HTML page from a configured chat UI
//! route streams through a lol_html rewriter chunk by chunk, and the banner goes in right after
//! the `<body>` start tag. Nothing is buffered whole: each body chunk Envoy hands over is fed to
//! the rewriter and replaced by what it emitted (lol_html holds back at most an unfinished tag,
//! up to [`MAX_REWRITER_MEMORY`]).
//!
//! The banner's text is inserted as text content (lol_html escapes `<`, `>` and `&`), so a team
//! called `<script>` shows as that, never runs. If lol_html gives up (its memory limit), it first
//! flushes every byte it held as it was, the rest of the page passes through untouched, and
//! `tollgate_banner_failed` counts it: the page stays whole, only the banner may be missing.

use crate::metrics::Counter;
use lol_html::html_content::{ContentType, Element};
use lol_html::{ElementContentHandlers, HandlerResult, HtmlRewriter, MemorySettings, OutputSink, Selector, Settings};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use tollgate_core::protocol::Principal;

/// The most a page's rewriter may hold (an unfinished tag split across chunks); past it the rest
/// of the page passes through untouched.
pub const MAX_REWRITER_MEMORY: usize = 1 << 20;

/// The banner's markup around its (escaped) text.
const OPEN: &str = "<div id=\"tollgate-banner\" role=\"status\" style=\"padding:4px 12px;background:#fff4ce;color:#222;font:14px/1.4 system-ui,sans-serif;border-bottom:1px solid #e0c97a\">";
const CLOSE: &str = "</div>";

/// Where a request on a banner route is.
pub enum Page {
    /// The request is on a banner route: its principal, until the response headers say whether
    /// the page is rewritten.
    Awaiting(Principal),
    /// The page is streaming through the rewriter.
    Rewriting(Box<PageRewriter>),
}

/// The output sink: what the rewriter emitted for the chunk being fed.
struct Collect(Rc<RefCell<Vec<u8>>>);

impl OutputSink for Collect {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        if let Ok(mut out) = self.0.try_borrow_mut() {
            out.extend_from_slice(chunk);
        }
    }
}

/// One page's lol_html rewriter, fed chunk by chunk.
pub struct PageRewriter {
    /// `None` once it has ended or failed (lol_html must not be used after an error: it panics).
    rewriter: Option<HtmlRewriter<'static, Collect>>,
    out: Rc<RefCell<Vec<u8>>>,
    injected: Rc<Cell<bool>>,
}

/// What feeding a chunk gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Replace the chunk with these bytes.
    Rewritten(Vec<u8>),
    /// lol_html gave up: replace the chunk with these bytes (everything it held, as it was);
    /// pass the rest of the page through untouched.
    Failed(Vec<u8>),
    /// The rewriter had already ended or failed: leave the chunk as it is.
    Untouched,
}

impl PageRewriter {
    /// A rewriter that puts `text` (escaped) in the banner after the first `<body>` start tag.
    /// `None` if lol_html cannot be set up (it then never touches the page).
    pub fn new(text: &str) -> Option<PageRewriter> {
        let selector: Selector = "body".parse().ok()?;
        let injected = Rc::new(Cell::new(false));
        let flag = Rc::clone(&injected);
        let text = text.to_owned();
        let handler = move |el: &mut Element<'_, '_>| -> HandlerResult {
            if !flag.get() {
                flag.set(true);
                // Each prepend goes before the one made earlier: markup close, text, markup open.
                el.prepend(CLOSE, ContentType::Html);
                el.prepend(&text, ContentType::Text);
                el.prepend(OPEN, ContentType::Html);
            }
            Ok(())
        };
        let settings = Settings::new()
            .append_element_content_handler((Cow::Owned(selector), ElementContentHandlers::default().element(handler)))
            // Not strict: markup whose parse is ambiguous is passed on as lol_html reads it
            // instead of failing the page.
            .with_strict(false)
            .with_memory_settings(
                MemorySettings::new()
                    .with_max_allowed_memory_usage(MAX_REWRITER_MEMORY)
                    .with_graceful_bail_out_on_memory_limit_exceeded(true),
            )
            .with_graceful_bail_out_on_content_handler_error(true);
        let out = Rc::new(RefCell::new(Vec::new()));
        let rewriter = HtmlRewriter::new(settings, Collect(Rc::clone(&out)));
        Some(PageRewriter { rewriter: Some(rewriter), out, injected })
    }

    /// Feeds one body chunk (`end`: the page's last; the rewriter then finishes).
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Fed {
        let Some(mut rewriter) = self.rewriter.take() else { return Fed::Untouched };
        let mut result = rewriter.write(chunk);
        if result.is_ok() {
            if end {
                result = rewriter.end();
            } else {
                self.rewriter = Some(rewriter);
            }
        }
        let out = self.out.try_borrow_mut().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default();
        match result {
            Ok(()) => Fed::Rewritten(out),
            Err(_) => Fed::Failed(out),
        }
    }

    /// Whether the banner went in.
    pub fn injected(&self) -> bool {
        self.injected.get()
    }
}

/// The banner's counters; defined only with a `banner` section.
#[derive(Debug, Default)]
pub struct BannerMetrics {
    injected: Option<Counter>,
    no_status: Option<Counter>,
    skipped_encoded: Option<Counter>,
    failed: Option<Counter>,
}

/// Every banner counter name, for docs and tests.
pub const NAMES: [&str; 4] = ["tollgate_banner_injected", "tollgate_banner_no_status", "tollgate_banner_skipped_encoded", "tollgate_banner_failed"];

impl BannerMetrics {
    pub fn define() -> BannerMetrics {
        let [injected, no_status, skipped_encoded, failed] = NAMES.map(Counter::define);
        BannerMetrics { injected, no_status, skipped_encoded, failed }
    }

    pub fn flush(&self) {
        for c in [&self.injected, &self.no_status, &self.skipped_encoded, &self.failed].into_iter().flatten() {
            c.flush();
        }
    }

    /// A page got its banner.
    pub fn injected(&self) {
        Counter::add(&self.injected, 1);
    }

    /// An HTML page on a banner route whose principal has no budget the gateway knows.
    pub fn no_status(&self) {
        Counter::add(&self.no_status, 1);
    }

    /// A compressed HTML page on a banner route, passed through untouched.
    pub fn skipped_encoded(&self) {
        Counter::add(&self.skipped_encoded, 1);
    }

    /// lol_html gave up, or the page ended with trailers: the rest passed through untouched.
    pub fn failed(&self) {
        Counter::add(&self.failed, 1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    /// The page fed in chunks cut at `cuts`, and what came out.
    fn rewrite(page: &[u8], cuts: &[usize], text: &str) -> (Vec<u8>, bool, bool) {
        let mut r = PageRewriter::new(text).unwrap();
        let mut out = Vec::new();
        let mut failed = false;
        let mut from = 0;
        let ends: Vec<usize> = cuts.iter().copied().chain([page.len()]).collect();
        for (i, &to) in ends.iter().enumerate() {
            match r.feed(&page[from..to], i + 1 == ends.len()) {
                Fed::Rewritten(b) => out.extend(b),
                Fed::Failed(b) => {
                    failed = true;
                    out.extend(b);
                }
                Fed::Untouched => out.extend(&page[from..to]),
            }
            from = to;
        }
        (out, r.injected(), failed)
    }

    fn banner(text: &str) -> String {
        format!("{OPEN}{text}{CLOSE}")
    }

    #[test]
    fn the_banner_follows_the_body_start_tag_at_every_split() {
        let page = b"<!doctype html><html><head><title>x</title></head><body class=\"app\"><p>hi</p></body></html>";
        let want = format!("<!doctype html><html><head><title>x</title></head><body class=\"app\">{}<p>hi</p></body></html>", banner("Budget: 82 %"));
        for a in 0..=page.len() {
            for b in [a, (a + 7).min(page.len())] {
                let (out, injected, failed) = rewrite(page, &[a, b], "Budget: 82 %");
                assert_eq!(String::from_utf8(out).unwrap(), want, "cut at {a} and {b}");
                assert!(injected && !failed);
            }
        }
    }

    #[test]
    fn values_are_escaped() {
        let (out, _, _) = rewrite(b"<body></body>", &[], "team <script>alert(1)</script> & co");
        assert_eq!(String::from_utf8(out).unwrap(), format!("<body>{}</body>", banner("team &lt;script&gt;alert(1)&lt;/script&gt; &amp; co")));
    }

    #[test]
    fn only_the_first_body_gets_it_and_a_page_without_one_is_unchanged() {
        let (out, _, _) = rewrite(b"<body><body>x", &[3], "B");
        assert_eq!(String::from_utf8(out).unwrap(), format!("<body>{}<body>x", banner("B")));
        for page in [&b"<html><p>no body tag</p></html>"[..], b"<div><<<>>&&\"<body", b"\xff\xfe<b\0ody>", b"<!-- <body> --><script>'<body>'</script>"] {
            let (out, injected, failed) = rewrite(page, &[5], "B");
            assert_eq!(out, page);
            assert!(!injected && !failed);
        }
    }

    #[test]
    fn past_the_memory_limit_every_byte_passes_unchanged() {
        // A `<body>` start tag longer than the rewriter may hold, split over chunks: lol_html
        // gives up and flushes what it held; the rest passes through.
        let mut page = b"<html><head></head><body data-x=\"".to_vec();
        page.extend(std::iter::repeat_n(b'a', MAX_REWRITER_MEMORY + 10));
        page.extend(b"\">x</body>");
        let cuts: Vec<usize> = (1..40).map(|i| i * 64 * 1024).filter(|&c| c < page.len()).collect();
        let (out, injected, failed) = rewrite(&page, &cuts, "B");
        assert!(failed);
        assert!(!injected);
        assert_eq!(out.len(), page.len());
        assert!(out == page, "the page passed through unchanged");
    }
}
