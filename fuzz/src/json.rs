//! JSON from the fuzzer's bytes, for the targets whose input is JSON: either the bytes as they
//! are (what a hostile writer sends, and what libFuzzer's mutations and dictionary work on), or
//! an object built from decisions (see [`crate::input`]): known fields with values of the
//! shape each expects mostly, of any shape sometimes, and unknown fields, so that random bytes
//! get past the JSON syntax to the parser's own checks.
//!
//! (`Field`s list typical values as JSON texts: readable, and checked as each is used.)

use serde_json::{Map, Value};

use crate::input::Input;

/// A field the built objects may have: its name and typical values, as JSON texts, the first a
/// valid one (taken half the time); a `list` field takes an array of them.
pub struct Field {
    pub name: &'static str,
    pub values: &'static [&'static str],
    pub list: bool,
}

/// The field called `name` (which must be one of `fields`).
pub fn field<'a>(fields: &'a [Field], name: &str) -> &'a Field {
    (fields.iter().find(|f| f.name == name)).unwrap_or_else(|| panic!("no field {name}"))
}

/// The input as a JSON document: the first byte says whether the rest is taken as it is
/// (even) or builds an object with `build` (odd).
pub fn document(data: &[u8], build: impl FnOnce(&mut Input) -> Map<String, Value>) -> Vec<u8> {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => {
            let mut inp = Input::new(rest);
            let v = Value::Object(build(&mut inp));
            let mut text = serde_json::to_vec(&v).expect("JSON values serialize");
            // Sometimes a byte changed or the text cut: near-misses of the syntax.
            if inp.chance(24) && !text.is_empty() {
                let at = inp.below(256) * text.len() / 256;
                match inp.u8() % 2 {
                    0 => text[at] = inp.u8(),
                    _ => text.truncate(at),
                }
            }
            text
        }
        Some((_, rest)) => rest.to_vec(),
        None => Vec::new(),
    }
}

/// Adds each of `fields` to `map` with probability `k`/256 (see [`field_value`]), and now and
/// then a field of an unknown name.
pub fn add_fields(inp: &mut Input, map: &mut Map<String, Value>, fields: &[&Field], k: u8) {
    for f in fields {
        if inp.chance(k) {
            let v = field_value(inp, f, 2);
            map.insert(f.name.to_string(), v);
        }
    }
    if inp.chance(12) {
        let n = inp.below(8) + 1;
        let name = String::from_utf8_lossy(inp.bytes(n)).into_owned();
        map.insert(name, any(inp, 2));
    }
}

/// A value for `f`: one of its typical values (or an array of them for a list), mostly; else
/// the other shape, or any value at all.
pub fn field_value(inp: &mut Input, f: &Field, depth: usize) -> Value {
    let typical = |inp: &mut Input| {
        let text = match inp.chance(128) {
            true => f.values[0],
            false => f.values[inp.below(f.values.len())],
        };
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{}: {text}: {e}", f.name))
    };
    let list = |inp: &mut Input| Value::Array((0..inp.below(4)).map(|_| typical(inp)).collect());
    match (inp.u8() % 16, f.list) {
        (0, _) => any(inp, depth),
        (1, true) => typical(inp),
        (1, false) => list(inp),
        (_, true) => list(inp),
        (_, false) => typical(inp),
    }
}

/// Any JSON value, nested up to `depth` levels.
pub fn any(inp: &mut Input, depth: usize) -> Value {
    match inp.u8() % 10 {
        0 => Value::Null,
        1 => Value::Bool(inp.chance(128)),
        2 => Value::from(inp.pick(&[0i64, 1, 2, -1, 42, 65535, 65536, 1 << 32, i64::MIN])),
        3 => Value::from(inp.pick(&[0.5f64, -0.0, 1e300, 2.0, 4242.000001])),
        4 => Value::from(u64::MAX),
        5 | 6 => {
            let n = inp.below(24);
            Value::from(String::from_utf8_lossy(inp.bytes(n)).into_owned())
        }
        7 => Value::from(inp.pick(&["", "a", "0", "/", "..", "\u{0}", "é", "tcp", "2"])),
        8 if depth > 0 => Value::Array((0..inp.below(4)).map(|_| any(inp, depth - 1)).collect()),
        _ if depth > 0 => {
            let n = inp.below(4);
            let mut map = Map::new();
            for _ in 0..n {
                let key = inp
                    .pick(&["", "a", "v", "cmd", "name", "type", "0"])
                    .to_string();
                map.insert(key, any(inp, depth - 1));
            }
            Value::Object(map)
        }
        _ => Value::Null,
    }
}
