"""The Lua scripts a producer runs in Redis (each atomic, one round trip)."""

# Claims ids for one submit, atomically. KEYS: per id its claim, rq job and outcome
# keys; ARGV: queue name, claim TTL. An id is taken when its claim is held or an rq
# job or outcome exists for it; if any is, every claim this call won is given back
# (also one won for an id whose job or outcome exists: that key keeps the id taken),
# so a refused submit leaves no key behind. Returns the 1-based positions of the taken ids.
CLAIM_LUA = """
local taken, won = {}, {}
for i = 1, #KEYS, 3 do
  local claimed = redis.call('SET', KEYS[i], ARGV[1], 'NX', 'EX', ARGV[2])
  local exists = redis.call('EXISTS', KEYS[i + 1], KEYS[i + 2])
  if claimed and exists > 0 then redis.call('DEL', KEYS[i]) end
  if not claimed or exists > 0 then
    taken[#taken + 1] = (i + 2) / 3
  else
    won[#won + 1] = KEYS[i]
  end
end
if #taken > 0 then
  for _, key in ipairs(won) do redis.call('DEL', key) end
end
return taken
"""
# One execution's writes, if its id is free (Producer.submit). KEYS: its claim, rq job and
# outcome keys; ARGV: the writes, each as its argument count followed by the command and its
# arguments (rq's commands recorded from a pipeline: SubmitPlanner.scripted_writes). Returns
# 1, writing nothing, when any of the three exists (another submit holds the id, or it names
# an execution still kept), else 0. No claim is written: the check and the writes are one
# atomic step, and the rq job or the outcome then keeps the id taken for the retention.
# Atomic as the MULTI it replaces, and 4 commands fewer (MULTI, EXEC, a second call, the SET).
# The written keys are not declared in KEYS: dockrq runs on one Redis (with replicas and
# Sentinel), never Redis Cluster, where they would have to be.
CLAIM_AND_WRITE_LUA = """
if redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3]) > 0 then return 1 end
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 0
"""
# One message per ARGV on the channel KEYS[1]: a batch's events in one command.
PUBLISH_MANY_LUA = """
for i = 1, #ARGV do redis.call('PUBLISH', KEYS[1], ARGV[i]) end
return #ARGV
"""
