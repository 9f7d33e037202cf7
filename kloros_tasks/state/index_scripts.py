"""The Lua scripts of ``index.RedisIndex``: one update, the queued updates of many files,
and one batch of lookups (those of the path order are in index_order.py).

Kept apart from index.py because they are data for Redis, not Python; each runs
atomically inside Redis, which is what keeps a change and a lookup consistent.
"""

# What both index writes share: commands over a table in slices (the replies of all
# slices joined), a packed holder list without one id, a spill key's hex spelling, the
# write of a holder list, and the split of one bucket into itself and its image
# (linear hashing).
_LISTS = """
local SLICE = 256  -- unpack() has a stack limit: never unpack an unbounded table
local function sliced(cmd, key, flat)  -- SLICE is even: field-value pairs stay whole
  local out = {}
  for s = 1, #flat, SLICE do
    local got = redis.call(cmd, key, unpack(flat, s, math.min(s + SLICE - 1, #flat)))
    if type(got) == 'table' then for _, v in ipairs(got) do out[#out + 1] = v end end
  end
  return out
end
local function without(packed, member)  -- the packed ids but member; was it there?
  local s = ',' .. packed .. ','
  local i, j = string.find(s, ',' .. member .. ',', 1, true)
  if not i then return packed, false end
  return string.sub(string.sub(s, 1, i) .. string.sub(s, j + 1), 2, -2), true
end
local function hex(c) return string.format('%02x', string.byte(c)) end
local function put(bucket, field, rest, spilled, spill_prefix, inline)
  -- a holder list as it now is: gone, in its bucket, or in its spill key ("*" there)
  if rest == '' then redis.call('HDEL', bucket, field)
  elseif #rest <= inline then redis.call('HSET', bucket, field, rest)
  else
    redis.call('SET', spill_prefix .. string.gsub(field, '.', hex), rest)
    if not spilled then redis.call('HSET', bucket, field, '*') end
    return
  end
  if spilled then redis.call('DEL', spill_prefix .. string.gsub(field, '.', hex)) end
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
# updates reads it once.
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
#       checked only with a journal entry to write (the first slice).
UPDATE_SCRIPT = _LISTS + """
local fill, inline, path = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local current = redis.call('HGET', KEYS[1], path)
if (current and redis.sha1hex(current) or '') ~= ARGV[4] then return 0 end
local state = redis.call('HMGET', KEYS[2], 'level', 'split', 'ids', 'entries')
if (state[1] or '0') ~= ARGV[5] or (state[2] or '0') ~= ARGV[6] then return 0 end
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
  put(bucket, field, rest, spilled, ARGV[15], inline)
end
local at_level, at_split, ops = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[16]
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
local level, split, k = at_level, at_split, 5
while entries > fill * (2 ^ level + split) and KEYS[k + 1] do
  split_bucket(KEYS[k], KEYS[k + 1], level)
  k = k + 2
  split = split + 1
  if split == 2 ^ level then level, split = level + 1, 0 end
