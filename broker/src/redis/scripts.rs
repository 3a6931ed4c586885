//! The Lua scripts of the Redis transport.
//!
//! They only touch kombu's keys, with kombu's values; what they add is
//! atomicity. Popping a message and recording it in `unacked`/`unacked_index`
//! happen in one script, so no crash can lose a message between the two (kombu
//! does them in two round trips). Settling checks that the `unacked_index`
//! score is still the one this consumer wrote, so a late ack can never remove
//! the record of a later delivery of the same message (after a restore, another
//! consumer holds it under the same tag with a new score): that is how acks
//! stay single across reconnects. Restores compare the `unacked` value with the
//! one read before, which is what kombu's `WATCH unacked` ... `MULTI` achieves.
//!
//! No script writes anything before its last possible error, because Redis does
//! not roll back a failed script's earlier writes.

use redis::Script;

/// Shared Lua helpers: Python `json.dumps` of a string, and recording one
/// popped element as kombu's `QoS.append` does.
const PRELUDE: &str = r#"
local function pystr(s)
  -- Printable ASCII without quotes or backslashes (queue names, exchanges):
  -- Python writes it as it is.
  if not string.find(s, '[^\32-\126]') and not string.find(s, '["\\]') then return '"' .. s .. '"' end
  local out = {'"'}
  local i, n = 1, #s
  -- A missing continuation byte (invalid UTF-8) reads as 0x80, never as an error.
  local function cont(k) return (s:byte(k) or 128) % 64 end
  while i <= n do
    local c = s:byte(i)
    local w = 1
    local cp
    if c == 34 then out[#out + 1] = '\\"'
    elseif c == 92 then out[#out + 1] = '\\\\'
    elseif c == 10 then out[#out + 1] = '\\n'
    elseif c == 13 then out[#out + 1] = '\\r'
    elseif c == 9 then out[#out + 1] = '\\t'
    elseif c == 8 then out[#out + 1] = '\\b'
    elseif c == 12 then out[#out + 1] = '\\f'
    elseif c >= 32 and c <= 126 then out[#out + 1] = string.char(c)
    else
      if c < 128 then cp = c
      elseif c >= 240 then w = 4; cp = (c % 8) * 262144 + cont(i + 1) * 4096 + cont(i + 2) * 64 + cont(i + 3)
      elseif c >= 224 then w = 3; cp = (c % 16) * 4096 + cont(i + 1) * 64 + cont(i + 2)
      else w = 2; cp = (c % 32) * 64 + cont(i + 1) end
      if cp >= 65536 then
        cp = cp - 65536
        out[#out + 1] = string.format('\\u%04x\\u%04x', 55296 + math.floor(cp / 1024), 56320 + cp % 1024)
      else
        out[#out + 1] = string.format('\\u%04x', cp)
      end
    end
    i = i + w
  end
  out[#out + 1] = '"'
  return table.concat(out)
end

-- The position of the last plain occurrence of `needle` in `s`, or nil.
local function find_last(s, needle)
  local at = nil
  local from = 1
  while true do
    local i = string.find(s, needle, from, true)
    if not i then return at end
    at, from = i, i + 1
  end
end

-- The top-level `properties` object of a kombu envelope, decoded without
-- decoding the rest (the message body and headers are most of the bytes).
-- The text from the last `"properties": {` (or `"properties":{`) to just
-- before the envelope's closing brace must decode as one object: in a valid
-- JSON object that can only be the value of its last key, and the key is
-- exactly "properties" unless its opening quote is escaped, which is
-- excluded by looking at the byte before it. Anything else (another key
-- order, another layout) gives nil, and the caller decodes the whole element.
local function tail_properties(raw)
  local close = #raw
  while close > 0 and string.find(' \t\r\n', string.sub(raw, close, close), 1, true) do close = close - 1 end
  if close == 0 or string.sub(raw, close, close) ~= '}' then return nil end
  for _, needle in ipairs({'"properties": {', '"properties":{'}) do
    local at = find_last(raw, needle)
    if at and at > 1 and string.sub(raw, at - 1, at - 1) ~= '\\' then
      local ok, p = pcall(cjson.decode, string.sub(raw, at + #needle - 1, close - 1))
      if ok and type(p) == 'table' then return p end
      return nil
    end
  end
  return nil
end

-- The delivery tag, exchange and routing key of a list element, or nil if it
-- is not a kombu envelope.
local function envelope_info(raw)
  local p = tail_properties(raw)
  if not p then
    -- Decoding a whole element blocks Redis for as long as it takes: only
    -- small ones; celeriac reads larger ones itself, within its limits.
    if #raw > 1048576 then return nil end
    local ok, m = pcall(cjson.decode, raw)
    if not ok or type(m) ~= 'table' then return nil end
    p = m['properties']
  end
  if type(p) ~= 'table' then return nil end
  local tag, di = p['delivery_tag'], p['delivery_info']
  if type(tag) ~= 'string' or type(di) ~= 'table' then return nil end
  local ex, rk = di['exchange'], di['routing_key']
  if type(ex) ~= 'string' or type(rk) ~= 'string' then return nil end
  return tag, ex, rk
end

-- Writes the records of popped elements: one ZADD and one HSET for all of
-- them (in pop order, so a tag popped twice keeps its last record, as one
-- call per element would).
local function record_all(zargs, hargs)
  local step = 1000
  for i = 1, #zargs, step do
    redis.call('ZADD', KEYS[2], unpack(zargs, i, math.min(i + step - 1, #zargs)))
  end
  for i = 1, #hargs, step do
    redis.call('HSET', KEYS[1], unpack(hargs, i, math.min(i + step - 1, #hargs)))
  end
end

local function check_types()
  local t1 = redis.call('TYPE', KEYS[1])['ok']
  local t2 = redis.call('TYPE', KEYS[2])['ok']
  if (t1 ~= 'hash' and t1 ~= 'none') or (t2 ~= 'zset' and t2 ~= 'none') then
    return redis.error_reply('WRONGTYPE the unacked keys hold ' .. t1 .. ' and ' .. t2 .. ', not a hash and a sorted set')
  end
  return nil
end
"#;

/// Pops up to `ARGV[1]` elements in kombu's BRPOP order and records each in
/// `unacked`/`unacked_index`.
///
/// KEYS: 1 `unacked`, 2 `unacked_index`, 3 this consumer's pop journal,
/// 4 the dead-letter list ('' for none).
/// ARGV: 1 count, 2 score (delivery time), 3 `1` to rotate queues round-robin,
/// 4 number of steps S, 5 the pop's id, 6 the journal's lifetime in
/// milliseconds, 7 the largest element read (bytes), 8..7+S step suffixes,
/// then the prefixed queue names in cycle order. Returns a flat list of
/// `[queue index, step index (both 0-based), raw, tag]` per element, in pop
/// order; the tag is '' when Lua's JSON decoder could not read the element,
/// which is then left for celeriac to record. An element larger than ARGV[7]
/// is never parsed: with a dead-letter list it is moved there as it is and
/// reported with raw '' and tag '!'; without one it is returned unread
/// (tag '') for celeriac to refuse.
///
/// When it pops anything it also rewrites the journal: the pop's id, then per
/// element `T, list, tag, raw length` (recorded) or `R, list, raw` (not
/// recorded), so a consumer whose reply was lost can put exactly this batch
/// back with `RECOVER` instead of waiting for the visibility timeout.
const POP: &str = r#"
local err = check_types()
if err then return err end
local max = tonumber(ARGV[1])
local score = ARGV[2]
local rotate = ARGV[3] == '1'
local nsteps = tonumber(ARGV[4])
local pop_id = ARGV[5]
local journal_ms = tonumber(ARGV[6])
local max_bytes = tonumber(ARGV[7])
local first = 7
local base = first + nsteps
local order = {}
for i = base + 1, #ARGV do order[#order + 1] = i - base end
local lens = {}
local out = {}
local zargs, hargs = {}, {}
local journal = {pop_id}
for _ = 1, max do
  local found_pos, found_q, found_s, found_key = nil, nil, nil, nil
  for s = 1, nsteps do
    for pos = 1, #order do
      local q = order[pos]
      local key = ARGV[base + q] .. ARGV[first + s]
      local n = lens[key]
      if n == nil then
        local r = redis.pcall('LLEN', key)
        if type(r) == 'number' then n = r else n = 0 end
        lens[key] = n
      end
      if n > 0 then found_pos, found_q, found_s, found_key = pos, q, s, key; break end
    end
    if found_key then break end
  end
  if not found_key then break end
  local raw = redis.call('RPOP', found_key)
  lens[found_key] = lens[found_key] - 1
  if rotate then
    table.remove(order, found_pos)
    order[#order + 1] = found_q
  end
  local tag, ex, rk = nil, nil, nil
  local parked = false
  if #raw > max_bytes then
    if KEYS[4] ~= '' then
      redis.call('LPUSH', KEYS[4], raw)
      parked = true
    end
  else
    tag, ex, rk = envelope_info(raw)
  end
  if parked then
    -- moved whole to the dead-letter list: nothing to record or journal
    raw, tag = '', '!'
  elseif tag then
    zargs[#zargs + 1] = score
    zargs[#zargs + 1] = tag
    hargs[#hargs + 1] = tag
    hargs[#hargs + 1] = '[' .. raw .. ', ' .. pystr(ex) .. ', ' .. pystr(rk) .. ']'
    journal[#journal + 1] = 'T'
    journal[#journal + 1] = found_key
    journal[#journal + 1] = tag
    journal[#journal + 1] = tostring(#raw)
  else
    tag = ''
    journal[#journal + 1] = 'R'
    journal[#journal + 1] = found_key
    journal[#journal + 1] = raw
  end
  out[#out + 1] = found_q - 1
  out[#out + 1] = found_s - 1
  out[#out + 1] = raw
  out[#out + 1] = tag
end
record_all(zargs, hargs)
if #out > 0 then
  redis.call('DEL', KEYS[3])
  local step = 1000
  for i = 1, #journal, step do
    redis.call('RPUSH', KEYS[3], unpack(journal, i, math.min(i + step - 1, #journal)))
  end
  redis.call('PEXPIRE', KEYS[3], journal_ms)
end
return out
"#;

/// Puts back the batch of a pop whose reply was lost, if that pop ran: each
/// recorded element still held under the pop's score leaves `unacked` and
/// goes back to the consuming end of its list, as it was, and unrecorded ones
/// go back as they were, so the batch is as if never popped.
///
/// KEYS: 1 the pop journal, 2 `unacked`, 3 `unacked_index`. ARGV: 1 the pop's
/// id, 2 its score. Returns how many elements went back, or -1 when the
/// journal is not this pop's (the pop never ran, or a later one replaced it).
const RECOVER: &str = r#"
local items = redis.call('LRANGE', KEYS[1], 0, -1)
if items[1] ~= ARGV[1] then return -1 end
local want = tonumber(ARGV[2])
local pushes, forget = {}, {}
local i = 2
while i <= #items do
  local kind, key = items[i], items[i + 1]
  if kind == 'T' then
    local tag, len = items[i + 2], tonumber(items[i + 3])
    i = i + 4
    local s = redis.call('ZSCORE', KEYS[3], tag)
    if s and tonumber(s) == want and len then
      local v = redis.call('HGET', KEYS[2], tag)
      if v and #v > len then
        pushes[#pushes + 1] = {key, string.sub(v, 2, len + 1)}
        forget[#forget + 1] = tag
      end
    end
  elseif kind == 'R' then
    pushes[#pushes + 1] = {key, items[i + 2]}
    i = i + 3
  else
    return redis.error_reply('ERR malformed pop journal')
  end
end
for _, p in ipairs(pushes) do
  local t = redis.call('TYPE', p[1])['ok']
  if t ~= 'list' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. p[1] .. ' holds ' .. t .. ', not a list')
  end
end
for _, tag in ipairs(forget) do
  redis.call('HDEL', KEYS[2], tag)
  redis.call('ZREM', KEYS[3], tag)
end
-- Popped from the right in order: pushing back in reverse restores the order.
for j = #pushes, 1, -1 do
  redis.call('RPUSH', pushes[j][1], pushes[j][2])
end
redis.call('DEL', KEYS[1])
return #pushes
"#;

/// Records one element already popped by `BRPOP`.
///
/// KEYS: 1 `unacked`, 2 `unacked_index`. ARGV: 1 score, 2 raw element.
/// Returns the tag, or '' when Lua's JSON decoder could not read the element.
const TRACK: &str = r#"
local err = check_types()
if err then return err end
local tag, ex, rk = envelope_info(ARGV[2])
if tag then
  redis.call('ZADD', KEYS[2], ARGV[1], tag)
  redis.call('HSET', KEYS[1], tag, '[' .. ARGV[2] .. ', ' .. pystr(ex) .. ', ' .. pystr(rk) .. ']')
  return tag
end
return ''
"#;

/// Records an element celeriac read itself (one Lua's JSON decoder refused,
/// e.g. with `NaN`): `ZADD` + `HSET` of the given kombu value.
///
/// KEYS: 1 `unacked`, 2 `unacked_index`. ARGV: 1 tag, 2 score, 3 value.
const RECORD: &str = r#"
local err = check_types()
if err then return err end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"#;

/// Whether the `unacked_index` score of ARGV[1] is one of ARGV[first..].
/// Absent scores count as "ours" (nothing else can hold the message then).
const SCORE_GUARD: &str = r#"
local function held_by_us(index_key, tag, first)
  local s = redis.call('ZSCORE', index_key, tag)
  if not s then return true, false end
  local sn = tonumber(s)
  for i = first, #ARGV do
    if tonumber(ARGV[i]) == sn then return true, true end
  end
  return false, true
end
"#;

/// Ack (and reject without requeue): `ZREM unacked_index` + `HDEL unacked`,
/// only while the score is ours.
///
/// KEYS: 1 `unacked`, 2 `unacked_index`. ARGV: 1 tag, 2.. our scores.
/// Returns 1 removed, 0 nothing to remove, -1 held by a later delivery.
const ACK: &str = r#"
local ours, indexed = held_by_us(KEYS[2], ARGV[1], 2)
if not ours then return -1 end
if indexed then redis.call('ZREM', KEYS[2], ARGV[1]) end
return redis.call('HDEL', KEYS[1], ARGV[1])
"#;

/// [`ACK`] for many tags in one call (the batched acks of `acks.rs`).
///
/// KEYS: 1 `unacked`, 2 `unacked_index`. ARGV: per tag, the tag, the number
/// N of our scores, then those N scores. Returns [`ACK`]'s answer for each
/// tag, in order.
const ACK_MANY: &str = r#"
local out = {}
local i = 1
while i <= #ARGV do
  local tag, n = ARGV[i], tonumber(ARGV[i + 1])
  local code
  local s = redis.call('ZSCORE', KEYS[2], tag)
  local ours = not s
  if s then
    local sn = tonumber(s)
    for k = i + 2, i + 1 + n do
      if tonumber(ARGV[k]) == sn then ours = true; break end
    end
  end
  if not ours then
    code = -1
  else
    if s then redis.call('ZREM', KEYS[2], tag) end
    code = redis.call('HDEL', KEYS[1], tag)
  end
  out[#out + 1] = code
  i = i + 2 + n
end
return out
"#;

/// Moves a message from `unacked` back to its queue(s) (`restore_by_tag`).
///
/// KEYS: 1 `unacked`, 2 `unacked_index`, 3.. destination lists.
/// ARGV: 1 tag, 2 the `unacked` value read before ('' if there was none),
/// 3 `L` (LPUSH, requeue) or `R` (RPUSH, restore), 4 the payload to push,
/// 5.. accepted scores (none: any).
/// Returns 1 restored, 0 nothing to restore, -1 the value changed (read again),
/// -2 held by a later delivery.
const RESTORE: &str = r#"
if #ARGV >= 5 then
  local ours = held_by_us(KEYS[2], ARGV[1], 5)
  if not ours then return -2 end
end
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then
  if ARGV[2] ~= '' then return -1 end
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if v ~= ARGV[2] then return -1 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
local push = 'RPUSH'
if ARGV[3] == 'L' then push = 'LPUSH' end
for i = 3, #KEYS do redis.call(push, KEYS[i], ARGV[4]) end
return 1
"#;

/// Raises the `unacked_index` score of a message we hold, so no sweep restores it.
///
/// KEYS: 1 `unacked_index`. ARGV: 1 tag, 2 new score, 3.. our scores.
/// Returns 1 extended, 0 not in the index, -1 held by a later delivery.
const EXTEND: &str = r#"
local ours, indexed = held_by_us(KEYS[1], ARGV[1], 3)
if not indexed then return 0 end
if not ours then return -1 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
return 1
"#;

/// Replaces a non-canonical `unacked` value (one written from a list element
/// that was not in Python's JSON layout) with the canonical one, if still ours.
///
/// KEYS: 1 `unacked`, 2 `unacked_index`. ARGV: 1 tag, 2 value, 3.. our scores.
const FIX_VALUE: &str = r#"
local ours, indexed = held_by_us(KEYS[2], ARGV[1], 3)
if not (ours and indexed) then return 0 end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// Hands an element back to the consuming end of its list, undoing a pop
/// (used for messages popped from a queue just cancelled).
///
/// KEYS: 1 `unacked`, 2 `unacked_index`, 3 the list. ARGV: 1 tag ('' if it was
/// not recorded), 2 raw element, 3.. our scores.
const GIVE_BACK: &str = r#"
if ARGV[1] ~= '' then
  local ours, indexed = held_by_us(KEYS[2], ARGV[1], 3)
  if not (ours and indexed) then return 0 end
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
"#;

/// Moves an element celeriac cannot read to the dead-letter list, dropping its
/// `unacked` record if it has one.
///
/// KEYS: 1 `unacked`, 2 `unacked_index`, 3 dead-letter list. ARGV: 1 tag ('' if
/// not recorded), 2 raw element, 3.. our scores.
const DEAD_LETTER: &str = r#"
if ARGV[1] ~= '' then
  local ours, indexed = held_by_us(KEYS[2], ARGV[1], 3)
  if not ours then return 0 end
  if indexed then redis.call('ZREM', KEYS[2], ARGV[1]) end
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('LPUSH', KEYS[3], ARGV[2])
return 1
"#;

/// kombu's publish through a direct exchange (`_lookup` by `SMEMBERS` of the
/// binding set, then `LPUSH` to each queue bound with the routing key) in one
/// round trip instead of two. A member that is not three parts is skipped
/// (the Rust lookup warns about it). Returns how many queues got the message;
/// 0 means none matched, and the caller routes the way kombu does then
/// (dead-letter queue, or dropped).
///
/// KEYS: 1 the exchange's binding set. ARGV: 1 routing key, 2 payload,
/// 3 separator, 4 key prefix, 5 priority suffix.
const PUBLISH_DIRECT: &str = r#"
local rk, sep = ARGV[1], ARGV[3]
local queues, seen = {}, {}
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local a = string.find(member, sep, 1, true)
  local b = a and string.find(member, sep, a + #sep, true)
  if b and string.sub(member, 1, a - 1) == rk then
    local queue = string.sub(member, b + #sep)
    if not string.find(queue, sep, 1, true) and not seen[queue] then
      seen[queue] = true
      queues[#queues + 1] = queue
    end
  end
end
for _, queue in ipairs(queues) do
  redis.call('LPUSH', ARGV[4] .. queue .. ARGV[5], ARGV[2])
end
return #queues
"#;

/// redis-py's `Lock.release` (`LUA_RELEASE_SCRIPT`), which kombu's sweep uses to
/// drop `unacked_mutex`: delete only if the token is still ours.
const RELEASE_LOCK: &str = r#"
local token = redis.call('get', KEYS[1])
if not token or token ~= ARGV[1] then
    return 0
end
redis.call('del', KEYS[1])
return 1
"#;

/// The compiled scripts (each keeps its SHA1 for `EVALSHA`).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub pop: Script,
    pub recover: Script,
    pub track: Script,
    pub record: Script,
    pub ack: Script,
    pub ack_many: Script,
    pub restore: Script,
    pub extend: Script,
    pub fix_value: Script,
    pub give_back: Script,
    pub dead_letter: Script,
    pub release_lock: Script,
    pub publish_direct: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        let with = |parts: &[&str]| Script::new(&parts.concat());
        Scripts {
            pop: with(&[PRELUDE, POP]),
            recover: Script::new(RECOVER),
            track: with(&[PRELUDE, TRACK]),
            record: with(&[PRELUDE, RECORD]),
            ack: with(&[SCORE_GUARD, ACK]),
            ack_many: Script::new(ACK_MANY),
            restore: with(&[SCORE_GUARD, RESTORE]),
            extend: with(&[SCORE_GUARD, EXTEND]),
            fix_value: with(&[SCORE_GUARD, FIX_VALUE]),
            give_back: with(&[SCORE_GUARD, GIVE_BACK]),
            dead_letter: with(&[SCORE_GUARD, DEAD_LETTER]),
            release_lock: Script::new(RELEASE_LOCK),
            publish_direct: Script::new(PUBLISH_DIRECT),
        }
    }
}
