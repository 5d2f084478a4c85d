//! A response message read by `scan`: what serde_json reads of it into `Wire`, in one pass over
//! a plain body; `Bail` where serde_json's reading could differ (a repeated field, which its
//! derived structs refuse; an escape in a listed name; a value of a type it would refuse).

use super::scan::{self, Bail, Cursor};
use super::{answer, Answer, WireError, WireListed, WireResult};

/// The answers of a body: one message, or a batch.
pub(super) fn plain(body: &[u8]) -> scan::Read<Vec<Answer>> {
    let mut c = Cursor::new(body).ok_or(Bail)?;
    let answers = match c.peek() {
        Ok(b'{') => message(&mut c)?.into_iter().collect(),
        Ok(b'[') => {
            let mut answers = Vec::new();
            c.array(|c| message(c).map(|a| answers.extend(a)))?;
            answers
        }
        // Neither: serde_json reads no message in it either.
        _ => return Ok(Vec::new()),
    };
    c.end()?;
    Ok(answers)
}

/// The answer of one message (an SSE event's data).
pub(super) fn plain_one(body: &[u8]) -> scan::Read<Option<Answer>> {
    let mut c = Cursor::new(body).ok_or(Bail)?;
    let answer = message(&mut c)?;
    c.end()?;
    Ok(answer)
}

/// Marks a field read; a second time is `Bail` (serde's derived structs refuse it).
fn first(seen: &mut bool) -> scan::Read<()> {
    match std::mem::replace(seen, true) {
        true => Err(Bail),
        false => Ok(()),
    }
}

/// An `Option` field, read once: `null` (`None`), or what `read` reads.
fn optional<'a, T>(
    seen: &mut bool,
    c: &mut Cursor<'a>,
    read: impl FnOnce(&mut Cursor<'a>) -> scan::Read<T>,
) -> scan::Read<Option<T>> {
    first(seen)?;
    match c.peek()? {
        b'n' => c.literal().map(|_| None),
        _ => read(c).map(Some),
    }
}

fn message(c: &mut Cursor) -> scan::Read<Option<Answer>> {
    let (mut id, mut result, mut error) = (None, None, None);
    let mut seen = [false; 3];
    c.object(|c, key| {
        match key {
            // As written, escapes and all (a `RawValue`).
            "id" => id = optional(&mut seen[0], c, |c| c.span())?,
            "result" => result = optional(&mut seen[1], c, result_of)?,
            "error" => error = optional(&mut seen[2], c, error_of)?,
            _ => c.skip()?,
        }
        Ok(())
    })?;
    Ok(answer(id, result.as_ref(), error.as_ref()))
}

fn result_of(c: &mut Cursor) -> scan::Read<WireResult> {
    let mut r = WireResult {
        is_error: false,
        tools: None,
        prompts: None,
        resources: None,
    };
    let mut seen = [false; 4];
    c.object(|c, key| {
        match key {
            "isError" => {
                first(&mut seen[0])?;
                r.is_error = match c.literal()? {
                    "true" => true,
                    "false" => false,
                    _ => return Err(Bail),
                };
            }
            "tools" => r.tools = optional(&mut seen[1], c, listed)?,
            "prompts" => r.prompts = optional(&mut seen[2], c, listed)?,
            "resources" => r.resources = optional(&mut seen[3], c, listed)?,
            _ => c.skip()?,
        }
        Ok(())
    })?;
    Ok(r)
}

/// The entries of a list answer.
fn listed(c: &mut Cursor) -> scan::Read<Vec<WireListed>> {
    let mut entries = Vec::new();
    c.array(|c| {
        let (mut name, mut uri) = (None, None);
        let mut seen = [false; 2];
        let text = |c: &mut Cursor| c.plain_str().map(str::to_string);
        c.object(|c, key| {
            match key {
                "name" => name = optional(&mut seen[0], c, text)?,
                "uri" => uri = optional(&mut seen[1], c, text)?,
                _ => c.skip()?,
            }
            Ok(())
        })?;
        entries.push(WireListed { name, uri });
        Ok(())
    })?;
    Ok(entries)
}

fn error_of(c: &mut Cursor) -> scan::Read<WireError> {
    let mut code = 0;
    let mut seen = false;
    c.object(|c, key| {
        match key {
            "code" => {
                first(&mut seen)?;
                code = c.small_int()?.parse().map_err(|_| Bail)?;
            }
            _ => c.skip()?,
        }
        Ok(())
    })?;
    Ok(WireError { code })
}
