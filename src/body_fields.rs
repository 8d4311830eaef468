//! Body fields: the values a route's `json:/pointer` sources name, read from a JSON
//! body in one pass, without building a `serde_json::Value` of it.
//!
//! The proxy used to parse every body it reads into a `Value` (a map node and a
//! string per field, all allocated and freed per request) and then resolve each
//! pointer in it. [`BodyFields::read`] walks the body once with serde_json's own
//! deserializer and keeps only the scalars the pointers land on, borrowed from the
//! body where they need no unescaping. It accepts and refuses exactly the bodies
//! `serde_json::from_slice::<Value>` does (every value goes through the same
//! `deserialize_any` path, strings are checked for UTF-8, the depth limit is the
//! deserializer's), and it finds what `Value::pointer` finds: the last of repeated
//! keys wins, a pointer into an array needs a plain decimal index.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::extract::{array_index, JsonPointer};

/// More pointers than a route can name (it has ten identities), so a set of active
/// pointers fits a bit mask.
const MAX_POINTERS: usize = 16;

/// The distinct JSON pointers of one route, compiled at config load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BodyFields {
    pointers: Vec<JsonPointer>,
    /// Per pointer and token: the token as an array index, when it is one as RFC 6901
    /// (and serde_json) read it: decimal, no sign, no leading zero.
    indices: Vec<Vec<Option<usize>>>,
}

/// What [`BodyFields::read`] found: per pointer, the text of the scalar it lands on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldValues<'b> {
    values: Vec<Option<Cow<'b, str>>>,
}

impl BodyFields {
    /// The fields `pointers` name (repeats are read once). At most sixteen.
    pub fn new<'p>(pointers: impl IntoIterator<Item = &'p JsonPointer>) -> BodyFields {
        let mut fields = BodyFields::default();
        for pointer in pointers {
            if fields.pointers.contains(pointer) {
                continue;
            }
            assert!(
                fields.pointers.len() < MAX_POINTERS,
                "a route names at most ten JSON fields"
            );
            fields
                .indices
                .push(pointer.tokens().iter().map(|t| array_index(t)).collect());
            fields.pointers.push(pointer.clone());
        }
        fields
    }

    /// True when the route reads nothing from the body.
    pub fn is_empty(&self) -> bool {
        self.pointers.is_empty()
    }

    /// Reads the fields from `body`, which must be one JSON value (or only whitespace:
    /// no body, every field missing). `Err` for a body `serde_json` would refuse.
    pub fn read<'b>(&self, body: &'b [u8]) -> Result<FieldValues<'b>, serde_json::Error> {
        let mut values = FieldValues {
            values: vec![None; self.pointers.len()],
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(values);
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        Probe {
            fields: self,
            active: (1u32 << self.pointers.len()) - 1,
            depth: 0,
            out: &mut values.values,
        }
        .deserialize(&mut de)?;
        de.end()?;
        Ok(values)
    }
}

impl<'b> FieldValues<'b> {
    /// The text of `pointer`'s field: `None` when the body lacks it or it is not a
    /// string, number or boolean (or `fields` does not name it).
    pub fn get(&self, fields: &BodyFields, pointer: &JsonPointer) -> Option<&str> {
        let at = fields.pointers.iter().position(|p| p == pointer)?;
        self.values.get(at)?.as_deref()
    }
}

