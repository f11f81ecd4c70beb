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
/// values omitted, enums by name, 64-bit integers as strings, floats as the
/// reference implementation writes them.
pub(crate) fn message_to_json(msg: &DynamicMessage) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, ProtoJsonFormatter);
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

/// Compact JSON, but floats written as the reference proto JSON encoder
/// writes them (the shortest round-trip digits, `600` rather than `600.0`,
/// exponent form `1e+21` / `1.5e-7` outside `[1e-6, 1e21)`), so output
/// matches other implementations byte for byte.
struct ProtoJsonFormatter;

impl ProtoJsonFormatter {
    fn float<W: ?Sized + std::io::Write>(
        writer: &mut W,
        value: f64,
        display: String,
        exp: String,
    ) -> std::io::Result<()> {
        if value.is_nan() {
            return writer.write_all(b"\"NaN\"");
        }
        if value.is_infinite() {
            let s: &[u8] = if value > 0.0 {
                b"\"Infinity\""
            } else {
                b"\"-Infinity\""
            };
            return writer.write_all(s);
        }
        let abs = value.abs();
        if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
            // Rust writes `1.5e-7`; the reference writes `1.5e-7` and `1e+21`.
            let (mantissa, e) = exp.split_once('e').unwrap_or((exp.as_str(), "0"));
            let out = match e.strip_prefix('-') {
                Some(neg) => format!("{mantissa}e-{neg}"),
                None => format!("{mantissa}e+{e}"),
            };
            return writer.write_all(out.as_bytes());
        }
        writer.write_all(display.as_bytes())
    }
}

impl serde_json::ser::Formatter for ProtoJsonFormatter {
    fn write_f32<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f32,
    ) -> std::io::Result<()> {
        // The range test uses the float32 value, like the reference.
        Self::float(
            writer,
            f64::from(value),
            format!("{value}"),
            format!("{value:e}"),
        )
    }

    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        Self::float(writer, value, format!("{value}"), format!("{value:e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_message(name: &str) -> MessageDescriptor {
        crate::descriptor_pool()
            .get_message_by_name(name)
            .unwrap_or_else(|| panic!("{name}"))
    }

    fn json_of<M: Message>(name: &str, msg: &M) -> String {
        let out = from_binary(Format::Json, &pool_message(name), msg.encode_to_vec())
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn int64_as_strings_and_timestamps_with_z() {
        let state = crate::protos::SchedulerState {
            last_update_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 500_000_000,
            }),
            label_map: [(9_007_199_254_740_993u64, "a:b".to_string())]
                .into_iter()
                .collect(),
            queued_requests: [(
                "r".to_string(),
                crate::protos::TaskRequest {
                    base_label_ids: vec![9_007_199_254_740_993],
                    enqueue_time: Some(prost_types::Timestamp {
                        seconds: 0,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        assert_eq!(
            json_of("protos.SchedulerState", &state),
            concat!(
                ")]}'\n{\"queuedRequests\":{\"r\":{\"enqueueTime\":\"1970-01-01T00:00:00Z\",",
                "\"baseLabelIds\":[\"9007199254740993\"]}},",
                "\"lastUpdateTime\":\"2023-11-14T22:13:20.500Z\",",
                "\"labelMap\":{\"9007199254740993\":\"a:b\"}}\n"
            )
        );
    }

    #[test]
    fn durations_and_floats() {
        let config = crate::protos::SchedulerConfig {
            bot_expiration: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            account_configs: [(
                "a".to_string(),
                crate::protos::AccountConfig {
                    charge_rate: vec![0.1, 600.0, 1e-7, 3e21, f32::NAN],
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        assert_eq!(
            json_of("protos.SchedulerConfig", &config),
            concat!(
                ")]}'\n{\"accountConfigs\":{\"a\":{\"chargeRate\":",
                "[0.1,600,1e-7,3e+21,\"NaN\"]}},\"botExpiration\":\"1.500s\"}\n"
            )
        );
    }

    #[test]
    fn json_round_trip_through_descriptors() {
        let desc = pool_message("swarming.v1.AssignTasksRequest");
        let binary = to_binary(
            Format::Json,
            &desc,
            br#"{"schedulerId":"p","time":"2023-11-14T22:13:20+01:00","unknown":[1,2]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let req = crate::swarming::v1::AssignTasksRequest::decode(binary.as_slice())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(req.scheduler_id, "p");
        assert_eq!(req.time.map(|t| t.seconds), Some(1_700_000_000 - 3600));
    }
}
