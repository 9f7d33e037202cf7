"""The Lua scripts of ``index.RedisIndex``: one update, and one batch of lookups.

Kept apart from index.py because they are data for Redis, not Python; each runs
atomically inside Redis, which is what keeps a change and a lookup consistent.
"""

# One slice of one change.  A change of many values is applied in slices of at most
# index.CHUNK_OPS operations, so no call keeps Redis busy for long; the last slice
# ("commit") stores the facts and splits buckets.  Each slice checks that the facts
# are still what the caller diffed against and the bucket addressing what it computed
# keys with (else 0 and the caller starts over).  The first slice records the change
# in the journal (names.index_pending) before touching anything, so that a change cut
# short is finished by the next update of the file: every operation is idempotent
# when "careful" (the fast append to a spilled list is not, so it is off then).
# Each op's bucket and spill keys are built here from their prefixes (as the lookup
# script does), with the level and split the slice checked: the ops travel as one
# string of 9 bytes each, a sign ("+"/"-") and a field, so that a file of hundreds of
# values costs the client one argument to encode instead of four per value.
# The first slice also checks the journal entry the change was computed from (a
# change cut short, or settled, since it was read changes it), and the entries count
# when it is given (read ahead of the update, it may be older than another writer's
# change).  The last slice answers the meta it leaves (level, split, entries, ids):
# what the caller's next update of the index would read first, so that a batch of
# updates reads it once.  A call queued with others (index.RedisIndex.pipelined) gives
# no level and split: it addresses with the index's own and makes the splits itself,
# at most the number it is given, since the caller could not know them.
# KEYS: facts, meta, id map, journal, a (from, to) pair per split.
# ARGV: fill, inline max, path, SHA-1 of the facts read ("" none), level, split,
#       value to store ("" deletes), file id, op count, careful ("1"/""), journal entry
#       ("" leaves it: not the first slice; "-" writes none, but checks as the first
#       slice does: a one-slice change whose files are all evaluated anyway), commit
#       ("": not the last slice; "1": the last, keep the journal entry until the caller
#       settles the change; "2": the last, drop it),
#       claim ("1": the file id is new, the next of meta's "ids", taken here unless
#       another writer took it first; ""), bucket key prefix, spill key prefix, ops,
#       SHA-1 of the journal entry read ("" none), entries read ("": not checked); both
#       checked only with a journal entry to write (the first slice); splits at most
#       (only when no level and split are given).
UPDATE_SCRIPT = """
local fill, inline, path = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local current = redis.call('HGET', KEYS[1], path)
if (current and redis.sha1hex(current) or '') ~= ARGV[4] then return 0 end
local state = redis.call('HMGET', KEYS[2], 'level', 'split', 'ids', 'entries')
local own = ARGV[5] == ''  -- queued: the index's own addressing, and its own splits
if not own and ((state[1] or '0') ~= ARGV[5] or (state[2] or '0') ~= ARGV[6]) then
  return 0
end
if ARGV[11] ~= '' then
  local entry = redis.call('HGET', KEYS[4], path)
  if (entry and redis.sha1hex(entry) or '') ~= ARGV[17] then return 0 end
  if ARGV[18] ~= '' and (state[4] or '0') ~= ARGV[18] then return 0 end
end
local id, nops, careful, delta = ARGV[8], tonumber(ARGV[9]), ARGV[10] == '1', 0
local ids = tonumber(state[3] or '0')
if ARGV[13] == '1' then
  if ids ~= tonumber(id) - 1 then return 0 end
  ids = tonumber(id)
  redis.call('HSET', KEYS[2], 'ids', id)
end
local SLICE = 256  -- unpack() has a stack limit: never unpack an unbounded table
local function sliced(cmd, key, flat)
  for s = 1, #flat, SLICE do
    redis.call(cmd, key, unpack(flat, s, math.min(s + SLICE - 1, #flat)))
  end
end
local function without(packed, member)  -- the packed ids but member; was it there?
  local s = ',' .. packed .. ','
  local i, j = string.find(s, ',' .. member .. ',', 1, true)
  if not i then return packed, false end
  return string.sub(string.sub(s, 1, i) .. string.sub(s, j + 1), 2, -2), true
end
local function hex(c) return string.format('%02x', string.byte(c)) end
local function change(adding, bucket, field)
  local packed = redis.call('HGET', bucket, field) or ''
  local spilled, spill = packed == '*', nil
  -- Adding needs no look into the list when the caller's diff says the id is not in
  -- it (a long list is appended to unread); finishing an interrupted change
  -- ("careful") cannot know that.  The spill key is spelt only for a list that has
  -- one or needs one (few do).
  local known = adding and not careful
  if spilled then
    spill = ARGV[15] .. string.gsub(field, '.', hex)
    if known then redis.call('APPEND', spill, ',' .. id); return end
    packed = redis.call('GET', spill) or ''
  end
  local rest, held = packed, false
  if not known then rest, held = without(packed, id) end
  if adding then
    if held then return end
    if packed == '' then delta = delta + 1; rest = id else rest = packed .. ',' .. id end
  else
    if not held then return end
    if rest == '' then delta = delta - 1 end
  end
  if rest == '' then redis.call('HDEL', bucket, field)
  elseif #rest <= inline then redis.call('HSET', bucket, field, rest)
  else
    redis.call('SET', spill or (ARGV[15] .. string.gsub(field, '.', hex)), rest)
    if not spilled then redis.call('HSET', bucket, field, '*') end
    return
  end
  if spilled then redis.call('DEL', spill) end
end
local function split_bucket(from, to, level)
  local all, moved, gone, high = redis.call('HGETALL', from), {}, {}, 2 ^ level
  for i = 1, #all, 2 do
    local a, b, c, d = string.byte(all[i], 1, 4)
    if (((a * 256 + b) * 256 + c) * 256 + d) % (2 * high) >= high then
      moved[#moved + 1] = all[i]; moved[#moved + 1] = all[i + 1]; gone[#gone + 1] = all[i]
    end
  end
  sliced('HSET', to, moved); sliced('HDEL', from, gone)
end
local at_level = tonumber(own and (state[1] or '0') or ARGV[5])
local at_split, ops = tonumber(own and (state[2] or '0') or ARGV[6]), ARGV[16]
local low, high = 2 ^ at_level, 2 ^ (at_level + 1)
local function bucket_of(field)  -- index_forms.address, as the lookup script computes it
  local a, b, c, d = string.byte(field, 1, 4)
  local h = ((a * 256 + b) * 256 + c) * 256 + d
  local bucket = h % low
  if bucket < at_split then bucket = h % high end
  return ARGV[14] .. bucket
end
if ARGV[11] ~= '' and ARGV[11] ~= '-' then redis.call('HSET', KEYS[4], path, ARGV[11]) end
for at = 1, 9 * nops, 9 do
  local field = string.sub(ops, at + 1, at + 8)
  change(string.byte(ops, at) == 43, bucket_of(field), field)  -- 43: "+"
end
local entries = redis.call('HINCRBY', KEYS[2], 'entries', delta)
if ARGV[12] == '' then return 1 end
if ARGV[12] == '2' then redis.call('HDEL', KEYS[4], path) end
if ARGV[7] == '' then
  redis.call('HDEL', KEYS[1], path)
  if id ~= '' then redis.call('HDEL', KEYS[3], id) end
else
  redis.call('HSET', KEYS[1], path, ARGV[7])
  redis.call('HSET', KEYS[3], id, path)
end
local level, split, k, left = at_level, at_split, 5, tonumber(ARGV[19]) or 0
while entries > fill * (2 ^ level + split) do
  if own then
    if left == 0 then break end
    left = left - 1
    split_bucket(ARGV[14] .. split, ARGV[14] .. (split + 2 ^ level), level)
  else
    if not KEYS[k + 1] then break end
    split_bucket(KEYS[k], KEYS[k + 1], level)
    k = k + 2
  end
  split = split + 1
  if split == 2 ^ level then level, split = level + 1, 0 end
end
redis.call('HSET', KEYS[2], 'level', level, 'split', split)
return {level, split, entries, ids}
"""