/// The text of a scalar as an identity reads it (a number as serde_json prints it).
pub fn scalar_text(value: &serde_json::Value) -> Option<Cow<'_, str>> {
    match value {
        serde_json::Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
        serde_json::Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// One value of the body at `depth`, where the pointers in `active` have matched every
/// token so far.
struct Probe<'s, 'b> {
    fields: &'s BodyFields,
    active: u32,
    depth: usize,
    out: &'s mut Vec<Option<Cow<'b, str>>>,
}

impl<'s, 'b> Probe<'s, 'b> {
    /// Stores a scalar for every pointer that ends here.
    fn capture(&mut self, text: impl Fn() -> Cow<'b, str>) {
        for i in 0..self.fields.pointers.len() {
            if self.active & (1 << i) != 0 && self.fields.pointers[i].tokens().len() == self.depth {
                self.out[i] = Some(text());
            }
        }
    }

    /// The pointers that go on below this value through `matches(pointer, token)`;
    /// their earlier finds are cleared, as a later repeated key replaces the subtree.
    fn descend(&mut self, matches: impl Fn(usize, &str) -> bool) -> u32 {
        let mut below = 0;
        for i in 0..self.fields.pointers.len() {
            let tokens = self.fields.pointers[i].tokens();
            if self.active & (1 << i) != 0 && tokens.len() > self.depth && matches(i, &tokens[self.depth]) {
                below |= 1 << i;
            }
        }
        for i in 0..self.fields.pointers.len() {
            if below & (1 << i) != 0 {
                self.out[i] = None;
            }
        }
        below
    }

    fn child(&mut self, active: u32) -> Probe<'_, 'b> {
        Probe {
            fields: self.fields,
            active,
            depth: self.depth + 1,
            out: self.out,
        }
    }
}

impl<'de: 'b, 'b> DeserializeSeed<'de> for Probe<'_, 'b> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de: 'b, 'b> Visitor<'de> for Probe<'_, 'b> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        self.capture(|| Cow::Borrowed(if v { "true" } else { "false" }));
        Ok(())
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        self.capture(|| Cow::Owned(serde_json::Number::from(v).to_string()));
        Ok(())
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        self.capture(|| Cow::Owned(serde_json::Number::from(v).to_string()));
        Ok(())
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        // As `Value`: a float that is not finite is `Null`, no text.
        if let Some(n) = serde_json::Number::from_f64(v) {
            self.capture(|| Cow::Owned(n.to_string()));
        }
        Ok(())
    }

    fn visit_borrowed_str<E: de::Error>(mut self, v: &'de str) -> Result<(), E> {
        self.capture(|| Cow::Borrowed(v));
        Ok(())
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        self.capture(|| Cow::Owned(v.to_string()));
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key()? {
            let below = self.descend(|_, token| token == key.as_ref());
            if below == 0 {
                map.next_value::<Skip>()?;
            } else {
                map.next_value_seed(self.child(below))?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        let fields = self.fields;
        let mut index = 0;
        loop {
            let below = self.descend(|i, _| fields.indices[i][depth] == Some(index));
            let more = if below == 0 {
                seq.next_element::<Skip>()?.is_some()
            } else {
                seq.next_element_seed(self.child(below))?.is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }
}

/// An object key, borrowed from the body unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A value no pointer reaches: parsed (and so checked) as `Value` would parse it, kept
/// nowhere. (`IgnoredAny` would skip strings without checking their UTF-8.)
struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointers(list: &[&str]) -> Vec<JsonPointer> {
        list.iter().map(|p| JsonPointer::from(*p)).collect()
    }

    /// What resolving each pointer in a parsed `Value` gives: the reference.
    fn by_value(body: &[u8], pointers: &[JsonPointer]) -> Option<Vec<Option<String>>> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Some(vec![None; pointers.len()]);
        }
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        Some(
            pointers
                .iter()
                .map(|p| p.resolve(&value).and_then(scalar_text).map(Cow::into_owned))
                .collect(),
        )
    }

    fn by_probe(body: &[u8], pointers: &[JsonPointer]) -> Option<Vec<Option<String>>> {
        let fields = BodyFields::new(pointers);
        let values = fields.read(body).ok()?;
        Some(
            pointers
                .iter()
                .map(|p| values.get(&fields, p).map(str::to_string))
                .collect(),
        )
    }

    #[test]
    fn finds_what_value_pointer_finds_and_refuses_what_value_refuses() {
        let ps = pointers(&[
            "/campaign_id",
            "/a/b",
            "/a",
            "/list/1",
            "/list/01",
            "/list/+1",
            "/list/x",
            "/n",
            "/f",
            "/t",
            "/esc~1k~0",
            "/",
            "/deep/0/x",
        ]);
        let bodies: &[&[u8]] = &[
            br#"{"campaign_id":"c-1111","coupon_id":"new-user-50"}"#,
            br#"{"a":{"b":"x"},"a":5}"#,
            br#"{"a":5,"a":{"b":"x"}}"#,
            br#"{"a":{"b":1},"a":{"c":2}}"#,
            br#"{"list":["zero","one",2],"n":-12,"f":1.5e3,"t":true}"#,
            br#"{"list":{"1":"keyed","01":"zero-one"}}"#,
            br#"{"esc/k~":"slash","":"empty","campaign_id":"c\u00e9\n"}"#,
            br#"{"n":18446744073709551615,"f":1e-7,"t":null,"campaign_id":false}"#,
            br#"{"deep":[{"x":[1]},{"x":2}],"campaign_id":{"x":1}}"#,
            br#"{"deep":[{"x":"first"},{"x":2}],"deep":[{"y":1}]}"#,
            br#"  "just a string"  "#,
            br#"[1,2,3]"#,
            b"   \n\t ",
            b"",
            // Refused alike: trailing data, bad syntax, bad UTF-8 in a skipped string,
            // a bad escape, out-of-range number, too deep.
            br#"{"campaign_id":"c"} x"#,
            br#"{"campaign_id":"c",}"#,
            b"{\"campaign_id\":\"c\",\"other\":\"\xff\"}",
            br#"{"other":"\q"}"#,
            br#"{"other":1e400}"#,
            br#"{"campaign_id":"c""#,
        ];
        for body in bodies {
            assert_eq!(
                by_probe(body, &ps),
                by_value(body, &ps),
                "body {}",
                String::from_utf8_lossy(body)
            );
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(by_probe(deep.as_bytes(), &ps), None);
        assert_eq!(by_value(deep.as_bytes(), &ps), None);
        // A sanity check of the reference itself.
        assert_eq!(
            by_probe(bodies[0], &ps).unwrap()[0].as_deref(),
            Some("c-1111"),
            "the campaign is read"
        );
        assert_eq!(by_probe(bodies[1], &ps).unwrap()[1], None, "the last `a` wins");
        assert_eq!(by_probe(bodies[2], &ps).unwrap()[1].as_deref(), Some("x"));
    }

    #[test]
    fn unescaped_strings_are_borrowed_from_the_body() {
        let ps = pointers(&["/u", "/e"]);
        let fields = BodyFields::new(&ps);
        let body = br#"{"u":"plain","e":"tab\t"}"#;
        let values = fields.read(body).unwrap();
        assert!(matches!(values.values[0], Some(Cow::Borrowed("plain"))));
        assert!(matches!(&values.values[1], Some(Cow::Owned(s)) if s == "tab\t"));
    }

    #[test]
    fn repeated_pointers_are_read_once() {
        let ps = pointers(&["/a", "/b", "/a"]);
        let fields = BodyFields::new(&ps);
        assert_eq!(fields.pointers.len(), 2);
        let values = fields.read(br#"{"a":"1","b":"2"}"#).unwrap();
        assert_eq!(values.get(&fields, &ps[2]), Some("1"));
        assert_eq!(values.get(&fields, &"/c".into()), None);
    }
}
