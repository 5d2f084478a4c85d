//! A JSON value read as every other JSON reader reads it, for what the edge judges (a call's
//! arguments, ids and names).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A JSON value read as every other JSON reader reads it: an object's keys are its keys.
/// serde_json's own `Value` reader does not, built with `raw_value` as mcp-edge's is: an object
/// whose first key is serde_json's private raw-value token reads as the JSON text in that key's
/// string. A policy would then judge `{"path": "/public"}` where the server runs a call with one
/// odd key and its default path. Numbers, strings and nesting are read as serde_json reads them.
pub(super) struct Literal {
    pub(super) value: Value,
    /// A key written twice in an object of it, or in two spellings of one case-insensitive
    /// key (`path`, `PATH`): `value` holds the last one's value.
    pub(super) repeated: bool,
}

impl<'de> Deserialize<'de> for Literal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LiteralVisitor)
    }
}

impl From<Value> for Literal {
    fn from(value: Value) -> Self {
        Self {
            value,
            repeated: false,
        }
    }
}

struct LiteralVisitor;

impl<'de> Visitor<'de> for LiteralVisitor {
    type Value = Literal;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Literal, E> {
        Ok(Value::Bool(b).into())
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Literal, E> {
        Ok(Value::Number(n.into()).into())
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Literal, E> {
        Ok(Value::Number(n.into()).into())
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Literal, E> {
        // serde_json's own reading: it yields no infinity or NaN, but `Value` holds none.
        Ok(serde_json::Number::from_f64(n)
            .map_or(Value::Null, Value::Number)
            .into())
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Literal, E> {
        Ok(Value::String(s.to_string()).into())
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Literal, E> {
        Ok(Value::String(s).into())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Literal, E> {
        Ok(Value::Null.into())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Literal, A::Error> {
        let (mut items, mut repeated) = (Vec::new(), false);
        while let Some(v) = seq.next_element::<Literal>()? {
            repeated |= v.repeated;
            items.push(v.value);
        }
        Ok(Literal {
            value: Value::Array(items),
            repeated,
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Literal, A::Error> {
        // A repeated key's last value is kept, as in serde_json's reading, and said; so is a
        // key another one's spelling in another case, which Go's reader binds alike.
        let (mut object, mut repeated) = (serde_json::Map::new(), false);
        let mut spellings = HashSet::new();
        while let Some((key, v)) = map.next_entry::<String, Literal>()? {
            repeated |= v.repeated;
            repeated |= !spellings.insert(crate::mcp::folded(&key).into_owned());
            object.insert(key, v.value);
        }
        Ok(Literal {
            value: Value::Object(object),
            repeated,
        })
    }
}
