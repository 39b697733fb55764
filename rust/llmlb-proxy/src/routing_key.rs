//! The routing key of an OpenAI request: the prompt text (or token ids) the router hashes.
//!
//! Chat messages are rendered in order as `<|role|>\ncontent\n`, so that requests sharing
//! a system prompt or a conversation history share a prefix of the rendered text and the
//! prefix index matches it block by block. A model with a tokenizer is routed by the
//! engine's tokens instead ([`crate::tokenize`]). Every transport (this proxy, the ext_proc
//! picker, Python callers) builds keys here, so they all hash the same prefixes.

use serde_json::{Map, Value};

use crate::error::ProxyError;

pub const CHAT_PATH: &str = "/v1/chat/completions";
pub const COMPLETIONS_PATH: &str = "/v1/completions";

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoutingKey {
    pub model: String,
    pub prompt: Option<String>,
    pub token_ids: Option<Vec<u32>>,
    pub expected_output_tokens: Option<u32>,
    pub stream: bool,
    /// A chat request's `messages` and `tools` as JSON, for a model's chat template.
    pub messages_json: Option<String>,
    pub tools_json: Option<String>,
}

/// Parses `raw` (a JSON object) and builds the key for `path` (the chat endpoint or the
/// completions endpoint). Errors are 400s that say what is wrong.
pub fn routing_key(path: &str, raw: &[u8]) -> Result<RoutingKey, ProxyError> {
    let body = parse_body(raw)?;
    key_of(path, &body)
}

pub fn parse_body(raw: &[u8]) -> Result<Map<String, Value>, ProxyError> {
    match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(body)) => Ok(body),
        Ok(_) => Err(ProxyError::invalid_request(
            "Request body must be a JSON object.",
            "invalid_json",
        )),
        Err(error) => Err(ProxyError::invalid_request(
            format!("Request body is not valid JSON: {error}"),
            "invalid_json",
        )),
    }
}

pub fn key_of(path: &str, body: &Map<String, Value>) -> Result<RoutingKey, ProxyError> {
    let model = match body.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        _ => {
            return Err(ProxyError::invalid_request(
                "Missing required parameter: 'model'.",
                "missing_model",
            ))
        }
    };
    let mut key = RoutingKey {
        model,
        expected_output_tokens: expected_output_tokens(body)?,
        stream: body.get("stream") == Some(&Value::Bool(true)),
        ..RoutingKey::default()
    };
    if path == CHAT_PATH {
        let messages = body.get("messages");
        key.prompt = Some(render_messages(messages)?);
        key.messages_json = messages.map(Value::to_string);
        key.tools_json = body
            .get("tools")
            .filter(|t| !t.is_null())
            .map(Value::to_string);
    } else {
        (key.prompt, key.token_ids) = completion_prompt(body.get("prompt"))?;
    }
    Ok(key)
}

fn invalid_messages(message: &str) -> ProxyError {
    ProxyError::invalid_request(message, "invalid_messages")
}

pub fn render_messages(messages: Option<&Value>) -> Result<String, ProxyError> {
    let messages = match messages {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        _ => return Err(invalid_messages("'messages' must be a non-empty array.")),
    };
    let mut rendered = String::new();
    for message in messages {
        let Value::Object(message) = message else {
            return Err(invalid_messages("Each message must be an object."));
        };
        let Some(Value::String(role)) = message.get("role") else {
            return Err(invalid_messages("Each message needs a string 'role'."));
        };
        rendered.push_str("<|");
        rendered.push_str(role);
        rendered.push_str("|>\n");
        push_message_text(&mut rendered, message.get("content"))?;
        rendered.push('\n');
    }
    Ok(rendered)
}

/// A message's text: a string, or the text parts of a content array in order.
fn push_message_text(out: &mut String, content: Option<&Value>) -> Result<(), ProxyError> {
    match content {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(text)) => {
            out.push_str(text);
            Ok(())
        }
        Some(Value::Array(parts)) => {
            for part in parts {
                if let Some(Value::String(text)) = part.get("text") {
                    out.push_str(text);
                }
            }
            Ok(())
        }
        Some(_) => Err(invalid_messages(
            "Message 'content' must be a string or an array.",
        )),
    }
}

type CompletionPrompt = (Option<String>, Option<Vec<u32>>);

/// A completions prompt: a string, strings (a batch routes by its first), token ids, or
/// batches of token ids.
fn completion_prompt(prompt: Option<&Value>) -> Result<CompletionPrompt, ProxyError> {
    match prompt {
        Some(Value::String(text)) => return Ok((Some(text.clone()), None)),
        Some(Value::Array(items)) if !items.is_empty() => {
            if let Some(first) = strings(items) {
                return Ok((Some(first.to_owned()), None));
            }
            if let Some(tokens) = tokens(items) {
                return Ok((None, Some(tokens)));
            }
            if let Some(Value::Array(first)) = items.first() {
                let batches_ok = items
                    .iter()
                    .all(|p| matches!(p, Value::Array(p) if tokens(p).is_some() || p.is_empty()));
                if batches_ok {
                    return Ok((None, Some(tokens(first).unwrap_or_default())));
                }
            }
        }
        _ => {}
    }
    Err(ProxyError::invalid_request(
        "'prompt' must be a string, an array of strings or an array of token ids.",
        "invalid_prompt",
    ))
}