# Lookups, atomically and in one round trip: for each field, the paths of its holders
# (mode "who"), 1/0 for "some file holds it" (mode "exists") or how many do ("count").
# The keys are the prefixes names.py gives, completed here with the bucket each field
# falls in.
# KEYS: meta.  ARGV: mode, bucket, spill and id map key prefixes, ids per id map, fields.
LOOKUP_SCRIPT = """
local state = redis.call('HMGET', KEYS[1], 'level', 'split')
local level, split = tonumber(state[1] or '0'), tonumber(state[2] or '0')
local per_map, out = tonumber(ARGV[5]), {}
local function hex(c) return string.format('%02x', string.byte(c)) end
local function paths_of(packed)
  local maps, paths = {}, {}
  for id in string.gmatch(packed, '%d+') do
    local key = ARGV[4] .. math.floor(tonumber(id) / per_map)
    maps[key] = maps[key] or {}
    table.insert(maps[key], id)
  end
  for key, ids in pairs(maps) do
    for _, path in ipairs(redis.call('HMGET', key, unpack(ids))) do
      if path then paths[#paths + 1] = path end
    end
  end
  return paths
end
for i = 6, #ARGV do
  local a, b, c, d = string.byte(ARGV[i], 1, 4)
  local h = ((a * 256 + b) * 256 + c) * 256 + d
  local bucket = h % 2 ^ level
  if bucket < split then bucket = h % 2 ^ (level + 1) end
  local packed = redis.call('HGET', ARGV[2] .. bucket, ARGV[i])
  if ARGV[1] == 'exists' then out[#out + 1] = packed and 1 or 0
  else
    if packed == '*' then packed = redis.call('GET', ARGV[3] .. string.gsub(ARGV[i], '.', hex)) end
    if ARGV[1] == 'count' then
      local _, commas = string.gsub(packed or '', ',', '')
      out[#out + 1] = packed and commas + 1 or 0
    else
      out[#out + 1] = paths_of(packed or '')
    end
  end
end
return out
"""