end
redis.call('HSET', KEYS[2], 'level', level, 'split', split)
return {level, split, entries, ids}
"""


# The queued updates of many files (index.RedisIndex.pipelined) in one call: each file
# as the update script's one-slice call queued alone would be (its checks, its claim,
# its journal entry written before any holder list is touched, its facts stored last),
# but every holder list the files change is read and written once, whatever the number
# of files that change it, and the file's facts, ids and journal entries are read and
# written in one command each.  A file whose checks fail (the facts or the journal entry
# it was computed from changed, or another writer took the id it claims) is left whole,
# and so is every claim after it; the caller makes those updates again.  A path is
# given at most once per call (its second update checks what the first stores).
# The ops of a file are removals and additions of distinct fields, so applying each
# field's operations in the files' order leaves the lists the one-file calls leave.
# KEYS: facts, meta, journal.
# ARGV: fill, inline max, bucket key prefix, spill key prefix, id map key prefix, ids
#       per id map, commit ("1": keep the journal entries, "2": drop them), splits at
#       most; then per file: path, SHA-1 of the facts read ("" none), SHA-1 of the
#       journal entry read ("" none), value to store ("" deletes), file id ("" none),
#       claim ("1"/""), careful ("1"/""), journal entry ("-": none), ops (9 bytes each).
# Answers level, split, entries, ids, then 1 or 0 per file (applied or left).
BATCH_SCRIPT = _LISTS + """
local fill, inline, per_map = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[6])
local state = redis.call('HMGET', KEYS[2], 'level', 'split', 'ids')
local level, split = tonumber(state[1] or '0'), tonumber(state[2] or '0')
local ids, first_ids = tonumber(state[3] or '0'), tonumber(state[3] or '0')
local paths = {}
for i = 9, #ARGV, 9 do paths[#paths + 1] = ARGV[i] end
local stored, entries_read = sliced('HMGET', KEYS[1], paths), sliced('HMGET', KEYS[3], paths)
local done, fields, by_field, journal, claimed = {}, {}, {}, {}, true
local ADD, CHECKED, REMOVE = 1, 2, 3
for n, path in ipairs(paths) do
  local i = 9 + 9 * (n - 1)
  local ok = (stored[n] and redis.sha1hex(stored[n]) or '') == ARGV[i + 1]
    and (entries_read[n] and redis.sha1hex(entries_read[n]) or '') == ARGV[i + 2]
  if ok and ARGV[i + 5] == '1' then
    ok = claimed and ids == tonumber(ARGV[i + 4]) - 1
    claimed = ok
    if ok then ids = ids + 1 end
  end
  done[n] = ok and 1 or 0
  if ok then
    if ARGV[i + 7] ~= '-' then
      journal[#journal + 1] = path; journal[#journal + 1] = ARGV[i + 7]
    end
    -- Each field's operations, flat: a kind (ADD: an add the caller's diff knows is
    -- new; CHECKED: an add finishing a change cut short; REMOVE) and the file id.
    local ops, id, add = ARGV[i + 8], ARGV[i + 4], ARGV[i + 6] == '1' and CHECKED or ADD
    for at = 1, #ops, 9 do
      local field = string.sub(ops, at + 1, at + 8)
      local list = by_field[field]
      if not list then list = {}; by_field[field] = list; fields[#fields + 1] = field end
      list[#list + 1] = string.byte(ops, at) == 43 and add or REMOVE  -- 43: "+"
      list[#list + 1] = id
    end
  end
end
sliced('HSET', KEYS[3], journal)
local low, high, delta = 2 ^ level, 2 ^ (level + 1), 0
for _, field in ipairs(fields) do
  local a, b, c, d = string.byte(field, 1, 4)
  local h = ((a * 256 + b) * 256 + c) * 256 + d
  local bucket = h % low
  if bucket < split then bucket = h % high end
  bucket = ARGV[3] .. bucket
  local list = by_field[field]
  local packed = redis.call('HGET', bucket, field) or ''
  local spilled, spill = packed == '*', nil
  local appended = spilled
  for k = 1, #list, 2 do appended = appended and list[k] == ADD end
  if spilled then spill = ARGV[4] .. string.gsub(field, '.', hex) end
  if appended then  -- a long list is appended to unread, as the update script does
    local add = {}
    for k = 2, #list, 2 do add[#add + 1] = list[k] end
    redis.call('APPEND', spill, ',' .. table.concat(add, ','))
  else
    if spilled then packed = redis.call('GET', spill) or '' end
    local rest = packed
    for k = 1, #list, 2 do
      local kind, id, held = list[k], list[k + 1], false
      local was = rest
      if kind ~= ADD then rest, held = without(rest, id) end
      if kind ~= REMOVE then
        if not held then
          if was == '' then delta = delta + 1; rest = id else rest = was .. ',' .. id end
        else rest = was end
      elseif held and rest == '' then delta = delta - 1 end
    end
    if rest ~= packed then put(bucket, field, rest, spilled, ARGV[4], inline) end
  end
end
local entries = redis.call('HINCRBY', KEYS[2], 'entries', delta)
local store, gone, drop, maps = {}, {}, {}, {}
for n, path in ipairs(paths) do
  if done[n] == 1 then
    local i = 9 + 9 * (n - 1)
    local value, id = ARGV[i + 3], ARGV[i + 4]
    if ARGV[7] == '2' then drop[#drop + 1] = path end
    if id ~= '' then
      local key = ARGV[5] .. math.floor(tonumber(id) / per_map)
      if not maps[key] then maps[key] = {set = {}, del = {}} end
      if value == '' then table.insert(maps[key].del, id)
      else table.insert(maps[key].set, id); table.insert(maps[key].set, path) end
    end
    if value == '' then gone[#gone + 1] = path
    else store[#store + 1] = path; store[#store + 1] = value end
  end
end
sliced('HDEL', KEYS[3], drop)
sliced('HDEL', KEYS[1], gone)
sliced('HSET', KEYS[1], store)
for key, map in pairs(maps) do sliced('HSET', key, map.set); sliced('HDEL', key, map.del) end
if ids ~= first_ids then redis.call('HSET', KEYS[2], 'ids', ids) end
local left = tonumber(ARGV[8])
while entries > fill * (2 ^ level + split) and left > 0 do
  left = left - 1
  split_bucket(ARGV[3] .. split, ARGV[3] .. (split + 2 ^ level), level)
  split = split + 1
  if split == 2 ^ level then level, split = level + 1, 0 end
end
redis.call('HSET', KEYS[2], 'level', level, 'split', split)
local out = {level, split, entries, ids}
for n = 1, #paths do out[#out + 1] = done[n] end
return out
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
