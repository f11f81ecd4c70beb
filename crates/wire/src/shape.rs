//! Message shape limits: how many items a request may hold, checked on the
//! encoded bytes before the request is decoded.
//!
//! Decoding is where a request's size on the wire stops bounding its cost:
//! an empty string is two bytes in protobuf and a heap allocation of its
//! own once decoded, so a body within any sensible size limit can still
//! decode into tens of millions of values. A [`ShapeLimits`] counts the
//! elements of repeated fields while it walks the encoded message, with the
//! message descriptors, and refuses the request before anything is
//! allocated for it: per field (the limits a server names) and in total.
//!
//! The scan reads protobuf binary and proto JSON. It only counts: a body it
//! cannot follow (malformed, or nested deeper than [`MAX_DEPTH`]) is left
//! to the decoder, which reports the error. The wire layer holds no policy:
//! which fields are limited, and by how much, is the server's choice.

use std::collections::HashMap;

use prost_reflect::{Kind, MessageDescriptor};

/// Deepest nesting the scan follows; deeper parts are left uncounted to the
/// decoder, whose own recursion limit is lower.
pub const MAX_DEPTH: usize = 100;

/// Limits on the number of items of a request's repeated fields.
#[derive(Clone, Debug)]
pub struct ShapeLimits {
    total: usize,
    total_setting: String,
    per_field: HashMap<String, (usize, String)>,
}

/// A request over one of the limits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: more than {limit} items (setting {setting})")]
pub struct ShapeError {
    /// The field, as a path from the request: `idle_bots[3].dimensions`.
    pub field: String,
    /// The limit.
    pub limit: usize,
    /// The setting that holds the limit.
    pub setting: String,
}

impl ShapeLimits {
    /// At most `total` items in a whole request (elements of repeated
    /// fields and map entries, at every depth); `setting` names the setting
    /// in error messages.
    pub fn new(total: usize, setting: &str) -> Self {
        ShapeLimits {
            total,
            total_setting: setting.to_owned(),
            per_field: HashMap::new(),
        }
    }

    /// At most `max` items in each occurrence of the repeated field
    /// `full_name` (`package.Message.field`).
    pub fn repeated(mut self, full_name: &str, max: usize, setting: &str) -> Self {
        self.per_field
            .insert(full_name.to_owned(), (max, setting.to_owned()));
        self
    }

    /// Checks a binary protobuf message of type `desc`.
    pub fn check_binary(&self, desc: &MessageDescriptor, bytes: &[u8]) -> Result<(), ShapeError> {
        let mut scan = Scan {
            limits: self,
            total: 0,
            path: Vec::new(),
        };
        scan.binary(desc, bytes, 0)
    }

    /// Checks a proto JSON message of type `desc`.
    pub fn check_json(&self, desc: &MessageDescriptor, bytes: &[u8]) -> Result<(), ShapeError> {
        let mut scan = Scan {
            limits: self,
            total: 0,
            path: Vec::new(),
        };
        let mut json = Json { b: bytes, i: 0 };
        json.ws();
        match scan.json_message(desc, &mut json, 0) {
            Err(Stop::Limit(e)) => Err(e),
            // A malformed body is the decoder's to report.
            Ok(()) | Err(Stop::Malformed) => Ok(()),
        }
    }
}

/// Where the scan is, for error messages.
struct Scan<'a> {
    limits: &'a ShapeLimits,
    total: usize,
    path: Vec<(String, Option<usize>)>,
}

/// What a JSON walk step ended with: its result, or a malformed body.
type Step = Result<(), Stop>;

enum Stop {
    /// A limit was exceeded.
    Limit(ShapeError),
    /// The body is not what the scan can follow; the decoder will judge.
    Malformed,
}

