//! Keeping the usage chunk Tollgate asked for out of the client's stream.
//!
//! To meter an OpenAI chat or completions stream, the filter sets
//! `stream_options.include_usage` on a request that did not ask for it (`routing::plan`). OpenAI
//! then ends the stream with one extra event, `data: {…,"choices":[],"usage":{…}}`, before
//! `data: [DONE]`. A client that did not ask for it does not expect it: code as common as
//! `chunk.choices[0].delta` fails on it. So for such a request the scanner is told
//! ([`UsageScanner::drop_usage_chunk`]) to read that event and leave it out of what the client
//! gets; every other byte reaches the client as the upstream sent it.
//!
//! # How
//! [`UsageScanner::feed_forward`] feeds the scanner the new bytes once; the scanner's own SSE
//! framing notes where each event ended (its blank line: `\n`, `\r\n` or `\r` after an empty
//! line) and whether it was the usage-only chunk (an OpenAI message whose `choices` is `[]` and
//! that carries usage: see `Message::empty_choices`). That event — its lines and its blank line
//! — is dropped. There is no second pass over the bytes to find the events.
//!
//! A chunk that ends inside an event is held back whole (the filter pauses the response body, so
//! Envoy keeps buffering it and hands it back, followed by the next chunk): the usage chunk
//! may be split anywhere, and the decision never depends on how the upstream's bytes were
//! chunked. Holding in Envoy rather than in the filter keeps every byte Envoy's to deliver, also
//! when the upstream ends the body with trailers. A client cannot act on half an event anyway;
//! the events completed before it in the same chunk wait with it for the next chunk. An event
//! that grows past [`HOLD_CAP`] before it ends cannot be the usage chunk (a few hundred bytes) in
//! any stream OpenAI sends; it is released and passes whole. At the end of the body everything
//! passes.
//!
//! Most chunks end exactly at an event's end, so most chunks pass unchanged, with no host call
//! to rewrite them.

use super::{ResponseFormat, UsageScanner};

/// Most bytes of an unfinished event held back before it is released unread.
pub const HOLD_CAP: usize = 16 * 1024;

/// What to do with the response body the host holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forward {
    /// Replace the held body with these bytes (`None`: leave it as it is).
    pub replace: Option<Vec<u8>>,
    /// Keep holding it (the filter pauses the body; the host presents it again with the next
    /// chunk appended). Otherwise it goes to the client.
    pub hold: bool,
}

/// The framing state for [`UsageScanner::feed_forward`].
#[derive(Debug, Clone, Default)]
pub(super) struct Strip {
    /// Bytes at the start of the host's body already fed (what the last [`Forward::hold`] held).
    held: usize,
    /// Where the unfinished event starts in those held bytes.
    event_start: usize,
    /// The body ended with the `\r` of the blank line that ended an event, dropped (`Some(true)`)
    /// or kept: a `\n` opening the next body belongs to that event.
    lf_ends_event: Option<bool>,
    /// The current event outgrew [`HOLD_CAP`] and was released: it passes whole.
    passing: bool,
    /// Usage-only events dropped.
    dropped: u32,
}

impl UsageScanner {
    /// From now on [`UsageScanner::feed_forward`] leaves OpenAI's usage-only stream chunk out of
    /// what the client receives. Only for SSE; a JSON body is never changed.
    pub fn drop_usage_chunk(mut self) -> UsageScanner {
        self.start_dropping_usage_chunk();
        self
    }

    /// [`UsageScanner::drop_usage_chunk`] in place (a scanner that is [`UsageScanner::reset`]
    /// for each response, not moved).
    pub fn start_dropping_usage_chunk(&mut self) {
        if self.format == ResponseFormat::Sse {
            self.strip = Some(Box::default());
            self.sse.record_ends = true;
        }
    }

    /// How many usage-only events were left out of the client's stream.
    pub fn dropped_usage_chunks(&self) -> u32 {
        self.strip.as_ref().map_or(0, |s| s.dropped)
    }