fn strings(items: &[Value]) -> Option<&str> {
    let all = items.iter().all(Value::is_string);
    all.then(|| items[0].as_str()).flatten()
}

fn tokens(items: &[Value]) -> Option<Vec<u32>> {
    items.iter().map(token).collect()
}

/// A token id: a non-negative integer that fits the engine's 32-bit ids.
fn token(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|v| u32::try_from(v).ok())
}

fn expected_output_tokens(body: &Map<String, Value>) -> Result<Option<u32>, ProxyError> {
    for name in ["max_completion_tokens", "max_tokens"] {
        match body.get(name) {
            None | Some(Value::Null) => continue,
            Some(value) => {
                return match token(value) {
                    Some(n) => Ok(Some(n)),
                    None => Err(ProxyError::invalid_request(
                        format!("'{name}' must be a non-negative integer below 2^32."),
                        "invalid_max_tokens",
                    )),
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str, body: Value) -> Result<RoutingKey, ProxyError> {
        routing_key(path, body.to_string().as_bytes())
    }

    #[test]
    fn chat_history_renders_as_a_prefix() {
        let turn1 = serde_json::json!([{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]);
        let rendered = render_messages(Some(&turn1)).unwrap();
        assert_eq!(rendered, "<|system|>\nS\n<|user|>\nhi\n");
        let mut turn2 = turn1.as_array().unwrap().clone();
        turn2.push(serde_json::json!({"role": "assistant", "content": null}));
        assert!(render_messages(Some(&Value::Array(turn2)))
            .unwrap()
            .starts_with(&rendered));
    }

    #[test]
    fn completion_prompts_of_every_shape() {
        let k = key(
            COMPLETIONS_PATH,
            serde_json::json!({"model": "m", "prompt": [1, 2, 3], "max_tokens": 9}),
        )
        .unwrap();
        assert_eq!(
            (k.prompt, k.token_ids, k.expected_output_tokens),
            (None, Some(vec![1, 2, 3]), Some(9))
        );
        let k = key(
            COMPLETIONS_PATH,
            serde_json::json!({"model": "m", "prompt": [[4, 5], [6]]}),
        )
        .unwrap();
        assert_eq!(k.token_ids, Some(vec![4, 5]));
        let k = key(
            COMPLETIONS_PATH,
            serde_json::json!({"model": "m", "prompt": ["ab", "cd"], "stream": true}),
        )
        .unwrap();
        assert_eq!((k.prompt.as_deref(), k.stream), (Some("ab"), true));
    }

    #[test]
    fn bad_input_is_a_400_with_a_code() {
        let code = |raw: &[u8], path: &str| routing_key(path, raw).unwrap_err().code;
        assert_eq!(code(b"{\"model\": ", COMPLETIONS_PATH), "invalid_json");
        assert_eq!(code(b"[1]", COMPLETIONS_PATH), "invalid_json");
        assert_eq!(
            code(br#"{"model":"m","prompt":"\ud800"}"#, COMPLETIONS_PATH),
            "invalid_json"
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(code(deep.as_bytes(), COMPLETIONS_PATH), "invalid_json");
        assert_eq!(
            code(br#"{"prompt":"x"}"#, COMPLETIONS_PATH),
            "missing_model"
        );
        assert_eq!(
            code(br#"{"model":"m","prompt":3}"#, COMPLETIONS_PATH),
            "invalid_prompt"
        );
        assert_eq!(
            code(br#"{"model":"m","prompt":[1e30]}"#, COMPLETIONS_PATH),
            "invalid_prompt"
        );
        assert_eq!(
            code(br#"{"model":"m","prompt":[true]}"#, COMPLETIONS_PATH),
            "invalid_prompt"
        );
        assert_eq!(
            code(
                br#"{"model":"m","prompt":"x","max_tokens":-1}"#,
                COMPLETIONS_PATH
            ),
            "invalid_max_tokens"
        );
        assert_eq!(
            code(
                br#"{"model":"m","prompt":"x","max_tokens":4294967296}"#,
                COMPLETIONS_PATH
            ),
            "invalid_max_tokens"
        );
        assert_eq!(
            code(br#"{"model":"m","messages":"hi"}"#, CHAT_PATH),
            "invalid_messages"
        );
        assert_eq!(
            code(br#"{"model":"m","messages":[{"content":"x"}]}"#, CHAT_PATH),
            "invalid_messages"
        );
    }
}
