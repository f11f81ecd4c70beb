//! Conversions between the binary encoding, which handlers and clients use,
//! and the JSON and text encodings of pRPC, through the embedded descriptors.
//!
//! Going through binary keeps one typed code path for every format; JSON and
//! text are rare (pRPC clients default to binary), so the extra transcoding
//! step costs little where it happens at all.

use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

use super::headers::Format;

/// Prefix of successful JSON responses, against cross-site script inclusion.
pub const XSSI_PREFIX: &[u8] = b")]}'\n";

/// Turns a request body in `format` into binary protobuf bytes. Errors are
/// messages for the client.
pub(crate) fn to_binary(
    format: Format,
    desc: &MessageDescriptor,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    match format {
        Format::Binary => Ok(body.to_vec()),
        Format::Json => Ok(json_to_message(desc, body)?.encode_to_vec()),
        Format::Text => {
            let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
            let msg =
                DynamicMessage::parse_text_format(desc.clone(), text).map_err(|e| e.to_string())?;
            Ok(msg.encode_to_vec())
        }
    }
}

/// Parses proto JSON, discarding unknown fields. An empty body is the empty
/// message, as it is in binary.
pub(crate) fn json_to_message(
    desc: &MessageDescriptor,
    body: &[u8],
) -> Result<DynamicMessage, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(desc.clone()));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let msg = DynamicMessage::deserialize_with_options(
        desc.clone(),
        &mut de,
        &DeserializeOptions::new().deny_unknown_fields(false),
    )
    .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(msg)
}

/// Serializes with the proto JSON defaults: lowerCamelCase names, default
/// values omitted, enums by name, 64-bit integers as strings.
pub(crate) fn message_to_json(msg: &DynamicMessage) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    msg.serialize_with_options(&mut ser, &SerializeOptions::new())
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Turns a binary response into a response body in `format` (JSON with its
/// XSSI prefix and trailing newline). Errors mean the handler produced a
/// message that has no representation in the format (for example a
/// timestamp out of range).
pub(crate) fn from_binary(
    format: Format,
    desc: &MessageDescriptor,
    binary: Vec<u8>,
) -> Result<Vec<u8>, String> {
    match format {
        Format::Binary => Ok(binary),
        Format::Json => {
            let msg = DynamicMessage::decode(desc.clone(), binary.as_slice())
                .map_err(|e| e.to_string())?;
            let json = message_to_json(&msg)?;
            let mut out = Vec::with_capacity(XSSI_PREFIX.len() + json.len() + 1);
            out.extend_from_slice(XSSI_PREFIX);
            out.extend_from_slice(&json);
            out.push(b'\n');
            Ok(out)
        }
        Format::Text => {
            let msg = DynamicMessage::decode(desc.clone(), binary.as_slice())
                .map_err(|e| e.to_string())?;
            let mut text = msg.to_text_format_with_options(
                &prost_reflect::text_format::FormatOptions::new().pretty(true),
            );
            if !text.ends_with('\n') {
                text.push('\n');
            }
            Ok(text.into_bytes())
        }
    }
}