impl Scan<'_> {
    fn path_string(&self, last: &str) -> String {
        let mut s = String::new();
        for (name, index) in &self.path {
            s.push_str(name);
            if let Some(i) = index {
                s.push_str(&format!("[{i}]"));
            }
            s.push('.');
        }
        s.push_str(last);
        s
    }

    fn total_error(&self) -> ShapeError {
        ShapeError {
            field: "the request".to_owned(),
            limit: self.limits.total,
            setting: self.limits.total_setting.clone(),
        }
    }

    /// Counts one more item of `field`, whose occurrence now has `n` items.
    fn count(&mut self, full_name: &str, name: &str, n: usize) -> Result<(), ShapeError> {
        self.total += 1;
        if self.total > self.limits.total {
            return Err(self.total_error());
        }
        if let Some((max, setting)) = self.limits.per_field.get(full_name)
            && n > *max
        {
            return Err(ShapeError {
                field: self.path_string(name),
                limit: *max,
                setting: setting.clone(),
            });
        }
        Ok(())
    }

    fn binary(
        &mut self,
        desc: &MessageDescriptor,
        mut bytes: &[u8],
        depth: usize,
    ) -> Result<(), ShapeError> {
        if depth > MAX_DEPTH {
            return Ok(());
        }
        let mut counts: HashMap<u32, usize> = HashMap::new();
        while !bytes.is_empty() {
            let Some(key) = varint(&mut bytes) else {
                return Ok(());
            };
            let number = u32::try_from(key >> 3).unwrap_or(0);
            let payload: &[u8] = match key & 7 {
                0 => {
                    if varint(&mut bytes).is_none() {
                        return Ok(());
                    }
                    &[]
                }
                1 => match bytes.split_at_checked(8) {
                    Some((_, rest)) => {
                        bytes = rest;
                        &[]
                    }
                    None => return Ok(()),
                },
                5 => match bytes.split_at_checked(4) {
                    Some((_, rest)) => {
                        bytes = rest;
                        &[]
                    }
                    None => return Ok(()),
                },
                2 => {
                    let Some(len) = varint(&mut bytes).and_then(|l| usize::try_from(l).ok()) else {
                        return Ok(());
                    };
                    match bytes.split_at_checked(len) {
                        Some((payload, rest)) => {
                            bytes = rest;
                            payload
                        }
                        None => return Ok(()),
                    }
                }
                // Groups (long deprecated) and invalid wire types.
                _ => return Ok(()),
            };
            let Some(field) = desc.get_field(number) else {
                continue;
            };
            if !(field.is_list() || field.is_map()) {
                if let Kind::Message(m) = field.kind()
                    && key & 7 == 2
                {
                    self.path.push((field.name().to_owned(), None));
                    self.binary(&m, payload, depth + 1)?;
                    self.path.pop();
                }
                continue;
            }
            let n = counts.entry(number).or_insert(0);
            let index = *n;
            *n += 1;
            let n = *n;
            self.count(field.full_name(), field.name(), n)?;
            if let Kind::Message(m) = field.kind()
                && key & 7 == 2
            {
                // A map entry's value may be a message too.
                let entry_index = (!field.is_map()).then_some(index);
                self.path.push((field.name().to_owned(), entry_index));
                self.binary(&m, payload, depth + 1)?;
                self.path.pop();
            }
        }
        Ok(())
    }
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        if shift < 64 {
            value |= u64::from(b & 0x7f) << shift;
        }
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// A cursor over a JSON body.
struct Json<'a> {
    b: &'a [u8],
    i: usize,
}