# --- path order (detectors.base.ORDERED), kept apart from the update script above -----

# The holders of an ordered relation's values in path order, changed together with the
# index, in the same MULTI/EXEC as the update script's last slice.  Mode "mark", sent
# before the update when the caller found the index empty: an index with no file yet
# is marked "ordered" (it has no holders, so its sets are complete); an index stored
# before these sets existed is never marked, and its lookups fall back to the holder
# lists.  Mode "apply", sent after the update: for each path whose facts now have the
# SHA-1 given (the update stored what the caller meant it to; else that path is left
# alone), each operation sets one holder's membership as the update leaves it, so
# applying it twice, or again after an interrupted change, is harmless.  Nothing on an
# index not marked.
# KEYS: facts, meta.  ARGV: "mark"; or "apply", order key prefix, then per path: the
#       path, SHA-1 of its facts stored ("" none), operation count, sign and field per
#       operation.
ORDER_SCRIPT = """
if ARGV[1] == 'mark' then
  if redis.call('HLEN', KEYS[1]) == 0 then redis.call('HSET', KEYS[2], 'ordered', '1') end
  return 1
end
if redis.call('HGET', KEYS[2], 'ordered') ~= '1' then return 0 end
local function hex(c) return string.format('%02x', string.byte(c)) end
local i, done = 3, 0
while i <= #ARGV do
  local path, nops = ARGV[i], tonumber(ARGV[i + 2])
  local current = redis.call('HGET', KEYS[1], path)
  if (current and redis.sha1hex(current) or '') == ARGV[i + 1] then
    for j = i + 3, i + 1 + 2 * nops, 2 do
      local key = ARGV[2] .. string.gsub(ARGV[j + 1], '.', hex)
      if ARGV[j] == '+' then redis.call('ZADD', key, 0, path)
      else redis.call('ZREM', key, path) end
    end
    done = done + 1
  end
  i = i + 3 + 2 * nops
end
return done
"""


# The first n holders of each field in path order and how many there are: a ZRANGE
# and a ZCARD, whatever the number of holders.  0 when the index is not marked
# "ordered" (stored before the sets existed): the caller reads the holder lists.
# KEYS: meta.  ARGV: n, order key prefix, fields.
FIRST_SCRIPT = """
if redis.call('HGET', KEYS[1], 'ordered') ~= '1' then return 0 end
local n, out = tonumber(ARGV[1]), {}
local function hex(c) return string.format('%02x', string.byte(c)) end
for i = 3, #ARGV do
  local key = ARGV[2] .. string.gsub(ARGV[i], '.', hex)
  local found = {}
  if n > 0 then found = redis.call('ZRANGE', key, 0, n - 1) end
  table.insert(found, 1, redis.call('ZCARD', key))
  out[#out + 1] = found
end
return out
"""
