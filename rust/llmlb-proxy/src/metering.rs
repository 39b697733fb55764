//! What a response carried: output tokens and the usage block, counted as the bytes pass
//! through (they are never changed).
//!
//! Streaming responses are Server-Sent Events; each `data:` event other than `[DONE]` is
//! one chunk (one token for vLLM and SGLang). When the backend sends a `usage` object
//! (non-streaming, or `stream_options.include_usage`), its counts win.

use serde_json::Value;

#[derive(Debug, Default, Clone)]
pub struct ResponseMeter {
    /// The unfinished event carried over from the last chunk.
    carry: Vec<u8>,
    pub events: u64,
    pub prompt_tokens: Option<u64>,
    pub usage_tokens: Option<u64>,
}

impl ResponseMeter {
    pub fn feed_stream(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        if !self.carry.is_empty() {
            // Only the carried tail can complete an event split across chunks.
            let joined_from = self.carry.len().saturating_sub(1);
            self.carry.extend_from_slice(chunk);
            match find_event_end(&self.carry[joined_from..]) {
                None => return,
                Some(end) => {
                    let end = joined_from + end;
                    let event = std::mem::take(&mut self.carry);
                    self.count_event(&event[..end]);
                    let consumed = end + 2 - (event.len() - chunk.len());
                    rest = &chunk[consumed..];
                }
            }
        }
        while let Some(end) = find_event_end(rest) {
            self.count_event(&rest[..end]);
            rest = &rest[end + 2..];
        }
        self.carry.extend_from_slice(rest);
    }

    pub fn finish_stream(&mut self) {
        let carry = std::mem::take(&mut self.carry);
        if carry.iter().any(|b| !b.is_ascii_whitespace()) {
            self.count_event(&carry);
        }
    }

    /// A non-streaming JSON body: its usage block, when it has one.
    pub fn feed_whole(&mut self, body: &[u8]) {
        if contains(body, b"\"usage\"") {
            self.read_usage(body);
        }
    }

    pub fn tokens_out(&self) -> u64 {
        self.usage_tokens.unwrap_or(self.events)
    }

    fn count_event(&mut self, event: &[u8]) {
        for line in event.split(|&b| b == b'\n') {
            let Some(payload) = line.strip_prefix(b"data:") else {
                continue;
            };
            let payload = payload.trim_ascii();
            if payload == b"[DONE]" {
                continue;
            }
            self.events += 1;
            if contains(payload, b"\"usage\"") {
                self.read_usage(payload);
            }
        }
    }

    fn read_usage(&mut self, document: &[u8]) {
        let Ok(Value::Object(document)) = serde_json::from_slice::<Value>(document) else {
            return;
        };
        let Some(Value::Object(usage)) = document.get("usage") else {
            return;
        };
        if let Some(completion) = usage.get("completion_tokens").and_then(Value::as_u64) {
            self.usage_tokens = Some(completion);
        }
        if let Some(prompt) = usage.get("prompt_tokens").and_then(Value::as_u64) {
            self.prompt_tokens = Some(prompt);
        }
    }
}

fn find_event_end(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\n\n")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: &[u8] = b"data: {\"t\":1}\n\ndata: {\"t\":2}\n\n: comment\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";

    #[test]
    fn every_split_counts_the_same() {
        for cut in 0..EVENTS.len() {
            for cut2 in cut..EVENTS.len() {
                let mut meter = ResponseMeter::default();
                meter.feed_stream(&EVENTS[..cut]);
                meter.feed_stream(&EVENTS[cut..cut2]);
                meter.feed_stream(&EVENTS[cut2..]);
                meter.finish_stream();
                assert_eq!(
                    (meter.events, meter.usage_tokens, meter.prompt_tokens),
                    (3, Some(2), Some(7)),
                    "cuts {cut} {cut2}"
                );
            }
        }
    }

    #[test]
    fn an_unterminated_last_event_counts_and_whole_bodies_read_usage() {
        let mut meter = ResponseMeter::default();
        meter.feed_stream(b"data: a\n\ndata: b");
        meter.finish_stream();
        assert_eq!(meter.tokens_out(), 2);
        let mut whole = ResponseMeter::default();
        whole.feed_whole(br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}"#);
        assert_eq!((whole.tokens_out(), whole.prompt_tokens), (3, Some(5)));
        let mut garbage = ResponseMeter::default();
        garbage.feed_whole(b"\"usage\" not json");
        assert_eq!(garbage.tokens_out(), 0);
    }
}