impl Json<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// A string at the cursor, decoded when it has escapes.
    fn string(&mut self) -> Option<String> {
        self.ws();
        if self.peek() != Some(b'"') {
            return None;
        }
        let start = self.i;
        self.i += 1;
        let mut escaped = false;
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    break;
                }
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                }
                _ => self.i += 1,
            }
        }
        let raw = self.b.get(start..self.i)?;
        if escaped {
            serde_json::from_slice(raw).ok()
        } else {
            std::str::from_utf8(raw.get(1..raw.len() - 1)?)
                .ok()
                .map(str::to_owned)
        }
    }

    /// Skips one value of any kind, without recursion.
    fn skip(&mut self) -> Option<()> {
        self.ws();
        let mut depth = 0usize;
        loop {
            self.ws();
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    self.i += 1;
                    continue;
                }
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    self.i += 1;
                }
                b',' | b':' if depth > 0 => {
                    self.i += 1;
                    continue;
                }
                _ => {
                    let start = self.i;
                    while let Some(c) = self.peek() {
                        if matches!(c, b',' | b'}' | b']' | b':' | b' ' | b'\t' | b'\n' | b'\r') {
                            break;
                        }
                        self.i += 1;
                    }
                    if self.i == start {
                        return None;
                    }
                }
            }
            if depth == 0 {
                return Some(());
            }
        }
    }
}

