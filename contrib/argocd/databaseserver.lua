-- Argo CD health of a servicedb.dev DatabaseServer.
local function condition(wanted)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end
local function said(c)
  return c.reason .. ": " .. c.message
end

local hs = {}
if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for servicedb to reconcile"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for servicedb to reconcile generation " .. obj.metadata.generation
  return hs
end
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(stalled)
  return hs
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
-- Not Ready: a server that answered once (its version is recorded) and does
-- not now is Degraded; one never reached yet may still be starting.
if obj.status.serverVersion ~= nil then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = ready ~= nil and said(ready) or "Waiting for the Ready condition"
return hs