    /// Feeds the response body the host holds now — the bytes held by the last call's
    /// [`Forward::hold`], then the new chunk — and says what to do with it. Without
    /// [`UsageScanner::drop_usage_chunk`] this is [`UsageScanner::feed`] and the body passes.
    pub fn feed_forward(&mut self, body: &[u8], end_of_stream: bool) -> Forward {
        // Most chunks of a stream: one content event shaped like the last skimmed one, with
        // nothing held before it. It passes as it is, whatever the strip does.
        let clean = self.strip.as_deref().is_none_or(|s| s.held == 0 && s.lf_ends_event.is_none() && !s.passing);
        if clean && self.take_template_chunk(body) {
            return Forward::default();
        }
        let Some(mut strip) = self.strip.take() else {
            self.feed(body);
            return Forward::default();
        };
        if body.len() < strip.held {
            // Not what was held (a host that dropped it): start over from this body.
            strip.held = 0;
            strip.event_start = 0;
        }
        let forward = if strip.held == 0 && strip.lf_ends_event.is_none() && !strip.passing {
            self.feed_whole_events(&mut strip, body, end_of_stream)
        } else {
            self.feed_events(&mut strip, body, end_of_stream)
        };
        self.strip = Some(strip);
        forward
    }

    /// [`UsageScanner::feed_events`] for what most chunks are: nothing held back before them,
    /// whole events that are not the usage chunk, ending at the chunk's end (not on a `\r` whose
    /// `\n` may come next). Then the body passes as it is, and nothing is copied or held; any
    /// other chunk takes the general path, whose outcome for this one would be the same.
    fn feed_whole_events(&mut self, strip: &mut Strip, body: &[u8], end_of_stream: bool) -> Forward {
        self.sse.ends.clear();
        self.feed(body);
        let ends = self.sse.ends.as_slice();
        let whole = ends.last().is_some_and(|&(end, _)| end == body.len()) && body.last() != Some(&b'\r');
        if whole && !ends.iter().any(|&(_, usage_only)| usage_only) {
            strip.event_start = 0;
            return Forward::default();
        }
        self.forward_events(strip, body, end_of_stream, None, 0, 0)
    }

    fn feed_events(&mut self, strip: &mut Strip, body: &[u8], end_of_stream: bool) -> Forward {
        // What the client gets in place of body[..event_start]; `None` while that is unchanged.
        let mut out: Option<Vec<u8>> = None;
        let mut event_start = strip.event_start;
        // Bytes before `fed` were fed to the scanner already (held last time).
        let fed = strip.held;
        if let Some(dropped) = strip.lf_ends_event.take() {
            if body.get(fed) == Some(&b'\n') {
                // The rest of the last event's `\r\n`: dropped or kept with it.
                if dropped {
                    out = Some(body.get(..event_start).unwrap_or_default().to_vec());
                }
                event_start = fed + 1;
            }
        }
        // One pass: the scanner frames the new bytes and notes where each event ended.
        let mut ends = std::mem::take(&mut self.sse.ends);
        ends.clear();
        self.sse.ends = ends;
        self.feed(body.get(fed..).unwrap_or_default());
        self.forward_events(strip, body, end_of_stream, out, event_start, fed)
    }

    /// What to do with `body` once its bytes from `fed` on were fed: the events that ended in
    /// them (`sse.ends`) are passed or, the usage chunk, dropped; `out` is what the client gets
    /// in place of `body[..event_start]` (`None`: unchanged).
    fn forward_events(&mut self, strip: &mut Strip, body: &[u8], end_of_stream: bool, mut out: Option<Vec<u8>>, mut event_start: usize, fed: usize) -> Forward {
        let ends = std::mem::take(&mut self.sse.ends);
        for &(end, usage_only) in &ends {
            // One whole event: body[event_start..at].
            let at = fed + end;
            let drop = usage_only && !strip.passing;
            strip.passing = false;
            if drop {
                strip.dropped = strip.dropped.saturating_add(1);
                out.get_or_insert_with(|| body.get(..event_start).unwrap_or_default().to_vec());
            } else if let Some(out) = out.as_mut() {
                out.extend_from_slice(body.get(event_start..at).unwrap_or_default());
            }
            if at == body.len() && body.last() == Some(&b'\r') {
                // Its `\n` may open the next chunk.
                strip.lf_ends_event = Some(drop);
            }
            event_start = at;
        }
        self.sse.ends = ends;
        // The unfinished event at the end of the body, if any.
        let tail = body.get(event_start..).unwrap_or_default();
        let mut hold = false;
        if !tail.is_empty() && !end_of_stream && !strip.passing {
            if tail.len() <= HOLD_CAP {
                hold = true;
            } else {
                // Too long to be the usage chunk: released, and the rest of it passes as it comes.
                strip.passing = true;
            }
        }
        let replace = out.map(|mut out| {
            out.extend_from_slice(tail);
            out
        });
        if hold {
            let kept = replace.as_ref().map_or(body.len(), Vec::len);
            strip.held = kept;
            strip.event_start = kept - tail.len();
        } else {
            strip.held = 0;
            strip.event_start = 0;
        }
        Forward { replace, hold }
    }
}