impl Scan<'_> {
    fn json_message(&mut self, desc: &MessageDescriptor, j: &mut Json<'_>, depth: usize) -> Step {
        if depth > MAX_DEPTH {
            return j.skip().ok_or(Stop::Malformed);
        }
        if !j.eat(b'{') {
            // A well-known type written as a string or number, or null.
            return j.skip().ok_or(Stop::Malformed);
        }
        if j.eat(b'}') {
            return Ok(());
        }
        loop {
            let key = j.string().ok_or(Stop::Malformed)?;
            if !j.eat(b':') {
                return Err(Stop::Malformed);
            }
            let field = desc
                .get_field_by_json_name(&key)
                .or_else(|| desc.get_field_by_name(&key));
            match field {
                Some(f) if f.is_list() || f.is_map() => {
                    let (open, close) = if f.is_map() {
                        (b'{', b'}')
                    } else {
                        (b'[', b']')
                    };
                    if !j.eat(open) {
                        // null, or something the decoder will refuse.
                        j.skip().ok_or(Stop::Malformed)?;
                    } else if !j.eat(close) {
                        let mut n = 0;
                        loop {
                            if f.is_map() {
                                j.string().ok_or(Stop::Malformed)?;
                                if !j.eat(b':') {
                                    return Err(Stop::Malformed);
                                }
                            }
                            n += 1;
                            self.count(f.full_name(), f.name(), n)
                                .map_err(Stop::Limit)?;
                            match f.kind() {
                                Kind::Message(m) if !f.is_map() => {
                                    self.path.push((f.name().to_owned(), Some(n - 1)));
                                    self.json_message(&m, j, depth + 1)?;
                                    self.path.pop();
                                }
                                Kind::Message(entry) if f.is_map() => {
                                    match entry.map_entry_value_field().kind() {
                                        Kind::Message(m) => {
                                            self.path.push((f.name().to_owned(), None));
                                            self.json_message(&m, j, depth + 1)?;
                                            self.path.pop();
                                        }
                                        _ => j.skip().ok_or(Stop::Malformed)?,
                                    }
                                }
                                _ => j.skip().ok_or(Stop::Malformed)?,
                            }
                            if j.eat(b',') {
                                continue;
                            }
                            if j.eat(close) {
                                break;
                            }
                            return Err(Stop::Malformed);
                        }
                    }
                }
                Some(f) => match f.kind() {
                    Kind::Message(m) => {
                        self.path.push((f.name().to_owned(), None));
                        self.json_message(&m, j, depth + 1)?;
                        self.path.pop();
                    }
                    _ => j.skip().ok_or(Stop::Malformed)?,
                },
                None => j.skip().ok_or(Stop::Malformed)?,
            }
            if j.eat(b',') {
                continue;
            }
            if j.eat(b'}') {
                return Ok(());
            }
            return Err(Stop::Malformed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarming::v1 as pb;
    use prost::Message;

    fn desc(name: &str) -> MessageDescriptor {
        crate::descriptor_pool()
            .get_message_by_name(name)
            .expect("known message")
    }

    fn limits() -> ShapeLimits {
        ShapeLimits::new(1000, "limits.max_items_per_call")
            .repeated("swarming.v1.AssignTasksRequest.idle_bots", 3, "limits.bots")
            .repeated("swarming.v1.IdleBot.dimensions", 5, "limits.dims")
    }

    fn assign(bots: usize, dims: usize) -> pb::AssignTasksRequest {
        pb::AssignTasksRequest {
            scheduler_id: "p".into(),
            idle_bots: (0..bots)
                .map(|i| pb::IdleBot {
                    bot_id: format!("b{i}"),
                    dimensions: vec![String::new(); dims],
                })
                .collect(),
            time: Some(prost_types::Timestamp {
                seconds: 5,
                nanos: 0,
            }),
        }
    }

    fn json(m: &pb::AssignTasksRequest) -> Vec<u8> {
        let d = desc("swarming.v1.AssignTasksRequest");
        let dynamic =
            prost_reflect::DynamicMessage::decode(d, m.encode_to_vec().as_slice()).expect("decode");
        crate::prpc::codec::message_to_json(&dynamic).expect("json")
    }

    #[test]
    fn counts_per_field_and_names_the_path() {
        let d = desc("swarming.v1.AssignTasksRequest");
        let l = limits();
        for (bots, dims, err) in [
            (3, 5, None),
            (4, 0, Some("idle_bots")),
            (2, 6, Some("idle_bots[0].dimensions")),
        ] {
            let m = assign(bots, dims);
            for (format, res) in [
                ("binary", l.check_binary(&d, &m.encode_to_vec())),
                ("json", l.check_json(&d, &json(&m))),
            ] {
                match err {
                    None => assert_eq!(res, Ok(()), "{format}"),
                    Some(field) => {
                        let e = res.expect_err(format);
                        assert_eq!(e.field, field, "{format}");
                    }
                }
            }
        }
    }

    #[test]
    fn counts_the_total() {
        let d = desc("swarming.v1.AssignTasksRequest");
        let l = ShapeLimits::new(10, "limits.total").repeated(
            "swarming.v1.IdleBot.dimensions",
            100,
            "x",
        );
        let m = assign(1, 20);
        let e = l.check_binary(&d, &m.encode_to_vec()).unwrap_err();
        assert_eq!(e.setting, "limits.total");
        let e = l.check_json(&d, &json(&m)).unwrap_err();
        assert_eq!(e.setting, "limits.total");
    }

    #[test]
    fn leaves_malformed_bodies_to_the_decoder() {
        let d = desc("swarming.v1.AssignTasksRequest");
        let l = limits();
        for body in [
            &b"\xff\xff\xff"[..],
            b"\x0a\x10abc",
            b"\x1a\x05\x12\x00\x12\x00",
        ] {
            assert_eq!(l.check_binary(&d, body), Ok(()));
        }
        for body in [
            &b"{"[..],
            b"{\"idleBots\": [",
            b"[[[[[[[[[[[",
            b"{\"idleBots\": [{\"dimensions\": [\"a\", }]}",
            b"nonsense",
        ] {
            assert_eq!(l.check_json(&d, body), Ok(()), "{:?}", body);
        }
        // Deep nesting is neither followed nor a crash.
        let deep = format!("{{\"x\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(l.check_json(&d, deep.as_bytes()), Ok(()));
    }

    #[test]
    fn json_accepts_proto_names_escapes_and_unknown_fields() {
        let d = desc("swarming.v1.AssignTasksRequest");
        let l = limits();
        let body = br#"{"unknown": {"a": [1, 2, {"b": "}"}]}, "idle_bots": [
            {"bot_id": "x", "dimensions": ["a", "b\"", "c", "d", "e", "f"]}]}"#;
        let e = l.check_json(&d, body).unwrap_err();
        assert_eq!(e.field, "idle_bots[0].dimensions");
        let body = br#"{"idle\u0042ots": [{}, {}, {}, {}]}"#;
        assert_eq!(l.check_json(&d, body).unwrap_err().field, "idle_bots");
    }
}
